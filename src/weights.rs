//! The weights file: safetensors with labml's `state_dict()` keys and PyTorch layouts, and the
//! model and schedule config in the header's metadata, so a reader (the page, `ddpm sample`,
//! or PyTorch) rebuilds the right model from the file alone.
//!
//! Loading validates everything before touching the model: the format and its version, the
//! config, and every tensor's name, dtype and shape. Any problem is one [`WeightsError`].

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::diffusion::ScheduleConfig;
use crate::guidance::MAX_GUIDANCE;
use crate::limits;
use crate::solvers::SamplerConfig;
use crate::unet::{UNet, UNetConfig};

pub const FORMAT: &str = "ddpm-web";
/// Version 2 added `sampler`, the model's own default sampler; version 3 `unet.guidance_input`
/// (a distilled student takes w as an input); version 4 what an imported labml model needs:
/// `unet.attn_norm`, `unet.attn_softmax` and `schedule.data_range`; version 5 `student`, what a
/// distilled student learnt; version 6 `guidance`, the model's own default guidance strength.
/// Older files (without those fields) are still read; a later version is refused, as is any field
/// a config does not know or a field newer than its file's version.
pub const FORMAT_VERSION: u32 = 6;
const READABLE_VERSIONS: [u32; 6] = [1, 2, 3, 4, 5, 6];

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("the file is {0} bytes, above the largest supported weights file ({max} bytes)", max = limits::MAX_WEIGHTS_BYTES)]
    TooLarge(u64),
    #[error("not a safetensors file ({0})")]
    NotSafetensors(String),
    #[error("not a ddpm-web weights file: {0}")]
    Format(String),
    #[error(
        "weights format version {found} is not supported (this build reads versions 1 to {FORMAT_VERSION}; a newer ddpm may read it)"
    )]
    Version { found: String },
    #[error("bad model config in the weights file: {0}")]
    Config(String),
    #[error("tensor `{0}` is missing from the weights file")]
    Missing(String),
    #[error("tensor `{0}` in the weights file is not part of this model")]
    Unexpected(String),
    #[error("tensor `{key}` has shape {found:?}, the model needs {expected:?}")]
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tensor `{key}` has dtype {dtype}, expected F32 or F16")]
    Dtype { key: String, dtype: String },
    #[error("tensor `{0}` holds NaN or infinite values")]
    NonFinite(String),
}

/// Storage precision of an exported file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precision {
    F32,
    F16,
}

/// What the header says about the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub unet: UNetConfig,
    pub schedule: ScheduleConfig,
    /// The sampler the model is meant to be drawn with (None: the library's default).
    pub sampler: Option<SamplerConfig>,
    /// What a distilled student learnt (None: not a student).
    pub student: Option<Student>,
    /// The guidance strength a class-conditional model is drawn with when none is asked for
    /// (None: the library's [`crate::guidance::DEFAULT_GUIDANCE`]). A student's w is its own: it
    /// learnt the guided teacher only approximately, and reaches the teacher's class fidelity at
    /// a slightly larger w (docs/distillation.md), which its file then names.
    pub guidance: Option<f64>,
    /// The rest of the metadata (training step, data set, ...), for display.
    pub info: BTreeMap<String, String>,
}

/// What a distilled student (`ddpm distil`) learnt: the guidance strengths it takes, and whether
/// it knows only the time steps of its own sampler (a stage-2 student, taught to step from one
/// point of its grid to the next, and nowhere else).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Student {
    pub w_min: f64,
    pub w_max: f64,
    pub grid_only: bool,
}

impl Student {
    fn validate(&self, header: &Header) -> Result<(), String> {
        let max = MAX_GUIDANCE;
        if !(0.0 <= self.w_min && self.w_min <= self.w_max && self.w_max <= max) {
            return Err(format!("student: the w range {}..{} is not within 0..{max}", self.w_min, self.w_max));
        }
        if !header.unet.guidance_input {
            return Err("student: a student takes w as an input (`unet.guidance_input`)".into());
        }
        if self.grid_only && header.sampler.is_none() {
            return Err("student: a student that knows only its grid names its sampler".into());
        }
        Ok(())
    }
}

/// The guidance strengths a model takes: a student's learnt range, else 0..[`MAX_GUIDANCE`].
pub fn guidance_range(student: Option<&Student>) -> [f64; 2] {
    student.map_or([0.0, MAX_GUIDANCE], |s| [s.w_min, s.w_max])
}

