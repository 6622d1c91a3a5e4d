//! `ddpm export` and `ddpm average`: weights files from a run's checkpoint or from snapshots.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use burn::tensor::Device;
use clap::Args;

use super::{load_weights, write_weights};
use ddpm::solvers::{SamplerChoice, SolverKind};
use ddpm::train::{Trainer, checkpoint_path};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["run", "weights"])))]
#[command(group(clap::ArgGroup::new("to").required(true).args(["out", "labml"])))]
pub struct ExportArgs {
    /// Run folder written by `ddpm train` (its EMA weights).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Or a weights file (for --labml).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Output file, e.g. weights/mnist.safetensors.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Or a labml-shaped file: labml's keys and shapes, loaded in PyTorch by `labml_nn`'s
    /// `UNet(**args)` with `load_state_dict(safetensors.torch.load_file(FILE), strict=True)`
    /// (the constructor's arguments are in its metadata, `labml_unet`). Always f32.
    #[arg(long, conflicts_with_all = ["f16", "default_sampler", "default_guidance"])]
    labml: Option<PathBuf>,
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
    /// The guidance strength `ddpm sample` and the page use for this class-conditional model
    /// when none is asked for (the file's own default) [default: none, the library's].
    #[arg(long)]
    default_guidance: Option<f64>,
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
    let device = Device::flex();
    let (model, mut header, what) = match (&a.run, &a.weights) {
        (Some(run), _) => {
            let trainer = Trainer::load(&checkpoint_path(run), &device)?;
            let what = format!("EMA weights at step {}", trainer.step);
            (trainer.ema.clone(), trainer.header(), what)
        }
        (None, Some(path)) => {
            let (model, header) = load_weights(path, &device)?;
            (model, header, format!("the weights of {}", path.display()))
        }
        (None, None) => unreachable!("clap requires --run or --weights"),
    };
    if let Some(path) = &a.labml {
        let args = ddpm::labml::labml_unet_args(&header.unet)
            .map_err(|e| anyhow::anyhow!("labml's UNet cannot compute this model: {e}"))?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("labml_unet".to_string(), serde_json::to_string(&args)?);
        metadata.insert("data_range".to_string(), serde_json::to_string(&header.schedule.data_range)?);
        let bytes = ddpm::weights::module_to_safetensors(&model, metadata, ddpm::weights::Precision::F32)?;
        ddpm::atomic_write::atomic_write(path, &bytes)?;
        eprintln!("wrote {} ({} bytes, {what}): labml_nn's UNet({})", path.display(), bytes.len(), labml_call(&args));
        return Ok(());
    }
    let out = a.out.as_ref().expect("clap requires --out or --labml");
    if let Some(solver) = a.default_sampler {
        let choice = SamplerChoice { solver: Some(solver), steps: a.default_steps, eta: a.default_eta, spacing: None };
        let sampler = choice.resolve(None, header.schedule.steps).map_err(|e| {
            let field = if e.field == "solver" { "sampler" } else { e.field };
            anyhow::anyhow!("--default-{field}: {}", e.message)
        })?;
        header.sampler = Some(sampler);
    }
    if let Some(w) = a.default_guidance {
        header.guidance = Some(w);
        header.check_guidance().map_err(|e| anyhow::anyhow!("--default-{e}"))?;
    }
    let size = write_weights(out, &model, &header, a.f16)?;
    eprintln!("wrote {} ({size} bytes, {what})", out.display());
    Ok(())
}

/// labml's constructor call, as a reader would type it in Python.
fn labml_call(a: &ddpm::labml::LabmlUNetArgs) -> String {
    let py = |b: &bool| if *b { "True" } else { "False" };
    format!(
        "image_channels={}, n_channels={}, ch_mults={:?}, is_attn=[{}], n_blocks={}",
        a.image_channels,
        a.n_channels,
        a.ch_mults,
        a.is_attn.iter().map(py).collect::<Vec<_>>().join(", "),
        a.n_blocks
    )
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
