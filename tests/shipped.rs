//! The shipped model loads and draws digits: a loose version of the quality bar on a 16-sample
//! batch from the page's default sampler (DDIM, 150 steps, η = 1: what the page draws first), judged
//! by the shipped MNIST classifier, so a broken export or a wrong sampler cannot land. `ddpm eval`
//! on 1,000 samples is the real measure.

use burn::tensor::Device;
use ddpm::data::Dataset;
use ddpm::diffusion::Diffusion;
use ddpm::eval::{Classifier, class_entropy, confident_share, load_classifier, predict};
use ddpm::sampler::{Method, Sampler};
use ddpm::weights;

#[test]
fn shipped_weights_draw_digits() {
    let device = Device::flex();
    let bytes = std::fs::read("weights/mnist.safetensors").expect("weights/mnist.safetensors is shipped");
    let (model, header) = weights::load(&bytes, &device).expect("the shipped file loads");
    assert_eq!([header.unet.image_channels, header.unet.image_size], [1, 28]);

    let diffusion = Diffusion::new(header.schedule.clone());
    let seeds: Vec<u64> = (0..16).collect();
    let x = Sampler::new(&diffusion, Method::Ddim { steps: 150, eta: 1.0 }, [1, 28, 28], &seeds, &device).run(&model);
    let samples = Dataset { shape: [1, 28, 28], pixels: x.into_data().try_to_vec::<f32>().unwrap(), labels: None };

    // Digits are mostly dark background: a blank or noisy output fails here.
    let dark = samples.pixels.iter().filter(|&&v| v < -0.5).count() as f64 / samples.pixels.len() as f64;
    assert!((0.55..0.95).contains(&dark), "share of background pixels {dark:.2}");

    let digits = Classifier::new([1, 28, 28], 10, &device);
    let (classifier, _) = load_classifier("weights/mnist-classifier.safetensors".as_ref(), digits, &device).unwrap();
    let (_, probs) = predict(&classifier, &samples, &device);
    let (confident, entropy) = (confident_share(&probs), class_entropy(&probs));
    assert!(confident >= 0.4, "confidently classified share {confident:.2}");
    assert!(entropy >= 2.0, "class entropy {entropy:.2} bits over 16 samples");
}
