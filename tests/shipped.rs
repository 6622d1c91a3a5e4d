//! The shipped models load and draw what they were trained on: a loose version of the quality
//! bars on 16-sample batches from the default sampler (the library's, or the file's own: what
//! the page draws first), judged by the shipped classifiers, so a broken export or a wrong sampler
//! cannot land. `ddpm eval` on 1,000 samples is the real measure (docs/mnist-model.md,
//! docs/emoji-model.md). Two models are shipped: the class-conditional digits (the page's
//! default, drawn as "any" and guided to a chosen digit) and the unconditional colour emoji,
//! which keeps the unconditional path (no class embedding in the file) loading and sampling.

use burn::tensor::Device;
use ddpm::data::{Dataset, emoji};
use ddpm::diffusion::Diffusion;
use ddpm::eval::{
    Classifier, class_counts, class_entropy, confident_share, load_classifier, nearest_distances, predict,
};
use ddpm::guidance::{DEFAULT_GUIDANCE, Guidance, Guided, prior_class};
use ddpm::sampler::Sampler;
use ddpm::solvers::SamplerChoice;
use ddpm::weights;

const DIGITS: &str = "weights/mnist.safetensors";
const EMOJI: &str = "weights/emoji.safetensors";

/// 16 images of `shape` from `file` (seeds 0..16) at the default guidance, as `class` (None:
/// any, as the page draws it).
fn sample(file: &str, shape: [usize; 3], class: Option<usize>, want_classes: Option<usize>) -> Dataset {
    let device = Device::flex();
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file} is shipped: {e}"));
    let (model, header) = weights::load(&bytes, &device).expect("the shipped file loads");
    assert_eq!([header.unet.image_channels, header.unet.image_size], [shape[0], shape[1]], "{file}: shape");
    assert_eq!(header.unet.num_classes, want_classes, "{file}: classes");

    let diffusion = Diffusion::new(header.schedule.clone());
    let seeds: Vec<u64> = (0..16).collect();
    let guidance =
        Guidance::from_noise(class, &seeds, DEFAULT_GUIDANCE, model.num_classes()).expect("a class of the model");
    let eps_theta = Guided { model: &model, guidance: guidance.clone() };
    let config = SamplerChoice::default().resolve(header.sampler.as_ref(), diffusion.steps()).expect("the default");
    let x = Sampler::new(&diffusion, &config, shape, &seeds, &device).run(&eps_theta);
    Dataset { shape, pixels: x.into_data().try_to_vec::<f32>().unwrap(), labels: None }
}

/// The probabilities the shipped classifier `path` gives `samples`.
fn classify(path: &str, samples: &Dataset) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let (classifier, _) = load_classifier(path.as_ref(), Classifier::new(samples.shape, 10, &device), &device).unwrap();
    predict(&classifier, samples, &device).1
}

/// 16 digits from `file` and their classifier probabilities; also checks the share of
/// background pixels.
fn draw(file: &str, class: Option<usize>, want_classes: Option<usize>) -> Vec<Vec<f32>> {
    let samples = sample(file, [1, 28, 28], class, want_classes);
    // Digits are mostly dark background: a blank or noisy output fails here.
    let dark = samples.pixels.iter().filter(|&&v| v < -0.5).count() as f64 / samples.pixels.len() as f64;
    assert!((0.55..0.95).contains(&dark), "{file}: share of background pixels {dark:.2}");
    classify("weights/mnist-classifier.safetensors", &samples)
}

#[test]
fn the_digit_model_draws_any_digit_as_dealt_and_the_chosen_digit() {
    // "Any": confident, varied digits, each the class its seed is dealt (∅ would match one in ten).
    let probs = draw(DIGITS, None, Some(10));
    let (confident, entropy) = (confident_share(&probs), class_entropy(&probs));
    assert!(confident >= 0.4, "confidently classified share {confident:.2}");
    assert!(entropy >= 2.0, "class entropy {entropy:.2} bits over 16 samples");
    let top = |p: &[f32]| (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
    let dealt = probs.iter().zip(0u64..).filter(|(p, seed)| top(p) == prior_class(*seed, 10)).count();
    assert!(dealt >= 14, "{dealt} of 16 \"any\" digits are the class their seed is dealt");
    for class in [3, 8] {
        let counts = class_counts(&draw(DIGITS, Some(class), Some(10)));
        assert!(counts[class] >= 14, "class {class} guided at w = {DEFAULT_GUIDANCE}: classified as {counts:?}");
    }
}

#[test]
fn the_emoji_model_draws_varied_colour_emoji_on_white_and_copies_none() {
    let samples = sample(EMOJI, [3, 32, 32], None, None);
    // Planar CHW images → one [r, g, b] per pixel.
    let pixels: Vec<[f32; 3]> = samples
        .pixels
        .chunks(3 * 1024)
        .flat_map(|img| (0..1024).map(move |q| [img[q], img[1024 + q], img[2048 + q]]))
        .collect();
    // Emoji are composited on white: a share of white background, neither none nor all (the
    // real ones: 45 % on average).
    let white = pixels.iter().filter(|rgb| rgb.iter().all(|&v| v > 0.8)).count() as f64 / pixels.len() as f64;
    assert!((0.1..0.9).contains(&white), "share of white pixels {white:.2}");
    // Colour: the channels differ (a gray drawing, or one channel copied thrice, fails; the real
    // emoji's mean spread max − min over the channels is 0.38 on the [−1, 1] scale).
    let chroma = pixels
        .iter()
        .map(|rgb| rgb.iter().fold(f32::MIN, |a, &b| a.max(b)) - rgb.iter().fold(f32::MAX, |a, &b| a.min(b)))
        .sum::<f32>()
        / pixels.len() as f32;
    assert!(chroma > 0.1, "mean channel spread {chroma:.3}");
    // Varied: the category classifier spreads them over several categories.
    let entropy = class_entropy(&classify("weights/emoji-classifier.safetensors", &samples));
    assert!(entropy >= 1.0, "category entropy {entropy:.2} bits over 16 samples");
    // No sample lies closer to a training emoji than the closest held-out emoji does (1.84).
    let [train, held] = emoji::splits().unwrap();
    let closest_real = nearest_distances(&held, &train).into_iter().fold(f64::INFINITY, f64::min);
    let nearest = nearest_distances(&samples, &train);
    assert!(nearest.iter().all(|&d| d > closest_real), "nearest training L2 {nearest:?} vs {closest_real}");
}
