//! Training: a tiny model overfits one batch, a checkpoint resumes a run exactly, and the
//! EMA and learning-rate schedules do what they say.

use burn::tensor::Device;
use ddpm::data::Dataset;
use ddpm::diffusion::ScheduleConfig;
use ddpm::noise::Noise;
use ddpm::train::{TrainConfig, Trainer};
use ddpm::unet::UNetConfig;

fn tiny() -> UNetConfig {
    UNetConfig {
        image_channels: 1,
        image_size: 8,
        base_channels: 8,
        channel_mults: vec![1, 2],
        attn: vec![false, true],
        blocks: 1,
        groups: 4,
        dropout: 0.1,
    }
}

fn recipe(steps: usize, batch_size: usize, lr: f64) -> TrainConfig {
    TrainConfig { steps, batch_size, lr, warmup: 10, grad_clip: 1.0, ema_decay: 0.99, seed: 42, data: "test".into() }
}

/// `n` images of bars: simple structure a tiny UNet can learn.
fn bars(n: usize) -> Dataset {
    let mut pixels = Vec::new();
    for i in 0..n {
        for y in 0..8 {
            for x in 0..8 {
                pixels.push(if (x + i) % 4 < 2 || y == i % 8 { 1.0 } else { -1.0 });
            }
        }
    }
    Dataset { shape: [1, 8, 8], pixels, labels: None }
}

#[test]
fn a_tiny_model_overfits_one_batch() {
    // Few T steps keep the regression target simple: with one fixed batch the loss must fall
    // at least tenfold from its starting value (≈ 1, the variance of ε).
    let device = Device::flex();
    let schedule = ScheduleConfig { steps: 20, ..Default::default() };
    let mut trainer = Trainer::new(UNetConfig { dropout: 0.0, ..tiny() }, schedule, recipe(400, 4, 3e-3), &device).unwrap();
    let data = bars(1);
    let losses: Vec<f64> = (0..400).map(|_| trainer.step(&data).unwrap().loss).collect();
    let start = losses[..10].iter().sum::<f64>() / 10.0;
    let end = losses[losses.len() - 20..].iter().sum::<f64>() / 20.0;
    assert!(start > 0.5, "initial loss {start}");
    assert!(end < start / 10.0, "loss fell from {start} to only {end}");
}

#[test]
fn resume_continues_exactly() {
    let device = Device::flex();
    let dir = tempdir("resume");
    let data = bars(16);
    let new = || Trainer::new(tiny(), ScheduleConfig::default(), recipe(12, 8, 1e-3), &device).unwrap();

    let mut straight = new();
    let all: Vec<f64> = (0..12).map(|_| straight.step(&data).unwrap().loss).collect();

    let mut first = new();
    let head: Vec<f64> = (0..6).map(|_| first.step(&data).unwrap().loss).collect();
    let ckpt = dir.join("checkpoint.ddpm");
    first.save(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::load(&ckpt, &device).unwrap();
    assert_eq!(resumed.step, 6);
    let tail: Vec<f64> = (0..6).map(|_| resumed.step(&data).unwrap().loss).collect();

    assert_eq!(head, all[..6], "same seed, same first half");
    assert_eq!(tail, all[6..], "the resumed half repeats the straight run's losses exactly");
    // And the weights end identical.
    let x = Noise::new(0).gaussian([1, 1, 8, 8], &device);
    let t = straight.diffusion.t_tensor(500, 1, &device);
    let a = straight.ema.forward(x.clone(), t.clone()).into_data().try_into_vec::<f32>().unwrap();
    let b = resumed.ema.forward(x, t).into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_damaged_checkpoint_is_an_error() {
    let device = Device::flex();
    let dir = tempdir("damaged");
    let path = dir.join("checkpoint.ddpm");
    let trainer = Trainer::new(tiny(), ScheduleConfig::default(), recipe(1, 2, 1e-3), &device).unwrap();
    trainer.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::load(&path, &device).err().expect("a truncated checkpoint must not load");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(Trainer::load(&dir.join("absent.ddpm"), &device).is_err());
}

#[test]
fn schedules() {
    let r = recipe(100, 1, 2e-4);
    assert!((r.lr_at(0) - 2e-5).abs() < 1e-12, "warm-up starts at lr/warmup");
    assert!((r.lr_at(9) - 2e-4).abs() < 1e-12 && (r.lr_at(50) - 2e-4).abs() < 1e-12);
    assert!((r.ema_at(0) - 0.1).abs() < 1e-12, "early EMA follows the weights");
    assert!((r.ema_at(100_000) - 0.99).abs() < 1e-12);
    assert!(recipe(1, 0, 1e-3).validate().is_err());
    assert!(recipe(1, 1, -1.0).validate().is_err());
    assert!(TrainConfig { ema_decay: 1.0, ..recipe(1, 1, 1e-3) }.validate().is_err());
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
