//! What a user asks to draw, as the CLI and the page both ask it: which seeds, which sampler,
//! which interpolation. Every rule that makes `ddpm sample` and the page draw the same pixels
//! (how image i's seed is derived, the λ grid, the seed of the interpolation's noise, the
//! sampler an interpolation runs and its class morph, the bounds, the grid's columns) is here,
//! once.

use burn::tensor::{Device, Tensor};

use crate::diffusion::Diffusion;
use crate::guidance::{Guidance, prior_class};
use crate::sampler::{Method, Sampler};

/// The page's bounds (the CLI's are in [`crate::limits`]): one batch of images on the visitor's
/// device, and one batch of interpolation frames.
pub const PAGE_MAX_IMAGES: usize = 64;
pub const PAGE_MAX_FRAMES: usize = 32;
/// The threaded CPU module's largest pool: beyond a batch's slices and each product's split,
/// more web workers only cost memory (each holds its own stack and scratch buffers).
pub const PAGE_MAX_THREADS: usize = 16;

/// Images to sample: one per seed, with the sampler `steps` (= T: the paper's DDPM; fewer:
/// DDIM with `eta`).
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRequest {
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub eta: f64,
}

impl SampleRequest {
    /// `count` images from seed `seed`: image i uses seed `seed + i` (wrapping), so a seed is the
    /// same image in any batch, on any backend, in the browser.
    pub fn consecutive(seed: u64, count: usize, steps: usize, eta: f64) -> Self {
        Self { seeds: (0..count as u64).map(|i| seed.wrapping_add(i)).collect(), steps, eta }
    }

    /// The sampler, after checking the request against `max_images` and the model's T.
    pub fn method(&self, diffusion: &Diffusion, max_images: usize) -> Result<Method, String> {
        if !(1..=max_images).contains(&self.seeds.len()) {
            return Err(format!("number of images must be 1..={max_images}, got {}", self.seeds.len()));
        }
        Method::from_steps(self.steps, diffusion.steps(), self.eta)
    }

    /// The whole request as one batch of at most `max_images` (the CLI's [`crate::limits`] or the
    /// page's bound), after checking it.
    pub fn sampler(
        &self,
        diffusion: &Diffusion,
        image: [usize; 3],
        max_images: usize,
        device: &Device,
    ) -> Result<Sampler, String> {
        let method = self.method(diffusion, max_images)?;
        Ok(Sampler::new(diffusion, method, image, &self.seeds, device))
    }
}

/// How an interpolation mixes A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A morph from the sample of seed A to that of seed B in `frames` evenly spaced values of λ;
/// with a conditional model also from A's class to B's.
#[derive(Clone, Debug, PartialEq)]
pub struct InterpolationRequest {
    pub mode: InterpolationMode,
    pub seeds: [u64; 2],
    /// A's and B's classes (None: any, the seed's class as `ddpm sample` draws it).
    pub classes: [Option<usize>; 2],
    /// The step A and B are noised to (noise mode).
    pub t: usize,
    pub frames: usize,
    pub steps: usize,
    pub eta: f64,
}

impl InterpolationRequest {
    /// λ_i = i / (frames − 1): A at 0, B at 1.
    pub fn lambdas(&self) -> Vec<f64> {
        (0..self.frames).map(|i| i as f64 / (self.frames - 1) as f64).collect()
    }

    /// A and B themselves, sampled as `ddpm sample` samples them (noise mode mixes these).
    pub fn ends(&self) -> SampleRequest {
        SampleRequest { seeds: self.seeds.to_vec(), steps: self.steps, eta: self.eta }
    }

    /// The guidance with strength `w` of A and B (sampled as one batch: A's class, B's class)
    /// and of the frames (frame i's class embedding mixed at λ_i: a class morph); an end with
    /// no class is its seed's [`prior_class`], as in [`Guidance::from_noise`], so A and B are
    /// the images `ddpm sample` draws from their seeds. None for an unconditional model.
    pub fn guidance(&self, w: f64, num_classes: Option<usize>) -> Result<[Option<Guidance>; 2], String> {
        if num_classes.is_none() && self.classes == [None, None] {
            return Ok([None, None]);
        }
        let classes = [0, 1].map(|i| self.classes[i].or_else(|| num_classes.map(|n| prior_class(self.seeds[i], n))));
        let ends = Guidance::morph(classes, &[0.0, 1.0], w, num_classes)?;
        let frames = Guidance::morph(classes, &self.lambdas(), w, num_classes)?;
        Ok([Some(ends), Some(frames)])
    }

