//! The browser API (wasm-bindgen). It parses, calls the library and returns pixels: no maths
//! and no policy of its own. The page sends one typed [`Request`] (a plain JS object, the
//! library's serde form) and reads typed objects back ([`page_limits`], [`Ddpm::describe`],
//! each step). A run is a value the page holds ([`PageRun`]), not state of the model: several
//! may run on one model at once (a live frame beside a long run), and a page may load several
//! models. Every read from the GPU is asynchronous (synchronous reads panic on WebGPU), and no
//! borrow of the model or of a run outlives a call.

use std::cell::RefCell;

use burn::tensor::{Device, Tensor};
use js_sys::{Object, Reflect, Uint8ClampedArray};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::animation;
use crate::diffusion::Diffusion;
use crate::field_error::FieldError;
use crate::forward::{ForwardRequest, LOSS_CURVE_POINTS, ScheduleCurves};
#[cfg(not(feature = "threads"))]
use crate::guidance::Guided;
use crate::guidance::{DEFAULT_GUIDANCE, MAX_GUIDANCE};
use crate::images::{DataRange, Grid};
use crate::request::{Bounds, Ends, Model, PAGE_BOUNDS, Request, Run};
use crate::solvers::{DEFAULT_SAMPLER, SamplerChoice, SamplerConfig, SolverKind, Spacing};
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

/// A loaded model.
#[wasm_bindgen]
pub struct Ddpm {
    model: UNet,
    header: Header,
    diffusion: Diffusion,
    device: Device,
    on_gpu: bool,
    backend: String,
    /// The last noise-mode interpolation's A and B: a live slider's next λ starts from them.
    ends: RefCell<Option<Ends>>,
}

/// One request in progress on a model ([`Ddpm::start`]); stepped by [`Ddpm::step`], dropped by
/// the page (`free()`) to stop it.
#[wasm_bindgen]
pub struct PageRun {
    run: Option<Run>,
}

/// The page's bounds and the library's defaults, which the page's controls take as theirs.
#[derive(Serialize)]
struct PageLimits {
    #[serde(flatten)]
    bounds: Bounds,
    max_guidance: f64,
    default_guidance: f64,
    /// The sampler when neither the visitor nor the weights file names one.
    default_sampler: SamplerConfig,
    samplers: Vec<&'static str>,
    /// Each sampler's evaluations when picked without a step count (null: all T).
    default_steps: std::collections::BTreeMap<&'static str, Option<usize>>,
    spacings: Vec<&'static str>,
    max_weights_bytes: f64,
    /// The pixels the page keeps of a run for its scrubber and animation, at most.
    max_recorded_bytes: f64,
}

/// The page's bounds and defaults: `{max_images, max_frames, max_guidance, default_guidance,
/// default_sampler: {solver, steps, eta, spacing}, samplers, default_steps, spacings,
/// max_weights_bytes, max_recorded_bytes}` (a
/// model's own T and default sampler are in [`Ddpm::describe`]).
#[wasm_bindgen]
pub fn page_limits() -> Result<JsValue, JsError> {
    to_js(&PageLimits {
        bounds: PAGE_BOUNDS,
        max_guidance: MAX_GUIDANCE,
        default_guidance: DEFAULT_GUIDANCE,
        default_sampler: DEFAULT_SAMPLER,
        samplers: SolverKind::ALL.iter().map(|k| k.name()).collect(),
        default_steps: SolverKind::ALL.iter().map(|k| (k.name(), k.default_steps())).collect(),
        spacings: Spacing::ALL.iter().map(|s| s.name()).collect(),
        max_weights_bytes: crate::limits::PAGE_MAX_WEIGHTS_BYTES as f64,
        max_recorded_bytes: crate::limits::PAGE_MAX_RECORDED_BYTES as f64,
    })
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

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A request's error as a JS Error whose `field` names the request's field (the page's control).
fn field_err(e: FieldError) -> JsValue {
    let error = js_sys::Error::new(&e.message);
    let _ = Reflect::set(&error, &"field".into(), &e.field.into());
    error.into()
}

fn to_js(value: &impl Serialize) -> Result<JsValue, JsError> {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_err)
}

/// What the page shows of a loaded model and the defaults its controls start from.
#[derive(Serialize)]
struct Description<'a> {
    backend: &'a str,
    on_gpu: bool,
    unet: &'a crate::unet::UNetConfig,
    schedule: &'a crate::diffusion::ScheduleConfig,
    diffusion_steps: usize,
    image_size: usize,
    image_channels: usize,
    /// 0 for an unconditional model.
    num_classes: usize,
    /// Names of the classes (empty: their numbers).
    class_names: Vec<String>,
    params: usize,
    /// The sampler this model is drawn with unless the visitor picks another (the file's own,
    /// else the library's).
    default_sampler: SamplerConfig,
    /// What a distilled student learnt, if it is one.
    student: Option<&'a crate::weights::Student>,
    /// The guidance slider's range and start: a student's learnt range, else 0..MAX_GUIDANCE.
    guidance_range: [f64; 2],
    default_guidance: f64,
    /// Where a partial run (SDEdit, labml's interpolation) asked at step t starts, for each t:
    /// a grid-only student's snapped step ([`Model::start_t`]); empty where every t is its own.
    start_t: Vec<usize>,
    /// Training metadata, for display: steps trained, averaged steps.
    info: &'a std::collections::BTreeMap<String, String>,
}

