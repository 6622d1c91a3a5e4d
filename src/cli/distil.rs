//! `ddpm distil`: a student that gives the guided prediction in one pass (Meng et al. 2023,
//! stage 1), then samples in half its teacher's steps (stage 2, `--teacher-steps`), trained like
//! `ddpm train` (progress, EMA, atomic checkpoints, exact resume, Ctrl-C, `--backend wgpu`) from a
//! class-conditional weights file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::{ArgMatches, Args};
use sha2::{Digest, Sha256};

use super::train::{RunArgs, drive, refuse_changes};
use ddpm::data;
use ddpm::train::{DistilConfig, TrainConfig, Trainer};

/// The learning rate of a new distillation run when none is given: the student starts from the
/// teacher's weights and needs only to learn w, so half the training rate.
const DEFAULT_LR: f64 = 1e-4;
/// Steps of a new distillation run when none are given.
const DEFAULT_STEPS: usize = 4_000;

#[derive(Args)]
pub struct DistilArgs {
    /// The class-conditional weights file to distil (the teacher), e.g. weights/mnist.safetensors.
    #[arg(long, required_unless_present = "resume")]
    teacher: Option<PathBuf>,
    /// The images x₀ is drawn from [default: the data the teacher was trained on, from its file].
    #[arg(long)]
    data: Option<String>,
    /// The smallest guidance strength the student learns (w = 0: the unconditional prediction).
    #[arg(long, default_value_t = 0.0)]
    w_min: f64,
    /// The largest guidance strength the student learns; the page's slider keeps to the range.
    #[arg(long, default_value_t = 4.0)]
    w_max: f64,
    /// Stage 2: the teacher is a student (it takes w) drawn by DDIM η = 0 over N trailing steps;
    /// the new student learns to take one step where it takes two, and is drawn over N/2.
    #[arg(long)]
    teacher_steps: Option<usize>,
    /// The share of items drawn as "no class" (∅), for which the student learns ε(∅).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    /// Stage 1: a student this many channels wide at its first level (every level's width scales
    /// with it), trained from scratch instead of starting as the teacher: a cheaper model for the
    /// page's live controls (a pass costs about the square of the width); the teacher's own width
    /// starts as the teacher. The rest of its architecture is the teacher's. [default: the
    /// teacher's]
    #[arg(long, conflicts_with = "teacher_steps")]
    base_channels: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
}

pub fn run(a: DistilArgs, given: &ArgMatches) -> Result<()> {
    let (device, ckpt) = a.run.open()?;
    let mut trainer = if a.run.resume { resumed(&a, given, &ckpt, &device)? } else { fresh(&a, &ckpt, &device)? };
    let dataset = data::load(&trainer.train.data, trainer.unet.image_channels, trainer.unet.image_size)?;
    let d = trainer.train.distil.as_ref().expect("a distillation run has a teacher");
    let stage = match d.teacher_steps {
        Some(n) => format!("stage 2, its {n} DDIM steps into {}", n / 2),
        None => "stage 1".to_string(),
    };
    eprintln!(
        "distilling {} ({stage}; w in {}..{}) on {} images, steps {}..{}",
        d.teacher,
        d.w_min,
        d.w_max,
        dataset.len(),
        trainer.step,
        trainer.train.steps
    );
    drive(&mut trainer, &dataset, &a.run)
}

