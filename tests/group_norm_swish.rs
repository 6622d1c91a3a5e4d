//! The fused GroupNorm + Swish against burn's own GroupNorm followed by SiLU: values and all
//! three gradients, on flex (where the fused kernels run) and through autodiff, each time
//! checking that the fused kernels ran rather than a fallback to the composition.

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use ddpm::kernels::{fast_path_calls, group_norm_swish};
use ddpm::noise::Noise;

/// A GroupNorm with random γ around 1 and β around 0, as after some training.
fn norm(groups: usize, channels: usize, device: &Device) -> GroupNorm {
    let mut norm = GroupNormConfig::new(groups, channels).init(device);
    let gamma = Noise::new(7).gaussian([channels], device) * 0.5 + 1.0;
    let beta = Noise::new(8).gaussian([channels], device) * 0.5;
    norm.gamma = Some(Param::from_tensor(gamma));
    norm.beta = Some(Param::from_tensor(beta));
    norm
}

fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
    let (got, want) = (got.into_data().try_to_vec::<f32>().unwrap(), want.into_data().try_to_vec::<f32>().unwrap());
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: fused {g} vs composed {w}");
    }
}

#[test]
fn forward_matches_group_norm_then_silu() {
    let device = Device::flex();
    // Odd spatial size (tails of the vectorised loops), inputs off-centre (the variance must
    // come from centred values), and groups of two channels.
    for (shape, groups) in [([3, 8, 5, 7], 4), ([2, 32, 28, 28], 8), ([1, 6, 1, 1], 3)] {
        let x = Noise::new(1).gaussian(shape, &device) * 2.0 + 3.0;
        let norm = norm(groups, shape[1], &device);
        let before = fast_path_calls("group_norm_swish");
        let out = group_norm_swish(&norm, x.clone());
        assert_eq!(fast_path_calls("group_norm_swish"), [before[0] + 1, before[1]], "the fused forward ran");
        assert_close("out", out, silu(norm.forward(x)), 2e-6);
    }
}

#[test]
fn strided_input_reads_in_logical_order() {
    let device = Device::flex();
    let x = Noise::new(2).gaussian([6, 4, 5, 3], &device).swap_dims(0, 1); // [4, 6, 5, 3], strided
    let norm = norm(3, 6, &device);
    assert_close("out", group_norm_swish(&norm, x.clone()), silu(norm.forward(x)), 2e-6);
}

#[test]
fn saturated_inputs_stay_finite() {
    // γ = 1e4 pushes y far beyond σ's range on both sides: Swish(y) → y above, → 0 below.
    let device = Device::flex();
    let mut norm = norm(2, 4, &device);
    norm.gamma = Some(Param::from_tensor(Tensor::<1>::ones([4], &device) * 1e4));
    let x = Noise::new(3).gaussian([2, 4, 3, 3], &device);
    let out = group_norm_swish(&norm, x.clone());
    let want = silu(norm.forward(x));
    assert!(out.clone().into_data().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
    assert_close("out", out, want, 1e-6);
}

#[test]
fn gradients_match_autodiff_of_the_composition() {
    let device = Device::flex().autodiff();
    for (shape, groups) in [([3, 8, 5, 7], 4), ([2, 16, 14, 14], 8)] {
        let x = (Noise::new(4).gaussian(shape, &device) * 2.0 + 1.0).require_grad();
        let norm = norm(groups, shape[1], &device);
        // A random upstream gradient, so that no term cancels by symmetry.
        let w = Noise::new(5).gaussian(shape, &device);
        let grads = |out: Tensor<4>| {
            let g = (out * w.clone()).sum().backward();
            let gamma = norm.gamma.as_ref().unwrap().val().grad(&g).unwrap();
            let beta = norm.beta.as_ref().unwrap().val().grad(&g).unwrap();
            (x.grad(&g).unwrap(), gamma, beta)
        };
        let before = fast_path_calls("group_norm_swish");
        let (dx, dgamma, dbeta) = grads(group_norm_swish(&norm, x.clone()));
        assert_eq!(
            fast_path_calls("group_norm_swish"),
            [before[0] + 1, before[1] + 1],
            "fused forward and backward ran"
        );
        let (dx_ref, dgamma_ref, dbeta_ref) = grads(silu(norm.forward(x.clone())));
        assert_close("dx", dx, dx_ref, 2e-5);
        assert_close("dgamma", dgamma, dgamma_ref, 2e-5);
        assert_close("dbeta", dbeta, dbeta_ref, 2e-5);
    }
}
