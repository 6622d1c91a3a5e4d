//! `ddpm bench`: JSON lines of the UNet's forward pass, a training step and a sampling step per
//! backend; wgpu only on a real GPU unless asked for.

use std::io::Write;

use anyhow::{Result, bail, ensure};
use clap::Args;

use super::{Backend, ModelArgs, gpu};
use ddpm::bench;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Backends to time (default: cpu, and wgpu when an adapter is found).
    #[arg(long, value_enum, value_delimiter = ',')]
    backend: Vec<Backend>,
    /// Timed calls per measurement (fewer when they would exceed --max-seconds).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Comma list of forward, train_step, sample_step.
    #[arg(long, default_value = "forward,train_step,sample_step")]
    only: String,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let (unet, schedule) = a.model.configs()?;
    ensure!(a.reps >= 1, "--reps must be at least 1");
    ensure!(a.max_seconds > 0.0 && a.max_seconds.is_finite(), "--max-seconds must be a positive number of seconds");
    let only: Vec<&str> = a.only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if let Some(bad) = only.iter().find(|w| !["forward", "train_step", "sample_step"].contains(w)) {
        bail!("--only: unknown measurement `{bad}`");
    }
    let backends = if a.backend.is_empty() { vec![Backend::Cpu, Backend::Wgpu] } else { a.backend.clone() };
    for backend in backends {
        let name = match backend {
            Backend::Cpu => "flex",
            Backend::Wgpu => "wgpu",
        };
        let device = match (backend, a.backend.is_empty()) {
            // Without --backend, wgpu is timed only on a real GPU: on a CPU emulation it takes
            // many minutes to say what the cpu line already says better.
            (Backend::Wgpu, true) => match gpu() {
                Ok((device, true, _)) => device,
                Ok((_, false, adapter)) => {
                    eprintln!(
                        "# skipping wgpu: no GPU, only a CPU emulation ({adapter}); --backend wgpu times it anyway"
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!("# skipping wgpu: {e}");
                    continue;
                }
            },
            _ => backend.device()?,
        };
        let opts =
            bench::Options { reps: a.reps, max_seconds: a.max_seconds, only: only.clone(), shards: backend.shards() };
        let mut stdout = std::io::stdout().lock();
        bench::run(name, &unet, &schedule, &device, &opts, &mut |line| {
            writeln!(stdout, "{line}").and_then(|()| stdout.flush())
        })?;
    }
    Ok(())
}
