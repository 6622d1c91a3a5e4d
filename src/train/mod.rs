//! Training (Algorithm 1 of the paper): Adam with warm-up and global-norm gradient clipping,
//! an exponential moving average of the weights (what the paper evaluates and we export),
//! atomic checkpoints that resume a run exactly ([`checkpoint`]), a stop on the first non-finite
//! loss, and the loop that drives it all ([`fit`]).

pub mod checkpoint;
pub mod fit;

pub use checkpoint::{atomic_write, sweep_temp, temp_path};
pub use fit::{FitOptions, Observer, Outcome, checkpoint_path, fit};

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::diffusion::{Diffusion, ScheduleConfig};
use crate::limits;
use crate::noise::{Noise, NoiseState};
use crate::threads::{run_all, shard_ranges};
use crate::unet::{UNet, UNetConfig};
use crate::weights::Header;

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
}

fn one() -> usize {
    1
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

/// Everything a checkpoint holds besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    step: usize,
    unet: UNetConfig,
    schedule: ScheduleConfig,
    train: TrainConfig,
    noise: NoiseState,
}

/// A training run in progress.
pub struct Trainer {
    pub unet: UNetConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    pub step: usize,
    pub diffusion: Diffusion,
    /// The trained model (on the autodiff device) and its moving average (plain device).
    pub model: UNet,
    pub ema: UNet,
    optim: ModuleOptimizer,
    noise: Noise,
    device: Device,
}

/// What one step reports.
pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

impl Trainer {
    /// A fresh run; `device` is a plain device (autodiff is added here).
    pub fn new(unet: UNetConfig, schedule: ScheduleConfig, train: TrainConfig, device: &Device) -> Result<Self> {
        unet.validate().map_err(anyhow::Error::msg)?;
        schedule.validate().map_err(anyhow::Error::msg)?;
        train.validate().map_err(anyhow::Error::msg)?;
        device.seed(train.seed);
        let ad = device.clone().autodiff();
        let model = unet.init(&ad);
        let ema = model.valid();
        let noise = Noise::new(train.seed);
        Ok(Self {
            diffusion: Diffusion::new(schedule.clone()),
            unet,
            schedule,
            optim: AdamConfig::new().with_epsilon(1e-8).init(),
            train,
            step: 0,
            model,
            ema,
            noise,
            device: device.clone(),
        })
    }

    /// One optimiser step on a random batch of `data` (Algorithm 1, lines 2-5).
    pub fn step(&mut self, data: &Dataset) -> Result<StepStats> {
        let ad = self.device.clone().autodiff();
        // x₀ ~ q(x₀), t ~ U{0..T−1}, ε ~ N(0, I): drawn here, on the CPU, for the whole batch.
        let b = self.train.batch_size;
        let (x0, items) = data.random_batch(b, self.train.flip, &mut self.noise, &ad);
        let t: Vec<usize> = (0..b).map(|_| self.noise.below(self.diffusion.steps())).collect();
        let eps = self.noise.gaussian(x0.dims(), &ad);
        let classes = match self.unet.num_classes {
            Some(null) => Some(self.draw_classes(data, &items, null)?),
            None => None,
        };

        // Shard k takes a slice of n_k items and weighs its mean loss by n_k / B, so the shards'
        // losses and gradients add up to those of the whole batch.
        let dropout = self.noise.split(self.train.shards);
        let diffusion = &self.diffusion;
        let jobs: Vec<_> = (shard_ranges(b, self.train.shards).into_iter().zip(dropout))
            .map(|(items, dropout)| {
                let shard = Shard {
                    replica: self.model.clone().map(&mut Replica),
                    x0: x0.clone().narrow(0, items.start, items.len()),
                    t: t[items.clone()].to_vec(),
                    classes: classes.as_ref().map(|c| c[items.clone()].to_vec()),
                    eps: eps.clone().narrow(0, items.start, items.len()),
                    dropout,
                    weight: items.len() as f64 / b as f64,
                };
                move || shard.run(diffusion)
            })
            .collect();
        let results = run_all(jobs);

        let loss_value: f64 = results.iter().map(|(loss, _)| loss).sum();
        if !loss_value.is_finite() {
            bail!("loss is {loss_value} at step {}; stopping (the last checkpoint is kept as it was)", self.step + 1);
        }
        let mut shard_grads = results.into_iter().map(|(_, grads)| grads);
        let first = shard_grads.next().expect("at least one shard");
        let sums = shard_grads.fold(first, |acc, grads| acc.into_iter().zip(grads).map(|(a, g)| a + g).collect());
        let mut assign = Assign { grads: sums.into_iter(), out: GradientsParams::new() };
        self.model.visit(&mut assign);
        let mut grads = assign.out;
        let grad_norm = clip_global_norm(&self.model, &mut grads, self.train.grad_clip);
        let lr = self.train.lr_at(self.step);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        // EMA: θ̄ ← d θ̄ + (1 − d) θ.
        let decay = self.train.ema_at(self.step);
        let mut current = Flatten::default();
        self.model.valid().visit(&mut current);
        let mut ema = EmaUpdate { current: current.0.into_iter(), decay };
        self.ema = self.ema.clone().map(&mut ema);
        self.step += 1;
        Ok(StepStats { loss: loss_value, grad_norm, lr })
    }

