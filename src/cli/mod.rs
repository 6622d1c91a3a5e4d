//! The commands' arguments and their mapping to library calls, one family a file; `main.rs`
//! only parses and dispatches. What every command shares is here: the backend, the model flags,
//! the sampler flags and reading and writing weights files.

pub mod bench;
pub mod distil;
pub mod eps;
pub mod eval;
pub mod import;
pub mod npy;
pub mod sample;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::tensor::{Device, Tensor};
use clap::{Args, ValueEnum};

use ddpm::atomic_write::atomic_write;
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::field_error::FieldError;
use ddpm::guidance::{DEFAULT_GUIDANCE, Guidance};
use ddpm::images::DataRange;
use ddpm::request::{CLI_BOUNDS, Model, Request, SampleRequest};
use ddpm::solvers::{SamplerChoice, SamplerConfig, SolverKind, Spacing};
use ddpm::threads::Sharded;
use ddpm::unet::{UNet, UNetConfig};
use ddpm::weights::{self as file, Header, Precision};

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    /// burn's flex CPU backend (the fastest CPU backend measured here).
    Cpu,
    /// burn-wgpu on the default GPU adapter (Vulkan/Metal/DX12).
    Wgpu,
}

impl Backend {
    pub fn device(self) -> Result<Device> {
        Ok(match self {
            Backend::Cpu => Device::flex(),
            Backend::Wgpu => gpu()?.0,
        })
    }

    /// How many threads share a batch by default (training's shards, the samplers' slices): one
    /// per CPU thread on flex, whose element-wise ops each run on one thread; one on wgpu, which
    /// spreads every op across the GPU already.
    pub fn shards(self) -> usize {
        match self {
            Backend::Cpu => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Backend::Wgpu => 1,
        }
    }
}

/// burn-wgpu's device on the default adapter, and whether that adapter is a real GPU rather than
/// a CPU emulation (llvmpipe, lavapipe, SwiftShader), with its name.
pub fn gpu() -> Result<(Device, bool, String)> {
    use burn::tensor::wgpu::wgpu::DeviceType;
    let (device, setup) =
        Device::wgpu_options().init_with_setup().map_err(|e| anyhow::anyhow!("no wgpu adapter: {e}"))?;
    let info = setup.adapter.get_info();
    Ok((device, info.device_type != DeviceType::Cpu, format!("{} ({:?})", info.name, info.backend)))
}

/// Model shape flags, shared by `train` and `bench`.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Image height = width (MNIST: 28).
    #[arg(long, default_value_t = 28)]
    pub image_size: usize,
    /// Image channels: 1 (gray) or 3 (RGB).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Width of the first UNet level.
    #[arg(long, default_value_t = 32)]
    pub base_channels: usize,
    /// Level widths as multiples of the base (paper semantics: width = base × mult).
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub channel_mults: Vec<usize>,
    /// Self-attention per level (0/1), same length as the multipliers.
    #[arg(long, default_value = "0,0,1", value_delimiter = ',')]
    pub attn: Vec<u8>,
    /// Residual blocks per level.
    #[arg(long, default_value_t = 1)]
    pub blocks: usize,
    /// GroupNorm groups (labml: 32; the width of every level must divide by it).
    #[arg(long, default_value_t = 32)]
    pub groups: usize,
    /// Dropout in residual blocks.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub diffusion_steps: usize,
    /// Whether attention normalises its input (the paper's code does); `false` trains labml's
    /// variant, which `ddpm export --labml` can hand to labml's UNet exactly.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub attn_norm: bool,
}

impl ModelArgs {
    pub fn configs(&self) -> Result<(UNetConfig, ScheduleConfig)> {
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
            num_classes: None,
            guidance_input: false,
            attn_norm: self.attn_norm,
            ..UNetConfig::default()
        };
        let schedule = ScheduleConfig { steps: self.diffusion_steps, ..ScheduleConfig::default() };
        unet.validate().map_err(anyhow::Error::msg)?;
        schedule.validate().map_err(anyhow::Error::msg)?;
        Ok((unet, schedule))
    }
}

/// How to run the reverse process.
#[derive(Args, Clone)]
pub struct SamplerArgs {
    /// Weights file from `ddpm export`.
    #[arg(long)]
    pub weights: PathBuf,
    /// The update rule: `ddpm` (the paper's Algorithm 2, all T steps), `ddim` (with --eta) or
    /// `dpm++2m` (DPM-Solver++(2M)) [default: the weights file's own, else the library's:
    /// docs/samplers.md].
    #[arg(long)]
    pub sampler: Option<SolverKind>,
    /// Network evaluations of a run from pure noise (SDEdit and labml's interpolation, which start
    /// lower, take proportionally fewer) [default: the sampler's].
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's η in [0, 1] (0: deterministic, 1: fresh noise every step, DDPM-like); refused for
    /// the other samplers, which have none [default: 0].
    #[arg(long)]
    pub eta: Option<f64>,
    /// Where the steps fall: `trailing` (even in t, ending on x₀) or `logsnr` (even in log-SNR,
    /// ending at t = 0) [default: the weights file's, else trailing].
    #[arg(long)]
    pub spacing: Option<Spacing>,
    /// Draw this class (a class-conditional model only; `any` or left out: from noise, each
    /// image as its seed's class, dealt so that each run of seeds from a multiple of the class
    /// count holds every class once; for `edit`, no class (∅); `all`, for `sample`: --count
    /// images of every class k into OUT/k/).
    #[arg(long)]
    pub class: Option<ClassArg>,
    #[arg(long, help = format!("Classifier-free guidance strength w of a conditional model (0: the ∅ row \
        alone, 1: the class's own prediction, more: closer to the class) [default: the weights file's own, \
        else {DEFAULT_GUIDANCE}]"))]
    pub guidance: Option<f64>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
}

