//! The reverse process, one step at a time, so the CLI and the page drive it the same way
//! (the page yields to the browser between steps and draws each x_t and x̂₀).

use burn::tensor::{Device, Tensor, TensorData};

use crate::diffusion::{Diffusion, slerp};
use crate::noise::Noise;
use crate::solvers::{Grid, SamplerConfig, Solver, Update};
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

/// What one step produced: x_t after the step is in [`Sampler::x`]; x̂₀ is the preview.
pub struct Step {
    /// 1-based index of this step and the number of steps in the run.
    pub index: usize,
    pub total: usize,
    /// The diffusion step the network saw.
    pub t: usize,
    pub x0_hat: Tensor<4>,
    /// The solver's update, for a reader to follow it.
    pub update: Update,
}

/// A reverse-process run over a batch, each image with its own seeded noise stream.
pub struct Sampler {
    diffusion: Diffusion,
    solver: Box<dyn Solver>,
    grid: Grid,
    done: usize,
    x: Tensor<4>,
    noises: Vec<Noise>,
}

impl Sampler {
    /// Starts from x_T ~ N(0, I): image i draws from seed `seeds[i]`, so a seed gives the same
    /// image whatever the batch it is in.
    pub fn new(
        diffusion: &Diffusion,
        config: &SamplerConfig,
        image: [usize; 3],
        seeds: &[u64],
        device: &Device,
    ) -> Self {
        let mut noises: Vec<Noise> = seeds.iter().map(|&s| Noise::new(s)).collect();
        let x = draw(&mut noises, image, device);
        Self::from_x_t(diffusion, config, x, diffusion.steps() - 1, noises)
    }

    /// Starts from a given x_T (`ddpm sample --x-t`: another framework's noise, for a parity
    /// check) with image i's later noise from seed `seeds[i]`, its stream advanced past the x_T
    /// it would have drawn: a seed's own x_T given here runs exactly as [`Sampler::new`].
    pub fn from_x_big_t(diffusion: &Diffusion, config: &SamplerConfig, x_big_t: Tensor<4>, seeds: &[u64]) -> Self {
        let [_, c, h, w] = x_big_t.dims();
        let mut noises: Vec<Noise> = seeds.iter().map(|&s| Noise::new(s)).collect();
        draw(&mut noises, [c, h, w], &x_big_t.device());
        Self::from_x_t(diffusion, config, x_big_t, diffusion.steps() - 1, noises)
    }

    /// Starts from a given x_t at step `t_start` (interpolation); `noises` feed the later steps.
    pub fn from_x_t(
        diffusion: &Diffusion,
        config: &SamplerConfig,
        x_t: Tensor<4>,
        t_start: usize,
        noises: Vec<Noise>,
    ) -> Self {
        assert_eq!(noises.len(), x_t.dims()[0], "one noise stream per image");
        let grid = config.grid(t_start, diffusion);
        Self { diffusion: diffusion.clone(), solver: config.solver(), grid, done: 0, x: x_t, noises }
    }

    /// SDEdit (Meng et al. 2022): a given image x₀ (a drawing, [B, C, H, W]) noised to step `t`,
    /// x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (eq. 4), then denoised from there: the larger t, the more
    /// the model may change it. Image i's ε and later noise come from seed `seeds[i]`.
    pub fn edit(diffusion: &Diffusion, config: &SamplerConfig, x0: Tensor<4>, t: usize, seeds: &[u64]) -> Self {
        let mut noises: Vec<Noise> = seeds.iter().map(|&s| Noise::new(s)).collect();
        let [_, c, h, w] = x0.dims();
        let eps = draw(&mut noises, [c, h, w], &x0.device());
        let x_t = diffusion.q_sample(x0, &vec![t; seeds.len()], eps);
        Self::from_x_t(diffusion, config, x_t, t, noises)
    }

    /// labml's interpolation: noise x_a and x_b (each [1, C, H, W]) to step `t` with the same ε,
    /// mix (1 − λ)·x_t^a + λ·x_t^b for each λ, and denoise the whole batch of frames back.
    /// Every frame draws the same later noise, so neighbouring frames differ only through λ.
    pub fn interpolate(
        diffusion: &Diffusion,
        config: &SamplerConfig,
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
        Self::from_x_t(diffusion, config, Tensor::cat(frames, 0), t, noises)
    }

    /// DDIM's interpolation: x_T of frame λ is slerp(x_T^a, x_T^b, λ) of the two seeds' initial
    /// noise, denoised from T (smooth with η = 0, where the map from x_T to x₀ is deterministic).
    pub fn slerp(
        diffusion: &Diffusion,
        config: &SamplerConfig,
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
        Self::from_x_t(diffusion, config, x, diffusion.steps() - 1, noises)
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
        self.grid.t.len()
    }

    pub fn is_done(&self) -> bool {
        self.done == self.grid.t.len()
    }

    pub fn diffusion(&self) -> &Diffusion {
        &self.diffusion
    }

    /// The steps this run evaluates the network at, and where it ends.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Runs ε_θ once and moves x one step back; None once the run has ended.
    pub fn step(&mut self, eps_theta: &impl EpsTheta) -> Option<Step> {
        let &t = self.grid.t.get(self.done)?;
        let t_prev = self.grid.next(self.done);
        let [b, c, h, w] = self.x.dims();
        let device = self.x.device();
        let x_t = self.x.clone();
        let eps = eps_theta.eps(x_t.clone(), self.diffusion.t_tensor(t, b, &device));
        let x0_hat = self.diffusion.predict_x0(x_t.clone(), t, eps.clone());
        let noises = &mut self.noises;
        let mut z = || draw(noises, [c, h, w], &device);
        let (x, update) = self.solver.step(&self.diffusion, x_t, t, t_prev, eps, &mut z);
        self.x = x;
        self.done += 1;
        Some(Step { index: self.done, total: self.grid.t.len(), t, x0_hat, update })
    }
}

/// One N(0, I) image per noise stream, stacked into a batch.
fn draw(noises: &mut [Noise], [c, h, w]: [usize; 3], device: &Device) -> Tensor<4> {
    let values: Vec<f32> = noises.iter_mut().flat_map(|n| n.gaussian_vec(c * h * w)).collect();
    Tensor::from_data(TensorData::new(values, [noises.len(), c, h, w]), device)
}
