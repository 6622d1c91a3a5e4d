//! Training: a tiny model overfits one batch, damaged checkpoints are refused, and the EMA and
//! learning-rate schedules do what they say, a batch split into shards trains as the whole, and
//! the training loop writes its log, checkpoints and grids and stops when its observer asks.
//! (Exact resume is in tests/resume.rs: it needs a process of its own, since burn's device
//! RNG, which initialises the weights, is shared by the threads of a test binary.)

use burn::tensor::Device;
use ddpm::diffusion::ScheduleConfig;
use ddpm::train::{FitOptions, Observer, Outcome, StepStats, TrainConfig, Trainer, checkpoint_path, fit};

mod common;
use common::{TempDir, bars, recipe, tiny};
use ddpm::unet::UNetConfig;

#[test]
fn a_tiny_model_overfits_one_batch() {
    // Few T steps keep the regression target simple: with one fixed batch the loss must fall
    // at least tenfold from its starting value (≈ 1, the variance of ε). The rate decays over the
    // second half so that the last losses measure the fit, not the optimiser's jitter.
    let device = Device::flex();
    let schedule = ScheduleConfig { steps: 20, ..Default::default() };
    let recipe = TrainConfig { lr_decay: 500, ..recipe(1000, 4, 2e-3) };
    let mut trainer = Trainer::new(UNetConfig { dropout: 0.0, ..tiny() }, schedule, recipe, &device).unwrap();
    let data = bars(1);
    let losses: Vec<f64> = (0..1000).map(|_| trainer.step(&data).unwrap().loss).collect();
    let start = losses[..10].iter().sum::<f64>() / 10.0;
    let end = losses[losses.len() - 50..].iter().sum::<f64>() / 50.0;
    assert!(start > 0.5, "initial loss {start}");
    assert!(end < start / 10.0, "loss fell from {start} to only {end}");
}

#[test]
fn sharded_steps_add_up_to_the_whole_batch() {
    // Batch 7 as three uneven shards (3, 2, 2) on three threads against one shard: the same
    // draws, so the same losses and weights up to float rounding. Both start from one saved
    // run (loading does not depend on burn's global RNG, which other tests here share).
    let device = Device::flex();
    let dir = TempDir::new("shards");
    let path = dir.join("checkpoint.ddpm");
    let config = UNetConfig { dropout: 0.0, ..tiny() };
    Trainer::new(config, ScheduleConfig::default(), recipe(20, 7, 1e-3), &device).unwrap().save(&path).unwrap();
    let data = bars(16);
    let run = |shards| {
        let mut trainer = Trainer::load(&path, &device).unwrap();
        trainer.train.shards = shards;
        let losses: Vec<f64> = (0..6).map(|_| trainer.step(&data).unwrap().loss).collect();
        let x = ddpm::noise::Noise::new(0).gaussian([1, 1, 8, 8], &device);
        let t = trainer.diffusion.t_tensor(500, 1, &device);
        (losses, trainer.ema.forward(x, t).into_data().try_into_vec::<f32>().unwrap())
    };
    let (one, out_one) = run(1);
    let (three, out_three) = run(3);
    for (a, b) in one.iter().zip(&three) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} with one shard, {b} with three");
    }
    let diff = out_one.iter().zip(&out_three).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "the trained networks differ by {diff}");
}

#[test]
fn a_damaged_checkpoint_is_an_error() {
    let device = Device::flex();
    let dir = TempDir::new("damaged");
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
    let d = TrainConfig { lr_decay: 40, ..r.clone() };
    assert!((d.lr_at(50) - 2e-4).abs() < 1e-12, "no decay before the last 40 steps");
    assert!((d.lr_at(60) - 2e-4).abs() < 1e-12 && (d.lr_at(80) - 1e-4).abs() < 1e-12, "halfway down");
    assert!((d.lr_at(99) - 5e-6).abs() < 1e-12, "the last step runs at lr/40");
    assert!((r.ema_at(0) - 0.1).abs() < 1e-12, "early EMA follows the weights");
    assert!((r.ema_at(100_000) - 0.99).abs() < 1e-12);
    assert!(recipe(1, 0, 1e-3).validate().is_err());
    assert!(recipe(1, 1, -1.0).validate().is_err());
    assert!(TrainConfig { ema_decay: 1.0, ..recipe(1, 1, 1e-3) }.validate().is_err());
    assert!(TrainConfig { shards: 0, ..recipe(1, 4, 1e-3) }.validate().is_err());
    assert!(TrainConfig { shards: 5, ..recipe(1, 4, 1e-3) }.validate().is_err());
}

/// Records what the loop tells it, and asks to stop after `stop_after` steps.
#[derive(Default)]
struct Recorder {
    steps: Vec<usize>,
    checkpoints: Vec<usize>,
    grids: Vec<String>,
    stop_after: Option<usize>,
}

impl Observer for Recorder {
    fn step(&mut self, trainer: &Trainer, stats: &StepStats, smoothed: f64) {
        assert!(stats.loss.is_finite() && smoothed.is_finite());
        self.steps.push(trainer.step);
    }
    fn stop_requested(&mut self) -> bool {
        self.stop_after.is_some_and(|n| self.steps.len() >= n)
    }
    fn checkpoint(&mut self, step: usize) {
        self.checkpoints.push(step);
    }
    fn sample_grid(&mut self, path: &std::path::Path) {
        self.grids.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
}

#[test]
fn the_training_loop_logs_checkpoints_samples_and_stops_when_asked() {
    // Without the binary: a run of 8 steps (checkpoints every 3, a grid every 4) stopped after 5,
    // then resumed to the end. The log reads as one run of 8 lines.
    let device = Device::flex();
    let dir = TempDir::new("fit");
    let opts = FitOptions { out: dir.join("run"), checkpoint_every: 3, sample_every: 4, shards: 1 };
    let schedule = ScheduleConfig { steps: 20, ..Default::default() };
    let mut trainer = Trainer::new(tiny(), schedule, recipe(8, 2, 1e-3), &device).unwrap();
    let data = bars(4);
    let mut first = Recorder { stop_after: Some(5), ..Default::default() };
    assert_eq!(fit(&mut trainer, &data, &opts, &mut first).unwrap(), Outcome::Stopped { step: 5 });
    assert_eq!(first.steps, [1, 2, 3, 4, 5]);
    assert_eq!(first.checkpoints, [3, 5]);
    assert_eq!(first.grids, ["step_000004.png"]);
    assert!(opts.out.join("samples/step_000004.png").exists());
    let ckpt = checkpoint_path(&opts.out);
    assert_eq!(Trainer::load(&ckpt, &device).unwrap().step, 5);

    // A kill after step 6 leaves a log line past the checkpoint, and half a line: both go.
    use std::io::Write;
    let log = opts.out.join("log.jsonl");
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"{\"step\":6,\"loss\":1}\n{\"st").unwrap();
    let mut resumed = Trainer::load(&ckpt, &device).unwrap();
    let mut second = Recorder::default();
    assert_eq!(fit(&mut resumed, &data, &opts, &mut second).unwrap(), Outcome::Finished);
    assert_eq!(second.steps, [6, 7, 8]);
    assert_eq!(second.checkpoints, [6, 8]);
    assert_eq!(second.grids, ["step_000008.png"]);
    let logged: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(logged, (1..=8).collect::<Vec<_>>());
    assert_eq!(Trainer::load(&ckpt, &device).unwrap().step, 8);
}
