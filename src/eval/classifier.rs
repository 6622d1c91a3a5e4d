//! The small CNN whose features the Fréchet distance is measured in, trained on the real
//! training images' classes (digits; emoji categories) and cached beside the weights.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::stats::argmax;
use crate::data::Dataset;
use crate::noise::Noise;
use crate::weights::{self, Precision};

/// conv(32) → pool → conv(64) → pool → 128 features → `classes` logits.
#[derive(Module, Debug)]
pub struct Classifier {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    features: Linear,
    classes: Linear,
}

impl Classifier {
    /// For [C, H, W] images (H and W divisible by 4) in `classes` classes.
    pub fn new([c, h, w]: [usize; 3], classes: usize, device: &Device) -> Self {
        let conv =
            |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
        Self {
            conv1: conv(c, 32),
            conv2: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            features: LinearConfig::new(64 * (h / 4) * (w / 4), 128).init(device),
            classes: LinearConfig::new(128, classes).init(device),
        }
    }

    /// Penultimate features [B, 128] and class logits [B, classes] of images in [−1, 1].
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<2>, Tensor<2>) {
        let h = self.pool.forward(relu(self.conv1.forward(x)));
        let h = self.pool.forward(relu(self.conv2.forward(h)));
        let f = relu(self.features.forward(h.flatten(1, 3)));
        (f.clone(), self.classes.forward(f))
    }
}

/// Trains the classifier (Adam, `epochs` epochs of batch 64) and returns it with its held-out
/// accuracy.
pub fn train_classifier(
    train: &Dataset,
    held: &Dataset,
    classes: usize,
    epochs: usize,
    device: &Device,
) -> (Classifier, f64) {
    let ad = device.clone().autodiff();
    device.seed(0);
    let mut model = Classifier::new(train.shape, classes, &ad);
    let mut optim = AdamConfig::new().init();
    let mut noise = Noise::new(0);
    let labels = train.labels.as_ref().expect("labels");
    let steps = epochs * train.len() / 64;
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

/// Loads a cached classifier of `model`'s shape and its held-out accuracy.
pub fn load_classifier(path: &Path, model: Classifier, device: &Device) -> Result<(Classifier, f64)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    let accuracy = meta.metadata().as_ref().and_then(|m| m.get("held_out_accuracy")).and_then(|a| a.parse().ok());
    let model = weights::load_module(model, &bytes, device).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((model, accuracy.with_context(|| format!("{}: no held_out_accuracy in the metadata", path.display()))?))
}

/// The cached classifier, or a new one trained on `train` and cached at `path`.
pub fn classifier(
    path: &Path,
    train: &Dataset,
    held: &Dataset,
    classes: usize,
    epochs: usize,
    device: &Device,
) -> Result<(Classifier, f64)> {
    if path.exists() {
        return load_classifier(path, Classifier::new(train.shape, classes, device), device);
    }
    eprintln!("training the classifier (once; cached in {})...", path.display());
    let (model, accuracy) = train_classifier(train, held, classes, epochs, device);
    let meta = HashMap::from([("held_out_accuracy".to_string(), accuracy.to_string())]);
    let bytes = weights::module_to_safetensors(&model, meta, Precision::F32)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::atomic_write::atomic_write(path, &bytes)?;
    Ok((model, accuracy))
}
