//! The diffusion maths against closed forms and hand computations.

use burn::tensor::{Device, Tensor};
use ddpm::diffusion::{Diffusion, ScheduleConfig, slerp};
use ddpm::noise::Noise;
use ddpm::unet::sinusoidal_embedding;

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn linear_schedule_matches_closed_form() {
    let d = Diffusion::new(ScheduleConfig::default());
    assert_eq!(d.steps(), 1000);
    assert!((d.beta[0] - 1e-4).abs() < 1e-15);
    assert!((d.beta[999] - 0.02).abs() < 1e-15);
    // β is linear: β_t = 1e-4 + t (0.02 − 1e-4)/999.
    assert!((d.beta[500] - (1e-4 + 500.0 * (0.02 - 1e-4) / 999.0)).abs() < 1e-15);
    // ᾱ_t = ∏(1 − β_s), evaluated independently in log space.
    for t in [0, 1, 10, 250, 999] {
        let log: f64 = (0..=t).map(|s| (1.0 - d.beta[s]).ln()).sum();
        assert!((d.alpha_bar[t] - log.exp()).abs() < 1e-12, "alpha_bar[{t}]");
    }
    // Known values of this schedule: ᾱ_0 = 0.9999 and ᾱ_999 ≈ 4.04e-5 (x_T is almost pure noise).
    assert!((d.alpha_bar[0] - 0.9999).abs() < 1e-12);
    assert!((d.alpha_bar[999] - 4.0358e-5).abs() < 1e-8, "{}", d.alpha_bar[999]);
}

#[test]
fn bad_schedules_are_rejected() {
    assert!(ScheduleConfig { steps: 1, ..Default::default() }.validate().is_err());
    assert!(ScheduleConfig { beta_start: 0.5, beta_end: 0.1, ..Default::default() }.validate().is_err());
    assert!(ScheduleConfig { beta_end: 1.5, ..Default::default() }.validate().is_err());
}

#[test]
fn q_sample_has_the_forward_process_mean_and_variance() {
    // Eq. 4: x_t ~ N(√ᾱ_t x₀, (1 − ᾱ_t) I), checked over 200,000 draws.
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    let (n, x0, t) = (200_000, 0.7f32, 300);
    let eps = Noise::new(7).gaussian([n, 1, 1, 1], &device);
    let x0s = Tensor::<4>::full([n, 1, 1, 1], x0, &device);
    let xt = values(d.q_sample(x0s, &vec![t; n], eps));
    let mean = xt.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let var = xt.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
    let ab = d.alpha_bar[t];
    assert!((mean - ab.sqrt() * x0 as f64).abs() < 0.01, "mean {mean}");
    assert!((var - (1.0 - ab)).abs() < 0.01, "variance {var}");
}

#[test]
fn noise_is_standard_normal_and_reproducible() {
    let a = Noise::new(3).gaussian_vec(100_001);
    assert_eq!(a, Noise::new(3).gaussian_vec(100_001));
    assert_ne!(a[..10], Noise::new(4).gaussian_vec(10)[..]);
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
    assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    // The saved state resumes the stream exactly.
    let mut n = Noise::new(9);
    n.gaussian_vec(17);
    let mut resumed = Noise::from_state(&n.state()).unwrap();
    assert_eq!(n.gaussian_vec(5), resumed.gaussian_vec(5));
}

#[test]
fn dropout_masks_keep_the_mean_and_split_streams_differ() {
    let device = Device::flex();
    let n = 200_000;
    let mask = Noise::new(5).keep_mask([n], 0.9, &device).into_data().try_into_vec::<f32>().unwrap();
    let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / n as f64;
    let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
    assert!((dropped - 0.1).abs() < 0.003, "dropped share {dropped}");
    assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
    assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6));
    // One draw from the parent whatever the count; distinct streams below it.
    let (mut a, mut b) = (Noise::new(8), Noise::new(8));
    let two = a.split(2);
    let three = b.split(3);
    assert_eq!(a.gaussian_vec(4), b.gaussian_vec(4), "the parent goes on the same way");
    let first = |v: &[Noise], k: usize| v[k].clone().gaussian_vec(4);
    assert_eq!(first(&two, 1), first(&three, 1));
    assert_ne!(first(&three, 0), first(&three, 1));
}

#[test]
fn x0_prediction_inverts_q_sample() {
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    let x0 = Noise::new(1).gaussian([2, 1, 4, 4], &device).clamp(-1.0, 1.0);
    let eps = Noise::new(2).gaussian([2, 1, 4, 4], &device);
    for t in [0, 100, 700] {
        let xt = d.q_sample(x0.clone(), &[t, t], eps.clone());
        let back = values(d.predict_x0(xt, t, eps.clone()));
        for (a, b) in back.iter().zip(values(x0.clone())) {
            assert!((a - b).abs() < 1e-3, "t={t}");
        }
    }
}

#[test]
fn time_embedding_values() {
    // [sin(t f_i), cos(t f_i)], f_i = exp(−i ln 10000/(h − 1)), h = 4.
    let device = Device::flex();
    let t = Tensor::<1>::from_floats([0.0, 3.0], &device);
    let emb = sinusoidal_embedding(t, 8).into_data().try_into_vec::<f32>().unwrap();
    let f: Vec<f64> = (0..4).map(|i| (-(i as f64) * 10_000f64.ln() / 3.0).exp()).collect();
    for i in 0..4 {
        assert!((emb[i] - 0.0).abs() < 1e-6 && (emb[4 + i] - 1.0).abs() < 1e-6, "t = 0");
        assert!((emb[8 + i] as f64 - (3.0 * f[i]).sin()).abs() < 1e-5, "sin at t = 3");
        assert!((emb[12 + i] as f64 - (3.0 * f[i]).cos()).abs() < 1e-5, "cos at t = 3");
    }
}

#[test]
fn slerp_ends_are_the_inputs() {
    let a = Noise::new(1).gaussian_vec(64);
    let b = Noise::new(2).gaussian_vec(64);
    assert_eq!(slerp(&a, &b, 0.0), a);
    let end = slerp(&a, &b, 1.0);
    assert!(end.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    // Halfway keeps the norm of Gaussian noise (unlike a linear mix, which shrinks it).
    let mid = slerp(&a, &b, 0.5);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm(&mid) / ((norm(&a) + norm(&b)) / 2.0) - 1.0).abs() < 0.05);
}