impl Header {
    /// The header of a model drawn with the library's sampler, not a student, without metadata.
    pub fn new(unet: UNetConfig, schedule: ScheduleConfig) -> Self {
        Header { unet, schedule, sampler: None, student: None, guidance: None, info: Default::default() }
    }

    /// A named default guidance belongs to a class-conditional model and lies in its range.
    pub fn check_guidance(&self) -> Result<(), String> {
        let Some(w) = self.guidance else { return Ok(()) };
        let [lo, hi] = guidance_range(self.student.as_ref());
        if self.unet.num_classes.is_none() {
            return Err("guidance: an unconditional model has no guidance to name".into());
        }
        if !(lo..=hi).contains(&w) {
            return Err(format!("guidance: {w} is outside the model's range {lo}..{hi}"));
        }
        Ok(())
    }

    /// A class-conditional model's class names, as training stored them (an image folder's
    /// subfolders, the emoji's categories); empty when the file has none (the digits: 0..9).
    pub fn class_names(&self) -> Vec<String> {
        self.info.get("class_names").and_then(|names| serde_json::from_str(names).ok()).unwrap_or_default()
    }
}

/// Serialises `model` with its config in the metadata (`header.info` adds free-form entries).
pub fn to_safetensors(model: &UNet, header: &Header, precision: Precision) -> Result<Vec<u8>, WeightsError> {
    let mut metadata: HashMap<String, String> = header.info.clone().into_iter().collect();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("format_version".into(), FORMAT_VERSION.to_string());
    metadata.insert("unet".into(), serde_json::to_string(&header.unet).expect("config serialises"));
    metadata.insert("schedule".into(), serde_json::to_string(&header.schedule).expect("config serialises"));
    if let Some(sampler) = &header.sampler {
        metadata.insert("sampler".into(), serde_json::to_string(sampler).expect("config serialises"));
    }
    if let Some(student) = &header.student {
        metadata.insert("student".into(), serde_json::to_string(student).expect("config serialises"));
    }
    if let Some(w) = header.guidance {
        metadata.insert("guidance".into(), w.to_string());
    }
    module_to_safetensors(model, metadata, precision)
}

