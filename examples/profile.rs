//! Times the UNet's building blocks on flex, forward and forward+backward, to find where a
//! training step goes. `cargo run --release --example profile`.
use std::time::Instant;

use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use ddpm::kernels::{conv_transpose2d, conv2d, group_norm_swish};
use ddpm::noise::Noise;

fn time(name: &str, f: impl FnMut() -> Tensor<4>) {
    println!("{name:40} {:8.2} ms", seconds(f) * 1e3);
}

/// Seconds per call of `f`, the mean of five after two warm-up calls.
fn seconds(mut f: impl FnMut() -> Tensor<4>) -> f64 {
    for _ in 0..2 {
        let _ = f().into_data();
    }
    let (t0, n) = (Instant::now(), 5);
    for _ in 0..n {
        let _ = f().into_data();
    }
    t0.elapsed().as_secs_f64() / n as f64
}

fn main() {
    let device = Device::flex();
    for ad in [false, true] {
        let dev = if ad { device.clone().autodiff() } else { device.clone() };
        let tag = if ad { "fwd+bwd" } else { "fwd" };
        let x = Noise::new(0).gaussian([64, 32, 32, 32], &dev);
        let x = if ad { x.require_grad() } else { x };
        let conv = Conv2dConfig::new([32, 32], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&dev);
        let gn = GroupNormConfig::new(32, 32).init(&dev);
        let run = |y: Tensor<4>| {
            if ad {
                let g = y.clone().sum().backward();
                x.grad(&g).unwrap()
            } else {
                y
            }
        };
        time(&format!("conv3x3 32->32 @64x32x32 {tag}"), || run(conv.forward(x.clone())));
        time(&format!("conv3x3 im2col+gemm @64x32x32 {tag}"), || run(conv2d(&conv, x.clone())));
        time(&format!("groupnorm(32) @64x32x32x32 {tag}"), || run(gn.forward(x.clone())));
        time(&format!("silu @64x32x32x32 {tag}"), || run(silu(x.clone())));
        time(&format!("silu(groupnorm) @64x32x32x32 {tag}"), || run(silu(gn.forward(x.clone()))));
        time(&format!("group_norm_swish @64x32x32x32 {tag}"), || run(group_norm_swish(&gn, x.clone())));
        time(&format!("add+mul @64x32x32x32 {tag}"), || run(x.clone() * 2.0 + x.clone()));
        time(&format!("cat dim1 {tag}"), || run(Tensor::cat(vec![x.clone(), x.clone()], 1)));
        // The yardstick UNet's two Upsamples (4×4 transposed convolutions, stride 2).
        for (c, size) in [(64, 8), (32, 16)] {
            let up = ConvTranspose2dConfig::new([c, c], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(&dev);
            let x = Noise::new(0).gaussian([64, c, size, size], &dev);
            let name = format!("upsample {c}->{c} @64x{size}x{size} {tag}");
            if ad {
                let x = x.require_grad();
                time(&format!("{name} (burn)"), || x.grad(&up.forward(x.clone()).sum().backward()).unwrap());
                time(&name, || x.grad(&conv_transpose2d(&up, x.clone()).sum().backward()).unwrap());
            } else {
                time(&format!("{name} (burn)"), || up.forward(x.clone()));
                time(&name, || conv_transpose2d(&up, x.clone()));
            }
        }
    }
    // The shipped MNIST model's 3×3 convolutions, one level each, at one training shard's batch
    // (32): GFLOP/s counts 2 per multiply-add, three products forward and backward.
    for (c, size) in [(64, 28), (128, 14), (256, 7)] {
        let flops = 2.0 * (32 * c * c * 9 * size * size) as f64;
        for ad in [false, true] {
            let dev = if ad { device.clone().autodiff() } else { device.clone() };
            let conv = Conv2dConfig::new([c, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(&dev);
            let x = Noise::new(0).gaussian([32, c, size, size], &dev);
            let name = format!("conv3x3 {c}->{c} @32x{size}x{size}");
            if ad {
                let x = x.require_grad();
                let grad = || x.grad(&conv2d(&conv, x.clone()).sum().backward()).unwrap();
                time_flops(&format!("{name} fwd+bwd"), 3.0 * flops, grad);
            } else {
                time_flops(&format!("{name} fwd"), flops, || conv2d(&conv, x.clone()));
            }
        }
    }
}

fn time_flops(name: &str, flops: f64, f: impl FnMut() -> Tensor<4>) {
    let seconds = seconds(f);
    println!("{name:40} {:8.2} ms {:7.1} GFLOP/s", seconds * 1e3, flops / seconds / 1e9);
}