#[wasm_bindgen]
impl Ddpm {
    /// Builds the model described by the weights file `bytes` (fetched by the page). With
    /// `use_gpu` it runs on WebGPU when an adapter is available, else on the CPU (flex).
    pub async fn create(bytes: Vec<u8>, use_gpu: bool) -> Result<Ddpm, JsError> {
        let header = weights::read_header(&bytes).map_err(js_err)?;
        page_holds(&header)?;
        let cpu = match cpu_threads() {
            1 => "CPU (flex, wasm)".to_string(),
            n => format!("CPU (flex, wasm, {n} threads)"),
        };
        let (device, on_gpu, backend) = if !use_gpu {
            (Device::flex(), false, cpu)
        } else {
            match gpu().await {
                Ok(device) => (device, true, "WebGPU".to_string()),
                Err(reason) => (Device::flex(), false, format!("{cpu} — WebGPU unavailable: {reason}")),
            }
        };
        let (model, _) = weights::load(&bytes, &device).map_err(js_err)?;
        let diffusion = Diffusion::new(header.schedule.clone());
        Ok(Ddpm { model, header, diffusion, device, on_gpu, backend, ends: RefCell::new(None) })
    }

    #[wasm_bindgen(getter)]
    pub fn on_gpu(&self) -> bool {
        self.on_gpu
    }

    /// The model, its backend and its defaults (see `Description` in src/web.rs).
    pub fn describe(&self) -> Result<JsValue, JsError> {
        let u = &self.header.unet;
        let default_sampler =
            SamplerChoice::default().resolve(self.header.sampler.as_ref(), self.diffusion.steps()).map_err(js_err)?;
        let model = Model::of(&self.header, &self.diffusion, &self.device);
        let start_t = match &self.header.student {
            Some(s) if s.grid_only => (0..self.diffusion.steps())
                .map(|t| model.start_t(t, &default_sampler))
                .collect::<Result<Vec<_>, _>>()
                .map_err(js_err)?,
            _ => Vec::new(),
        };
        to_js(&Description {
            backend: &self.backend,
            on_gpu: self.on_gpu,
            unet: u,
            schedule: &self.header.schedule,
            diffusion_steps: self.diffusion.steps(),
            image_size: u.image_size,
            image_channels: u.image_channels,
            num_classes: self.model.num_classes().unwrap_or(0),
            class_names: self.header.class_names(),
            params: burn::module::Module::num_params(&self.model),
            default_sampler,
            student: self.header.student.as_ref(),
            guidance_range: model.guidance_range(),
            default_guidance: model.default_guidance(),
            start_t,
            info: &self.header.info,
        })
    }

    /// Checks a request (`{kind: 'sample' | 'interpolate' | 'edit', ...}`, the serde form of
    /// [`Request`]) against the model and the page's bounds and returns its run. A refused
    /// request throws an Error whose `field` names the field. A noise-mode interpolation with the
    /// last one's seeds, classes, guidance and sampler starts from its A and B.
    pub fn start(&self, request: JsValue) -> Result<PageRun, JsValue> {
        let request: Request = serde_wasm_bindgen::from_value(request)
            .map_err(|e| field_err(FieldError::new("request", format!("not a request the page can make: {e}"))))?;
        let model = Model::of(&self.header, &self.diffusion, &self.device);
        let run = request.start_with(&model, &PAGE_BOUNDS, self.ends.borrow().as_ref()).map_err(field_err)?;
        Ok(PageRun { run: Some(run) })
    }

