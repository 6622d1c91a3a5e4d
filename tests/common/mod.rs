//! Helpers shared by the tests.
#![allow(dead_code)]

use ddpm::data::Dataset;
use ddpm::train::TrainConfig;
use ddpm::unet::UNetConfig;

/// How far our kernels may lie from burn's (or from another summation order), relative to the
/// largest value: 5e-5 for f32 products, because Winograd's F(4×4, 3×3) transforms (whose
/// coefficients reach 8) multiply the rounding of a 64-channel gradient's sums to about 1e-5 of
/// its largest value, a little over or under it with each CPU's summation order; 2⁻¹² on AMX
/// CPUs, whose bf16x3 tile products leave each sum within about 2⁻¹⁶ Σ|a·b|
/// (src/kernels/amx.rs), which cancellation in a gradient's sum turns into several times that of
/// its largest value. Both lie far below a wrong index or a product kept in bf16 (2⁻⁸).
pub fn kernel_tolerance() -> f32 {
    if ddpm::kernels::simd_path().starts_with("amx") { 2f32.powi(-12) } else { 5e-5 }
}

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
        num_classes: None,
        guidance_input: false,
        ..UNetConfig::default()
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
        flip: false,
        label_dropout: 0.0,
        class_names: Vec::new(),
        distil: None,
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

/// `bytes` (a safetensors file) with its metadata entry `entry` (a JSON object stored as a
/// string, such as `unet` or `schedule`) edited by `edit`: the tensors stay as they are, so a
/// loader sees a header that lies about them.
pub fn edit_config(bytes: &[u8], entry: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(header["__metadata__"][entry].as_str().unwrap()).unwrap();
    edit(&mut config);
    set_metadata(bytes, entry, &config.to_string())
}

/// `bytes` (a safetensors file) with its metadata entry `key` set to the string `value`.
pub fn set_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"].as_object_mut().unwrap().insert(key.into(), value.into());
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    out
}

/// The smallest model with every kind of block (residual, attention, time embedding) as a
/// weights file (f16, about 10 kB), for tests and the fuzzer's seeds.
pub fn tiny_weights() -> Vec<u8> {
    let unet = UNetConfig { base_channels: 4, channel_mults: vec![1], attn: vec![true], groups: 2, ..tiny() };
    let model = unet.init(&burn::tensor::Device::flex());
    let schedule = ddpm::diffusion::ScheduleConfig { steps: 20, ..Default::default() };
    let info = [("train_steps".to_string(), "1".to_string())].into();
    ddpm::weights::to_safetensors(
        &model,
        &ddpm::weights::Header { unet, schedule, sampler: None, student: None, guidance: None, info },
        ddpm::weights::Precision::F16,
    )
    .unwrap()
}

/// `model` with the parameters under `under` (a module path prefix such as `w_emb`; "" for all)
/// drawn from the project's own generator: N(0, 1/fan-in) for weights, 1 + N(0, 0.1²) for
/// GroupNorm's scale, N(0, 0.1²) for biases and shifts. burn's initialisers draw from one global
/// generator that the tests running beside each other share, so a model initialised by burn
/// differs from run to run; a test whose outcome depends on the weights draws them here.
pub fn seeded(model: ddpm::unet::UNet, seed: u64, under: &str) -> ddpm::unet::UNet {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Tensor, TensorData};
    struct Seeded<'a> {
        path: Vec<String>,
        under: &'a str,
        noise: ddpm::noise::Noise,
    }
    impl ModuleMapper for Seeded<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if !self.path.join(".").starts_with(self.under) {
                return param;
            }
            let shape: Vec<usize> = param.lazy_shape().dims::<D>().to_vec();
            let n: usize = shape.iter().product();
            let z = self.noise.gaussian_vec(n);
            let leaf = self.path.last().map_or("", String::as_str);
            let values: Vec<f32> = match (D, leaf) {
                (1, "gamma") => z.iter().map(|v| 1.0 + 0.1 * v).collect(),
                (1, _) => z.iter().map(|v| 0.1 * v).collect(),
                // burn's Linear is [in, out], a convolution [out, in, k, k].
                (2, _) => z.iter().map(|v| v / (shape[0] as f32).sqrt()).collect(),
                _ => z.iter().map(|v| v / ((n / shape[0]) as f32).sqrt()).collect(),
            };
            let device = param.lazy_device();
            Param::initialized(param.id, Tensor::from_data(TensorData::new(values, shape), &device))
        }
    }
    model.map(&mut Seeded { path: Vec::new(), under, noise: ddpm::noise::Noise::new(seed) })
}
