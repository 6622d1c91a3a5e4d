//! One training run in progress: Algorithm 1's step (x₀, t and ε drawn for the batch, the loss
//! ‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t)‖² on its shards, Adam with warm-up and global-norm
//! clipping) and the moving average of the weights; in a distillation run (`ddpm distil`) the
//! target is the guided teacher's prediction at the same x_t instead of ε (stage 1), or the ε
//! that takes one step where the teacher takes two (stage 2, [`super::progressive`]).

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::averaging::ema_update;
use super::config::{DistilConfig, TrainConfig};
use super::progressive::Halving;
use super::shards::{Replica, Shard, summed_gradients};
use crate::data::Dataset;
use crate::diffusion::{Diffusion, ScheduleConfig};
use crate::noise::{Noise, NoiseState};
use crate::threads::{run_all, shard_ranges};
use crate::unet::{ClassMix, UNet, UNetConfig};
use crate::weights::{Header, Student};

/// Everything a checkpoint holds besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub step: usize,
    pub unet: UNetConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    pub noise: NoiseState,
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
    pub(super) optim: ModuleOptimizer,
    pub(super) noise: Noise,
    device: Device,
    /// A distillation run's teacher, on the plain device.
    teacher: Option<UNet>,
    /// Stage 2's grids: the teacher's and the student's.
    halving: Option<Halving>,
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
        let teacher = match &train.distil {
            Some(d) => Some(load_teacher(d, &unet, &schedule, device)?),
            None => None,
        };
        let diffusion = Diffusion::new(schedule.clone());
        let halving = match train.distil.as_ref().and_then(|d| d.teacher_steps) {
            Some(n) => Some(Halving::new(n, &diffusion).map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(Self {
            diffusion,
            unet,
            schedule,
            optim: AdamConfig::new().with_epsilon(1e-8).init(),
            train,
            step: 0,
            model,
            ema,
            noise,
            device: device.clone(),
            teacher,
            halving,
        })
    }

    /// One optimiser step on a random batch of `data` (Algorithm 1, lines 2-5).
    pub fn step(&mut self, data: &Dataset) -> Result<StepStats> {
        let ad = self.device.clone().autodiff();
        // x₀ ~ q(x₀), t ~ U{0..T−1}, ε ~ N(0, I): drawn here, on the CPU, for the whole batch.
        let b = self.train.batch_size;
        let (x0, items) = data.random_batch(b, self.train.flip, &mut self.noise, &ad);
        let t: Vec<usize> = match &self.halving {
            Some(h) => h.draw_t(b, &mut self.noise),
            None => (0..b).map(|_| self.noise.below(self.diffusion.steps())).collect(),
        };
        let eps = self.noise.gaussian(x0.dims(), &ad);
        let classes = match self.unet.num_classes {
            Some(null) => Some(self.draw_classes(data, &items, null)?),
            None => None,
        };
        let teacher = self.teacher_targets(&x0, &t, classes.as_deref(), &eps)?;

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
                    teacher: teacher.as_ref().map(|(eps_tilde, w)| {
                        (eps_tilde.clone().narrow(0, items.start, items.len()), w[items.clone()].to_vec())
                    }),
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
        let mut grads = summed_gradients(&self.model, results.into_iter().map(|(_, grads)| grads));
        let grad_norm = clip_global_norm(&self.model, &mut grads, self.train.grad_clip);
        let lr = self.train.lr_at(self.step);
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.ema = ema_update(self.ema.clone(), &self.model.valid(), self.train.ema_at(self.step));
        self.step += 1;
        Ok(StepStats { loss: loss_value, grad_norm, lr })
    }

    /// A distillation step's targets: each item's w, drawn uniformly from the run's range, and
    /// the student's target at the item's x_t, computed on the plain device over the batch's
    /// shards at once and brought to the autodiff device: the guided teacher's ε̃ (stage 1) or
    /// the ε of the teacher's two steps in one (stage 2). None when training.
    fn teacher_targets(
        &mut self,
        x0: &Tensor<4>,
        t: &[usize],
        classes: Option<&[usize]>,
        eps: &Tensor<4>,
    ) -> Result<Option<(Tensor<4>, Vec<f32>)>> {
        let (Some(teacher), Some(d)) = (self.teacher.as_ref(), self.train.distil.as_ref()) else { return Ok(None) };
        const ONE: usize = 1 << 24;
        let w: Vec<f32> = (0..t.len())
            .map(|_| (d.w_min + (d.w_max - d.w_min) * self.noise.below(ONE) as f64 / ONE as f64) as f32)
            .collect();
        let plain = |x: &Tensor<4>| Tensor::<4>::from_data(x.clone().into_data(), &self.device);
        let null = self.unet.num_classes.expect("a student is class-conditional");
        let classes = classes.expect("a student is class-conditional");
        let shards = self.train.shards;
        let x_t = self.diffusion.q_sample(plain(x0), t, plain(eps));
        let target = match &self.halving {
            Some(h) => {
                let mixes: Vec<ClassMix> = classes.iter().map(|&c| c.into()).collect();
                let (diffusion, device) = (&self.diffusion, &self.device);
                h.targets(diffusion, x_t, t, |x, t, items| {
                    let t = diffusion.t_tensor(t, items.len(), device);
                    sharded_pass(teacher, shards, x, t, &mixes[items.clone()], Some(&w[items]))
                })
                .map_err(anyhow::Error::msg)?
            }
            None => self
                .diffusion
                .guided_teacher(x_t, t, classes, null, &w, |x, t, c| sharded_pass(teacher, shards, x, t, &c, None)),
        };
        Ok(Some((Tensor::from_data(target.into_data(), &x0.device()), w)))
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
        let sampler = self.halving.as_ref().map(Halving::student_sampler);
        let student = self.train.distil.as_ref().map(|d| Student {
            w_min: d.w_min,
            w_max: d.w_max,
            grid_only: d.teacher_steps.is_some(),
        });
        Header {
            unet: self.unet.clone(),
            schedule: self.schedule.clone(),
            sampler,
            student,
            guidance: None,
            info: info.collect(),
        }
    }
}

