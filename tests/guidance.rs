//! Class conditioning and classifier-free guidance: a conditional model starts as its
//! unconditional self, eq. 6 on one stacked pass equals the two predictions combined by hand
//! (sharded or not), labels dropped with probability 1 teach only ∅, and a conditional file
//! round-trips while an unconditional one is written as before.

use burn::tensor::{Device, Tensor};
use ddpm::data::Dataset;
use ddpm::diffusion::ScheduleConfig;
use ddpm::guidance::{Guidance, Guided, prior_class};
use ddpm::noise::Noise;
use ddpm::sampler::EpsTheta;
use ddpm::threads::Sharded;
use ddpm::train::{TrainConfig, Trainer};
use ddpm::unet::{ClassMix, UNet, UNetConfig};
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
        let g = Guidance::class(1, w, Some(3)).unwrap();
        let guided = values(Guided { model: &model, guidance: Some(g.clone()) }.eps(x.clone(), t.clone()));
        let by_hand: Vec<f32> = cond.iter().zip(&uncond).map(|(c, u)| u + w as f32 * (c - u)).collect();
        assert!(max_diff(&guided, &by_hand) < 1e-5, "w = {w}");
        // At w = 0 and w = 1 eq. 6 is a single prediction: the batch is run once, not stacked.
        let mut batch = 0;
        Guidance::eps(Some(&g), &model, x.clone(), t.clone(), |x, t, classes, _| {
            batch = x.dims()[0];
            model.forward_mix(x, t, &classes.expect("a guided pass names its classes"))
        });
        assert_eq!(batch, if w == 2.5 { 6 } else { 3 }, "w = {w}");
        // Three threads, each with a slice of the stacked batch: the same numbers.
        let sharded = values(Sharded::new(&model, 3).guided(Some(g)).eps(x.clone(), t.clone()));
        assert!(max_diff(&sharded, &guided) < 1e-5, "sharded, w = {w}");
    }
    // Without guidance the model is asked with ∅.
    assert_eq!(values(Guided { model: &model, guidance: None }.eps(x.clone(), t.clone())), uncond);
    // The request is checked against the model.
    assert!(Guidance::class(3, 1.0, Some(3)).unwrap_err().message.contains("outside 0..3"));
    assert!(Guidance::class(0, 1.0, None).unwrap_err().message.contains("unconditional"));
    assert!(Guidance::class(0, 99.0, Some(3)).is_err());
    assert!(Guidance::morph([Some(0), Some(3)], &[0.5], 1.0, Some(3)).unwrap_err().message.contains("class 3"));
}

#[test]
fn a_class_morph_mixes_the_two_embeddings_and_ends_on_each_class() {
    // Frames at λ = 0, 0.5, 1 from class 0 to class 2: the ends are exactly the plain classes'
    // predictions (so the page's morph ends are `ddpm sample --class` images), the middle is the
    // network at the mean of the two class vectors, neither end.
    let device = Device::flex();
    let model = trained(0.0);
    let (x, t) = inputs(3, &device);
    let w = 2.0;
    let morph = Guidance::morph([Some(0), Some(2)], &[0.0, 0.5, 1.0], w, Some(3)).unwrap();
    let got = values(Guided { model: &model, guidance: Some(morph.clone()) }.eps(x.clone(), t.clone()));
    let plain = |c| {
        let g = Guidance::class(c, w, Some(3)).unwrap();
        values(Guided { model: &model, guidance: Some(g.clone()) }.eps(x.clone(), t.clone()))
    };
    let (a, b) = (plain(0), plain(2));
    let item = |v: &[f32], i: usize| v[i * 64..(i + 1) * 64].to_vec();
    assert_eq!(item(&got, 0), item(&a, 0));
    assert_eq!(item(&got, 2), item(&b, 2));
    let middle = item(&got, 1);
    assert!(max_diff(&middle, &item(&a, 1)) > 1e-4 && max_diff(&middle, &item(&b, 1)) > 1e-4);
    // λ = 0.5 is the embedding halfway: the same as a model whose class 1 row is that mean.
    let mixed = values(model.forward_mix(x.clone(), t.clone(), &[ClassMix { a: 0, b: 2, lambda: 0.5 }; 3]));
    let by_row = values(halfway_row(&model).forward_class(x.clone(), t.clone(), &[1; 3]));
    assert!(max_diff(&mixed, &by_row) < 1e-5);
    // Sharded on three threads: the same frames.
    let sharded = values(Sharded::new(&model, 3).guided(Some(morph)).eps(x, t));
    assert!(max_diff(&sharded, &got) < 1e-5);
}

