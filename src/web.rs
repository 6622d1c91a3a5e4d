//! The browser API (wasm-bindgen). It parses, calls the library and returns pixels: no maths
//! of its own. Every read from the GPU is asynchronous (synchronous reads panic on WebGPU),
//! and no borrow of the model outlives a call, so the page may start a new run at any time.

#[cfg(feature = "webgpu")]
use std::cell::RefCell;

use burn::tensor::{Device, Tensor};
use js_sys::{Object, Reflect, Uint8ClampedArray};
use wasm_bindgen::prelude::*;

use crate::diffusion::Diffusion;
use crate::guidance::Guidance;
#[cfg(not(feature = "threads"))]
use crate::guidance::Guided;
use crate::images::Grid;
use crate::request::{
    EditRequest, InterpolationRequest, PAGE_MAX_FRAMES, PAGE_MAX_IMAGES, SampleRequest, drawing_pixels, grid_cols,
};
use crate::sampler::Sampler;
use crate::unet::UNet;
use crate::weights::{self, Header};

#[cfg(feature = "webgpu")]
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
    /// Classifier-free guidance of the run in progress (a conditional model only).
    guidance: Option<Guidance>,
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

/// The page's bounds, as JSON: `{max_images, max_frames, max_guidance, default_guidance}` (a
/// model's own T is its `diffusion_steps`; t runs over 0..T).
#[wasm_bindgen]
pub fn page_limits() -> String {
    use crate::guidance::{DEFAULT_GUIDANCE, MAX_GUIDANCE};
    serde_json::json!({
        "max_images": PAGE_MAX_IMAGES,
        "max_frames": PAGE_MAX_FRAMES,
        "max_guidance": MAX_GUIDANCE,
        "default_guidance": DEFAULT_GUIDANCE,
    })
    .to_string()
}

/// The vector instructions the CPU fallback's kernels use ("wasm-simd128" in this build).
#[wasm_bindgen]
pub fn kernel_path() -> String {
    crate::kernels::simd_path().into()
}

/// Starts the CPU's thread pool (the threaded module only): `requested` web workers (the page
/// asks for `navigator.hardwareConcurrency`), at most `request::PAGE_MAX_THREADS`; resolves
/// when they run. Called once, before [`Ddpm::create`].
#[cfg(feature = "threads")]
#[wasm_bindgen]
pub fn init_threads(requested: usize) -> js_sys::Promise {
    wasm_bindgen_rayon::init_thread_pool(requested.clamp(1, crate::request::PAGE_MAX_THREADS))
}

/// How many threads the CPU backend runs on: the pool's size, 1 in the one-thread module.
#[wasm_bindgen]
pub fn cpu_threads() -> usize {
    #[cfg(feature = "threads")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "threads"))]
    1
}

/// An interpolation request ([`InterpolationRequest`]): `mode` "noise" is labml's method (A and
/// B noised to step `t` and mixed), "slerp" DDIM's spherical mix of the seeds' initial noise;
/// with a conditional model, `class_a` and `class_b` (negative: any) make it a class morph
/// guided with strength `w`.
#[wasm_bindgen]
pub struct Interpolation {
    request: InterpolationRequest,
    w: f64,
}