    /// Runs one step of `run` and resolves to `{phase, index, total, t, update, width, height,
    /// x_t, x0, phase_done, done}` (RGBA grids; `update`: the solver's rule and coefficients),
    /// or null when it has nothing left to run. The promise owns its tensors: the page may step
    /// another run, or drop this one, meanwhile.
    pub fn step(&self, run: &mut PageRun) -> js_sys::Promise {
        let Some(pending) = run.run.as_mut() else {
            return js_sys::Promise::resolve(&JsValue::NULL);
        };
        #[cfg(not(feature = "threads"))]
        let eps_theta = |g: Option<&crate::guidance::Guidance>| Guided { model: &self.model, guidance: g.cloned() };
        // Slices of the batch at once on the pool's threads, as natively (flex's own ops run
        // on the calling thread only): the same images as one pass.
        #[cfg(feature = "threads")]
        let eps_theta = |g: Option<&crate::guidance::Guidance>| {
            crate::threads::Sharded::new(&self.model, cpu_threads()).guided(g.cloned())
        };
        let Some(s) = pending.step(eps_theta) else {
            return js_sys::Promise::resolve(&JsValue::NULL);
        };
        if let Some(ends) = pending.take_ends() {
            self.ends.replace(Some(ends));
        }
        let range = self.diffusion.data_range();
        if s.done {
            run.run = None;
        }
        wasm_bindgen_futures::future_to_promise(async move {
            let shape = s.x.dims();
            let x_t = read(s.x).await?;
            let x0 = read(s.step.x0_hat).await?;
            let (gx, g0) = (Grid::new(&x_t, shape, s.cols, 1, range), Grid::new(&x0, shape, s.cols, 1, range));
            let out = Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(drop);
            set("phase", to_js(&s.phase)?)?;
            set("index", s.step.index.into())?;
            set("total", s.step.total.into())?;
            set("t", s.step.t.into())?;
            set("update", to_js(&s.step.update)?)?;
            set("width", gx.width.into())?;
            set("height", gx.height.into())?;
            set("x_t", Uint8ClampedArray::from(&gx.rgba[..]).into())?;
            set("x0", Uint8ClampedArray::from(&g0.rgba[..]).into())?;
            set("phase_done", s.phase_done.into())?;
            set("done", s.done.into())?;
            Ok(out.into())
        })
    }
}

#[wasm_bindgen]
impl Ddpm {
    /// The forward process at one t for the page's first panel ([`ForwardRequest`]: the
    /// example's RGBA pixels, t, ε's seed, its class): one network evaluation, resolving to
    /// `{t, alpha_bar, loss, width, height, x0, eps, x_t, eps_hat, x0_hat}` (RGBA of one image
    /// each: x₀, x_t and x̂₀ in the model's data range, ε and ε̂ over [−3, 3], three standard
    /// deviations). A refused request throws, `field` naming the field.
    pub fn forward(&self, request: JsValue) -> Result<js_sys::Promise, JsValue> {
        let request: ForwardRequest = serde_wasm_bindgen::from_value(request)
            .map_err(|e| field_err(FieldError::new("request", format!("not a forward request: {e}"))))?;
        let model = Model::of(&self.header, &self.diffusion, &self.device);
        let view = request.view(&self.model, &model).map_err(field_err)?;
        let t = request.t;
        let range = self.diffusion.data_range();
        let noise = DataRange { lo: -3.0, hi: 3.0 };
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let shape = view.x0.dims();
            let out = Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(drop);
            let images = [
                ("x0", view.x0, range),
                ("eps", view.eps, noise),
                ("x_t", view.x_t, range),
                ("eps_hat", view.eps_hat, noise),
                ("x0_hat", view.x0_hat, range),
            ];
            for (name, x, r) in images {
                let grid = Grid::new(&read(x).await?, shape, 1, 0, r);
                set(name, Uint8ClampedArray::from(&grid.rgba[..]).into())?;
            }
            set("width", shape[3].into())?;
            set("height", shape[2].into())?;
            let loss = view.loss.into_data_async().await.map_err(|e| JsValue::from_str(&format!("{e:?}")))?;
            let loss = loss.convert::<f32>().try_to_vec::<f32>().map_err(|e| JsValue::from_str(&format!("{e:?}")))?;
            set("loss", loss[0].into())?;
            set("alpha_bar", view.alpha_bar.into())?;
            set("t", t.into())?;
            Ok(out.into())
        }))
    }

    /// The points of the loss-versus-t curve of the forward panel's example and ε from `first`
    /// on, at most `count` of them ([`ForwardRequest::loss_curve`]: one batch of evaluations),
    /// resolving to `{t, loss, points}` (`points`: how many the whole curve has).
    pub fn loss_curve(&self, request: JsValue, first: usize, count: usize) -> Result<js_sys::Promise, JsValue> {
        let request: ForwardRequest = serde_wasm_bindgen::from_value(request)
            .map_err(|e| field_err(FieldError::new("request", format!("not a forward request: {e}"))))?;
        let model = Model::of(&self.header, &self.diffusion, &self.device);
        let points = first..first.saturating_add(count).min(LOSS_CURVE_POINTS);
        let curve = request.loss_curve(&self.model, &model, points).map_err(field_err)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let loss = curve.loss.into_data_async().await.map_err(|e| JsValue::from_str(&format!("{e:?}")))?;
            let loss = loss.convert::<f32>().try_to_vec::<f32>().map_err(|e| JsValue::from_str(&format!("{e:?}")))?;
            let out = Object::new();
            Reflect::set(&out, &"t".into(), &to_js(&curve.t)?)?;
            Reflect::set(&out, &"loss".into(), &to_js(&loss)?)?;
            Reflect::set(&out, &"points".into(), &LOSS_CURVE_POINTS.into())?;
            Ok(out.into())
        }))
    }

    /// The schedule the panels draw: `{beta, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, snr}`,
    /// one value per t.
    pub fn schedule(&self) -> Result<JsValue, JsError> {
        to_js(&ScheduleCurves::of(&self.diffusion))
    }
}

