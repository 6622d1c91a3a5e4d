//! `ddpm eps`: the network on given inputs, ε_θ(x_t, t[, c]) for a .npy of x_t: the entry point
//! of a parity check with another framework (the same weights, the same x_t, ε compared).

use std::path::PathBuf;

use anyhow::{Result, ensure};
use burn::tensor::Tensor;
use clap::Args;
use ddpm::guidance::Guidance;

use super::Backend;

#[derive(Args)]
pub struct EpsArgs {
    /// Weights file from `ddpm export`.
    #[arg(long)]
    weights: PathBuf,
    /// x_t as a float32 .npy of [B, C, H, W] (or one [C, H, W] image).
    #[arg(long)]
    x_t: PathBuf,
    /// The step t of every image, 0..T−1 (our t = 0 is the paper's t = 1).
    #[arg(long)]
    t: usize,
    /// The class of every image (a class-conditional model; left out: ∅, the unconditional
    /// prediction).
    #[arg(long)]
    class: Option<usize>,
    /// Where ε goes: a float32 .npy of [B, C, H, W].
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
}

pub fn run(a: EpsArgs) -> Result<()> {
    let device = a.backend.device()?;
    let (model, header) = super::load_weights(&a.weights, &device)?;
    let steps = header.schedule.steps;
    ensure!(a.t < steps, "--t: t must be below T = {steps}, got {}", a.t);
    let u = &header.unet;
    let x_t = super::npy::read_images(&a.x_t, [u.image_channels, u.image_size, u.image_size], &device)?;
    let batch = x_t.dims()[0];
    let t = Tensor::<1>::from_floats(vec![a.t as f32; batch].as_slice(), &device);
    let eps = match a.class {
        Some(c) => {
            Guidance::class(c, 1.0, model.num_classes()).map_err(super::flag_error)?;
            model.forward_class(x_t, t, &vec![c; batch])
        }
        None => model.forward(x_t, t),
    };
    super::npy::write(&a.out, eps)?;
    eprintln!("wrote ε of {batch} images at t = {} to {}", a.t, a.out.display());
    Ok(())
}
