//! The diffusion maths against closed forms and hand computations.

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusion::{Diffusion, ScheduleConfig, slerp};
use ddpm::noise::Noise;
use ddpm::sampler::Method;
use ddpm::unet::sinusoidal_embedding;

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

fn constant(v: f32, n: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(vec![v; n], [1, 1, 1, n]), device)
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
fn p_sample_follows_algorithm_2() {
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    let (x, eps, z) = (0.5f64, 0.2f64, -1.3f64);
    // x̂₀ = 0.73 at t = 400 and 0.50 at t = 1 and 0 (Algorithm 2 as printed); ≈ 47 at t = 999,
    // where it is clipped to 1 before the posterior mean (eq. 7) is formed.
    for t in [999usize, 400, 1, 0] {
        let out = values(d.p_sample(
            constant(x as f32, 1, &device),
            t,
            constant(eps as f32, 1, &device),
            Some(constant(z as f32, 1, &device)),
        ));
        let (b, a, ab) = (d.beta[t], d.alpha[t], d.alpha_bar[t]);
        let ab_prev = if t > 0 { d.alpha_bar[t - 1] } else { 1.0 };
        let x0 = (x - (1.0 - ab).sqrt() * eps) / ab.sqrt();
        // No noise at the last step, even when z is given.
        let noise = if t > 0 { b.sqrt() * z } else { 0.0 };
        let want = if x0 > 1.0 {
            ab_prev.sqrt() * b / (1.0 - ab) + a.sqrt() * (1.0 - ab_prev) / (1.0 - ab) * x + noise
        } else {
            // x_{t−1} = (x_t − β_t/√(1 − ᾱ_t) ε)/√α_t + √β_t z
            (x - b / (1.0 - ab).sqrt() * eps) / a.sqrt() + noise
        };
        assert_eq!(x0 > 1.0, t == 999);
        assert!((out[0] as f64 - want).abs() < 1e-5, "t={t}: {} vs {want}", out[0]);
    }
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
fn ddim_step_matches_hand_computation() {
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    let (eps, z) = (-0.4f64, 0.9f64);
    let (t, p) = (600usize, 580usize);
    let (ab, abp) = (d.alpha_bar[t], d.alpha_bar[p]);
    // x = −0.3 keeps x̂₀ inside [−1, 1]; x = 0.3 pushes it above 1, where it is clipped.
    for x in [-0.3f64, 0.3] {
        for eta in [0.0, 0.5, 1.0] {
            let out = values(d.ddim_step(
                constant(x as f32, 1, &device),
                t,
                Some(p),
                constant(eps as f32, 1, &device),
                eta,
                Some(constant(z as f32, 1, &device)),
            ));
            let x0 = ((x - (1.0 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0);
            let e = (x - ab.sqrt() * x0) / (1.0 - ab).sqrt();
            let sigma = eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
            let want = abp.sqrt() * x0 + (1.0 - abp - sigma * sigma).sqrt() * e + sigma * z;
            assert!((out[0] as f64 - want).abs() < 1e-5, "x={x} eta={eta}: {} vs {want}", out[0]);
            if x < 0.0 {
                // Unclipped, ε is the network's own: the textbook DDIM update.
                let plain = abp.sqrt() * x0 + (1.0 - abp - sigma * sigma).sqrt() * eps + sigma * z;
                assert!((want - plain).abs() < 1e-9);
            }
        }
    }
    // The last DDIM step lands on x̂₀.
    let out = values(d.ddim_step(constant(0.3, 1, &device), 5, None, constant(eps as f32, 1, &device), 0.0, None));
    let ab = d.alpha_bar[5];
    assert!((out[0] as f64 - (0.3 - (1.0 - ab).sqrt() * eps) / ab.sqrt()).abs() < 1e-5);
}

#[test]
fn sampling_timesteps() {
    // Full DDPM visits every step; DDIM K steps start at T−1 and end at T/K − 1.
    let ddpm = Method::Ddpm.timesteps(999, 1000);
    assert_eq!(ddpm.len(), 1000);
    assert_eq!((ddpm[0], ddpm[999]), (999, 0));
    let ddim = Method::Ddim { steps: 50, eta: 0.0 }.timesteps(999, 1000);
    assert_eq!(ddim.len(), 50);
    assert_eq!((ddim[0], ddim[1], ddim[49]), (999, 979, 19));
    // A partial run from t = 499 keeps the step density: 25 steps.
    let part = Method::Ddim { steps: 50, eta: 0.0 }.timesteps(499, 1000);
    assert_eq!((part.len(), part[0]), (25, 499));
    assert_eq!(Method::from_steps(1000, 1000, 0.0), Ok(Method::Ddpm));
    assert_eq!(Method::from_steps(20, 1000, 0.0), Ok(Method::Ddim { steps: 20, eta: 0.0 }));
    assert!(Method::from_steps(0, 1000, 0.0).is_err());
    assert!(Method::from_steps(1001, 1000, 0.0).is_err());
    assert!(Method::from_steps(10, 1000, 2.0).is_err());
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
