//! What a user asks to draw, as the CLI and the page both ask it: one typed [`Request`] (sample,
//! interpolate, edit), checked once here against the model and the caller's [`Bounds`], and run
//! whole by [`Run`] (an interpolation's ends and frames are one run). Every rule that makes `ddpm
//! sample` and the page draw the same pixels (image i's seed, the λ grid, the interpolation's
//! noise seed, the sampler an interpolation runs and its class morph, the defaults that fill what
//! a request leaves out, the grid's columns) is here, once. A request is a value: the page may
//! run two at once, on two models, and after a lost GPU it runs the same value again.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::diffusion::Diffusion;
use crate::field_error::FieldError;
use crate::guidance::{DEFAULT_GUIDANCE, Guidance, prior_class};
use crate::images::DataRange;
use crate::limits;
use crate::sampler::{EpsTheta, Sampler, Step};
use crate::solvers::{SamplerChoice, SamplerConfig};
use crate::weights::{Header, Student};

/// The most images and interpolation frames one run may draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bounds {
    pub max_images: usize,
    pub max_frames: usize,
}

/// The page's bounds: one batch of images on the visitor's device, one batch of frames.
pub const PAGE_BOUNDS: Bounds = Bounds { max_images: 64, max_frames: 32 };
/// The CLI's: one sampling batch ([`limits::MAX_SAMPLE_BATCH`]).
pub const CLI_BOUNDS: Bounds = Bounds { max_images: limits::MAX_SAMPLE_BATCH, max_frames: limits::MAX_SAMPLE_BATCH };
/// The threaded CPU module's largest pool: beyond a batch's slices and each product's split,
/// more web workers only cost memory (each holds its own stack and scratch buffers).
pub const PAGE_MAX_THREADS: usize = 16;

/// What a request needs to know of the loaded model.
pub struct Model<'a> {
    pub diffusion: &'a Diffusion,
    /// [C, H, W] of its images.
    pub image: [usize; 3],
    /// Its classes (None: unconditional).
    pub num_classes: Option<usize>,
    /// The sampler its weights file names, if any.
    pub default_sampler: Option<&'a SamplerConfig>,
    /// What a distilled student learnt (None: not a student).
    pub student: Option<&'a Student>,
    /// The guidance its weights file names, if any.
    pub named_guidance: Option<f64>,
    pub device: &'a Device,
}

impl<'a> Model<'a> {
    /// The model of a loaded weights file: its image shape, classes and default sampler, from its
    /// header.
    pub fn of(header: &'a Header, diffusion: &'a Diffusion, device: &'a Device) -> Self {
        let u = &header.unet;
        Model {
            diffusion,
            image: [u.image_channels, u.image_size, u.image_size],
            num_classes: u.num_classes,
            default_sampler: header.sampler.as_ref(),
            student: header.student.as_ref(),
            named_guidance: header.guidance,
            device,
        }
    }

    /// The sampler asked for, its gaps filled from the model's default or the library's; a
    /// student that knows only its grid runs its own sampler and no other.
    pub fn sampler(&self, choice: &SamplerChoice) -> Result<SamplerConfig, FieldError> {
        let config = choice.resolve(self.default_sampler, self.diffusion.steps())?;
        match self.default_sampler {
            Some(own) if self.grid_only() && config != *own => Err(FieldError::new(
                if config.solver == own.solver { "steps" } else { "solver" },
                format!(
                    "this distilled model steps only between the points of its own grid: {}, not {}",
                    own.describe(),
                    config.describe()
                ),
            )),
            _ => Ok(config),
        }
    }

    /// The guidance strengths the model takes ([`crate::weights::guidance_range`]).
    pub fn guidance_range(&self) -> [f64; 2] {
        crate::weights::guidance_range(self.student)
    }

    /// The guidance its file names, else [`DEFAULT_GUIDANCE`] (for a student whose range leaves
    /// it out, the nearest it learnt).
    pub fn default_guidance(&self) -> f64 {
        let [lo, hi] = self.guidance_range();
        self.named_guidance.unwrap_or(DEFAULT_GUIDANCE).clamp(lo, hi)
    }

