//! The reverse process, one step at a time, so the CLI and the page drive it the same way
//! (the page yields to the browser between steps and draws each x_t and x̂₀).

use burn::tensor::{Device, Tensor, TensorData};

use crate::diffusion::{Diffusion, slerp};
use crate::noise::Noise;
use crate::unet::UNet;

/// ε_θ as the sampler calls it: the UNet itself, or natively the UNet with each batch split
/// across CPU threads (`threads::Sharded`).
pub trait EpsTheta {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4>;
}

impl EpsTheta for UNet {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward(x_t, t)
    }
}

/// Which reverse process to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Ancestral sampling over every step (Algorithm 2, σ² = β).
    Ddpm,
    /// DDIM over `steps` evenly spaced steps; η = 0 is deterministic, η = 1 is DDPM-like.
    Ddim { steps: usize, eta: f64 },
}

impl Method {
    /// The CLI's and the page's rule: K = T steps is full DDPM, fewer is DDIM with `eta`.
    pub fn from_steps(steps: usize, diffusion_steps: usize, eta: f64) -> Result<Self, String> {
        if steps == 0 || steps > diffusion_steps {
            return Err(format!("sampling steps must be in 1..={diffusion_steps}, got {steps}"));
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(format!("eta must be in [0, 1], got {eta}"));
        }
        Ok(if steps == diffusion_steps { Method::Ddpm } else { Method::Ddim { steps, eta } })
    }

    /// Descending step numbers from `t_start` to the end. DDIM keeps a "trailing" spacing,
    /// t_i = ⌊(i + 1)·n/K⌋ − 1 over n = t_start + 1 steps, so it starts exactly at `t_start`;
    /// a partial run (interpolation) gets K scaled by n/T.
    pub fn timesteps(&self, t_start: usize, diffusion_steps: usize) -> Vec<usize> {
        let n = t_start + 1;
        let k = match *self {
            Method::Ddpm => n,
            Method::Ddim { steps, .. } => {
                ((steps as f64 * n as f64 / diffusion_steps as f64).round() as usize).clamp(1, n)
            }
        };
        (0..k).rev().map(|i| (i + 1) * n / k - 1).collect()
    }
}

/// What one step produced: x_t after the step is in [`Sampler::x`]; x̂₀ is the preview.
pub struct Step {
    /// 1-based index of this step and the number of steps in the run.
    pub index: usize,
    pub total: usize,
    /// The diffusion step the network saw.
    pub t: usize,
    pub x0_hat: Tensor<4>,
}

/// A reverse-process run over a batch, each image with its own seeded noise stream.
pub struct Sampler {
    diffusion: Diffusion,
    method: Method,
    timesteps: Vec<usize>,
    done: usize,
    x: Tensor<4>,
    noises: Vec<Noise>,
}

impl Sampler {
    /// Starts from x_T ~ N(0, I): image i draws from seed `seeds[i]`, so a seed gives the same
    /// image whatever the batch it is in.
    pub fn new(diffusion: &Diffusion, method: Method, image: [usize; 3], seeds: &[u64], device: &Device) -> Self {
        let mut noises: Vec<Noise> = seeds.iter().map(|&s| Noise::new(s)).collect();
        let x = draw(&mut noises, image, device);
        Self::from_x_t(diffusion, method, x, diffusion.steps() - 1, noises)
    }

    /// Starts from a given x_t at step `t_start` (interpolation); `noises` feed the later steps.
    pub fn from_x_t(diffusion: &Diffusion, method: Method, x_t: Tensor<4>, t_start: usize, noises: Vec<Noise>) -> Self {
        assert_eq!(noises.len(), x_t.dims()[0], "one noise stream per image");
        let timesteps = method.timesteps(t_start, diffusion.steps());
        Self { diffusion: diffusion.clone(), method, timesteps, done: 0, x: x_t, noises }
    }

    /// SDEdit (Meng et al. 2022): a given image x₀ (a drawing, [B, C, H, W]) noised to step `t`,
    /// x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (eq. 4), then denoised from there: the larger t, the more
    /// the model may change it. Image i's ε and later noise come from seed `seeds[i]`.
    pub fn edit(diffusion: &Diffusion, method: Method, x0: Tensor<4>, t: usize, seeds: &[u64]) -> Self {
        let mut noises: Vec<Noise> = seeds.iter().map(|&s| Noise::new(s)).collect();
        let [_, c, h, w] = x0.dims();
        let eps = draw(&mut noises, [c, h, w], &x0.device());
        let x_t = diffusion.q_sample(x0, &vec![t; seeds.len()], eps);
        Self::from_x_t(diffusion, method, x_t, t, noises)
    }

