//! The flex convolutions (im2col + GEMM, Winograd) against burn's conv2d, and the transposed
//! ones against burn's conv_transpose2d: outputs and all three gradients, for every kind of
//! layer the UNet has; each comparison also checks that the hand-written kernels ran (a silent
//! fallback to burn's op would match burn trivially).

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::{Device, Tensor};
use ddpm::kernels::{conv_transpose2d, conv2d, fast_path_calls};
use ddpm::noise::Noise;

mod common;

/// (c_in, c_out, kernel, stride, padding): the UNet's 3×3 convs (an image's few channels, and
/// wider ones, which run by Winograd's F(4×4, 3×3) where the products are f32), its Downsample,
/// a shortcut.
const LAYERS: [(usize, usize, usize, usize, usize); 5] =
    [(3, 5, 3, 1, 1), (8, 12, 3, 1, 1), (4, 4, 3, 2, 1), (6, 3, 1, 1, 0), (2, 3, 3, 1, 0)];

fn layer((c_in, c_out, k, stride, padding): (usize, usize, usize, usize, usize), device: &Device) -> Conv2d {
    let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(if padding == 0 {
            PaddingConfig2d::Valid
        } else {
            PaddingConfig2d::Explicit(padding, padding, padding, padding)
        })
        .init(device);
    // A bias far from zero, so that a dropped or doubled bias shows.
    conv.bias = Some(Param::from_tensor(Noise::new(9).gaussian([c_out], device) + 1.0));
    conv
}

/// Whether the kernel fits the padded input.
fn fits((_, _, k, _, padding): (usize, usize, usize, usize, usize), size: usize) -> bool {
    size + 2 * padding >= k
}

/// Within `common::kernel_tolerance()` of the largest value (at least 1).
fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (got, want) = (got.into_data().try_to_vec::<f32>().unwrap(), want.into_data().try_to_vec::<f32>().unwrap());
    let tolerance = common::kernel_tolerance();
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tolerance * scale, "{what}[{i}]: gemm {g} vs burn {w}");
    }
}

#[test]
fn outputs_match_burns_conv2d() {
    let device = Device::flex();
    // Batches below, at and above the thread count; even and odd sizes (the stride-2 edge).
    for (i, spec) in LAYERS.into_iter().enumerate() {
        // Size 1: kernel columns that see only padding; (1, 16): one image with enough tiles
        // for Winograd (its batch-1 path, on this thread at this size).
        for (batch, size) in [(1, 7), (2, 8), (5, 9), (2, 1), (1, 16)].into_iter().filter(|&(_, size)| fits(spec, size))
        {
            let conv = layer(spec, &device);
            let x = Noise::new(i as u64).gaussian([batch, spec.0, size, size + 1], &device);
            let before = fast_path_calls("conv2d");
            let out = conv2d(&conv, x.clone());
            assert_eq!(fast_path_calls("conv2d"), [before[0] + 1, before[1]], "layer {i}: the gemm forward ran");
            assert_close(&format!("layer {i} batch {batch}"), out, conv.forward(x));
        }
    }
}

#[test]
fn strided_input_reads_in_logical_order() {
    let device = Device::flex();
    let conv = layer(LAYERS[0], &device);
    let x = Noise::new(3).gaussian([3, 2, 6, 5], &device).swap_dims(0, 1); // [2, 3, 6, 5], strided
    assert_close("out", conv2d(&conv, x.clone()), conv.forward(x));
}

#[test]
fn gradients_match_burns_conv2d() {
    let device = Device::flex().autodiff();
    for (i, spec) in LAYERS.into_iter().enumerate() {
        for (batch, size) in
            [(1, 6), (3, 9), (2, 1), (1, 16), (3, 13)].into_iter().filter(|&(_, size)| fits(spec, size))
        {
            let conv = layer(spec, &device);
            let x = Noise::new(i as u64).gaussian([batch, spec.0, size, size], &device).require_grad();
            let params = (conv.weight.val(), conv.bias.as_ref().unwrap().val());
            let runs = (|| conv2d(&conv, x.clone()), || conv.forward(x.clone()));
            assert_same_gradients(&format!("layer {i} batch {batch}"), "conv2d", &x, params, runs);
        }
    }
}

/// Batch-1 convolutions of the shipped model's size (over 16 M multiply-adds a call), whose
/// products run split over the threads (Winograd's phases, an im2col product), against burn's:
/// outputs and gradients.
#[test]
fn batch_1_convolutions_split_over_the_threads_match_burns_conv2d() {
    let device = Device::flex().autodiff();
    // 64·64·9·24·24 = 21 M multiply-adds each: the "same" 3×3 one at 24×24, the Downsample at 48×48.
    for (i, (spec, size)) in [((64, 64, 3, 1, 1), 24), ((64, 64, 3, 2, 1), 48)].into_iter().enumerate() {
        let conv = layer(spec, &device);
        let x = Noise::new(i as u64).gaussian([1, spec.0, size, size], &device).require_grad();
        let what = format!("split layer {i}");
        assert_close(&what, conv2d(&conv, x.clone()), conv.forward(x.clone()));
        let params = (conv.weight.val(), conv.bias.as_ref().unwrap().val());
        let runs = (|| conv2d(&conv, x.clone()), || conv.forward(x.clone()));
        assert_same_gradients(&what, "conv2d", &x, params, runs);
    }
}