    /// Guidance strength: as asked, or the default; refused for an unconditional model, and
    /// for a student outside its range.
    fn guidance(&self, w: Option<f64>) -> Result<f64, FieldError> {
        let [lo, hi] = self.guidance_range();
        match (w, self.num_classes) {
            (Some(_), None) => {
                Err(FieldError::new("guidance", "this model is unconditional: it has no classes to guide towards"))
            }
            (Some(w), _) if self.student.is_some() && !(lo..=hi).contains(&w) => {
                Err(FieldError::new("guidance", format!("this distilled model learnt guidance {lo}..{hi}, got {w}")))
            }
            (w, _) => Ok(w.unwrap_or_else(|| self.default_guidance())),
        }
    }

    /// Whether the model knows only its own sampler's time steps (a stage-2 student).
    fn grid_only(&self) -> bool {
        self.student.is_some_and(|s| s.grid_only)
    }

    /// The step a partial run (SDEdit, labml's interpolation) starts from with `config`: `t`,
    /// or for a student that knows only its grid the grid's nearest point, from which the run's
    /// steps are the rest of that grid.
    pub fn start_t(&self, t: usize, config: &SamplerConfig) -> Result<usize, FieldError> {
        self.check_t(t)?;
        if !self.grid_only() {
            return Ok(t);
        }
        let grid = config.grid(self.diffusion.steps() - 1, self.diffusion).t;
        let snapped = grid.iter().copied().min_by_key(|s| s.abs_diff(t)).unwrap_or(t);
        let rest: Vec<usize> = grid.into_iter().filter(|&s| s <= snapped).collect();
        if config.grid(snapped, self.diffusion).t != rest {
            return Err(FieldError::new("t", format!("a run from step {snapped} would leave this student's grid")));
        }
        Ok(snapped)
    }

    pub fn check_t(&self, t: usize) -> Result<(), FieldError> {
        let steps = self.diffusion.steps();
        if t >= steps {
            return Err(FieldError::new("t", format!("t must be below T = {steps}, got {t}")));
        }
        Ok(())
    }
}

/// One request from the CLI or the page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Request {
    Sample(SampleRequest),
    Interpolate(InterpolationRequest),
    Edit(EditRequest),
}

/// `count` images from seed `seed`: image i uses seed `seed + i` (wrapping), so a seed is the
/// same image in any batch, on any backend, in the browser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    pub seed: u64,
    pub count: usize,
    /// A conditional model's class (None: any, each image its seed's [`prior_class`]).
    #[serde(default)]
    pub class: Option<usize>,
    /// w of classifier-free guidance (None: [`DEFAULT_GUIDANCE`]; conditional models only).
    #[serde(default)]
    pub guidance: Option<f64>,
    #[serde(default)]
    pub sampler: SamplerChoice,
}

impl SampleRequest {
    pub fn seeds(&self) -> Vec<u64> {
        (0..self.count as u64).map(|i| self.seed.wrapping_add(i)).collect()
    }

    /// Checks the request and starts its run.
    pub fn start(&self, model: &Model, bounds: &Bounds) -> Result<Run, FieldError> {
        self.start_from(model, bounds, None)
    }

    /// The same from a given x_T ([B = count, C, H, W]) instead of the seeds' own
    /// ([`Sampler::from_x_big_t`]).
    pub fn start_from(&self, model: &Model, bounds: &Bounds, x_big_t: Option<Tensor<4>>) -> Result<Run, FieldError> {
        if !(1..=bounds.max_images).contains(&self.count) {
            let max = bounds.max_images;
            return Err(FieldError::new("count", format!("number of images must be 1..={max}, got {}", self.count)));
        }
        let config = model.sampler(&self.sampler)?;
        let w = model.guidance(self.guidance)?;
        let seeds = self.seeds();
        let guidance = Guidance::from_noise(self.class, &seeds, w, model.num_classes)?;
        let sampler = match x_big_t {
            Some(x) if x.dims()[1..] == model.image[..] && x.dims()[0] == self.count => {
                Sampler::from_x_big_t(model.diffusion, &config, x, &seeds)
            }
            Some(x) => {
                let [c, h, w] = model.image;
                return Err(FieldError::new(
                    "x_t",
                    format!("x_T has shape {:?}; the model's is [{}, {c}, {h}, {w}]", x.dims(), self.count),
                ));
            }
            None => Sampler::new(model.diffusion, &config, model.image, &seeds, model.device),
        };
        Ok(Run::single(Phase::Sample, sampler, guidance, grid_cols(self.count)))
    }
}

/// How an interpolation mixes A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterpolationMode {
    /// labml's method: noise A and B to step t with the same ε, mix, denoise.
    Noise,
    /// DDIM's: a spherical mix of the two seeds' initial noise, denoised deterministically.
    Slerp,
}

