//! The training loop around [`Trainer::step`]: the run folder's log, checkpoints and sample
//! grids, and an [`Observer`] that is told every step and may ask to stop (the CLI's progress
//! bar and Ctrl-C; a test's counter).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;

use super::trainer::{StepStats, Trainer};
use crate::atomic_write::atomic_write;
use crate::data::Dataset;
use crate::diffusion::Diffusion;
use crate::images::{DataRange, Grid};
use crate::solvers::SamplerConfig;
use crate::threads::Sharded;
use crate::unet::UNetConfig;

/// Where and how often a run writes.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// The run folder: `checkpoint.ddpm`, `log.jsonl`, `samples/step_N.png`.
    pub out: PathBuf,
    /// A checkpoint every N steps (and always at the end or a stop).
    pub checkpoint_every: usize,
    /// A grid of EMA samples every N steps; 0: none.
    pub sample_every: usize,
    /// Threads that share a sample grid's batch.
    pub shards: usize,
}

/// What the loop tells its caller; every method has a default that does nothing.
pub trait Observer {
    /// After each step (`trainer.step` is the one just done), with the loss smoothed over about
    /// 50 steps.
    fn step(&mut self, _trainer: &Trainer, _stats: &StepStats, _smoothed_loss: f64) {}
    /// Asked before every step: true saves a checkpoint and ends the run.
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// A checkpoint of step `step` was written.
    fn checkpoint(&mut self, _step: usize) {}
    /// A sample grid was written.
    fn sample_grid(&mut self, _path: &Path) {}
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached its target; the last checkpoint holds it.
    Finished,
    /// The observer asked it to stop; the checkpoint holds this step.
    Stopped { step: usize },
}

/// The checkpoint of the run in `out`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.ddpm")
}

/// Trains up to `trainer.train.steps`. The log is the checkpoint's: lines past its step (left
/// by a killed run, which the resumed one does again) are dropped first, so it reads as one run.
pub fn fit(trainer: &mut Trainer, data: &Dataset, opts: &FitOptions, observer: &mut impl Observer) -> Result<Outcome> {
    let ckpt = checkpoint_path(&opts.out);
    let samples = opts.out.join("samples");
    std::fs::create_dir_all(&samples).with_context(|| format!("creating {}", samples.display()))?;
    let log_path = opts.out.join("log.jsonl");
    trim_log(&log_path, trainer.step)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let started = Instant::now();
    let mut smooth = None::<f64>;
    while trainer.step < trainer.train.steps {
        if observer.stop_requested() {
            trainer.save(&ckpt)?;
            observer.checkpoint(trainer.step);
            return Ok(Outcome::Stopped { step: trainer.step });
        }
        let stats = trainer.step(data)?;
        let loss = smooth.map_or(stats.loss, |s| 0.98 * s + 0.02 * stats.loss);
        smooth = Some(loss);
        // One write per line, so that a kill leaves at most one partial line (which a resume drops).
        let line = format!(
            "{{\"step\":{},\"loss\":{},\"grad_norm\":{:.4},\"lr\":{:e},\"seconds\":{:.1}}}\n",
            trainer.step,
            stats.loss,
            stats.grad_norm,
            stats.lr,
            started.elapsed().as_secs_f64()
        );
        log.write_all(line.as_bytes()).with_context(|| format!("writing {}", log_path.display()))?;
        observer.step(trainer, &stats, loss);
        if trainer.step % opts.checkpoint_every == 0 {
            trainer.save(&ckpt)?;
            observer.checkpoint(trainer.step);
        }
        if opts.sample_every > 0 && trainer.step % opts.sample_every == 0 {
            let path = samples.join(format!("step_{:06}.png", trainer.step));
            let eps_theta = Sharded::new(&trainer.ema, opts.shards);
            sample_grid(&eps_theta, &trainer.diffusion, &trainer.unet, trainer.device(), &path)?;
            observer.sample_grid(&path);
        }
    }
    trainer.save(&ckpt)?;
    observer.checkpoint(trainer.step);
    Ok(Outcome::Finished)
}

/// Keeps the log lines up to `step`; a line cut short by a kill does not parse and goes too.
fn trim_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    if text.is_empty() {
        return Ok(());
    }
    let logged_step = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok()?["step"].as_u64();
    let kept: Vec<&str> = text.lines().filter(|l| logged_step(l).is_some_and(|s| s as usize <= step)).collect();
    if kept.len() == text.lines().count() && text.ends_with('\n') {
        return Ok(());
    }
    let body = if kept.is_empty() { String::new() } else { kept.join("\n") + "\n" };
    atomic_write(path, body.as_bytes())
}

/// 16 EMA samples (DDIM, 50 steps, seeds 0..16) as a 4×4 grid: a progress picture.
fn sample_grid(
    eps_theta: &Sharded,
    diffusion: &Diffusion,
    cfg: &UNetConfig,
    device: &Device,
    path: &Path,
) -> Result<()> {
    let ddim = SamplerConfig::ddim(50.min(diffusion.steps()), 0.0);
    let shape = [cfg.image_channels, cfg.image_size, cfg.image_size];
    let seeds: Vec<u64> = (0..16).collect();
    let x = crate::sampler::Sampler::new(diffusion, &ddim, shape, &seeds, device).run(eps_theta);
    let values = x.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data");
    Grid::new(&values, [16, shape[0], shape[1], shape[2]], 4, 2, DataRange::PAPER).save_png(path, 2)
}
