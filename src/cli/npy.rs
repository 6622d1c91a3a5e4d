//! Arrays in NumPy's `.npy` files, the form every parity check with another framework speaks:
//! x_t in for `ddpm eps` and `ddpm sample --x-t`, ε out. Read through the `npyz` crate and
//! checked before use: little-endian f32 in C order, a batch of the model's [C, H, W] images
//! (or one image without the batch axis), within the CLI's batch bound, every value finite.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use npyz::WriterBuilder;

use ddpm::limits;

/// The images of `path` as a [B, C, H, W] tensor for a model of `image` = [C, H, W].
pub fn read_images(path: &Path, image: [usize; 3], device: &Device) -> Result<Tensor<4>> {
    let name = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("reading {name}"))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).with_context(|| format!("{name}: not a .npy file"))?;
    // The dtype as NumPy writes it in the header (a Python literal: quoted).
    let descr = npy.dtype().descr();
    let dtype = descr.trim_matches('\'');
    ensure!(dtype == "<f4", "{name}: the array's dtype is {dtype}; expected little-endian float32 (<f4)");
    ensure!(
        npy.order() == npyz::Order::C,
        "{name}: the array is in Fortran order; save it in C order (np.ascontiguousarray)"
    );
    let [c, h, w] = image;
    let shape: Vec<usize> = npy.shape().iter().map(|&n| usize::try_from(n).unwrap_or(usize::MAX)).collect();
    let batch = match shape[..] {
        [b, cc, hh, ww] if [cc, hh, ww] == image => b,
        [cc, hh, ww] if [cc, hh, ww] == image => 1,
        _ => bail!("{name}: the array's shape is {shape:?}; the model takes [B, {c}, {h}, {w}] or [{c}, {h}, {w}]"),
    };
    ensure!(
        (1..=limits::MAX_SAMPLE_BATCH).contains(&batch),
        "{name}: {batch} images; 1..={} at a time",
        limits::MAX_SAMPLE_BATCH
    );
    let values: Vec<f32> =
        npy.into_vec().with_context(|| format!("{name}: the data is shorter than its header says"))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("{name}: value {i} is {}; every value must be finite", values[i]);
    }
    Ok(Tensor::from_data(TensorData::new(values, [batch, c, h, w]), device))
}

/// Writes `x` as a float32 .npy file of its shape, atomically.
pub fn write(path: &Path, x: Tensor<4>) -> Result<()> {
    let shape: Vec<u64> = x.dims().iter().map(|&n| n as u64).collect();
    let values = super::to_vec(x);
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut bytes).begin_nd()?;
    writer.extend(values)?;
    writer.finish()?;
    ddpm::atomic_write::atomic_write(path, &bytes)
}
