//! A PyTorch checkpoint of labml's UNet (`torch.save(eps_model.state_dict())`) as our model:
//! burn-store's PyTorch reader parses the pickle without executing it; the config comes from the
//! tensors' shapes and the flags ([`crate::labml`]); every tensor is then checked by the weights
//! file's own loader (name, shape, finite values). Bounds and dtypes are checked on the metadata,
//! before any tensor's bytes are read. Every error names the file's problem and, where there is
//! one, the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch_reader::DType;
use safetensors::tensor::{Dtype, TensorView};

use crate::labml::{LabmlFlags, config_from_shapes};
use crate::limits;
use crate::unet::UNet;
use crate::weights::{Header, load_module};

/// The model in the checkpoint at `path` (its `state_dict` at the top, or under `key`), with the
/// header that describes it (config from its shapes and `flags`, `imported_from` in its info).
pub fn import_pth(
    path: &Path,
    key: Option<&str>,
    flags: &LabmlFlags,
    device: &Device,
) -> Result<(UNet, Header), String> {
    let reader = match key {
        Some(key) => PytorchReader::with_top_level_key(path, key),
        None => PytorchReader::new(path),
    }
    .map_err(|e| format!("not a PyTorch checkpoint this reader can parse: {e}"))?;
    let tensors: BTreeMap<String, _> = reader.into_tensors().into_iter().collect();
    if tensors.is_empty() {
        return Err("holds no tensors".into());
    }
    let mut total = 0usize;
    for (name, t) in &tensors {
        if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(format!("tensor `{name}` is {:?}; a UNet's parameters are floating point", t.dtype()));
        }
        total = total.saturating_add(t.num_elements());
        if total > limits::MAX_PARAMS {
            return Err(format!(
                "its tensors hold more than {} values, above the largest supported model",
                limits::MAX_PARAMS
            ));
        }
    }
    if !tensors.contains_key("image_proj.weight") {
        let under: Vec<&str> = tensors.keys().filter_map(|k| k.strip_suffix(".image_proj.weight")).collect();
        if !under.is_empty() {
            return Err(format!(
                "the state_dict is under a key, which import needs named (--key): {}",
                under.join(", ")
            ));
        }
    }
    let shapes: BTreeMap<String, Vec<usize>> = tensors.iter().map(|(k, t)| (k.clone(), t.shape().to_vec())).collect();
    let (unet, schedule) = config_from_shapes(&shapes, flags)?;
    // The values as f32 safetensors, one tensor read at a time, then the loader.
    let mut values = Vec::with_capacity(tensors.len());
    for (name, t) in &tensors {
        let bytes = t.read().map_err(|e| format!("reading tensor `{name}`: {e}"))?;
        values.push((name.clone(), t.shape().to_vec(), to_f32_bytes(t.dtype(), &bytes)?));
    }
    drop(tensors);
    let views = values
        .iter()
        .map(|(name, shape, raw)| TensorView::new(Dtype::F32, shape.clone(), raw).map(|v| (name.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let plain = safetensors::serialize(views, None).map_err(|e| e.to_string())?;
    drop(values);
    let model = load_module(unet.init(device), &plain, device).map_err(|e| e.to_string())?;
    let mut info = BTreeMap::new();
    if let Some(file) = path.file_name() {
        info.insert("imported_from".into(), file.to_string_lossy().into_owned());
    }
    Ok((model, Header { unet, schedule, sampler: None, student: None, guidance: None, info }))
}

/// A tensor's native-endian bytes of `dtype` as little-endian f32 bytes.
fn to_f32_bytes(dtype: DType, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let f32s: Vec<f32> = match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_ne_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_ne_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => return Err(format!("{other:?} is not a floating-point type")),
    };
    Ok(f32s.into_iter().flat_map(f32::to_le_bytes).collect())
}
