//! The optimisation recipe of a run (Algorithm 1's hyper-parameters and ours), its defaults (the
//! CLI's), its checks, and the learning rate and EMA decay it gives at each step.

use serde::{Deserialize, Serialize};

use crate::limits;

/// The optimisation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total optimiser steps of the run (a resumed run continues up to this).
    pub steps: usize,
    pub batch_size: usize,
    /// Adam's peak learning rate (paper: 2e-4).
    pub lr: f64,
    /// Steps of linear learning-rate warm-up (paper: 5000 at batch 128).
    pub warmup: usize,
    /// Steps at the end of the run over which the learning rate falls linearly to 0 (0: none,
    /// the paper's constant rate). Older checkpoints have no such field: none.
    #[serde(default)]
    pub lr_decay: usize,
    /// Clip the global gradient norm to this (paper: 1).
    pub grad_clip: f64,
    /// Decay of the weights' moving average (paper: 0.9999).
    pub ema_decay: f64,
    pub seed: u64,
    /// The batch is split into this many shards whose gradients are computed on as many threads
    /// at once and summed (flex runs element-wise ops on one thread, so one graph leaves cores
    /// idle). Only float rounding depends on it; it is kept in the checkpoint so that a resumed
    /// run adds the same sums. Older checkpoints have no such field: one shard.
    #[serde(default = "one")]
    pub shards: usize,
    /// Where the images came from (`mnist`, `emoji` or a folder), for the exported metadata.
    pub data: String,
    /// Mirror each drawn image left-right with probability ½ (the paper's CIFAR-10 augmentation):
    /// twice the distinct images a small data set offers, for data whose mirror image is as
    /// likely as itself. Older checkpoints have no such field: none.
    #[serde(default)]
    pub flip: bool,
    /// A conditional model's share of labels replaced by ∅ (Ho & Salimans 2022: 0.1-0.2), so
    /// that one network learns ε_θ(x, c) and ε_θ(x, ∅). Older checkpoints: none.
    #[serde(default)]
    pub label_dropout: f64,
    /// A conditional model's class names in label order (exported for display).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// A distillation run's teacher (`ddpm distil`); none for training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distil: Option<DistilConfig>,
}

/// A distillation run (Meng et al. 2023). Stage 1: the student (the teacher's architecture with
/// a guidance input, [`crate::unet::UNet::with_guidance_input`]) learns the guided teacher's
/// prediction ε̃ = ε(∅) + w·(ε(c) − ε(∅)) at the same x_t, for w drawn uniformly per item.
/// Stage 2 (`teacher_steps`): it learns to sample in half the teacher's steps.
/// Our w is the paper's w + 1 (w = 1 is the class's own prediction).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistilConfig {
    /// The teacher's weights file, and the SHA-256 of its bytes: a resumed run refuses a
    /// teacher that changed.
    pub teacher: String,
    pub teacher_sha256: String,
    /// The range w is drawn from: the student's guidance range, which the page's slider keeps to.
    pub w_min: f64,
    pub w_max: f64,
    /// Stage 2 ([`super::progressive`]): the teacher is a student (it takes w) sampled by DDIM
    /// η = 0 over this many trailing steps, and this student learns to take half as many.
    /// None: stage 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_steps: Option<usize>,
}

fn one() -> usize {
    1
}

/// The CLI's recipe for a new run: the paper's learning rate and clipping, with a warm-up, an
/// EMA decay and a length sized for the small data sets and the few cores this project trains
/// on (the paper: 5,000 warm-up steps, decay 0.9999, 800,000 steps at batch 128).
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 20_000,
            batch_size: 64,
            lr: 2e-4,
            warmup: 500,
            lr_decay: 0,
            grad_clip: 1.0,
            ema_decay: 0.999,
            seed: 0,
            shards: 1,
            data: String::new(),
            flip: false,
            label_dropout: 0.0,
            class_names: Vec::new(),
            distil: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=limits::MAX_BATCH).contains(&self.batch_size) {
            return Err(format!("batch size must be 1..={}, got {}", limits::MAX_BATCH, self.batch_size));
        }
        if !(1..=self.batch_size).contains(&self.shards) {
            return Err(format!(
                "shards must be between 1 and the batch size {}, got {}",
                self.batch_size, self.shards
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("learning rate must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("EMA decay must be in [0, 1), got {}", self.ema_decay));
        }
        if !(self.grad_clip > 0.0) {
            return Err(format!("gradient clip must be positive, got {}", self.grad_clip));
        }
        if let Some(d) = &self.distil
            && !(0.0 <= d.w_min && d.w_min <= d.w_max && d.w_max <= crate::guidance::MAX_GUIDANCE)
        {
            return Err(format!(
                "the guidance range must satisfy 0 ≤ w-min ≤ w-max ≤ {}, got {}..{}",
                crate::guidance::MAX_GUIDANCE,
                d.w_min,
                d.w_max
            ));
        }
        Ok(())
    }

    /// Linear warm-up to `lr`, then constant (the paper's schedule), then with `lr_decay` a
    /// linear fall towards 0 over the run's last `lr_decay` steps: a short run ends on
    /// weights that have settled instead of still jumping at the full rate.
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm_up = ((step + 1) as f64 / self.warmup.max(1) as f64).min(1.0);
        let decay = match self.lr_decay {
            0 => 1.0,
            n => (self.steps.saturating_sub(step) as f64 / n as f64).min(1.0),
        };
        self.lr * warm_up * decay
    }

    /// EMA decay at `step`, ramped as min(decay, (1 + s)/(10 + s)) so early averages do not
    /// drag the random initial weights along in short runs.
    pub fn ema_at(&self, step: usize) -> f64 {
        self.ema_decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }
}