    /// The classes of the drawn `items`, each replaced by ∅ (`null`) with probability
    /// `label_dropout`.
    fn draw_classes(&mut self, data: &Dataset, items: &[usize], null: usize) -> Result<Vec<usize>> {
        let labels = data.labels.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "a class-conditional model trains on labelled images: --data mnist, emoji, MNIST's IDX files \
                 with their labels, or a folder of class subfolders"
            )
        })?;
        const ONE: usize = 1 << 24;
        let p = (self.train.label_dropout * ONE as f64) as usize;
        Ok(items
            .iter()
            .map(|&i| if self.noise.below(ONE) < p { null } else { (labels[i] as usize).min(null) })
            .collect())
    }

    /// Starts from `model`'s weights (a warm start from another run's file, on this trainer's
    /// autodiff device) instead of fresh ones; the EMA starts there too.
    pub fn start_from(&mut self, model: UNet) {
        self.model = model;
        self.ema = self.model.valid();
    }

    /// The device the EMA lives on (the model is on its autodiff twin).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The metadata of an export of this run.
    pub fn header(&self) -> Header {
        let info = [
            ("train_steps".to_string(), self.step.to_string()),
            ("train".to_string(), serde_json::to_string(&self.train).expect("serialises")),
        ];
        let names = (!self.train.class_names.is_empty())
            .then(|| ("class_names".to_string(), serde_json::to_string(&self.train.class_names).expect("serialises")));
        let info = info.into_iter().chain(names);
        Header { unet: self.unet.clone(), schedule: self.schedule.clone(), sampler: None, info: info.collect() }
    }
}

/// Scales all gradients by min(1, clip / ‖g‖) with ‖g‖ the norm over every parameter
/// (TensorFlow's clip_by_global_norm, as the paper's code uses). Returns ‖g‖.
fn clip_global_norm(model: &UNet, grads: &mut GradientsParams, clip: f64) -> f64 {
    struct SumSq<'a>(&'a GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for SumSq<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s = g.square().sum();
                self.1 = Some(match self.1.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a>(&'a mut GradientsParams, f64);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g.mul_scalar(self.1));
            }
        }
    }
    let mut sum = SumSq(grads, None);
    model.visit(&mut sum);
    let norm = sum.1.map_or(0.0, |s| s.into_scalar::<f64>().sqrt());
    if norm > clip {
        model.visit(&mut Scale(grads, clip / norm));
    }
    norm
}

/// One shard of a training step's batch, with its own copy of the model.
struct Shard {
    replica: UNet,
    x0: Tensor<4>,
    t: Vec<usize>,
    classes: Option<Vec<usize>>,
    eps: Tensor<4>,
    dropout: Noise,
    weight: f64,
}

impl Shard {
    /// The shard's weighted loss and its gradients, flattened in the parameters' visiting order.
    fn run(mut self, diffusion: &Diffusion) -> (f64, Vec<Tensor<1>>) {
        let classes = self.classes.as_deref();
        let loss = diffusion
            .loss(&self.replica, self.x0, &self.t, classes, self.eps, &mut self.dropout)
            .mul_scalar(self.weight);
        let value = loss.clone().into_scalar::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &self.replica);
        let mut flat = FlattenGrads(&grads, Vec::new());
        self.replica.visit(&mut flat);
        (value, flat.1)
    }
}

/// Copies a module's parameters under fresh ids: each shard's autodiff graph then shares no
/// node with another's, and burn runs graphs that share nothing concurrently.
struct Replica;

impl ModuleMapper for Replica {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        Param::initialized(ParamId::new(), param.val().detach().require_grad())
    }
}

struct FlattenGrads<'a>(&'a GradientsParams, Vec<Tensor<1>>);

impl ModuleVisitor for FlattenGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.0.get::<D>(param.id).expect("every UNet parameter takes part in the loss");
        self.1.push(grad.reshape([-1]));
    }
}

/// Registers flattened gradients, in visiting order, under the visited module's parameter ids.
struct Assign<I> {
    grads: I,
    out: GradientsParams,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleVisitor for Assign<I> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.grads.next().expect("one gradient per parameter");
        self.out.register::<D>(param.id, grad.reshape(param.shape()));
    }
}

/// The parameters in visiting order, flattened (a module's visit order is fixed by its type).
#[derive(Default)]
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Stochastic weight averaging (Izmailov et al. 2018): the plain mean of snapshots of one run,
/// taken where each cycle of the learning rate has decayed, lands in a flatter region of the loss
/// than any one of them. A running mean is an EMA whose decay grows: θ̄_k = (k−1)/k · θ̄_{k−1} + θ_k / k.
pub fn average(models: Vec<UNet>) -> UNet {
    let mut models = models.into_iter();
    let mut mean = models.next().expect("at least one model to average");
    for (model, k) in models.zip(2..) {
        let mut current = Flatten::default();
        model.visit(&mut current);
        let mut update = EmaUpdate { current: current.0.into_iter(), decay: (k - 1) as f64 / k as f64 };
        mean = mean.map(&mut update);
    }
    mean
}

struct EmaUpdate<I> {
    current: I,
    decay: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for EmaUpdate<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let theta = self.current.next().expect("EMA and model have the same parameters");
        let (id, avg, _) = param.consume();
        let shape = avg.shape();
        let theta = theta.reshape(shape);
        Param::initialized(id, avg.mul_scalar(self.decay) + theta.mul_scalar(1.0 - self.decay))
    }
}
