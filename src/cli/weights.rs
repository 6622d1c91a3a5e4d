//! `ddpm export` and `ddpm average`: weights files from a run's checkpoint or from snapshots.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use burn::tensor::Device;
use clap::Args;

use super::{load_weights, write_weights};
use ddpm::solvers::{SamplerChoice, SolverKind};
use ddpm::train::{Trainer, checkpoint_path};

#[derive(Args)]
pub struct ExportArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Output file, e.g. weights/mnist.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Store half-precision weights (half the size; what the page loads).
    #[arg(long)]
    f16: bool,
    /// The sampler `ddpm sample` and the page use for this model when none is asked for (the
    /// file's own default: `ddpm`, `ddim` or `dpm++2m`) [default: none, the library's].
    #[arg(long)]
    default_sampler: Option<SolverKind>,
    /// The evaluations of --default-sampler [default: the sampler's own].
    #[arg(long, requires = "default_sampler")]
    default_steps: Option<usize>,
    /// DDIM's η of --default-sampler.
    #[arg(long, requires = "default_sampler")]
    default_eta: Option<f64>,
}

#[derive(Args)]
pub struct AverageArgs {
    /// Two or more weights files of the same model, from `ddpm export` (f32 keeps the mean exact).
    #[arg(required = true, num_args = 2..)]
    weights: Vec<PathBuf>,
    /// Output file, e.g. weights/mnist.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Store half-precision weights (half the size; what the page loads).
    #[arg(long)]
    f16: bool,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let trainer = Trainer::load(&checkpoint_path(&a.run), &Device::flex())?;
    let mut header = trainer.header();
    if let Some(solver) = a.default_sampler {
        let choice = SamplerChoice { solver: Some(solver), steps: a.default_steps, eta: a.default_eta, spacing: None };
        let sampler = choice.resolve(None, header.schedule.steps).map_err(|e| {
            let field = if e.field == "solver" { "sampler" } else { e.field };
            anyhow::anyhow!("--default-{field}: {}", e.message)
        })?;
        header.sampler = Some(sampler);
    }
    let size = write_weights(&a.out, &trainer.ema, &header, a.f16)?;
    eprintln!("wrote {} ({size} bytes, EMA weights at step {})", a.out.display(), trainer.step);
    Ok(())
}

pub fn average(a: AverageArgs) -> Result<()> {
    let device = Device::flex();
    let snapshots = a.weights.iter().map(|p| load_weights(p, &device)).collect::<Result<Vec<_>>>()?;
    let first = &snapshots[0].1;
    for ((_, header), path) in snapshots.iter().zip(&a.weights).skip(1) {
        ensure!(
            (&header.unet, &header.schedule) == (&first.unet, &first.schedule),
            "{} holds a different model or schedule than {}: only snapshots of one model can be averaged",
            path.display(),
            a.weights[0].display()
        );
    }
    let steps: Vec<&str> =
        snapshots.iter().map(|(_, h)| h.info.get("train_steps").map_or("?", String::as_str)).collect();
    let steps = steps.join(",");
    // The last snapshot's training metadata, plus the steps of all of them.
    let mut header = snapshots.last().expect("clap requires two files or more").1.clone();
    header.info.insert("averaged_train_steps".into(), steps.clone());
    let mean = ddpm::train::average(snapshots.into_iter().map(|(m, _)| m).collect());
    let size = write_weights(&a.out, &mean, &header, a.f16)?;
    eprintln!("wrote {} ({size} bytes, the mean of the weights at steps {steps})", a.out.display());
    Ok(())
}