/// Any module's float parameters as safetensors, under PyTorch-style keys and layouts.
pub fn module_to_safetensors<M: Module>(
    module: &M,
    metadata: HashMap<String, String>,
    precision: Precision,
) -> Result<Vec<u8>, WeightsError> {
    let mut collector = Collector { path: Vec::new(), tensors: Vec::new() };
    module.visit(&mut collector);
    let (dtype, raw): (Dtype, fn(&[f32]) -> Vec<u8>) = match precision {
        Precision::F32 => (Dtype::F32, |v| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Precision::F16 => (Dtype::F16, |v| v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        collector.tensors.into_iter().map(|(key, shape, values)| (key, shape, raw(&values))).collect();
    let views = bytes
        .iter()
        .map(|(key, shape, raw)| Ok((key.clone(), TensorView::new(dtype, shape.clone(), raw).map_err(st_err)?)))
        .collect::<Result<Vec<_>, WeightsError>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(st_err)?;
    Ok(with_sorted_header(bytes))
}

/// The file with its JSON header's keys in sorted order, the header's length unchanged (the same
/// entries, compact, padded with spaces as safetensors pads it): safetensors writes its metadata
/// in a `HashMap`'s order, which differs from run to run, and an export must be reproducible
/// byte for byte (a distillation run pins its teacher by the file's SHA-256).
fn with_sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    type Sorted = BTreeMap<String, serde_json::Value>;
    let n = u64::from_le_bytes(*bytes.first_chunk::<8>().expect("safetensors wrote a header")) as usize;
    let mut header: Sorted = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote JSON");
    if let Some(metadata) = header.get_mut("__metadata__") {
        let sorted: Sorted = serde_json::from_value(metadata.take()).expect("metadata is a map of strings");
        *metadata = serde_json::to_value(sorted).expect("serialises");
    }
    let mut json = serde_json::to_vec(&header).expect("serialises");
    if json.len() > n {
        return bytes; // the same entries, compact, are never longer: kept as written
    }
    json.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&json);
    bytes
}

fn st_err(e: safetensors::SafeTensorError) -> WeightsError {
    WeightsError::NotSafetensors(e.to_string())
}

/// Reads and validates the header's metadata.
pub fn read_header(bytes: &[u8]) -> Result<Header, WeightsError> {
    check_size(bytes.len() as u64)?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
    header_of(meta.metadata().clone())
}

/// The header of a file from its first bytes alone (the header's 8-byte length and its JSON), as
/// a download arrives: enough to refuse a model before the rest comes. `Ok(None)` while the
/// header is still incomplete; the tensors are checked by [`load`] once the file is whole.
pub fn read_header_prefix(prefix: &[u8]) -> Result<Option<Header>, WeightsError> {
    /// The JSON header's metadata; the tensors' entries are skipped.
    #[derive(serde::Deserialize)]
    struct Json {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let Some(len) = prefix.first_chunk::<8>() else { return Ok(None) };
    let n = u64::from_le_bytes(*len);
    if n > limits::MAX_WEIGHTS_HEADER_BYTES {
        return Err(WeightsError::NotSafetensors(format!("a header of {n} bytes")));
    }
    let Some(text) = prefix.get(8..8 + n as usize) else { return Ok(None) };
    let json: Json = serde_json::from_slice(text).map_err(|e| WeightsError::NotSafetensors(format!("header: {e}")))?;
    header_of(json.metadata).map(Some)
}

/// The header from the file's metadata, validated: the format and its version, then each config.
fn header_of(metadata: Option<HashMap<String, String>>) -> Result<Header, WeightsError> {
    let mut info: BTreeMap<String, String> =
        metadata.ok_or_else(|| WeightsError::Format("no metadata".into()))?.into_iter().collect();
    let format = info.remove("format").unwrap_or_default();
    if format != FORMAT {
        return Err(WeightsError::Format(format!("metadata `format` is {format:?}, expected {FORMAT:?}")));
    }
    let version = info.remove("format_version").unwrap_or_default();
    let readable = READABLE_VERSIONS.iter().find(|v| v.to_string() == version);
    if readable.is_none() {
        return Err(WeightsError::Version { found: version });
    }
    let mut parse =
        |key: &str| info.remove(key).ok_or_else(|| WeightsError::Config(format!("metadata `{key}` is missing")));
    let unet: UNetConfig =
        serde_json::from_str(&parse("unet")?).map_err(|e| WeightsError::Config(format!("unet: {e}")))?;
    let schedule: ScheduleConfig =
        serde_json::from_str(&parse("schedule")?).map_err(|e| WeightsError::Config(format!("schedule: {e}")))?;
    let sampler: Option<SamplerConfig> = match info.remove("sampler") {
        Some(_) if readable == Some(&1) => {
            return Err(WeightsError::Config("metadata `sampler` is not part of format version 1".into()));
        }
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| WeightsError::Config(format!("sampler: {e}")))?),
        None => None,
    };
    let student: Option<Student> = match info.remove("student") {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| WeightsError::Config(format!("student: {e}")))?),
        None => None,
    };
    let guidance: Option<f64> = match info.remove("guidance") {
        Some(text) => {
            Some(text.parse().map_err(|_| WeightsError::Config(format!("guidance: {text:?} is not a number")))?)
        }
        None => None,
    };
    let newer = [
        ("unet: `guidance_input`", 3, unet.guidance_input),
        ("unet: `attn_norm`", 4, !unet.attn_norm),
        ("unet: `attn_softmax`", 4, !unet.attn_softmax.is_keys()),
        ("schedule: `data_range`", 4, !schedule.data_range.is_paper()),
        ("`student`", 5, student.is_some()),
        ("`guidance`", 6, guidance.is_some()),
    ];
    if let Some((field, _, _)) = newer.iter().find(|(_, since, set)| *set && readable < Some(since)) {
        return Err(WeightsError::Config(format!("{field} is not part of format version {version}")));
    }
    unet.validate().map_err(WeightsError::Config)?;
    schedule.validate().map_err(WeightsError::Config)?;
    if let Some(sampler) = &sampler {
        sampler.check(schedule.steps).map_err(|e| WeightsError::Config(format!("sampler: {e}")))?;
    }
    let header = Header { unet, schedule, sampler, student, guidance, info };
    if let Some(student) = &header.student {
        student.validate(&header).map_err(WeightsError::Config)?;
    }
    header.check_guidance().map_err(WeightsError::Config)?;
    Ok(header)
}

