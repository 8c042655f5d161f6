//! What serde cannot check in a `Config`: known names, and every number against the
//! range kiln can train with (`crate::limits`), so that a job that cannot run fails as
//! it is read, naming the field.
use crate::config::{Config, DatasetName, LayerConfig, ModelConfig, ScheduleKind};

fn check_dropout(field: &str, p: f64) -> Result<(), String> {
    if !(0.0..1.0).contains(&p) {
        return Err(format!("{field} {p} must be in [0, 1)"));
    }
    Ok(())
}

impl Config {
    /// Check what serde cannot: that the parts fit together, and sensible numbers.
    pub fn validate(&self) -> Result<(), String> {
        let text = self.data.is_text();
        match &self.model {
            ModelConfig::Mlp(mlp) => {
                if mlp.sizes.len() < 2 || mlp.sizes.contains(&0) {
                    return Err(format!("model.sizes {:?} needs at least an input and an output width, none zero", mlp.sizes));
                }
                check_dropout("model.dropout", mlp.dropout)?;
            }
            ModelConfig::Sequential(seq) => {
                if seq.input.is_empty() || seq.input.contains(&0) || seq.layers.is_empty() {
                    return Err("a sequential model needs model.input (one sample's shape) and model.layers".into());
                }
            }
            ModelConfig::TextClassifier(_) => {}
            ModelConfig::Gpt(m) => {
                if m.n_layer == 0 || m.n_head == 0 || m.n_embd == 0 || m.block_size == 0 {
                    return Err(format!(
                        "a gpt model needs model.n_layer, n_head, n_embd and block_size of at least 1 (got {}, {}, {}, {})",
                        m.n_layer, m.n_head, m.n_embd, m.block_size
                    ));
                }
                if !m.n_embd.is_multiple_of(m.n_head) {
                    return Err(format!("model.n_embd {} is not a multiple of model.n_head {}", m.n_embd, m.n_head));
                }
                check_dropout("model.dropout", m.dropout)?;
                if !text {
                    return Err(format!("a gpt model trains on text: data.dataset must be \"shakespeare\", not '{}'", self.data.dataset.name()));
                }
                if self.train.steps == 0 || self.train.eval_every == 0 || self.train.eval_batches == 0 {
                    return Err(format!(
                        "a gpt model trains by steps: train.steps, train.eval_every and train.eval_batches must be at least 1 (got {}, {}, {})",
                        self.train.steps, self.train.eval_every, self.train.eval_batches
                    ));
                }
                if !(self.data.train_fraction > 0.0 && self.data.train_fraction < 1.0) {
                    return Err(format!("data.train_fraction {} must lie strictly between 0 and 1", self.data.train_fraction));
                }
            }
        }
        if let Some(m) = self.model.text_classifier() {
            if m.max_len < 2 || m.max_len > crate::limits::MAX_BLOCK_SIZE {
                return Err(format!(
                    "model.max_len = {} must be between 2 ([CLS] and [SEP]) and {}",
                    m.max_len,
                    crate::limits::MAX_BLOCK_SIZE
                ));
            }
            if let Some(p) = m.dropout {
                check_dropout("model.dropout", p)?;
            }
            if let Some(layers) = &m.layers {
                let mut seen = std::collections::HashSet::new();
                if layers.is_empty() || !layers.iter().all(|l| seen.insert(*l)) {
                    return Err(format!("model.layers = {layers:?} must name at least one encoder layer, each once"));
                }
            }
            if self.data.dataset != DatasetName::Sentiment && self.data.text_table().is_none() {
                return Err(format!(
                    "a text-classifier trains on labelled text: data.dataset = \"sentiment\", or data.path = a .tsv or .csv file \
                     (not dataset '{}'{})",
                    self.data.dataset.name(),
                    self.data.path.as_ref().map_or(String::new(), |p| format!(" at {}", p.display()))
                ));
            }
        } else if self.data.dataset == DatasetName::Sentiment || self.data.text_table().is_some() {
            return Err(format!("labelled text needs model.kind = \"text-classifier\", not '{}'", self.model.kind()));
        }
        if text && self.model.gpt().is_none() {
            return Err(format!("data.dataset 'shakespeare' is text: it needs model.kind = \"gpt\", not '{}'", self.model.kind()));
        }
        if self.optimizer.lr.is_nan() || self.optimizer.lr <= 0.0 {
            return Err(format!("optimizer.lr {} must be positive", self.optimizer.lr));
        }
        if self.schedule.kind == ScheduleKind::Step && self.schedule.step_size.unwrap_or(0) == 0 {
            return Err("schedule.kind 'step' needs schedule.step_size >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.data.horizontal_flip) {
            return Err(format!("data.horizontal_flip {} must be a probability in [0, 1]", self.data.horizontal_flip));
        }
        if self.train.batch_size == 0 || self.train.epochs == 0 || self.train.accumulate == 0 {
            return Err("train.batch_size, train.epochs and train.accumulate must be at least 1".into());
        }
        if let Some(early) = &self.train.early_stopping {
            let known: &[&str] = if text { &["loss", "perplexity"] } else { &["loss", "accuracy"] };
            if !known.contains(&early.monitor.as_str()) {
                return Err(format!("train.early_stopping.monitor '{}' is not one of {}", early.monitor, known.join(", ")));
            }
            if early.patience == 0 || !early.min_delta.is_finite() || early.min_delta < 0.0 {
                return Err("train.early_stopping needs patience >= 1 and a finite min_delta >= 0".into());
            }
        }
        self.check_ranges()
    }

    /// Every number against the range kiln can train with (`crate::limits`), so that a
    /// job that cannot run fails as it is read, naming the field.
    fn check_ranges(&self) -> Result<(), String> {
        use crate::limits::*;
        let (o, s, d, t) = (&self.optimizer, &self.schedule, &self.data, &self.train);
        let (sizes, input, layers): (&[usize], &[usize], &[LayerConfig]) = match &self.model {
            ModelConfig::Mlp(mlp) => (&mlp.sizes, &[], &[]),
            ModelConfig::Sequential(seq) => (&[], &seq.input, &seq.layers),
            ModelConfig::Gpt(_) | ModelConfig::TextClassifier(_) => (&[], &[], &[]),
        };
        for (i, &width) in sizes.iter().enumerate() {
            count_in_range(&format!("model.sizes[{i}]"), width, MAX_WIDTH)?;
        }
        for (i, &dim) in input.iter().enumerate() {
            count_in_range(&format!("model.input[{i}]"), dim, MAX_INPUT_DIM)?;
        }
        for (i, layer) in layers.iter().enumerate() {
            let field = |name: &str| format!("model.layers[{i}].{name}");
            match *layer {
                LayerConfig::Conv2d { out, kernel, stride, padding, dilation, groups } => {
                    count_in_range(&field("out"), out, MAX_WIDTH)?;
                    count_in_range(&field("kernel"), kernel, MAX_KERNEL)?;
                    count_in_range(&field("stride"), stride, MAX_KERNEL)?;
                    count_in_range(&field("dilation"), dilation, MAX_KERNEL)?;
                    count_in_range(&field("groups"), groups, MAX_WIDTH)?;
                    if padding > MAX_KERNEL {
                        return Err(format!("{} = {padding} must be at most {MAX_KERNEL}", field("padding")));
                    }
                }
                LayerConfig::Linear { out } => count_in_range(&field("out"), out, MAX_WIDTH)?,
                LayerConfig::MaxPool2d { kernel, stride } | LayerConfig::AvgPool2d { kernel, stride } => {
                    count_in_range(&field("kernel"), kernel, MAX_KERNEL)?;
                    if let Some(stride) = stride {
                        count_in_range(&field("stride"), stride, MAX_KERNEL)?;
                    }
                }
                LayerConfig::Dropout { p } => finite_where(&field("p"), p, (0.0..1.0).contains(&p), "in [0, 1)")?,
                _ => {}
            }
        }
        if let Some(m) = self.model.gpt() {
            count_in_range("model.n_layer", m.n_layer, MAX_LAYERS)?;
            count_in_range("model.n_head", m.n_head, MAX_LAYERS)?;
            count_in_range("model.n_embd", m.n_embd, MAX_WIDTH)?;
            count_in_range("model.block_size", m.block_size, MAX_BLOCK_SIZE)?;
            count_in_range("train.eval_batches", t.eval_batches, MAX_EVAL_BATCHES)?;
            if t.steps > MAX_STEPS {
                return Err(format!("train.steps = {} must be at most {MAX_STEPS}", t.steps));
            }
        }
        count_in_range("train.batch_size", t.batch_size, MAX_BATCH)?;
        count_in_range("train.epochs", t.epochs, MAX_EPOCHS)?;
        if t.eval_every > MAX_STEPS || s.warmup_steps > MAX_STEPS || s.step_size.is_some_and(|n| n > MAX_STEPS) {
            return Err(format!("train.eval_every, schedule.warmup_steps and schedule.step_size must be at most {MAX_STEPS}"));
        }
        finite_where("optimizer.lr", o.lr, o.lr > 0.0, "positive and finite")?;
        finite_where("optimizer.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "at least 0")?;
        finite_where("optimizer.momentum", o.momentum, (0.0..1.0).contains(&o.momentum), "in [0, 1)")?;
        finite_where("optimizer.dampening", o.dampening, (0.0..=1.0).contains(&o.dampening), "in [0, 1]")?;
        finite_where("optimizer.betas[0]", o.betas.0, (0.0..1.0).contains(&o.betas.0), "in [0, 1)")?;
        finite_where("optimizer.betas[1]", o.betas.1, (0.0..1.0).contains(&o.betas.1), "in [0, 1)")?;
        // eps = 0 divides by sqrt(v) = 0 on the first step of any parameter with a zero gradient.
        finite_where("optimizer.eps", o.eps, o.eps > 0.0, "positive")?;
        if let Some(clip) = o.clip_grad_norm {
            finite_where("optimizer.clip_grad_norm", clip, clip > 0.0, "positive")?;
        }
        finite_where("schedule.gamma", s.gamma, s.gamma > 0.0, "positive (the factor the rate is multiplied by)")?;
        finite_where("schedule.warmup_ratio", s.warmup_ratio, (0.0..1.0).contains(&s.warmup_ratio), "in [0, 1)")?;
        finite_where("schedule.eta_min", s.eta_min, s.eta_min >= 0.0 && s.eta_min <= o.lr, "in [0, optimizer.lr]")?;
        // A shift beyond the image's side moves every pixel out: nothing left to learn.
        let side = input.iter().skip(1).copied().max().unwrap_or(kiln_data::MNIST_SIDE);
        if d.random_crop_padding > side {
            return Err(format!("data.random_crop_padding = {} must be at most the image's side, {side}", d.random_crop_padding));
        }
        Ok(())
    }
}
