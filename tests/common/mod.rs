//! Helpers shared by the tests.
#![allow(dead_code)]

use ddpm::data::Dataset;
use ddpm::train::TrainConfig;
use ddpm::unet::UNetConfig;

pub fn tiny() -> UNetConfig {
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

pub fn recipe(steps: usize, batch_size: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size,
        lr,
        warmup: 10,
        lr_decay: 0,
        grad_clip: 1.0,
        ema_decay: 0.99,
        seed: 42,
        shards: 1,
        data: "test".into(),
    }
}

/// `n` images of bars: simple structure a tiny UNet can learn.
pub fn bars(n: usize) -> Dataset {
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

/// A fresh folder for one test, removed with its contents when dropped, unless the test is
/// failing: then it stays for a look at what the test wrote.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ddpm-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