/// A weights file loaded for sampling, with the class and guidance asked for.
pub struct Loaded {
    pub model: UNet,
    pub header: Header,
    pub diffusion: Diffusion,
    pub device: Device,
    /// --class (None: any), checked against the model.
    pub class: Option<usize>,
    /// --sampler, --steps, --eta, --spacing as given.
    pub sampler: SamplerChoice,
    /// The sampler they resolve to, for messages.
    pub config: SamplerConfig,
    /// --guidance as given (None: the default, for a conditional model).
    pub guidance: Option<f64>,
    /// Threads a batch is split over.
    pub shards: usize,
}

impl Loaded {
    /// What a request needs of the model.
    pub fn model(&self) -> Model<'_> {
        Model::of(&self.header, &self.diffusion, &self.device)
    }

    /// ε_θ on the threads, guided as a request's phase asks.
    pub fn eps_theta(&self, guidance: Option<&Guidance>) -> Sharded<'_> {
        Sharded::new(&self.model, self.shards).guided(guidance.cloned())
    }

    /// Runs a request to its end (the CLI's bounds) and returns its images.
    pub fn run(&self, request: &Request) -> Result<Tensor<4>> {
        let run = request.start(&self.model(), &CLI_BOUNDS).map_err(flag_error)?;
        Ok(run.finish(|g| self.eps_theta(g)))
    }

    /// A sample request run to its end from a given x_T.
    pub fn run_from(&self, request: &SampleRequest, x_big_t: Tensor<4>) -> Result<Tensor<4>> {
        let run = request.start_from(&self.model(), &CLI_BOUNDS, Some(x_big_t)).map_err(flag_error)?;
        Ok(run.finish(|g| self.eps_theta(g)))
    }

    /// [C, H, W] of the model's images.
    pub fn image(&self) -> [usize; 3] {
        self.model().image
    }

    /// Where the model's x₀ lives, for the pictures it writes.
    pub fn range(&self) -> DataRange {
        self.diffusion.data_range()
    }
}

/// A request's error, named by the flag that set the field.
pub fn flag_error(e: FieldError) -> anyhow::Error {
    let flag = match e.field {
        "solver" => "sampler",
        "count" | "frames" | "t" | "steps" | "eta" | "guidance" | "class" | "spacing" => e.field,
        "rgba" => "input",
        "x_t" => "x-t",
        "classes" => "class/--to-class",
        other => other,
    };
    anyhow::anyhow!("--{flag}: {}", e.message)
}

impl SamplerArgs {
    pub fn load(&self) -> Result<Loaded> {
        let device = self.backend.device()?;
        let (model, header) = load_weights(&self.weights, &device)?;
        let diffusion = Diffusion::new(header.schedule.clone());
        let sampler = SamplerChoice { solver: self.sampler, steps: self.steps, eta: self.eta, spacing: self.spacing };
        let config = sampler.resolve(header.sampler.as_ref(), diffusion.steps()).map_err(flag_error)?;
        let class = self.class()?;
        let w = self.guidance.unwrap_or(DEFAULT_GUIDANCE);
        Guidance::from_noise(class, &[], w, model.num_classes()).map_err(|e| match (e.field, class) {
            ("class", Some(class)) => anyhow::anyhow!("--class {class}: {}", e.message),
            _ => flag_error(e),
        })?;
        ensure!(
            self.guidance.is_none() || model.num_classes().is_some(),
            "--guidance: this model is unconditional: it has no classes to guide towards"
        );
        let shards = self.backend.shards();
        Ok(Loaded { model, header, diffusion, device, class, sampler, config, guidance: self.guidance, shards })
    }

    /// The one class asked for (None: any); `all` is refused but by `sample`.
    pub fn class(&self) -> Result<Option<usize>> {
        self.class.map_or(Ok(None), |c| c.single("--class all is for `ddpm sample`"))
    }
}

/// A class on the command line: its number, `any` or `all` (every class in turn).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClassArg {
    One(usize),
    Any,
    All,
}

impl ClassArg {
    /// One class or `any` (None); `all` is refused with `why`.
    pub fn single(self, why: &str) -> Result<Option<usize>> {
        match self {
            Self::One(k) => Ok(Some(k)),
            Self::Any => Ok(None),
            Self::All => anyhow::bail!("{why}: name one class or `any`"),
        }
    }
}

impl std::str::FromStr for ClassArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(Self::Any),
            "all" => Ok(Self::All),
            n => n.parse().map(Self::One).map_err(|_| format!("{n:?} is not a class number, `any` or `all`")),
        }
    }
}

/// Reads a weights file, naming it in any error.
pub fn load_weights(path: &Path, device: &Device) -> Result<(UNet, Header)> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    file::check_size(size).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    file::load(&bytes, device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Writes `model` as a weights file (atomically, creating its folder); returns its size.
pub fn write_weights(out: &Path, model: &UNet, header: &Header, f16: bool) -> Result<usize> {
    let precision = if f16 { Precision::F16 } else { Precision::F32 };
    let bytes = file::to_safetensors(model, header, precision)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    atomic_write(out, &bytes)?;
    Ok(bytes.len())
}

pub fn to_vec(x: Tensor<4>) -> Vec<f32> {
    x.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}