impl std::str::FromStr for InterpolationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "noise" => Ok(Self::Noise),
            "slerp" => Ok(Self::Slerp),
            other => Err(format!("unknown interpolation mode {other:?} (noise or slerp)")),
        }
    }
}

/// A morph from the sample of seed A to that of seed B in `frames` evenly spaced values of λ, or
/// in the one frame at `lambda`; with a conditional model also from A's class to B's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpolationRequest {
    pub mode: InterpolationMode,
    pub seeds: [u64; 2],
    /// A's and B's classes (None: any, the seed's class as `ddpm sample` draws it).
    #[serde(default)]
    pub classes: [Option<usize>; 2],
    /// The step A and B are noised to (noise mode).
    pub t: usize,
    /// How many evenly spaced frames (2 or more), or 1 with `lambda`.
    pub frames: usize,
    /// The one frame at this λ in [0, 1] (a slider's position, `ddpm interpolate --lambda`): the
    /// same image as frame i of an n-frame run at λ = i/(n − 1), since every frame draws the same
    /// noise and its own class mix.
    #[serde(default)]
    pub lambda: Option<f64>,
    #[serde(default)]
    pub guidance: Option<f64>,
    /// The sampler of A, B and the frames (slerp mode: made deterministic, DDIM's η = 0).
    #[serde(default)]
    pub sampler: SamplerChoice,
}

impl InterpolationRequest {
    /// λ_i = i / (frames − 1): A at 0, B at 1; or `lambda` alone.
    pub fn lambdas(&self) -> Vec<f64> {
        match self.lambda {
            Some(lambda) => vec![lambda],
            None => (0..self.frames).map(|i| i as f64 / (self.frames - 1) as f64).collect(),
        }
    }

    /// The frames' count and λ, checked against the bounds.
    fn check_frames(&self, bounds: &Bounds) -> Result<(), FieldError> {
        let (frames, max) = (self.frames, bounds.max_frames);
        match self.lambda {
            None if !(2..=max).contains(&frames) => {
                Err(FieldError::new("frames", format!("frames must be 2..={max}, got {frames}")))
            }
            Some(lambda) if !(0.0..=1.0).contains(&lambda) => {
                Err(FieldError::new("lambda", format!("lambda must be in [0, 1], got {lambda}")))
            }
            Some(_) if frames != 1 => {
                Err(FieldError::new("frames", format!("one frame at lambda: frames must be 1, got {frames}")))
            }
            _ => Ok(()),
        }
    }

    /// The noise that takes A and B to step t, derived from both seeds.
    pub fn noise_seed(&self) -> u64 {
        self.seeds[0].wrapping_mul(1_000_003) ^ self.seeds[1]
    }

    /// Checks the request and starts its run: in noise mode A and B (sampled as `ddpm sample`
    /// samples them), then the frames from them; in slerp mode the frames alone.
    pub fn start(&self, model: &Model, bounds: &Bounds) -> Result<Run, FieldError> {
        self.start_with(model, bounds, None)
    }

    /// The same, in noise mode from `ends` where an earlier run drew this request's A and B
    /// ([`Run::take_ends`]): a slider's next λ or t then costs the frame's steps alone, and draws
    /// the pixels a fresh run draws (the ends are the same tensors).
    pub fn start_with(&self, model: &Model, bounds: &Bounds, ends: Option<&Ends>) -> Result<Run, FieldError> {
        self.check_frames(bounds)?;
        let config = model.sampler(&self.sampler)?;
        let t = match self.mode {
            InterpolationMode::Noise => model.start_t(self.t, &config)?,
            InterpolationMode::Slerp => self.t,
        };
        let w = model.guidance(self.guidance)?;
        let [ends_guidance, frames] = self.guidance(w, model.num_classes)?;
        let key = EndsKey { seeds: self.seeds, classes: self.classes, w, sampler: config };
        let frames = Frames { request: InterpolationRequest { t, ..self.clone() }, config, guidance: frames, key };
        match self.mode {
            InterpolationMode::Noise => match ends {
                Some(known) if known.key == frames.key => {
                    let sampler = frames.sampler(model.diffusion, &known.x);
                    Ok(Run::single(Phase::Frames, sampler, frames.guidance, self.frames))
                }
                _ => {
                    let sampler = Sampler::new(model.diffusion, &config, model.image, &self.seeds, model.device);
                    Ok(Run { then: Some(frames), ..Run::single(Phase::Ends, sampler, ends_guidance, 2) })
                }
            },
            InterpolationMode::Slerp => {
                let config = config.deterministic()?;
                let lambdas = self.lambdas();
                let sampler = Sampler::slerp(model.diffusion, &config, model.image, self.seeds, &lambdas, model.device);
                Ok(Run::single(Phase::Frames, sampler, frames.guidance, self.frames))
            }
        }
    }