/// Refuses a file (or a download) above [`limits::MAX_WEIGHTS_BYTES`] before it is read.
pub fn check_size(bytes: u64) -> Result<(), WeightsError> {
    if bytes > limits::MAX_WEIGHTS_BYTES { Err(WeightsError::TooLarge(bytes)) } else { Ok(()) }
}

/// Builds the model the file describes on `device` and fills in its weights.
pub fn load(bytes: &[u8], device: &Device) -> Result<(UNet, Header), WeightsError> {
    let header = read_header(bytes)?;
    let model = load_module(header.unet.init(device), bytes, device)?;
    Ok((model, header))
}

/// Fills `module`'s parameters from safetensors `bytes`, checking that every tensor is there
/// with the right dtype and shape and that the file holds nothing else. A tensor's values are
/// decoded only once its shape has matched the module's, so the memory used is the model's own
/// (whose size the validated config bounds), never what a header claims.
pub fn load_module<M: Module>(module: M, bytes: &[u8], device: &Device) -> Result<M, WeightsError> {
    let file = SafeTensors::deserialize(bytes).map_err(st_err)?;
    let tensors: HashMap<String, TensorView> = file.tensors().into_iter().collect();
    let mut loader = Loader { path: Vec::new(), tensors, device: device.clone(), error: None };
    let module = module.map(&mut loader);
    if let Some(error) = loader.error {
        return Err(error);
    }
    if let Some(key) = loader.tensors.keys().min() {
        return Err(WeightsError::Unexpected(key.clone()));
    }
    Ok(module)
}

/// A tensor's values as f32 (from F32 or F16), refusing NaN and infinities.
fn decode(key: &str, view: &TensorView) -> Result<Vec<f32>, WeightsError> {
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(WeightsError::Dtype { key: key.to_string(), dtype: format!("{other:?}") }),
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(WeightsError::NonFinite(key.to_string()));
    }
    Ok(values)
}

/// Tracks the module path as labml's key: enum variants are not part of it, burn's
/// GroupNorm `gamma`/`beta` are PyTorch's `weight`/`bias`, and `final_` is `final`.
/// Each path entry is (field name, type of the module holding it). Returns (key, whether the
/// leaf is a Linear's weight, which burn stores [in, out] and PyTorch [out, in]).
fn key(path: &[(String, String)]) -> (String, bool) {
    let mut parts: Vec<&str> =
        path.iter().filter(|(_, kind)| !kind.starts_with("Enum:")).map(|(n, _)| n.as_str()).collect();
    let renamed = match parts.last().copied() {
        Some("gamma") => Some("weight"),
        Some("beta") => Some("bias"),
        _ => None,
    };
    if let Some(r) = renamed {
        *parts.last_mut().expect("non-empty") = r;
    }
    let key = parts.iter().map(|p| if *p == "final_" { "final" } else { p }).collect::<Vec<_>>().join(".");
    let linear_weight = path.last().is_some_and(|(name, kind)| name == "weight" && kind == "Struct:Linear");
    (key, linear_weight)
}

struct Collector {
    path: Vec<(String, String)>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.into(), container_type.into()));
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (key, linear_weight) = key(&self.path);
        let mut tensor = param.val();
        if linear_weight {
            tensor = tensor.transpose();
        }
        let shape = tensor.dims().to_vec();
        let values = tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 after convert");
        self.tensors.push((key, shape, values));
    }
}

struct Loader<'a> {
    path: Vec<(String, String)>,
    tensors: HashMap<String, TensorView<'a>>,
    device: Device,
    error: Option<WeightsError>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.into(), container_type.into()));
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let (key, linear_weight) = key(&self.path);
        let shape: Vec<usize> = param.lazy_shape().dims::<D>().to_vec();
        let mut file_shape = shape.clone();
        if linear_weight {
            file_shape.reverse();
        }
        let Some(view) = self.tensors.remove(&key) else {
            self.error = Some(WeightsError::Missing(key));
            return param;
        };
        if view.shape() != file_shape {
            self.error = Some(WeightsError::Shape { key, expected: file_shape, found: view.shape().to_vec() });
            return param;
        }
        let values = match decode(&key, &view) {
            Ok(values) => values,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        let mut tensor = Tensor::<D>::from_data(TensorData::new(values, file_shape), &self.device);
        if linear_weight {
            tensor = tensor.transpose();
        }
        Param::initialized(param.id, tensor)
    }
}
