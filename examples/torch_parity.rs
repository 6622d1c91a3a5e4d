//! Writes a randomly initialised UNet of the yardstick config (as `ddpm export` would) and one
//! forward pass of it, so `scripts/torch_parity.py` can load the same weights into the PyTorch
//! reference UNet (`scripts/ref_unet.py`, labml's structure) and compare outputs.
//! `cargo run --release --example torch_parity -- OUT_DIR`
use std::collections::HashMap;

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::ScheduleConfig;
use ddpm::noise::Noise;
use ddpm::unet::UNetConfig;
use ddpm::weights::{self, Header, Precision};

fn main() {
    let out = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: torch_parity OUT_DIR"));
    std::fs::create_dir_all(&out).unwrap();
    let device = Device::flex();
    let cfg = UNetConfig { image_size: 32, dropout: 0.0, ..UNetConfig::default() };
    let model = cfg.init(&device);
    let header = Header::new(cfg, ScheduleConfig::default());
    std::fs::write(out.join("unet.safetensors"), weights::to_safetensors(&model, &header, Precision::F32).unwrap())
        .unwrap();
    let x = Noise::new(1).gaussian([4, 1, 32, 32], &device);
    let t = Tensor::<1>::from_floats([0.0, 10.0, 500.0, 999.0], &device);
    let y = model.forward(x.clone(), t);
    let raw = |x: Tensor<4>| {
        x.into_data().try_to_vec::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
    };
    let (xb, yb) = (raw(x), raw(y));
    let view = |b| safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, 1, 32, 32], b).unwrap();
    let io = safetensors::serialize([("x", view(&xb)), ("y", view(&yb))], None::<HashMap<String, String>>).unwrap();
    std::fs::write(out.join("io.safetensors"), io).unwrap();
}
