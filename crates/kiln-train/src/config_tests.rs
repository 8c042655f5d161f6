//! The config's own tests: TOML in and out, recipes, errors naming file and field.
use super::*;

#[test]
fn recipes_round_trip_through_toml() {
    for name in RECIPES {
        let c = Config::recipe(name).expect("recipe");
        let back = Config::from_toml(&c.to_toml(), Path::new("x.toml")).unwrap_or_else(|e| panic!("{name}: {e}\n{}", c.to_toml()));
        assert_eq!(c, back, "{name}");
    }
}

#[test]
fn a_conv_model_reads_from_inline_tables() {
    let text = r#"
        [model]
        kind = "sequential"
        input = [1, 28, 28]
        layers = [
            { type = "conv2d", out = 8, kernel = 3, padding = 1 },
            { type = "batch_norm2d" },
            { type = "relu" },
            { type = "max_pool2d", kernel = 2 },
            { type = "flatten" },
            { type = "linear", out = 10 },
        ]
    "#;
    let c = Config::from_toml(text, Path::new("cnn.toml")).expect("parse");
    let ModelConfig::Sequential(seq) = &c.model else { panic!("a sequential model: {:?}", c.model) };
    assert_eq!(seq.layers.len(), 6);
    assert_eq!(seq.layers[0], LayerConfig::Conv2d { out: 8, kernel: 3, stride: 1, padding: 1, dilation: 1, groups: 1 });
    let e = Config::from_toml(&text.replace("kernel = 2", "kernel = 2, bogus = 1"), Path::new("cnn.toml")).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn gpt_recipes_are_nanogpts_settings() {
    let baby = Config::recipe("shakespeare-gpt").expect("recipe");
    let m = baby.model.gpt().expect("a gpt");
    assert_eq!((baby.model.kind(), m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout), ("gpt", 6, 6, 384, 256, 0.2));
    let o = &baby.optimizer;
    assert_eq!((o.kind, o.lr, o.weight_decay, o.betas, o.clip_grad_norm), (OptimizerKind::AdamW, 1e-3, 0.1, (0.9, 0.99), Some(1.0)));
    let s = &baby.schedule;
    assert_eq!((s.kind, s.warmup_steps, s.eta_min), (ScheduleKind::Cosine, 100, 1e-4));
    let t = &baby.train;
    assert_eq!((t.batch_size, t.steps, t.eval_every, t.eval_batches), (64, 5000, 250, 200));
    assert_eq!((baby.data.dataset, baby.data.train_fraction), (DatasetName::Shakespeare, 0.9));
    let tiny = Config::recipe("shakespeare-gpt-tiny").expect("recipe");
    let m = tiny.model.gpt().expect("a gpt");
assert_eq!((m.n_layer, m.n_head, m.n_embd, m.block_size), (2, 4, 128, 64));
    // An MLP's TOML does not mention the GPT-only fields.
    let mlp = Config::recipe("mnist-mlp").expect("recipe").to_toml();
    for field in ["n_layer", "block_size", "tie_weights", "train_fraction", "max_chars", "eval_every"] {
        assert!(!mlp.contains(field), "{field} in\n{mlp}");
    }
}

#[test]
fn a_gpt_reads_from_toml_and_bad_ones_are_named() {
    let text = r#"
        [model]
        kind = "gpt"
        n_layer = 2
        n_head = 4
        n_embd = 64
        block_size = 32
        bias = false
        [data]
        dataset = "shakespeare"
        max_chars = 100000
        [train]
        steps = 100
        eval_every = 20
        eval_batches = 5
    "#;
    let c = Config::from_toml(text, Path::new("gpt.toml")).expect("parse");
    assert!(c.model.gpt().is_some_and(|m| !m.bias && m.tie_weights));
    assert_eq!((c.data.max_chars, c.data.train_fraction, c.train.steps), (100_000, 0.9, 100));
    assert_eq!(Config::from_toml(&c.to_toml(), Path::new("again.toml")).expect("round trip"), c);
    for (change, expected) in [
        (("n_embd = 64", "n_embd = 63"), "not a multiple of model.n_head"),
        (("n_layer = 2", "n_layer = 0"), "n_layer"),
        (("dataset = \"shakespeare\"", "dataset = \"mnist\""), "must be \"shakespeare\""),
        (("steps = 100", "steps = 0"), "train.steps"),
        (("max_chars = 100000", "train_fraction = 1.0"), "train_fraction"),
    ] {
        let e = Config::from_toml(&text.replace(change.0, change.1), Path::new("gpt.toml")).unwrap_err().to_string();
        assert!(e.contains("gpt.toml") && e.contains(expected), "{change:?}: {e}");
    }
    let e = Config::from_toml("[model]\nsizes = [784, 10]\n[data]\ndataset = \"shakespeare\"\n", Path::new("m.toml")).unwrap_err();
    assert!(e.to_string().contains("needs model.kind = \"gpt\""), "{e}");
}

#[test]
fn config_errors_name_the_file_and_the_field() {
    let e = Config::from_toml("[model]\nsizes = [784, 10]\nactivation = \"swish\"\n", Path::new("job.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("job.toml") && msg.contains("swish"), "{msg}");
    let e = Config::from_toml("[model]\nsizes = [784, 10]\nbogus = 1\n", Path::new("job.toml")).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    assert!(Config::recipe("nope").unwrap_err().to_string().contains("mnist-mlp"));
}

/// What `kiln train` wrote into config.toml and every checkpoint before the model
/// kinds were types (every model field, for every kind) still reads; a field another
/// kind uses, set to a value, is refused by name.
#[test]
fn configs_written_before_typed_kinds_still_read() {
    let old_mlp = "[model]\nkind = \"mlp\"\nsizes = [784, 128, 64, 10]\nactivation = \"relu\"\ndropout = 0.0\ninput = []\nlayers = []\n";
    let c = Config::from_toml(old_mlp, Path::new("old.toml")).expect("old mlp");
    assert_eq!(c.model, Config::recipe("mnist-mlp").expect("recipe").model);
    let old_gpt = "[model]\nkind = \"gpt\"\nsizes = []\nactivation = \"relu\"\ndropout = 0.2\ninput = []\nlayers = []\nn_layer = 2\nn_head = 2\nn_embd = 8\nblock_size = 8\n\
                   [data]\ndataset = \"shakespeare\"\n[train]\nsteps = 10\neval_every = 5\neval_batches = 1\n";
    let c = Config::from_toml(old_gpt, Path::new("old-gpt.toml")).expect("old gpt");
    assert_eq!(c.model.gpt().map(|m| (m.n_layer, m.dropout)), Some((2, 0.2)));
    let e = Config::from_toml(&old_gpt.replace("sizes = []", "sizes = [1, 2]"), Path::new("old-gpt.toml")).unwrap_err().to_string();
    assert!(e.contains("old-gpt.toml") && e.contains("sizes"), "{e}");
    let e = Config::from_toml("[model]\nkind = \"transformer\"\n", Path::new("k.toml")).unwrap_err().to_string();
    assert!(e.contains("k.toml") && e.contains("transformer") && e.contains("gpt"), "{e}");
    let e = Config::from_toml("[model]\nsizes = [4, 2]\n[optimizer]\nkind = \"lion\"\n", Path::new("o.toml")).unwrap_err().to_string();
    assert!(e.contains("o.toml") && e.contains("lion") && e.contains("adamw"), "{e}");
}
