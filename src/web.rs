//! The browser API (wasm-bindgen). It parses, calls the library and returns pixels: no maths
//! of its own. Every read from the GPU is asynchronous (synchronous reads panic on WebGPU),
//! and no borrow of the model outlives a call, so the page may start a new run at any time.

use std::cell::RefCell;

use burn::tensor::{Device, Tensor};
use js_sys::{Object, Reflect, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::diffusion::Diffusion;
use crate::images::Grid;
use crate::sampler::{Method, Sampler};
use crate::unet::UNet;
use crate::weights::{self, Header};

thread_local! {
    /// burn's wgpu runtime is initialised once per page; later models reuse its device.
    static GPU: RefCell<Option<Device>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A loaded model plus the run in progress.
#[wasm_bindgen]
pub struct Ddpm {
    model: UNet,
    header: Header,
    diffusion: Diffusion,
    device: Device,
    backend: String,
    sampler: Option<Sampler>,
    /// Grid columns of the current run.
    cols: usize,
    /// The last finished run's images, [B, C, H, W], for interpolation end points.
    last: Option<Tensor<4>>,
}

/// The largest weights file the page downloads, in bytes (the loader's own bound).
#[wasm_bindgen]
pub fn max_weights_bytes() -> f64 {
    crate::limits::MAX_WEIGHTS_BYTES as f64
}

/// The vector instructions the CPU fallback's kernels use ("wasm-simd128" in this build).
#[wasm_bindgen]
pub fn kernel_path() -> String {
    crate::kernels::simd_path().into()
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
impl Ddpm {
    /// Builds the model described by the weights file `bytes` (fetched by the page). With
    /// `use_gpu` it runs on WebGPU when an adapter is available, else on the CPU (flex).
    pub async fn create(bytes: Vec<u8>, use_gpu: bool) -> Result<Ddpm, JsError> {
        let header = weights::read_header(&bytes).map_err(js_err)?;
        let (device, backend) = if !use_gpu {
            (Device::flex(), "CPU (flex, wasm)".to_string())
        } else {
            match gpu().await {
                Ok(device) => (device, "WebGPU".to_string()),
                Err(reason) => (Device::flex(), format!("CPU (flex, wasm) — WebGPU unavailable: {reason}")),
            }
        };
        let (model, _) = weights::load(&bytes, &device).map_err(js_err)?;
        let diffusion = Diffusion::new(header.schedule.clone());
        Ok(Ddpm { model, header, diffusion, device, backend, sampler: None, cols: 1, last: None })
    }

    /// Which backend runs the model, in words.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        self.backend.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn on_gpu(&self) -> bool {
        self.backend == "WebGPU"
    }

    /// The diffusion steps T of the model.
    #[wasm_bindgen(getter)]
    pub fn diffusion_steps(&self) -> usize {
        self.diffusion.steps()
    }

    #[wasm_bindgen(getter)]
    pub fn image_size(&self) -> usize {
        self.header.unet.image_size
    }

    /// The model and training metadata as JSON, for display.
    pub fn describe(&self) -> String {
        serde_json::json!({
            "unet": self.header.unet,
            "schedule": self.header.schedule,
            "info": self.header.info,
            "params": burn::module::Module::num_params(&self.model),
        })
        .to_string()
    }

    /// Starts sampling one image per seed (as `ddpm sample` does: a seed is the same image in
    /// any batch); `steps` = T is DDPM, fewer is DDIM with `eta`. Replaces any run in progress.
    pub fn start(&mut self, seeds: Vec<u32>, steps: usize, eta: f64) -> Result<(), JsError> {
        if seeds.is_empty() || seeds.len() > 64 {
            return Err(js_err(format!("number of images must be 1..=64, got {}", seeds.len())));
        }
        let method = self.method(steps, eta)?;
        let seeds: Vec<u64> = seeds.into_iter().map(u64::from).collect();
        self.sampler = Some(Sampler::new(&self.diffusion, method, self.image_shape(), &seeds, &self.device));
        self.cols = (seeds.len() as f64).sqrt().ceil() as usize;
        Ok(())
    }

    /// Starts the interpolation from A = image 0 to B = image 1 of the last finished run:
    /// `frames` values of λ from 0 to 1, as one batch. `mode` "noise" is labml's method (mix at
    /// step `t`), "slerp" is DDIM's spherical interpolation of the seeds' initial noise.
    pub fn start_interpolation(
        &mut self,
        mode: &str,
        seed_a: u32,
        seed_b: u32,
        t: usize,
        frames: usize,
        steps: usize,
    ) -> Result<(), JsError> {
        if !(2..=32).contains(&frames) {
            return Err(js_err(format!("frames must be 2..=32, got {frames}")));
        }
        let lambdas: Vec<f64> = (0..frames).map(|i| i as f64 / (frames - 1) as f64).collect();
        let sampler = match mode {
            "noise" => {
                let method = self.method(steps, 0.0)?;
                let ends =
                    self.last.clone().filter(|x| x.dims()[0] == 2).ok_or_else(|| js_err("sample A and B first"))?;
                if t >= self.diffusion.steps() {
                    return Err(js_err(format!("t must be below {}", self.diffusion.steps())));
                }
                let (a, b) = (ends.clone().narrow(0, 0, 1), ends.narrow(0, 1, 1));
                let seed = (seed_a as u64).wrapping_mul(1_000_003) ^ seed_b as u64;
                Sampler::interpolate(&self.diffusion, method, a, b, t, &lambdas, seed)
            }
            "slerp" => {
                let method = Method::Ddim { steps: steps.min(self.diffusion.steps()), eta: 0.0 };
                let seeds = [seed_a as u64, seed_b as u64];
                Sampler::slerp(&self.diffusion, method, self.image_shape(), seeds, &lambdas, &self.device)
            }
            other => return Err(js_err(format!("unknown interpolation mode {other:?}"))),
        };
        self.sampler = Some(sampler);
        self.cols = frames;
        Ok(())
    }

    /// Runs one step of the current run and resolves to
    /// `{index, total, t, width, height, x_t, x0, done}` (RGBA grids), or null when there is
    /// nothing to run. The promise owns its tensors: the page may start another run meanwhile.
    pub fn step(&mut self) -> js_sys::Promise {
        let Some(sampler) = self.sampler.as_mut() else {
            return js_sys::Promise::resolve(&JsValue::NULL);
        };
        let Some(step) = sampler.step(&self.model) else {
            return js_sys::Promise::resolve(&JsValue::NULL);
        };
        let x = sampler.x().clone();
        let done = sampler.is_done();
        if done {
            self.last = Some(x.clone());
        }
        let cols = self.cols;
        wasm_bindgen_futures::future_to_promise(async move {
            let shape = x.dims();
            let x_t = read(x).await?;
            let x0 = read(step.x0_hat).await?;
            let (gx, g0) = (Grid::new(&x_t, shape, cols, 1), Grid::new(&x0, shape, cols, 1));
            let out = Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(drop);
            set("index", step.index.into())?;
            set("total", step.total.into())?;
            set("t", step.t.into())?;
            set("width", gx.width.into())?;
            set("height", gx.height.into())?;
            set("x_t", Uint8ClampedArray::from(&gx.rgba[..]).into())?;
            set("x0", Uint8ClampedArray::from(&g0.rgba[..]).into())?;
            set("done", done.into())?;
            Ok(out.into())
        })
    }

    /// Drops the run in progress (stop).
    pub fn cancel(&mut self) {
        self.sampler = None;
    }
}

impl Ddpm {
    fn method(&self, steps: usize, eta: f64) -> Result<Method, JsError> {
        Method::from_steps(steps, self.diffusion.steps(), eta).map_err(js_err)
    }

    fn image_shape(&self) -> [usize; 3] {
        let u = &self.header.unet;
        [u.image_channels, u.image_size, u.image_size]
    }
}

/// The page's WebGPU device, initialised on first use.
async fn gpu() -> Result<Device, String> {
    if let Some(device) = GPU.with(|g| g.borrow().clone()) {
        return Ok(device);
    }
    let device = Device::wgpu_options().init_async().await.map_err(|e| e.to_string())?;
    GPU.with(|g| *g.borrow_mut() = Some(device.clone()));
    Ok(device)
}

async fn read(x: Tensor<4>) -> Result<Vec<f32>, JsValue> {
    let data = x.into_data_async().await.map_err(|e| JsValue::from_str(&format!("reading from the device: {e:?}")))?;
    data.convert::<f32>().try_into_vec::<f32>().map_err(|e| JsValue::from_str(&format!("{e:?}")))
}
