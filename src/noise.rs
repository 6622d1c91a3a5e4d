//! Seeded, portable Gaussian noise.
//!
//! Every random draw of the sampler (x_T and the z of each ancestral step) and of training
//! (t, ε and the dropout masks) comes from here, on the CPU, and is uploaded. Backend RNGs
//! differ between flex, wgpu and the browser; this one does not, so one seed gives one image
//! everywhere.

use burn::tensor::{Device, Tensor, TensorData};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// A ChaCha8 stream with a Box–Muller Gaussian on top. Its whole state is (seed, word position),
/// which checkpoints store to resume a training run exactly.
#[derive(Clone, Debug)]
pub struct Noise {
    seed: u64,
    rng: ChaCha8Rng,
}

/// The saved state of a [`Noise`] stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseState {
    pub seed: u64,
    /// ChaCha's 128-bit word position, as a string because JSON numbers stop at 2^53.
    pub word_pos: String,
}

impl Noise {
    pub fn new(seed: u64) -> Self {
        Self { seed, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// Stream `stream` of ChaCha under `seed`: draws independent of [`Self::new`]'s (stream 0).
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut noise = Self::new(seed);
        noise.rng.set_stream(stream);
        noise
    }

    /// A uniform draw in (0, 1]: 53 random bits, never 0 so that ln() stays finite.
    fn uniform(&mut self) -> f64 {
        ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A uniform integer in 0..n (n ≪ 2^32, so the modulo bias is below 1e-6).
    pub fn below(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n as u64) as usize
    }

    /// `n` independent N(0, 1) draws (Box–Muller, both outputs of each pair used).
    pub fn gaussian_vec(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let theta = std::f64::consts::TAU * self.uniform();
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A tensor of N(0, I) noise of the given shape on `device`.
    pub fn gaussian<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(self.gaussian_vec(n), shape), device)
    }

    /// Inverted dropout's mask: each element 1/p_keep with probability p_keep, else 0 (mean 1).
    pub fn keep_mask<const D: usize>(&mut self, shape: [usize; D], p_keep: f64, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let threshold = (p_keep * 4_294_967_296.0) as u64;
        let scale = (1.0 / p_keep) as f32;
        let mask = (0..n).map(|_| if (self.rng.next_u32() as u64) < threshold { scale } else { 0.0 }).collect();
        Tensor::from_data(TensorData::new(mask, shape), device)
    }

    /// `n` generators for a training step's `n` shards, which draw their dropout masks
    /// concurrently: ChaCha's streams 0..n under one seed drawn from this generator. One draw
    /// whatever `n`, so the batches, t and ε that follow do not depend on the shard count.
    pub fn split(&mut self, n: usize) -> Vec<Noise> {
        let seed = self.rng.next_u64();
        (0..n as u64).map(|stream| Noise::stream(seed, stream)).collect()
    }

    pub fn state(&self) -> NoiseState {
        NoiseState { seed: self.seed, word_pos: self.rng.get_word_pos().to_string() }
    }

    pub fn from_state(state: &NoiseState) -> Result<Self, String> {
        let pos: u128 = state.word_pos.parse().map_err(|_| format!("bad RNG word position {:?}", state.word_pos))?;
        let mut noise = Self::new(state.seed);
        noise.rng.set_word_pos(pos);
        Ok(noise)
    }
}
