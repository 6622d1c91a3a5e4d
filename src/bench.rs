//! `ddpm bench`: the UNet forward pass, one training step and one sampling step, timed the
//! same way as `../shared/ref/torch_bench.py` (warm-up, then the median of up to `reps` calls
//! within a time budget) and printed as the same JSON lines, so the two compare side by side.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::data::Dataset;
use crate::diffusion::{Diffusion, ScheduleConfig};
use crate::noise::Noise;
use crate::sampler::{EpsTheta, Sampler};
use crate::solvers::SamplerConfig;
use crate::threads::Sharded;
use crate::train::{TrainConfig, Trainer};
use crate::unet::UNetConfig;

pub struct Options<'a> {
    pub reps: usize,
    pub max_seconds: f64,
    pub only: Vec<&'a str>,
    /// Threads that share a batch: sampling's [`Sharded`], training's [`TrainConfig::shards`].
    pub shards: usize,
}

/// Calls `f` to warm up, then times up to `reps` calls (at least 3) within `max_seconds`.
/// `f` must block until its result is computed (it reads a value back).
fn time_call(mut f: impl FnMut(), reps: usize, max_seconds: f64) -> Vec<f64> {
    let t0 = Instant::now();
    f();
    let mut per_call = t0.elapsed().as_secs_f64();
    if per_call < max_seconds / 4.0 {
        let t0 = Instant::now();
        f();
        per_call = t0.elapsed().as_secs_f64();
    }
    let budget = (max_seconds / per_call.max(1e-9)) as usize;
    let n = if budget >= reps { reps } else { budget.max(reps.min(3)) };
    (0..n)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Forces the computation behind `x` by reading one value back.
fn sync(x: Tensor<4>) {
    let _ = x.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>();
}

/// The CPU's model name (Linux's /proc/cpuinfo), else its architecture: every figure says which
/// CPU it comes from, since the kernels' lead over PyTorch differs from one to another.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs the measurements on `device`, handing each JSON line to `emit`; stops at the first
/// line it cannot take (stdout closed: `ddpm bench | head -1`).
pub fn run(
    backend: &str,
    unet: &UNetConfig,
    schedule: &ScheduleConfig,
    device: &Device,
    opts: &Options,
    emit: &mut dyn FnMut(String) -> std::io::Result<()>,
) -> Result<()> {
    let model = unet.init(device);
    let params = model.num_params();
    let config = format!(
        "img{c}x{s}x{s} base{} mults{} attn{} blocks{}",
        unet.base_channels,
        unet.channel_mults.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(","),
        unet.attn.iter().map(|&a| (a as u8).to_string()).collect::<Vec<_>>().join(","),
        unet.blocks,
        c = unet.image_channels,
        s = unet.image_size
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (cpu, kernels) = (cpu_model(), crate::kernels::simd_path());
    // The network's floating-point operations per call (`UNet::flops`): one forward pass, and
    // for a training step three (the backward pass's two products per layer, ∂x and ∂W, each
    // as large as the forward one), so that GFLOP/s shows the distance to the CPU's peak.
    let flops =
        |what: &str, batch: usize| model.flops(batch, unet.image_size) * if what == "train_step" { 3.0 } else { 1.0 };
    let mut report = |what: &str, batch: usize, times: Vec<f64>| {
        let ms = median(times.clone());
        let line = serde_json::json!({
            "backend": backend, "what": what, "batch": batch,
            "ms": (ms * 1e3).round() / 1e3,
            "gflops": (flops(what, batch) / ms / 1e6 * 1e3).round() / 1e3,
            "min_ms": times.iter().copied().fold(f64::INFINITY, f64::min),
            "max_ms": times.iter().copied().fold(0.0, f64::max),
            "n": times.len(), "params": params, "threads": threads, "config": config,
            "cpu": cpu, "kernels": kernels,
        });
        emit(line.to_string()).context("writing the measurements")
    };
    let diffusion = Diffusion::new(schedule.clone());
    let eps_theta = Sharded::new(&model, opts.shards);
    let shape = [unet.image_channels, unet.image_size, unet.image_size];
    let mut noise = Noise::new(0);

    if opts.only.contains(&"forward") {
        for b in [1, 16, 64] {
            let x = noise.gaussian([b, shape[0], shape[1], shape[2]], device);
            let t = diffusion.t_tensor(diffusion.steps() / 2, b, device);
            report("forward", b, time_call(|| sync(eps_theta.eps(x.clone(), t.clone())), opts.reps, opts.max_seconds))?;
        }
    }
    if opts.only.contains(&"train_step") {
        let b = 64;
        let data = Dataset { shape, pixels: noise.gaussian_vec(b * shape.iter().product::<usize>()), labels: None };
        let train = TrainConfig {
            steps: usize::MAX,
            batch_size: b,
            warmup: 1,
            shards: opts.shards.min(b),
            data: "bench".into(),
            ..TrainConfig::default()
        };
        let mut trainer = Trainer::new(unet.clone(), schedule.clone(), train, device)?;
        // A step reads its loss and gradient norm back, so it is complete when it returns.
        let times =
            time_call(|| drop(trainer.step(&data).expect("finite loss on random data")), opts.reps, opts.max_seconds);
        report("train_step", b, times)?;
    }
    if opts.only.contains(&"sample_step") {
        // Batch 16 is the yardstick's; 1, 4 and 16 are the page's image counts.
        for b in [1, 4, 16] {
            let seeds: Vec<u64> = (0..b as u64).collect();
            let ddpm = SamplerConfig::ddpm(diffusion.steps());
            let start = || Sampler::new(&diffusion, &ddpm, shape, &seeds, device);
            let mut sampler = start();
            let times = time_call(
                || {
                    // More calls than T steps start the reverse process again (a median ignores
                    // the one call that also draws the new x_T).
                    if sampler.is_done() {
                        sampler = start();
                    }
                    sampler.step(&eps_theta).expect("a sampler that is not done takes a step");
                    sync(sampler.x().clone());
                },
                opts.reps,
                opts.max_seconds,
            );
            report("sample_step", b, times)?;
        }
    }
    Ok(())
}