/// The teacher's pass over a batch (class mixes `c`, guidance `w` for a teacher that takes it),
/// its shards on as many threads.
fn sharded_pass(
    teacher: &UNet,
    shards: usize,
    x: Tensor<4>,
    t: Tensor<1>,
    c: &[ClassMix],
    w: Option<&[f32]>,
) -> Tensor<4> {
    let batch = x.dims()[0];
    let jobs: Vec<_> = shard_ranges(batch, shards.min(batch))
        .into_iter()
        .map(|items| {
            let (x, t) = (x.clone().narrow(0, items.start, items.len()), t.clone().narrow(0, items.start, items.len()));
            let c = c[items.clone()].to_vec();
            let w = w.map(|w| w[items].to_vec());
            move || teacher.forward_condition(x, t, Some(&c), w.as_deref())
        })
        .collect();
    Tensor::cat(run_all(jobs), 0)
}

/// The teacher of a distillation run: its weights file, checked against the run's record of
/// it (its bytes' SHA-256 and its schedule) and against the student: stage 2's student starts as
/// its teacher, so their architectures are one; stage 1's may be narrower (trained from scratch,
/// a cheaper model for the page), but draws the same images of the same classes.
fn load_teacher(d: &DistilConfig, student: &UNetConfig, schedule: &ScheduleConfig, device: &Device) -> Result<UNet> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(&d.teacher).with_context(|| format!("reading the teacher {}", d.teacher))?;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    ensure!(
        sha == d.teacher_sha256,
        "the teacher {} changed since the run started (SHA-256 {sha}, the run's {}): distil from the file it started with",
        d.teacher,
        d.teacher_sha256
    );
    let (teacher, header) =
        crate::weights::load(&bytes, device).with_context(|| format!("the teacher {}", d.teacher))?;
    // Stage 1's teacher has no guidance input; stage 2's is a student, which takes w.
    let t = &header.unet;
    let (fits, what) = if d.teacher_steps.is_some() {
        let same = *t == UNetConfig { guidance_input: true, ..student.clone() };
        (same, "the student's architecture and schedule (stage 2 distils a student, which takes w)")
    } else {
        let images = |u: &UNetConfig| (u.image_channels, u.image_size, u.num_classes);
        (
            images(t) == images(student) && !t.guidance_input,
            "of the student's image size, channels, classes and schedule",
        )
    };
    ensure!(fits && &header.schedule == schedule, "the teacher {} is not {what}", d.teacher);
    if let (Some(n), Some(own)) = (d.teacher_steps, &header.sampler) {
        ensure!(
            *own == crate::solvers::SamplerConfig::ddim(n, 0.0),
            "the teacher {} is drawn with {}, not DDIM η = 0 over {n} steps: distil the sampler it was made for",
            d.teacher,
            own.describe()
        );
    }
    ensure!(teacher.num_classes().is_some(), "the teacher {} is not class-conditional: nothing to distil", d.teacher);
    Ok(teacher)
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
