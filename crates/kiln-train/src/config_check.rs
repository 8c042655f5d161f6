//! What serde cannot check in a `Config`: known names, and every number against the
//! range kiln can train with (`crate::limits`), so that a job that cannot run fails as
//! it is read, naming the field.
use crate::config::{Config, LayerConfig};

impl Config {
    /// Check what serde cannot: known names and sensible numbers.
    pub fn validate(&self) -> Result<(), String> {
        match self.model.kind.as_str() {
            "mlp" => {
                if self.model.sizes.len() < 2 || self.model.sizes.contains(&0) {
                    return Err(format!("model.sizes {:?} needs at least an input and an output width, none zero", self.model.sizes));
                }
                self.model.layers_and_input()?;
            }
            "sequential" => {
                if self.model.input.is_empty() || self.model.input.contains(&0) || self.model.layers.is_empty() {
                    return Err("a sequential model needs model.input (one sample's shape) and model.layers".into());
                }
            }
            "gpt" => {
                let m = &self.model;
                if m.n_layer == 0 || m.n_head == 0 || m.n_embd == 0 || m.block_size == 0 {
                    return Err(format!(
                        "a gpt model needs model.n_layer, n_head, n_embd and block_size of at least 1 (got {}, {}, {}, {})",
                        m.n_layer, m.n_head, m.n_embd, m.block_size
                    ));
                }
                if !m.n_embd.is_multiple_of(m.n_head) {
                    return Err(format!("model.n_embd {} is not a multiple of model.n_head {}", m.n_embd, m.n_head));
                }
                if self.data.dataset != "shakespeare" {
                    return Err(format!("a gpt model trains on text: data.dataset must be \"shakespeare\", not '{}'", self.data.dataset));
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
            other => return Err(format!("model.kind '{other}' is not known (known: mlp, sequential, gpt)")),
        }
        if !self.model.is_gpt() && self.data.dataset == "shakespeare" {
            return Err(format!("data.dataset 'shakespeare' is text: it needs model.kind = \"gpt\", not '{}'", self.model.kind));
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return Err(format!("model.dropout {} must be in [0, 1)", self.model.dropout));
        }
        self.train.precision.parse::<kiln_nn::Precision>().map_err(|e| format!("train.precision: {e}"))?;
        if !["sgd", "adam", "adamw"].contains(&self.optimizer.kind.as_str()) {
            return Err(format!("optimizer.kind '{}' is not one of sgd, adam, adamw", self.optimizer.kind));
        }
        if self.optimizer.lr.is_nan() || self.optimizer.lr <= 0.0 {
            return Err(format!("optimizer.lr {} must be positive", self.optimizer.lr));
        }
        if !["constant", "step", "cosine"].contains(&self.schedule.kind.as_str()) {
            return Err(format!("schedule.kind '{}' is not one of constant, step, cosine", self.schedule.kind));
        }
        if self.schedule.kind == "step" && self.schedule.step_size.unwrap_or(0) == 0 {
            return Err("schedule.kind 'step' needs schedule.step_size >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.data.horizontal_flip) {
            return Err(format!("data.horizontal_flip {} must be a probability in [0, 1]", self.data.horizontal_flip));
        }
        if !["mnist", "fashion-mnist", "shakespeare"].contains(&self.data.dataset.as_str()) {
            return Err(format!("data.dataset '{}' is not known (known: mnist, fashion-mnist, shakespeare)", self.data.dataset));
        }
        if self.train.batch_size == 0 || self.train.epochs == 0 {
            return Err("train.batch_size and train.epochs must be at least 1".into());
        }
        self.check_ranges()
    }

    /// Every number against the range kiln can train with (`crate::limits`), so that a
    /// job that cannot run fails as it is read, naming the field.
    fn check_ranges(&self) -> Result<(), String> {
        use crate::limits::*;
        let (m, o, s, d, t) = (&self.model, &self.optimizer, &self.schedule, &self.data, &self.train);
        for (i, &width) in m.sizes.iter().enumerate() {
            count_in_range(&format!("model.sizes[{i}]"), width, MAX_WIDTH)?;
        }
        for (i, &dim) in m.input.iter().enumerate() {
            count_in_range(&format!("model.input[{i}]"), dim, MAX_INPUT_DIM)?;
        }
        for (i, layer) in m.layers.iter().enumerate() {
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
        if m.is_gpt() {
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
        finite_where("schedule.eta_min", s.eta_min, s.eta_min >= 0.0 && s.eta_min <= o.lr, "in [0, optimizer.lr]")?;
        // A shift beyond the image's side moves every pixel out: nothing left to learn.
        let side = m.input.iter().skip(1).copied().max().unwrap_or(kiln_data::MNIST_SIDE);
        if d.random_crop_padding > side {
            return Err(format!("data.random_crop_padding = {} must be at most the image's side, {side}", d.random_crop_padding));
        }
        Ok(())
    }
}
