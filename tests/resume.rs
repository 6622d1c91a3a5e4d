//! A checkpointed run resumes exactly: N steps, save, load, N more equals 2N steps straight,
//! with dropout drawn by two shards on two threads. Alone in its binary: burn's device RNG
//! (weight initialisation) is global, so no other test may share it.

use burn::tensor::Device;
use ddpm::diffusion::ScheduleConfig;
use ddpm::noise::Noise;
use ddpm::train::{TrainConfig, Trainer};

mod common;
use common::{TempDir, bars, recipe, tiny};

#[test]
fn resume_continues_exactly() {
    let device = Device::flex();
    let dir = TempDir::new("resume");
    let data = bars(16);
    let recipe = TrainConfig { shards: 2, ..recipe(12, 8, 1e-3) };
    let new = || Trainer::new(tiny(), ScheduleConfig::default(), recipe.clone(), &device).unwrap();

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
