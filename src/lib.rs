//! ddpm-web: Denoising Diffusion Probabilistic Models (Ho et al. 2020) on burn.
//!
//! The ε-model ([`unet`]) and the diffusion maths ([`diffusion`], [`solvers`], [`sampler`]) are written once
//! and run on any burn device: flex or wgpu natively, WebGPU or flex in the browser.

pub mod animation;
pub mod diffusion;
pub mod field_error;
pub mod forward;
pub mod guidance;
pub mod images;
pub mod kernels;
pub mod labml;
pub mod limits;
pub mod noise;
pub mod request;
pub mod sampler;
pub mod solvers;
pub mod unet;
pub mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub mod atomic_write;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod data;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
#[cfg(not(target_arch = "wasm32"))]
pub mod import;
#[cfg(pool)]
pub mod threads;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;
#[cfg(target_arch = "wasm32")]
pub mod web;
