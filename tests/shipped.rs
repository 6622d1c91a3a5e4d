//! The shipped models load and draw digits: a loose version of the quality bars on 16-sample
//! batches from the page's default sampler (DDIM, 150 steps, η = 1: what the page draws first),
//! judged by the shipped MNIST classifier, so a broken export or a wrong sampler cannot land.
//! `ddpm eval` on 1,000 samples is the real measure (docs/mnist-model.md). Two digit models are
//! shipped: the unconditional one (the page's default, which must keep loading and sampling as it
//! always did) and the class-conditional one warm-started from it.

use burn::tensor::Device;
use ddpm::data::Dataset;
use ddpm::diffusion::Diffusion;
use ddpm::eval::{Classifier, class_counts, class_entropy, confident_share, load_classifier, predict};
use ddpm::guidance::{DEFAULT_GUIDANCE, Guidance, Guided};
use ddpm::sampler::{Method, Sampler};
use ddpm::weights;

const CONDITIONAL: &str = "weights/mnist-classes.safetensors";
const UNCONDITIONAL: &str = "weights/mnist.safetensors";

/// 16 images from `file` (seeds 0..16), guided to `class` at the default guidance when given,
/// and their classifier probabilities; also checks the share of background pixels.
fn draw(file: &str, class: Option<usize>, want_classes: Option<usize>) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file} is shipped: {e}"));
    let (model, header) = weights::load(&bytes, &device).expect("the shipped file loads");
    assert_eq!([header.unet.image_channels, header.unet.image_size], [1, 28]);
    assert_eq!(header.unet.num_classes, want_classes, "{file}: classes");

    let diffusion = Diffusion::new(header.schedule.clone());
    let seeds: Vec<u64> = (0..16).collect();
    let guidance =
        class.map(|c| Guidance::class(c, DEFAULT_GUIDANCE, model.num_classes()).expect("a class of the model"));
    let eps_theta = Guided { model: &model, guidance: guidance.as_ref() };
    let x =
        Sampler::new(&diffusion, Method::Ddim { steps: 150, eta: 1.0 }, [1, 28, 28], &seeds, &device).run(&eps_theta);
    let samples = Dataset { shape: [1, 28, 28], pixels: x.into_data().try_to_vec::<f32>().unwrap(), labels: None };

    // Digits are mostly dark background: a blank or noisy output fails here.
    let dark = samples.pixels.iter().filter(|&&v| v < -0.5).count() as f64 / samples.pixels.len() as f64;
    assert!((0.55..0.95).contains(&dark), "{file}: share of background pixels {dark:.2}");

    let digits = Classifier::new([1, 28, 28], 10, &device);
    let (classifier, _) = load_classifier("weights/mnist-classifier.safetensors".as_ref(), digits, &device).unwrap();
    predict(&classifier, &samples, &device).1
}

/// Unguided: confident, varied digits.
fn assert_any_digits(file: &str, probs: &[Vec<f32>]) {
    let (confident, entropy) = (confident_share(probs), class_entropy(probs));
    assert!(confident >= 0.4, "{file}: confidently classified share {confident:.2}");
    assert!(entropy >= 2.0, "{file}: class entropy {entropy:.2} bits over 16 samples");
}

#[test]
fn the_unconditional_model_draws_digits() {
    assert_any_digits(UNCONDITIONAL, &draw(UNCONDITIONAL, None, None));
}

#[test]
fn the_class_conditional_model_draws_any_digit_unguided_and_the_chosen_digit_guided() {
    assert_any_digits(CONDITIONAL, &draw(CONDITIONAL, None, Some(10)));
    for class in [3, 8] {
        let counts = class_counts(&draw(CONDITIONAL, Some(class), Some(10)));
        assert!(counts[class] >= 14, "class {class} guided at w = {DEFAULT_GUIDANCE}: classified as {counts:?}");
    }
}