fn fresh(a: &DistilArgs, ckpt: &Path, device: &burn::tensor::Device) -> Result<Trainer> {
    a.run.ensure_new(ckpt)?;
    let path = a.teacher.as_ref().expect("clap requires --teacher without --resume");
    let bytes = std::fs::read(path).with_context(|| format!("reading the teacher {}", path.display()))?;
    let (teacher, header) = super::load_weights(path, &device.clone().autodiff())?;
    let stage2 = a.teacher_steps.is_some();
    ensure!(
        teacher.num_classes().is_some() && teacher.takes_guidance() == stage2,
        "--teacher {}: {}",
        path.display(),
        if stage2 {
            "stage 2 (--teacher-steps) distils a student: a class-conditional model with a guidance input"
        } else {
            "stage 1 needs a class-conditional model without a guidance input (a student: stage 2, --teacher-steps)"
        }
    );
    ensure!(
        header.schedule.data_range.is_paper(),
        "--teacher {}: its data lives in [{}, {}]; distillation draws x₀ from our data sets, in [−1, 1]",
        path.display(),
        header.schedule.data_range.lo,
        header.schedule.data_range.hi
    );
    // A student learnt w over its own range only (its file's `student`).
    if let Some(d) = &header.student
        && (a.w_min < d.w_min || a.w_max > d.w_max)
    {
        bail!(
            "--w-min/--w-max {}..{} reach beyond the range the teacher {} learnt, {}..{}",
            a.w_min,
            a.w_max,
            path.display(),
            d.w_min,
            d.w_max
        );
    }
    let trained_on = || -> Option<String> {
        let train: TrainConfig = serde_json::from_str(header.info.get("train")?).ok()?;
        Some(train.data)
    };
    let data =
        a.data.clone().or_else(trained_on).with_context(|| {
            format!("--data: the teacher {} does not name the data it was trained on", path.display())
        })?;
    let train = TrainConfig {
        data,
        label_dropout: a.label_dropout,
        class_names: header.class_names(),
        distil: Some(DistilConfig {
            teacher: path.to_string_lossy().into_owned(),
            teacher_sha256: format!("{:x}", Sha256::digest(&bytes)),
            w_min: a.w_min,
            w_max: a.w_max,
            teacher_steps: a.teacher_steps,
        }),
        ..a.run.recipe(DEFAULT_STEPS, DEFAULT_LR)
    };
    let base_channels = a.base_channels.unwrap_or(header.unet.base_channels);
    let student = ddpm::unet::UNetConfig { guidance_input: true, base_channels, ..header.unet.clone() };
    let mut trainer = Trainer::new(student, header.schedule.clone(), train, device)?;
    // A student of the teacher's width starts as the teacher (Salimans & Ho: from the teacher's
    // weights; stage 1 adds the w input); a narrower one from its own random weights.
    if base_channels == header.unet.base_channels {
        trainer.start_from(if stage2 { teacher } else { teacher.with_guidance_input() });
    }
    Ok(trainer)
}

/// A resumed run keeps its teacher, data, w range and ∅ share besides what every run keeps.
fn resumed(a: &DistilArgs, given: &ArgMatches, ckpt: &Path, device: &burn::tensor::Device) -> Result<Trainer> {
    let mut t = Trainer::load(ckpt, device)?;
    let d = t.train.distil.clone().with_context(|| {
        format!("{} is a training run, not a distillation: continue it with `ddpm train --resume`", ckpt.display())
    })?;
    let teacher = a.teacher.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let r = &t.train;
    let steps = |n: Option<usize>| n.map_or_else(|| "none (stage 1)".to_string(), |n| n.to_string());
    let fixed = [
        ("teacher", teacher, d.teacher.clone()),
        ("data", a.data.clone().unwrap_or_default(), r.data.clone()),
        ("w_min", a.w_min.to_string(), d.w_min.to_string()),
        ("w_max", a.w_max.to_string(), d.w_max.to_string()),
        ("label_dropout", a.label_dropout.to_string(), r.label_dropout.to_string()),
        ("teacher_steps", steps(a.teacher_steps), steps(d.teacher_steps)),
        ("base_channels", a.base_channels.unwrap_or_default().to_string(), t.unet.base_channels.to_string()),
    ];
    refuse_changes(given, ckpt, fixed.into_iter().chain(a.run.fixed(r)))?;
    a.run.resume_changes(&mut t.train)?;
    Ok(t)
}