    /// labml's interpolation: noise x_a and x_b (each [1, C, H, W]) to step `t` with the same ε,
    /// mix (1 − λ)·x_t^a + λ·x_t^b for each λ, and denoise the whole batch of frames back.
    /// Every frame draws the same later noise, so neighbouring frames differ only through λ.
    pub fn interpolate(
        diffusion: &Diffusion,
        method: Method,
        x_a: Tensor<4>,
        x_b: Tensor<4>,
        t: usize,
        lambdas: &[f64],
        seed: u64,
    ) -> Self {
        let device = x_a.device();
        let [_, c, h, w] = x_a.dims();
        let eps = Noise::new(seed).gaussian([1, c, h, w], &device);
        let xa_t = diffusion.q_sample(x_a, &[t], eps.clone());
        let xb_t = diffusion.q_sample(x_b, &[t], eps);
        let frames = lambdas.iter().map(|&l| xa_t.clone().mul_scalar(1.0 - l) + xb_t.clone().mul_scalar(l)).collect();
        let noises = vec![Noise::new(seed.wrapping_add(1)); lambdas.len()];
        Self::from_x_t(diffusion, method, Tensor::cat(frames, 0), t, noises)
    }

    /// DDIM's interpolation: x_T of frame λ is slerp(x_T^a, x_T^b, λ) of the two seeds' initial
    /// noise, denoised from T (smooth with η = 0, where the map from x_T to x₀ is deterministic).
    pub fn slerp(
        diffusion: &Diffusion,
        method: Method,
        image: [usize; 3],
        seeds: [u64; 2],
        lambdas: &[f64],
        device: &Device,
    ) -> Self {
        let n: usize = image.iter().product();
        let [za, zb] = seeds.map(|s| Noise::new(s).gaussian_vec(n));
        let values: Vec<f32> = lambdas.iter().flat_map(|&l| slerp(&za, &zb, l)).collect();
        let [c, h, w] = image;
        let x = Tensor::from_data(TensorData::new(values, [lambdas.len(), c, h, w]), device);
        let noises = vec![Noise::new(seeds[0] ^ seeds[1].rotate_left(32)); lambdas.len()];
        Self::from_x_t(diffusion, method, x, diffusion.steps() - 1, noises)
    }

    /// Runs the remaining steps and returns x₀.
    pub fn run(mut self, eps_theta: &impl EpsTheta) -> Tensor<4> {
        while self.step(eps_theta).is_some() {}
        self.x
    }

    pub fn x(&self) -> &Tensor<4> {
        &self.x
    }

    pub fn total(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_done(&self) -> bool {
        self.done == self.timesteps.len()
    }

    /// Runs ε_θ once and moves x one step back; None once x₀ is reached.
    pub fn step(&mut self, eps_theta: &impl EpsTheta) -> Option<Step> {
        let &t = self.timesteps.get(self.done)?;
        let t_prev = self.timesteps.get(self.done + 1).copied();
        let [b, c, h, w] = self.x.dims();
        let device = self.x.device();
        let x_t = self.x.clone();
        let eps = eps_theta.eps(x_t.clone(), self.diffusion.t_tensor(t, b, &device));
        let x0_hat = self.diffusion.predict_x0(x_t.clone(), t, eps.clone());
        self.x = match self.method {
            Method::Ddpm => {
                let z = (t > 0).then(|| draw(&mut self.noises, [c, h, w], &device));
                self.diffusion.p_sample(x_t, t, eps, z)
            }
            Method::Ddim { eta, .. } => {
                let z = (self.diffusion.ddim_sigma(t, t_prev, eta) > 0.0)
                    .then(|| draw(&mut self.noises, [c, h, w], &device));
                self.diffusion.ddim_step(x_t, t, t_prev, eps, eta, z)
            }
        };
        self.done += 1;
        Some(Step { index: self.done, total: self.timesteps.len(), t, x0_hat })
    }
}

/// One N(0, I) image per noise stream, stacked into a batch.
fn draw(noises: &mut [Noise], [c, h, w]: [usize; 3], device: &Device) -> Tensor<4> {
    let values: Vec<f32> = noises.iter_mut().flat_map(|n| n.gaussian_vec(c * h * w)).collect();
    Tensor::from_data(TensorData::new(values, [noises.len(), c, h, w]), device)
}
