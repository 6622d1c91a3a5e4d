//! The forward-process view and the schedule, against the paper's formulas computed here from
//! β alone, independently of the library: ᾱ_t = Π_{s ≤ t} (1 − β_s) with β linear from 1e-4 to
//! 0.02 over T = 1000 (§4), x_t by eq. 4, x̂₀ by eq. 15, the loss by eq. 14.

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::forward::{ForwardRequest, LOSS_CURVE_POINTS, ScheduleCurves, loss_curve_steps};
use ddpm::request::Model;
use ddpm::unet::UNetConfig;

mod common;
use common::tiny;

fn beta(t: usize) -> f64 {
    1e-4 + (0.02 - 1e-4) * t as f64 / 999.0
}

fn alpha_bar(t: usize) -> f64 {
    (0..=t).map(|s| 1.0 - beta(s)).product()
}

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

/// The tiny conditional 8×8 model as a request sees it.
fn described<'a>(diffusion: &'a Diffusion, device: &'a Device) -> Model<'a> {
    Model {
        diffusion,
        image: [1, 8, 8],
        num_classes: Some(3),
        default_sampler: None,
        student: None,
        named_guidance: None,
        device,
    }
}

#[test]
fn the_schedule_drawn_is_the_papers() {
    // The test's own formula against the values the paper's schedule is known by.
    assert!((alpha_bar(499) - 0.078587).abs() < 5e-7 && (alpha_bar(999) - 4.0358e-5).abs() < 5e-9);
    let curves = ScheduleCurves::of(&Diffusion::new(ScheduleConfig::default()));
    assert_eq!(curves.beta.len(), 1000);
    for t in [0, 1, 250, 499, 998, 999] {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
        assert!(close(curves.beta[t], beta(t)), "β at {t}");
        assert!(close(curves.sqrt_alpha_bar[t], alpha_bar(t).sqrt()), "√ᾱ at {t}");
        assert!(close(curves.sqrt_one_minus_alpha_bar[t], (1.0 - alpha_bar(t)).sqrt()), "√(1 − ᾱ) at {t}");
        assert!(close(curves.snr[t], alpha_bar(t) / (1.0 - alpha_bar(t))), "SNR at {t}");
    }
}

#[test]
fn the_view_is_eq_4_the_network_and_eq_15() {
    let device = Device::flex();
    let model = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() }.init(&device);
    let diffusion = Diffusion::new(ScheduleConfig::default());
    // A drawing: dark strokes (ink) on white, as the page's pad gives it.
    let rgba: Vec<u8> =
        (0..64).flat_map(|p| if p % 9 == 0 || p / 8 == 3 { [0, 0, 0, 255] } else { [255; 4] }).collect();
    let request = ForwardRequest { rgba: rgba.clone(), t: 300, seed: 4, class: Some(1) };
    let described = described(&diffusion, &device);
    let view = request.view(&model, &described).unwrap();
    let view_loss = view.loss.into_scalar::<f64>();
    let (x0, eps, x_t, eps_hat, x0_hat) =
        (values(view.x0), values(view.eps), values(view.x_t.clone()), values(view.eps_hat), values(view.x0_hat));
    let ab = alpha_bar(300);
    assert!((view.alpha_bar - ab).abs() < 1e-12);
    assert!(x0.iter().all(|v| (-1.0..=1.0).contains(v)) && x0.iter().any(|&v| v > 0.9) && x0.iter().any(|&v| v < -0.9));
    for i in 0..64 {
        let want = ab.sqrt() * x0[i] as f64 + (1.0 - ab).sqrt() * eps[i] as f64;
        assert!((x_t[i] as f64 - want).abs() < 1e-5, "x_t[{i}]");
        let want = (x_t[i] as f64 - (1.0 - ab).sqrt() * eps_hat[i] as f64) / ab.sqrt();
        assert!((x0_hat[i] as f64 - want).abs() < 1e-4, "x̂₀[{i}]");
    }
    let loss = eps.iter().zip(&eps_hat).map(|(e, h)| ((e - h) as f64).powi(2)).sum::<f64>() / 64.0;
    assert!((view_loss - loss).abs() < 1e-5 * loss.max(1.0), "{view_loss} against {loss}");
    // ε̂ is the network's own prediction for the example's class, unguided.
    let t = Tensor::<1>::from_floats([300.0], &device);
    assert_eq!(eps_hat, values(model.forward_class(view.x_t, t, &[1])));
    // Bad requests name their field.
    let field = |r: ForwardRequest| r.view(&model, &described).err().unwrap().field;
    assert_eq!(field(ForwardRequest { t: 1000, ..request.clone() }), "t");
    assert_eq!(field(ForwardRequest { class: Some(3), ..request.clone() }), "class");
    assert_eq!(field(ForwardRequest { rgba: vec![0; 10], ..request }), "rgba");
}

#[test]
fn the_loss_curve_spans_every_t() {
    let steps = loss_curve_steps(&Diffusion::new(ScheduleConfig::default()), 20);
    assert_eq!(steps.len(), 20);
    assert_eq!((steps[0], steps[19]), (0, 999));
    assert!(steps.windows(2).all(|w| w[0] < w[1] && w[1] - w[0] <= 53), "{steps:?}");
}

#[test]
fn the_loss_curve_is_the_views_loss_at_each_of_its_t() {
    let device = Device::flex();
    let model = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() }.init(&device);
    let diffusion = Diffusion::new(ScheduleConfig::default());
    let described = described(&diffusion, &device);
    let rgba: Vec<u8> = (0..64).flat_map(|p| if p % 5 == 0 { [0, 0, 0, 255] } else { [255; 4] }).collect();
    let request = ForwardRequest { rgba, t: 0, seed: 9, class: Some(2) };
    let curve = request.loss_curve(&model, &described, 0..LOSS_CURVE_POINTS).unwrap();
    assert_eq!(curve.t, loss_curve_steps(&diffusion, LOSS_CURVE_POINTS));
    let loss = curve.loss.into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(loss.len(), 20);
    // One batch of 20 evaluations gives what 20 single views give: each item its own t, the same
    // x₀, ε and class.
    for i in [0, 7, 19] {
        let view = ForwardRequest { t: curve.t[i], ..request.clone() }.view(&model, &described).unwrap();
        let single = view.loss.into_scalar::<f64>();
        assert!(
            (loss[i] as f64 - single).abs() < 1e-4 * single.max(1e-3),
            "t = {}: {} against {single}",
            curve.t[i],
            loss[i]
        );
    }
    assert!(loss.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3), "the loss depends on t: {loss:?}");
    // A part of the curve (the page asks for it a few points at a time) is those points of the
    // whole: their own t, and the same loss at each.
    let part = request.loss_curve(&model, &described, 8..12).unwrap();
    assert_eq!(part.t, curve.t[8..12]);
    let part_loss = part.loss.into_data().try_into_vec::<f32>().unwrap();
    for (p, w) in part_loss.iter().zip(&loss[8..12]) {
        assert!((p - w).abs() < 1e-4 * w.max(1e-3), "{part_loss:?} against {:?}", &loss[8..12]);
    }
    let field = |r: &ForwardRequest, points| r.loss_curve(&model, &described, points).err().unwrap().field;
    assert_eq!(field(&ForwardRequest { class: Some(3), ..request.clone() }, 0..LOSS_CURVE_POINTS), "class");
    for points in [12..12, 18..21, 20..24] {
        assert_eq!(field(&request, points), "points");
    }
}