    /// The guidance with strength `w` of A and B (sampled as one batch: A's class, B's class)
    /// and of the frames (frame i's class embedding mixed at λ_i: a class morph); an end with
    /// no class is its seed's [`prior_class`], as in [`Guidance::from_noise`], so A and B are
    /// the images `ddpm sample` draws from their seeds. None for an unconditional model.
    fn guidance(&self, w: f64, num_classes: Option<usize>) -> Result<[Option<Guidance>; 2], FieldError> {
        if num_classes.is_none() && self.classes == [None, None] {
            return Ok([None, None]);
        }
        let classes = [0, 1].map(|i| self.classes[i].or_else(|| num_classes.map(|n| prior_class(self.seeds[i], n))));
        // An interpolation's classes are a pair.
        let error = |e: FieldError| match e {
            FieldError { field: "class", message } => FieldError::new("classes", message),
            other => other,
        };
        let ends = Guidance::morph(classes, &[0.0, 1.0], w, num_classes).map_err(error)?;
        let frames = Guidance::morph(classes, &self.lambdas(), w, num_classes).map_err(error)?;
        Ok([Some(ends), Some(frames)])
    }
}

/// SDEdit: a drawing noised to step `t` with seed `seed`'s ε and denoised, as `ddpm edit` and the
/// page's drawing panel run it; guided to `class`, or with none unguided (∅: the drawing tells
/// the class).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    /// The drawing's RGBA bytes at the model's size, row-major, as a canvas gives them.
    #[serde(with = "serde_bytes")]
    pub rgba: Vec<u8>,
    pub seed: u64,
    pub t: usize,
    #[serde(default)]
    pub class: Option<usize>,
    #[serde(default)]
    pub guidance: Option<f64>,
    #[serde(default)]
    pub sampler: SamplerChoice,
}

impl EditRequest {
    pub fn start(&self, model: &Model) -> Result<Run, FieldError> {
        let [c, size, _] = model.image;
        let pixels = drawing_pixels(&self.rgba, c, size, model.diffusion.data_range())
            .map_err(|e| FieldError::new("rgba", e))?;
        let x0 = Tensor::from_data(TensorData::new(pixels, [1, c, size, size]), model.device);
        let config = model.sampler(&self.sampler)?;
        let t = model.start_t(self.t, &config)?;
        let w = model.guidance(self.guidance)?;
        let guidance = self.class.map(|c| Guidance::class(c, w, model.num_classes)).transpose()?;
        let sampler = Sampler::edit(model.diffusion, &config, x0, t, &[self.seed]);
        Ok(Run::single(Phase::Edit, sampler, guidance, 1))
    }
}

impl Request {
    pub fn start(&self, model: &Model, bounds: &Bounds) -> Result<Run, FieldError> {
        self.start_with(model, bounds, None)
    }

    /// The same, an interpolation from `ends` where they are its own
    /// ([`InterpolationRequest::start_with`]).
    pub fn start_with(&self, model: &Model, bounds: &Bounds, ends: Option<&Ends>) -> Result<Run, FieldError> {
        match self {
            Request::Sample(r) => r.start(model, bounds),
            Request::Interpolate(r) => r.start_with(model, bounds, ends),
            Request::Edit(r) => r.start(model),
        }
    }
}

/// Which part of a request a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Sample,
    Edit,
    /// An interpolation's A and B.
    Ends,
    /// An interpolation's frames.
    Frames,
}

/// What a noise-mode interpolation runs once its ends are drawn.
struct Frames {
    request: InterpolationRequest,
    config: SamplerConfig,
    guidance: Option<Guidance>,
    /// What fixes the ends they start from.
    key: EndsKey,
}

impl Frames {
    /// The frames' sampler from A and B (`ends`: [2, C, H, W]).
    fn sampler(&self, diffusion: &Diffusion, ends: &Tensor<4>) -> Sampler {
        let r = &self.request;
        let (a, b) = (ends.clone().narrow(0, 0, 1), ends.clone().narrow(0, 1, 1));
        Sampler::interpolate(diffusion, &self.config, a, b, r.t, &r.lambdas(), r.noise_seed())
    }
}

