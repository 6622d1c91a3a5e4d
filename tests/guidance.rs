//! Class conditioning and classifier-free guidance: a conditional model starts as its
//! unconditional self, eq. 6 on one stacked pass equals the two predictions combined by hand
//! (sharded or not), labels dropped with probability 1 teach only ∅, and a conditional file
//! round-trips while an unconditional one is written as before.

use burn::tensor::{Device, Tensor};
use ddpm::data::Dataset;
use ddpm::diffusion::ScheduleConfig;
use ddpm::guidance::{Guidance, Guided};
use ddpm::noise::Noise;
use ddpm::sampler::EpsTheta;
use ddpm::threads::Sharded;
use ddpm::train::{TrainConfig, Trainer};
use ddpm::unet::{UNet, UNetConfig};
use ddpm::weights::{self, Header, Precision};

mod common;
use common::{bars, recipe, tiny};

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn inputs(batch: usize, device: &Device) -> (Tensor<4>, Tensor<1>) {
    let x = Noise::new(3).gaussian([batch, 1, 8, 8], device);
    let t = Tensor::<1>::from_floats(&[10.0, 500.0, 999.0][..batch], device);
    (x, t)
}

/// Bars labelled by their phase (3 classes), so that classes mean something.
fn labelled() -> Dataset {
    let mut data = bars(12);
    data.labels = Some((0..12).map(|i| (i % 3) as u8).collect());
    data
}

/// A conditional tiny model after a few steps of training with `label_dropout`.
fn trained(label_dropout: f64) -> UNet {
    let device = Device::flex();
    let unet = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() };
    let recipe = TrainConfig { label_dropout, ..recipe(6, 6, 1e-2) };
    let mut trainer = Trainer::new(unet, ScheduleConfig::default(), recipe, &device).unwrap();
    for _ in 0..6 {
        trainer.step(&labelled()).unwrap();
    }
    use burn::module::Module;
    trainer.model.valid()
}

#[test]
fn a_conditional_model_starts_as_the_unconditional_one() {
    let device = Device::flex();
    let plain = UNetConfig { dropout: 0.0, ..tiny() }.init(&device);
    let (x, t) = inputs(3, &device);
    let want = values(plain.forward(x.clone(), t.clone()));
    assert_eq!(plain.num_classes(), None);
    let warm = plain.with_classes(3);
    assert_eq!(warm.num_classes(), Some(3));
    // Every class, ∅ (3) included, gives the unconditional prediction: the embedding is zero.
    assert_eq!(values(warm.forward_class(x.clone(), t.clone(), &[0, 2, 3])), want);
    assert_eq!(values(warm.forward(x, t)), want);
    // A fresh conditional model has (classes + 1) × time-embedding-width more parameters.
    use burn::module::Module;
    let (u, c) =
        (tiny().init(&device).num_params(), UNetConfig { num_classes: Some(3), ..tiny() }.init(&device).num_params());
    assert_eq!(c - u, 4 * tiny().time_channels());
}

#[test]
fn guidance_is_eq_6_on_one_stacked_pass() {
    let device = Device::flex();
    let model = trained(0.2);
    let (x, t) = inputs(3, &device);
    let cond = values(model.forward_class(x.clone(), t.clone(), &[1, 1, 1]));
    let uncond = values(model.forward_class(x.clone(), t.clone(), &[3, 3, 3]));
    assert!(max_diff(&cond, &uncond) > 1e-4, "training moved the class rows apart");
    for w in [0.0, 1.0, 2.5] {
        let g = Some(Guidance { class: 1, w });
        let guided = values(Guided { model: &model, guidance: g }.eps(x.clone(), t.clone()));
        let by_hand: Vec<f32> = cond.iter().zip(&uncond).map(|(c, u)| u + w as f32 * (c - u)).collect();
        assert!(max_diff(&guided, &by_hand) < 1e-5, "w = {w}");
        // Three threads, each with a slice of the stacked batch: the same numbers.
        let sharded = values(Sharded::new(&model, 3).guided(g).eps(x.clone(), t.clone()));
        assert!(max_diff(&sharded, &guided) < 1e-5, "sharded, w = {w}");
    }
    // Without guidance the model is asked with ∅.
    assert_eq!(values(Guided { model: &model, guidance: None }.eps(x.clone(), t.clone())), uncond);
    // The request is checked against the model.
    assert!(Guidance { class: 3, w: 1.0 }.check(Some(3)).unwrap_err().contains("outside 0..3"));
    assert!(Guidance { class: 0, w: 1.0 }.check(None).unwrap_err().contains("unconditional"));
    assert!(Guidance { class: 0, w: 99.0 }.check(Some(3)).is_err());
}

#[test]
fn labels_dropped_with_probability_one_teach_only_no_class() {
    // Every label replaced by ∅: only ∅'s row is trained, the class rows get no gradient and
    // stay equal (zero), so every class predicts the same; without dropout they are trained
    // apart.
    let device = Device::flex();
    let (x, t) = inputs(3, &device);
    let per_class = |model: &UNet| -> Vec<Vec<f32>> {
        (0..4).map(|c| values(model.forward_class(x.clone(), t.clone(), &[c; 3]))).collect()
    };
    let all_dropped = per_class(&trained(1.0));
    assert_eq!(all_dropped[0], all_dropped[1]);
    assert_eq!(all_dropped[1], all_dropped[2]);
    assert!(max_diff(&all_dropped[0], &all_dropped[3]) > 1e-4, "∅ was trained");
    let none_dropped = per_class(&trained(0.0));
    assert!(max_diff(&none_dropped[0], &none_dropped[1]) > 1e-4, "the classes were trained apart");
}

#[test]
fn conditional_files_round_trip_and_unconditional_ones_are_unchanged() {
    let device = Device::flex();
    let model = trained(0.2);
    let unet = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() };
    let header = Header { unet: unet.clone(), schedule: ScheduleConfig::default(), info: Default::default() };
    let bytes = weights::to_safetensors(&model, &header, Precision::F32).unwrap();
    let (back, read) = weights::load(&bytes, &device).unwrap();
    assert_eq!(read.unet.num_classes, Some(3));
    let (x, t) = inputs(2, &device);
    let (a, b) =
        (values(back.forward_class(x.clone(), t.clone(), &[2, 0])), values(model.forward_class(x, t, &[2, 0])));
    assert!(max_diff(&a, &b) < 1e-5);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.names().contains(&"class_emb.weight"), "{:?}", file.names());
    // An unconditional model's header has no `num_classes` at all, as before this existed.
    let plain = Header { unet: tiny(), ..header };
    let bytes = weights::to_safetensors(&tiny().init(&device), &plain, Precision::F32).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert!(!meta.metadata().as_ref().unwrap()["unet"].contains("num_classes"));
}