/// Refuses a model above the page's bound ([`crate::limits::PAGE_MAX_PARAMS`]), from its header.
fn page_holds(header: &Header) -> Result<(), JsError> {
    let params = header.unet.num_params();
    if params > crate::limits::PAGE_MAX_PARAMS {
        return Err(JsError::new(&format!(
            "the model has {params} parameters, above the largest this page holds ({}): draw it with the ddpm CLI",
            crate::limits::PAGE_MAX_PARAMS
        )));
    }
    Ok(())
}

/// Checks a weights download from its first bytes, before the rest arrives: false while its
/// header is incomplete, true when the header is valid and the page can hold the model it
/// describes; throws the reason otherwise (the download is then cancelled).
#[wasm_bindgen]
pub fn check_weights_header(prefix: &[u8]) -> Result<bool, JsError> {
    match weights::read_header_prefix(prefix).map_err(js_err)? {
        None => Ok(false),
        Some(header) => page_holds(&header).map(|()| true),
    }
}

/// The steps of a `total`-step run that "download as animation" shows (those `ddpm animate`
/// shows with its defaults: [`animation::steps`]).
#[wasm_bindgen]
pub fn animation_steps(total: usize) -> Vec<u32> {
    animation::steps(total, animation::FRAMES).into_iter().map(|i| i as u32).collect()
}

/// A run as a GIF, as `ddpm animate` writes it: `x_t` and `x0` hold the chosen steps' grids
/// (each `width` × `height` RGBA, as the steps gave them), one after another.
#[wasm_bindgen]
pub fn animation_gif(width: usize, height: usize, x_t: Vec<u8>, x0: Vec<u8>) -> Result<Vec<u8>, JsError> {
    let size = width * height * 4;
    if size == 0 || x_t.len() != x0.len() || x_t.len() % size != 0 || x_t.len() / size > animation::FRAMES {
        return Err(JsError::new(&format!(
            "an animation is up to {} pairs of {width}×{height} grids; got {} and {} bytes",
            animation::FRAMES,
            x_t.len(),
            x0.len()
        )));
    }
    let grid = |rgba: &[u8]| Grid { width, height, rgba: rgba.to_vec() };
    let frames = x_t
        .chunks_exact(size)
        .zip(x0.chunks_exact(size))
        .map(|(a, b)| animation::frame(&grid(a), &grid(b), animation::SCALE))
        .collect::<Result<Vec<_>, _>>()
        .map_err(js_err)?;
    animation::gif(frames).map_err(js_err)
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