/// What fixes a noise-mode interpolation's A and B: its seeds, classes, guidance and sampler
/// (not t, the frames or λ).
#[derive(Clone, Debug, PartialEq)]
struct EndsKey {
    seeds: [u64; 2],
    classes: [Option<usize>; 2],
    w: f64,
    sampler: SamplerConfig,
}

/// A noise-mode interpolation's A and B as a finished run drew them, for the next request with
/// the same ends ([`InterpolationRequest::start_with`]).
#[derive(Clone)]
pub struct Ends {
    key: EndsKey,
    x: Tensor<4>,
}

/// A request in progress: one sampler at a time, the next phase (an interpolation's frames)
/// built from the last one's images when it ends.
pub struct Run {
    phase: Phase,
    sampler: Sampler,
    guidance: Option<Guidance>,
    cols: usize,
    then: Option<Frames>,
    /// A noise-mode interpolation's ends once drawn.
    ends: Option<Ends>,
}

/// One step of a run.
pub struct RunStep {
    pub phase: Phase,
    pub step: Step,
    /// x after the step, and the columns to draw its batch in.
    pub x: Tensor<4>,
    pub cols: usize,
    /// Whether this step ended its phase, and whether it ended the run.
    pub phase_done: bool,
    pub done: bool,
}

impl Run {
    fn single(phase: Phase, sampler: Sampler, guidance: Option<Guidance>, cols: usize) -> Self {
        Self { phase, sampler, guidance, cols, then: None, ends: None }
    }

    /// A noise-mode interpolation's A and B ([2, C, H, W]) once its first phase has drawn them,
    /// once.
    pub fn take_ends(&mut self) -> Option<Ends> {
        self.ends.take()
    }

    /// Runs one step with the ε_θ that `eps_theta` makes for this phase's guidance; None once
    /// the run has ended.
    pub fn step<E: EpsTheta>(&mut self, eps_theta: impl FnOnce(Option<&Guidance>) -> E) -> Option<RunStep> {
        let step = self.sampler.step(&eps_theta(self.guidance.as_ref()))?;
        let x = self.sampler.x().clone();
        let phase_done = self.sampler.is_done();
        let phase = self.phase;
        let cols = self.cols;
        if phase_done && let Some(frames) = self.then.take() {
            self.sampler = frames.sampler(self.sampler.diffusion(), &x);
            (self.phase, self.guidance, self.cols) = (Phase::Frames, frames.guidance, frames.request.frames);
            self.ends = Some(Ends { key: frames.key, x: x.clone() });
        }
        let done = phase_done && phase == self.phase;
        Some(RunStep { phase, step, x, cols, phase_done, done })
    }

    /// Runs to the end and returns the last phase's images.
    pub fn finish<E: EpsTheta>(mut self, eps_theta: impl Fn(Option<&Guidance>) -> E) -> Tensor<4> {
        loop {
            let Some(step) = self.step(&eps_theta) else { return self.sampler.x().clone() };
            if step.done {
                return step.x;
            }
        }
    }

    /// The current phase's sampler.
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }
}

/// A drawing's RGBA bytes (`size`×`size`, row-major, as a canvas gives them) as the model's
/// [1, C, size, size] input in the model's data `range`: gray models read the luminance (ITU-R 601),
/// RGB models the three channels; alpha is ignored.
pub fn drawing_pixels(rgba: &[u8], channels: usize, size: usize, range: DataRange) -> Result<Vec<f32>, String> {
    if rgba.len() != 4 * size * size {
        return Err(format!("a drawing of {size}×{size} has {} RGBA bytes, got {}", 4 * size * size, rgba.len()));
    }
    let px = |p: usize, ch: usize| rgba[4 * p + ch] as f32;
    let level = |v: f32| range.from_level(v);
    Ok((0..channels)
        .flat_map(|ch| {
            (0..size * size).map(move |p| {
                if channels == 1 {
                    level(0.299 * px(p, 0) + 0.587 * px(p, 1) + 0.114 * px(p, 2))
                } else {
                    level(px(p, ch))
                }
            })
        })
        .collect())
}

/// Columns of a grid of `n` samples: as square as it gets.
pub fn grid_cols(n: usize) -> usize {
    (n as f64).sqrt().ceil() as usize
}
