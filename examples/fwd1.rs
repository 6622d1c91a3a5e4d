use burn::tensor::{Device, Tensor};
use ddpm::noise::Noise;
use ddpm::unet::UNetConfig;
fn main() {
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let device = Device::flex();
    let cfg = UNetConfig {
        image_channels: 1,
        image_size: 32,
        base_channels: 32,
        channel_mults: vec![1, 2, 4],
        attn: vec![false, false, true],
        blocks: 1,
        groups: 32,
        dropout: 0.1,
        num_classes: None,
    };
    let model = cfg.init(&device);
    let b: usize = std::env::args().nth(1).map_or(1, |s| s.parse().unwrap());
    let x = Noise::new(0).gaussian([b, 1, 32, 32], &device);
    let t = Tensor::<1>::from_floats(vec![500f32; b].as_slice(), &device);
    let t0 = std::time::Instant::now();
    let n = 300;
    for _ in 0..n {
        let _ = model.forward(x.clone(), t.clone()).into_data();
    }
    println!("{:.3} ms", t0.elapsed().as_secs_f64() * 1e3 / n as f64);
}