/// `model` with class 1's embedding row replaced by the mean of rows 0 and 2 (edited in its
/// weights file).
fn halfway_row(model: &UNet) -> UNet {
    use safetensors::tensor::TensorView;
    let unet = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() };
    let header = Header::new(unet, ScheduleConfig::default());
    let bytes = weights::to_safetensors(model, &header, Precision::F32).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let emb = file.tensor("class_emb.weight").unwrap();
    let mut rows: Vec<f32> = emb.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let dim = emb.shape()[1];
    for j in 0..dim {
        rows[dim + j] = (rows[j] + rows[2 * dim + j]) / 2.0;
    }
    let edited: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors = file.tensors();
    let slot = tensors.iter_mut().find(|(name, _)| name == "class_emb.weight").unwrap();
    slot.1 = TensorView::new(emb.dtype(), emb.shape().to_vec(), &edited).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let out = safetensors::serialize(tensors, meta.metadata().clone()).unwrap();
    weights::load(&out, &Device::flex()).unwrap().0
}

#[test]
fn any_class_from_noise_draws_each_image_as_its_seeds_class() {
    // Not ∅: "any" is ancestral sampling of Σ_c p(c) p(x | c), so each image is its seed's
    // class, guided at w as a named class is; the classes are dealt over the model's.
    let device = Device::flex();
    let model = trained(0.2);
    let (x, t) = inputs(3, &device);
    let seeds = [11u64, 12, 13];
    let classes: Vec<usize> = seeds.iter().map(|&s| prior_class(s, 3)).collect();
    assert_eq!(classes, seeds.iter().map(|&s| prior_class(s, 3)).collect::<Vec<_>>(), "a seed is one class");
    // Dealt, not drawn: every run of 3 seeds from a multiple of 3 holds each class once, in an
    // order that changes from run to run (drawing each alone, or seed mod 3, fails one of these).
    let runs: Vec<Vec<usize>> = (0..300u64).map(|r| (3 * r..3 * r + 3).map(|s| prior_class(s, 3)).collect()).collect();
    for run in &runs {
        assert_eq!(run.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 3, "a deck: {run:?}");
    }
    let orders: std::collections::BTreeSet<_> = runs.iter().collect();
    assert_eq!(orders.len(), 6, "the deck is shuffled per run: {orders:?}");
    let leads = [0, 1, 2].map(|c| runs.iter().filter(|run| run[0] == c).count());
    assert!(leads.iter().all(|&l| l >= 70), "each class leads a third of the runs (±3.5 σ): {leads:?}");
    for w in [1.0, 2.5] {
        let any = Guidance::from_noise(None, &seeds, w, Some(3)).unwrap().expect("a conditional model is guided");
        let got = values(Guided { model: &model, guidance: Some(any.clone()) }.eps(x.clone(), t.clone()));
        // Image i by hand: eq. 6 with its own class.
        for (i, &c) in classes.iter().enumerate() {
            let one = Guidance::class(c, w, Some(3)).unwrap();
            let want = values(Guided { model: &model, guidance: Some(one.clone()) }.eps(x.clone(), t.clone()));
            let n = want.len() / 3;
            assert!(max_diff(&got[i * n..(i + 1) * n], &want[i * n..(i + 1) * n]) < 1e-5, "image {i}, w = {w}");
        }
    }
    // A named class wins; an unconditional model has nothing to draw from; w is checked.
    assert_eq!(Guidance::from_noise(Some(2), &seeds, 1.0, Some(3)).unwrap(), Guidance::class(2, 1.0, Some(3)).ok());
    assert_eq!(Guidance::from_noise(None, &seeds, 1.0, None).unwrap(), None);
    let e = Guidance::from_noise(None, &seeds, 99.0, Some(3)).unwrap_err();
    assert!(e.message.contains("guidance 99") && e.field == "guidance", "{e}");
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
    let header = Header::new(unet.clone(), ScheduleConfig::default());
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