#[wasm_bindgen]
impl Interpolation {
    #[wasm_bindgen(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: &str,
        seed_a: u32,
        seed_b: u32,
        t: usize,
        frames: usize,
        steps: usize,
        eta: f64,
        class_a: i32,
        class_b: i32,
        w: f64,
    ) -> Result<Interpolation, JsError> {
        let mode = mode.parse().map_err(js_err)?;
        let classes = [class_a, class_b].map(|c| usize::try_from(c).ok());
        let seeds = [seed_a.into(), seed_b.into()];
        Ok(Self { request: InterpolationRequest { mode, seeds, classes, t, frames, steps, eta }, w })
    }
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
        let cpu = match cpu_threads() {
            1 => "CPU (flex, wasm)".to_string(),
            n => format!("CPU (flex, wasm, {n} threads)"),
        };
        let (device, backend) = if !use_gpu {
            (Device::flex(), cpu)
        } else {
            match gpu().await {
                Ok(device) => (device, "WebGPU".to_string()),
                Err(reason) => (Device::flex(), format!("{cpu} — WebGPU unavailable: {reason}")),
            }
        };
        let (model, _) = weights::load(&bytes, &device).map_err(js_err)?;
        let diffusion = Diffusion::new(header.schedule.clone());
        Ok(Ddpm { model, header, diffusion, device, backend, sampler: None, guidance: None, cols: 1, last: None })
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

    /// The classes of a class-conditional model (0 for an unconditional one).
    #[wasm_bindgen(getter)]
    pub fn num_classes(&self) -> usize {
        self.model.num_classes().unwrap_or(0)
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

    /// Starts sampling `count` images from `seed` ([`SampleRequest::consecutive`]: image i is
    /// seed + i, as in `ddpm sample`); `steps` = T is DDPM, fewer is DDIM with `eta`; a
    /// conditional model draws `class` with guidance `w` (as `ddpm sample --class --guidance`;
    /// a negative class: any, each image its seed's class). Replaces any run in progress.
    pub fn start(
        &mut self,
        seed: u32,
        count: usize,
        steps: usize,
        eta: f64,
        class: i32,
        w: f64,
    ) -> Result<(), JsError> {
        let request = SampleRequest::consecutive(seed.into(), count, steps, eta);
        let sampler =
            request.sampler(&self.diffusion, self.image_shape(), PAGE_MAX_IMAGES, &self.device).map_err(js_err)?;
        let class = usize::try_from(class).ok();
        let guidance = Guidance::from_noise(class, &request.seeds, w, self.model.num_classes()).map_err(js_err)?;
        self.begin(sampler, guidance, grid_cols(count));
        Ok(())
    }

    /// Starts SDEdit on a drawing: `rgba` is `image_size`² RGBA pixels (the page's pad scaled to
    /// the model's size), noised to step `t` with seed `seed`'s ε and denoised, guided to
    /// `class` (negative: ∅, the drawing tells the class), as `ddpm edit` does with the same
    /// pixels saved as a PNG.
    #[allow(clippy::too_many_arguments)]
    pub fn start_edit(
        &mut self,
        rgba: Vec<u8>,
        seed: u32,
        t: usize,
        steps: usize,
        eta: f64,
        class: i32,
        w: f64,
    ) -> Result<(), JsError> {
        let [c, size, _] = self.image_shape();
        let pixels = drawing_pixels(&rgba, c, size).map_err(js_err)?;
        let x0 = Tensor::from_data(burn::tensor::TensorData::new(pixels, [1, c, size, size]), &self.device);
        let request = EditRequest { seed: seed.into(), t, steps, eta };
        let sampler = request.sampler(&self.diffusion, x0).map_err(js_err)?;
        self.begin(sampler, self.class_guidance(class, w)?, 1);
        Ok(())
    }

    /// Checks an interpolation request and starts sampling its A and B (as `ddpm interpolate`
    /// samples them); [`Self::start_interpolation`] with the same request then runs the frames.
    pub fn start_interpolation_ends(&mut self, request: &Interpolation) -> Result<(), JsError> {
        let r = &request.request;
        r.check(&self.diffusion, PAGE_MAX_FRAMES).map_err(js_err)?;
        let [ends, _] = r.guidance(request.w, self.model.num_classes()).map_err(js_err)?;
        let sampler = r.ends().sampler(&self.diffusion, self.image_shape(), 2, &self.device).map_err(js_err)?;
        self.begin(sampler, ends, 2);
        Ok(())
    }

    /// Starts the interpolation from A to B, its frames as one batch: in "noise" mode A and B
    /// are the last finished run's images (those of [`Self::start_interpolation_ends`]).
    pub fn start_interpolation(&mut self, request: &Interpolation) -> Result<(), JsError> {
        let r = &request.request;
        let sampler = r
            .sampler(&self.diffusion, self.image_shape(), self.last.clone(), PAGE_MAX_FRAMES, &self.device)
            .map_err(js_err)?;
        let [_, frames] = r.guidance(request.w, self.model.num_classes()).map_err(js_err)?;
        self.begin(sampler, frames, r.frames);
        Ok(())
    }

    /// Runs one step of the current run and resolves to
    /// `{index, total, t, width, height, x_t, x0, done}` (RGBA grids), or null when there is
    /// nothing to run. The promise owns its tensors: the page may start another run meanwhile.
    pub fn step(&mut self) -> js_sys::Promise {
        let Some(sampler) = self.sampler.as_mut() else {
            return js_sys::Promise::resolve(&JsValue::NULL);
        };
        #[cfg(not(feature = "threads"))]
        let eps_theta = Guided { model: &self.model, guidance: self.guidance.as_ref() };
        // Slices of the batch at once on the pool's threads, as natively (flex's own ops run
        // on the calling thread only): the same images as one pass.
        #[cfg(feature = "threads")]
        let eps_theta = crate::threads::Sharded::new(&self.model, cpu_threads()).guided(self.guidance.clone());
        let Some(step) = sampler.step(&eps_theta) else {
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
    /// Makes `sampler` the run in progress, guided by `guidance`, drawn in `cols` columns.
    fn begin(&mut self, sampler: Sampler, guidance: Option<Guidance>, cols: usize) {
        (self.sampler, self.guidance, self.cols) = (Some(sampler), guidance, cols);
    }

    /// Guidance towards `class` with strength `w`; a negative class is unguided (∅).
    fn class_guidance(&self, class: i32, w: f64) -> Result<Option<Guidance>, JsError> {
        let Ok(class) = usize::try_from(class) else { return Ok(None) };
        Guidance::class(class, w, self.model.num_classes()).map(Some).map_err(js_err)
    }

    fn image_shape(&self) -> [usize; 3] {
        let u = &self.header.unet;
        [u.image_channels, u.image_size, u.image_size]
    }
}

/// The page's WebGPU device, initialised on first use.
#[cfg(feature = "webgpu")]
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

#[cfg(not(feature = "webgpu"))]
async fn gpu() -> Result<Device, String> {
    Err("this module is the CPU-only (threaded) build".into())
}