    /// The noise that takes A and B to step t, derived from both seeds.
    pub fn noise_seed(&self) -> u64 {
        self.seeds[0].wrapping_mul(1_000_003) ^ self.seeds[1]
    }

    /// Checks the frame count and t (errors name them as the CLI's flags and the page's fields
    /// are named); the sampler's steps and η are checked by [`Method::from_steps`].
    pub fn check(&self, diffusion: &Diffusion, max_frames: usize) -> Result<(), String> {
        if !(2..=max_frames).contains(&self.frames) {
            return Err(format!("frames must be 2..={max_frames}, got {}", self.frames));
        }
        if self.mode == InterpolationMode::Noise && self.t >= diffusion.steps() {
            return Err(format!("t must be below T = {}, got {}", diffusion.steps(), self.t));
        }
        Ok(())
    }

    /// The sampler of the frames, after checking the request. Noise mode needs `ends`, the
    /// [1 + 1, C, H, W] samples of [`Self::ends`]; slerp mode starts from the seeds' noise.
    pub fn sampler(
        &self,
        diffusion: &Diffusion,
        image: [usize; 3],
        ends: Option<Tensor<4>>,
        max_frames: usize,
        device: &Device,
    ) -> Result<Sampler, String> {
        self.check(diffusion, max_frames)?;
        let lambdas = self.lambdas();
        match self.mode {
            InterpolationMode::Noise => {
                let method = self.ends().method(diffusion, 2)?;
                let ends = ends.filter(|x| x.dims()[0] == 2).ok_or("sample A and B first")?;
                let (a, b) = (ends.clone().narrow(0, 0, 1), ends.narrow(0, 1, 1));
                Ok(Sampler::interpolate(diffusion, method, a, b, self.t, &lambdas, self.noise_seed()))
            }
            InterpolationMode::Slerp => {
                // η = 0: the map from x_T to x₀ must be deterministic for the mix to be smooth.
                Method::from_steps(self.steps, diffusion.steps(), 0.0)?;
                let method = Method::Ddim { steps: self.steps, eta: 0.0 };
                Ok(Sampler::slerp(diffusion, method, image, self.seeds, &lambdas, device))
            }
        }
    }
}

/// SDEdit: a drawing (already at the model's size) noised to step `t` with seed `seed`'s ε and
/// denoised by the sampler `steps` / `eta`, as `ddpm edit` and the page's drawing panel run it.
#[derive(Clone, Debug, PartialEq)]
pub struct EditRequest {
    pub seed: u64,
    pub t: usize,
    pub steps: usize,
    pub eta: f64,
}

impl EditRequest {
    /// The sampler from the drawing `x0` ([1, C, H, W] in [−1, 1]), after checking t and the
    /// sampler against the model's T.
    pub fn sampler(&self, diffusion: &Diffusion, x0: Tensor<4>) -> Result<Sampler, String> {
        if self.t >= diffusion.steps() {
            return Err(format!("t must be below T = {}, got {}", diffusion.steps(), self.t));
        }
        let method = Method::from_steps(self.steps, diffusion.steps(), self.eta)?;
        Ok(Sampler::edit(diffusion, method, x0, self.t, &[self.seed]))
    }
}

/// A drawing's RGBA bytes (`size`×`size`, row-major, as a canvas gives them) as the model's
/// [1, C, size, size] input in [−1, 1]: gray models read the luminance (ITU-R 601), RGB models the
/// three channels; alpha is ignored.
pub fn drawing_pixels(rgba: &[u8], channels: usize, size: usize) -> Result<Vec<f32>, String> {
    if rgba.len() != 4 * size * size {
        return Err(format!("a drawing of {size}×{size} has {} RGBA bytes, got {}", 4 * size * size, rgba.len()));
    }
    let px = |p: usize, ch: usize| rgba[4 * p + ch] as f32;
    let level = |v: f32| v / 127.5 - 1.0;
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