/// Our op's gradients (`runs.0`) and burn's (`runs.1`) of Σ out·w with respect to x, the weight
/// and the bias, compared; and that the hand-written forward and backward of `op` ran. w is
/// random, so that no term cancels by symmetry.
fn assert_same_gradients(
    what: &str,
    op: &str,
    x: &Tensor<4>,
    (weight, bias): (Tensor<4>, Tensor<1>),
    runs: (impl Fn() -> Tensor<4>, impl Fn() -> Tensor<4>),
) {
    let grads = |out: Tensor<4>| {
        let w = Noise::new(5).gaussian(out.dims(), &out.device());
        let g = (out * w).sum().backward();
        (x.grad(&g).unwrap(), weight.grad(&g).unwrap(), bias.grad(&g).unwrap())
    };
    let before = fast_path_calls(op);
    let (dx, dw, db) = grads(runs.0());
    assert_eq!(fast_path_calls(op), [before[0] + 1, before[1] + 1], "{what}: gemm forward and backward ran");
    let (dx_ref, dw_ref, db_ref) = grads(runs.1());
    assert_close(&format!("{what} dx"), dx, dx_ref);
    assert_close(&format!("{what} dweight"), dw, dw_ref);
    assert_close(&format!("{what} dbias"), db, db_ref);
}

/// Inference keeps each weight's Winograd transform between calls (`kernel_cache`); every call
/// must still use its own weights as they are now: two layers of the same shape called in
/// turn, then the first one's weights rewritten where they lie (a cache keyed on the address
/// alone would miss it), then replaced by new weights of the same shape (which may land at the
/// old address).
#[test]
fn kept_kernel_transforms_follow_the_weights() {
    let device = Device::flex();
    let (mut conv, other) = (layer(LAYERS[1], &device), layer(LAYERS[1], &device));
    // One image of 16×17 pixels: enough for the Winograd path.
    let x = Noise::new(4).gaussian([1, LAYERS[1].0, 16, 17], &device);
    let changes: [&dyn Fn(Conv2d) -> Conv2d; 3] = [
        &|conv| conv,
        &|mut conv| {
            conv.weight = conv.weight.map(|w| w * -1.5);
            conv
        },
        &|mut conv| {
            let dims = conv.weight.val().dims();
            conv.weight = Param::from_tensor(Noise::new(8).gaussian(dims, &device));
            conv
        },
    ];
    for (round, change) in changes.into_iter().enumerate() {
        conv = change(conv);
        for (name, conv) in [("first", &conv), ("second", &other), ("first", &conv)] {
            assert_close(&format!("change {round}, {name} layer"), conv2d(conv, x.clone()), conv.forward(x.clone()));
        }
    }
}

/// (c_in, c_out, kernel, stride, padding) of transposed convolutions: the UNet's Upsample (here
/// with unequal channels), one whose adjoint is a "same" 3×3 convolution (col2im's shifted
/// planes), a strided one without padding, a 1×1 one.
const TRANSPOSED: [(usize, usize, usize, usize, usize); 4] =
    [(5, 3, 4, 2, 1), (3, 6, 3, 1, 1), (4, 2, 3, 2, 0), (2, 3, 1, 1, 0)];

fn transposed(
    (c_in, c_out, k, stride, padding): (usize, usize, usize, usize, usize),
    device: &Device,
) -> ConvTranspose2d {
    let mut conv = ConvTranspose2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding([padding, padding])
        .init(device);
    conv.bias = Some(Param::from_tensor(Noise::new(9).gaussian([c_out], device) + 1.0));
    conv
}

/// Batches below, at and above the thread count; a 1-pixel input, odd and unequal sizes.
const TRANSPOSED_INPUTS: [(usize, usize, usize); 4] = [(1, 1, 1), (2, 5, 6), (5, 4, 3), (1, 8, 8)];

#[test]
fn transposed_outputs_match_burns_conv_transpose2d() {
    let device = Device::flex();
    for (i, spec) in TRANSPOSED.into_iter().enumerate() {
        for (batch, h, w) in TRANSPOSED_INPUTS.into_iter().filter(|&(_, h, _)| (h - 1) * spec.3 + spec.2 > 2 * spec.4) {
            let conv = transposed(spec, &device);
            let x = Noise::new(i as u64).gaussian([batch, spec.0, h, w], &device);
            let before = fast_path_calls("conv_transpose2d");
            let out = conv_transpose2d(&conv, x.clone());
            assert_eq!(
                fast_path_calls("conv_transpose2d"),
                [before[0] + 1, before[1]],
                "transposed {i}: the gemm forward ran"
            );
            assert_close(&format!("transposed {i} batch {batch} {h}×{w}"), out, conv.forward(x));
        }
    }
}

#[test]
fn transposed_gradients_match_burns_conv_transpose2d() {
    let device = Device::flex().autodiff();
    for (i, spec) in TRANSPOSED.into_iter().enumerate() {
        for (batch, h, w) in TRANSPOSED_INPUTS.into_iter().filter(|&(_, h, _)| (h - 1) * spec.3 + spec.2 > 2 * spec.4) {
            let conv = transposed(spec, &device);
            let x = Noise::new(i as u64).gaussian([batch, spec.0, h, w], &device).require_grad();
            let params = (conv.weight.val(), conv.bias.as_ref().unwrap().val());
            let runs = (|| conv_transpose2d(&conv, x.clone()), || conv.forward(x.clone()));
            let what = format!("transposed {i} batch {batch} {h}×{w}");
            assert_same_gradients(&what, "conv_transpose2d", &x, params, runs);
        }
    }
}
