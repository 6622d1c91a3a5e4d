//! The samplers (src/solvers/) against hand computations of their updates, against each other
//! where the papers say they agree, and against the exact solution of the probability-flow ODE
//! for Gaussian data, where ε's conditional mean is known in closed form: a solver of order p
//! cuts its final error about 2^p times when its steps are halved.

use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::noise::Noise;
use ddpm::sampler::{EpsTheta, Sampler};
use ddpm::solvers::ancestral::Ancestral;
use ddpm::solvers::ddim::Ddim;
use ddpm::solvers::dpm_solver::DpmSolver2M;
use ddpm::solvers::{DEFAULT_SAMPLER, Grid, SamplerChoice, SamplerConfig, Solver, SolverKind, Spacing, Update};

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

fn constant(v: f32, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(vec![v], [1, 1, 1, 1]), device)
}

/// One update of `solver` on the one-pixel x_t = `x` with ε_θ = `eps` (and z = `z` if drawn).
fn step(
    solver: &mut dyn Solver,
    d: &Diffusion,
    x: f64,
    t: usize,
    t_prev: Option<usize>,
    eps: f64,
    z: f64,
) -> (f64, Update) {
    let device = Device::flex();
    let mut draw = || constant(z as f32, &device);
    let (out, update) =
        solver.step(d, constant(x as f32, &device), t, t_prev, constant(eps as f32, &device), &mut draw);
    (values(out)[0] as f64, update)
}

/// α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t), by hand.
fn asl(d: &Diffusion, t: usize) -> (f64, f64, f64) {
    let ab = d.alpha_bar[t];
    (ab.sqrt(), (1.0 - ab).sqrt(), (ab.sqrt() / (1.0 - ab).sqrt()).ln())
}

#[test]
fn ancestral_follows_algorithm_2() {
    let d = Diffusion::new(ScheduleConfig::default());
    let (x, eps, z) = (0.5f64, 0.2f64, -1.3f64);
    // x̂₀ = 0.73 at t = 400 and 0.50 at t = 1 and 0 (Algorithm 2 as printed); ≈ 47 at t = 999,
    // where it is clipped to 1 before the posterior mean (eq. 7) is formed.
    for t in [999usize, 400, 1, 0] {
        let (out, update) = step(&mut Ancestral, &d, x, t, t.checked_sub(1), eps, z);
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
        assert!((out - want).abs() < 1e-5, "t={t}: {out} vs {want}");
        assert_eq!((update.order, update.sigma), (1, if t > 0 { b.sqrt() } else { 0.0 }));
    }
}

#[test]
fn ddim_matches_hand_computation() {
    let d = Diffusion::new(ScheduleConfig::default());
    let (eps, z) = (-0.4f64, 0.9f64);
    let (t, p) = (600usize, 580usize);
    let (ab, abp) = (d.alpha_bar[t], d.alpha_bar[p]);
    // x = −0.3 keeps x̂₀ inside [−1, 1]; x = 0.3 pushes it above 1, where it is clipped.
    for x in [-0.3f64, 0.3] {
        for eta in [0.0, 0.5, 1.0] {
            let (out, update) = step(&mut Ddim { eta }, &d, x, t, Some(p), eps, z);
            let x0 = ((x - (1.0 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0);
            let e = (x - ab.sqrt() * x0) / (1.0 - ab).sqrt();
            let sigma = eta * ((1.0 - abp) / (1.0 - ab)).sqrt() * (1.0 - ab / abp).sqrt();
            let want = abp.sqrt() * x0 + (1.0 - abp - sigma * sigma).sqrt() * e + sigma * z;
            assert!((out - want).abs() < 1e-5, "x={x} eta={eta}: {out} vs {want}");
            assert!((update.sigma - sigma).abs() < 1e-12);
            if x < 0.0 {
                // Unclipped, ε is the network's own: the textbook DDIM update.
                let plain = abp.sqrt() * x0 + (1.0 - abp - sigma * sigma).sqrt() * eps + sigma * z;
                assert!((want - plain).abs() < 1e-9);
            }
        }
    }
    // The last DDIM step lands on x̂₀.
    let (out, _) = step(&mut Ddim { eta: 0.0 }, &d, 0.3, 5, None, eps, z);
    let ab = d.alpha_bar[5];
    assert!((out - (0.3 - (1.0 - ab).sqrt() * eps) / ab.sqrt()).abs() < 1e-5);
}

#[test]
fn dpm_solver_2m_matches_hand_computation() {
    let d = Diffusion::new(ScheduleConfig::default());
    let mut solver = DpmSolver2M::default();
    let x0_of = |x: f64, t: usize, eps: f64| {
        let (a, s, _) = asl(&d, t);
        ((x - s * eps) / a).clamp(-1.0, 1.0)
    };
    // First step, 700 → 500: first order, x = (σ_500/σ_700) x + α_500 (1 − e^{−h}) x̂₀.
    let (x1, e1) = (0.4f64, 0.5f64);
    let (out1, u1) = step(&mut solver, &d, x1, 700, Some(500), e1, 0.0);
    let ((_, s7, l7), (a5, s5, l5)) = (asl(&d, 700), asl(&d, 500));
    let h1 = l5 - l7;
    let x0_1 = x0_of(x1, 700, e1);
    let want1 = s5 / s7 * x1 + a5 * (1.0 - (-h1).exp()) * x0_1;
    assert!((out1 - want1).abs() < 1e-5, "first step: {out1} vs {want1}");
    assert_eq!((u1.order, u1.t, u1.t_prev), (1, 700, Some(500)));
    // Second step, 500 → 200: D = (1 + 1/(2r)) x̂₀ − 1/(2r) x̂₀(previous), r = h₁/h₂.
    let e2 = -0.3f64;
    let (out2, u2) = step(&mut solver, &d, out1, 500, Some(200), e2, 0.0);
    let (a2, s2, l2) = asl(&d, 200);
    let h2 = l2 - l5;
    let r = h1 / h2;
    let x0_2 = x0_of(out1, 500, e2);
    let big_d = (1.0 + 1.0 / (2.0 * r)) * x0_2 - 1.0 / (2.0 * r) * x0_1;
    let want2 = s2 / s5 * out1 + a2 * (1.0 - (-h2).exp()) * big_d;
    assert!((out2 - want2).abs() < 1e-5, "second step: {out2} vs {want2}");
    assert_eq!(u2.order, 2);
    assert!(
        x0_1 != x0_2 && (want2 - (s2 / s5 * out1 + a2 * (1.0 - (-h2).exp()) * x0_2)).abs() > 1e-3,
        "the 2nd-order term matters here"
    );
    // The last step lands on x₀ (σ = 0, h = ∞): the clipped x̂₀ itself, first order.
    let (out3, u3) = step(&mut solver, &d, out2, 200, None, 0.1, 0.0);
    assert!((out3 - x0_of(out2, 200, 0.1)).abs() < 1e-5);
    assert_eq!(u3.order, 1);
}

#[test]
fn dpm_solver_first_order_step_is_ddim_with_eta_0() {
    // DPM-Solver++'s first-order update and DDIM (η = 0) are the same map (Lu et al. 2022b).
    let d = Diffusion::new(ScheduleConfig::default());
    for (x, t, p, eps) in [(0.2, 900, 600, 0.7), (-0.9, 300, 250, -0.2), (0.05, 40, 0, 0.3)] {
        let (a, _) = step(&mut DpmSolver2M::default(), &d, x, t, Some(p), eps, 0.0);
        let (b, _) = step(&mut Ddim { eta: 0.0 }, &d, x, t, Some(p), eps, 0.0);
        assert!((a - b).abs() < 1e-5, "{t} → {p}: {a} vs {b}");
    }
}

/// The exact ε for data x₀ ~ N(0, s²) per pixel: E[ε | x_t] = σ_t x_t/(ᾱ_t s² + σ_t²).
struct GaussianEps {
    alpha_bar: Vec<f64>,
    s2: f64,
}

impl EpsTheta for GaussianEps {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        let t = t.into_data().try_into_vec::<f32>().unwrap()[0] as usize;
        let ab = self.alpha_bar[t];
        x_t.mul_scalar((1.0 - ab).sqrt() / (ab * self.s2 + 1.0 - ab))
    }
}

/// The largest error of a run of `config` from x_T to its end against the exact probability-flow
/// solution, x_end = x_T √(ᾱ_e s² + σ_e²)/√(ᾱ_T s² + σ_T²) (the flow keeps x/std(x_t) fixed).
fn ode_error(config: &SamplerConfig) -> f64 {
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    let s2 = 0.25;
    let start = [-1.8f32, -0.7, 0.3, 1.5];
    let x_t = Tensor::from_data(TensorData::new(start.to_vec(), [4, 1, 1, 1]), &device);
    let sampler = Sampler::from_x_t(&d, config, x_t, 999, vec![Noise::new(0); 4]);
    let end = sampler.grid().end.expect("a grid that ends at a step");
    let out = values(sampler.run(&GaussianEps { alpha_bar: d.alpha_bar.clone(), s2 }));
    let std = |t: usize| (d.alpha_bar[t] * s2 + 1.0 - d.alpha_bar[t]).sqrt();
    out.iter().zip(start).map(|(&x, x_t)| (x as f64 - x_t as f64 * std(end) / std(999)).abs()).fold(0.0, f64::max)
}

#[test]
fn halving_the_step_cuts_dpm_solver_2ms_error_4x_and_ddims_2x() {
    let config = |solver, steps| SamplerConfig { solver, steps, eta: 0.0, spacing: Spacing::LogSnr };
    for (solver, order) in [(SolverKind::DpmSolver2M, 2), (SolverKind::Ddim, 1)] {
        // From 20 NFE on the errors are in their asymptotic regime (at 5-10 the first, first-order
        // step and the rounding of the grid to whole steps still dominate).
        let errors: Vec<f64> = [20, 40, 80].into_iter().map(|k| ode_error(&config(solver, k))).collect();
        for pair in errors.windows(2) {
            let ratio = pair[0] / pair[1];
            let want = 2f64.powi(order);
            assert!(
                (0.75 * want..1.4 * want).contains(&ratio),
                "{solver:?}: errors {errors:?}, ratio {ratio:.2}, order {order} wants about {want}"
            );
        }
    }
    // At the same NFE the second-order solver is far closer.
    assert!(ode_error(&config(SolverKind::DpmSolver2M, 10)) * 5.0 < ode_error(&config(SolverKind::Ddim, 10)));
}

#[test]
fn grids() {
    let d = Diffusion::new(ScheduleConfig::default());
    // The paper's sampler visits every step, then x₀.
    let ddpm = SamplerConfig::ddpm(1000).grid(999, &d);
    assert_eq!((ddpm.t.len(), ddpm.t[0], ddpm.t[999], ddpm.end), (1000, 999, 0, None));
    // Trailing: K steps start at T − 1 and end at T/K − 1, then x₀.
    let ddim = SamplerConfig::ddim(50, 0.0).grid(999, &d);
    assert_eq!((ddim.t.len(), ddim.t[0], ddim.t[1], ddim.t[49], ddim.end), (50, 999, 979, 19, None));
    // A partial run from t = 499 keeps the step density: 25 steps.
    let part = SamplerConfig::ddim(50, 0.0).grid(499, &d);
    assert_eq!((part.t.len(), part.t[0]), (25, 499));
    // Log-SNR: K evaluations from T − 1, even in λ, ending at t = 0.
    let log = Spacing::LogSnr.grid(10, 999, &d);
    assert_eq!((log.t.len(), log.t[0], log.end), (10, 999, Some(0)));
    let lambda = |t: usize| 0.5 * (d.alpha_bar[t] / (1.0 - d.alpha_bar[t])).ln();
    let mut points = log.t.clone();
    points.push(0);
    let h: Vec<f64> = points.windows(2).map(|w| lambda(w[1]) - lambda(w[0])).collect();
    let mean = (lambda(0) - lambda(999)) / 10.0;
    assert!(h.iter().all(|h| (h / mean - 1.0).abs() < 0.1), "even in λ: {h:?}");
    assert_eq!(Grid { t: vec![5, 3], end: Some(0) }.next(1), Some(0));
    assert_eq!(Spacing::LogSnr.grid(10, 0, &d), Grid { t: vec![0], end: None });
}

#[test]
fn a_choice_is_filled_from_the_models_default_then_the_librarys() {
    let t = 1000;
    // Nothing asked: the library's default, or the file's own; a model with fewer steps than the
    // default's runs all of its own.
    assert_eq!(SamplerChoice::default().resolve(None, t), Ok(DEFAULT_SAMPLER));
    let short = SamplerChoice::default().resolve(None, 4).unwrap();
    assert_eq!((short.solver, short.steps), (DEFAULT_SAMPLER.solver, 4.min(DEFAULT_SAMPLER.steps)));
    let file = SamplerConfig::ddim(4, 0.0);
    assert_eq!(SamplerChoice::default().resolve(Some(&file), t), Ok(file));
    // Another rule starts from its own defaults; the paper's runs all T steps.
    let ddpm = SamplerChoice { solver: Some(SolverKind::Ddpm), ..Default::default() };
    assert_eq!(ddpm.resolve(None, t), Ok(SamplerConfig::ddpm(t)));
    let dpm = SamplerChoice { solver: Some(SolverKind::DpmSolver2M), ..Default::default() };
    let steps = SolverKind::DpmSolver2M.default_steps().unwrap();
    let want = SamplerConfig { solver: SolverKind::DpmSolver2M, steps, eta: 0.0, spacing: Spacing::Trailing };
    assert_eq!(dpm.resolve(Some(&file), t), Ok(want));
    let ddim = SamplerChoice { solver: Some(SolverKind::Ddim), steps: Some(1000), eta: Some(0.0), spacing: None };
    // All T steps of DDIM with η = 0 stay DDIM (they once turned into the stochastic sampler).
    assert_eq!(ddim.resolve(None, t), Ok(SamplerConfig::ddim(1000, 0.0)));
    // η is DDIM's alone; steps are bounded by T; the paper's sampler takes every step.
    let refused = |choice: SamplerChoice| choice.resolve(None, t).unwrap_err();
    assert_eq!(refused(SamplerChoice { eta: Some(0.0), ..dpm }).field, "eta");
    assert_eq!(refused(SamplerChoice { eta: Some(1.0), ..ddpm }).field, "eta");
    assert_eq!(refused(SamplerChoice { steps: Some(10), ..ddpm }).field, "steps");
    assert_eq!(
        refused(SamplerChoice { steps: Some(1001), ..ddim }).message,
        "sampling steps must be in 1..=1000, got 1001"
    );
    assert_eq!(refused(SamplerChoice { steps: Some(0), ..ddim }).field, "steps");
    assert_eq!(refused(SamplerChoice { eta: Some(1.5), ..ddim }).field, "eta");
    // Names as the CLI and the page write them.
    assert_eq!("dpm++2m".parse::<SolverKind>(), Ok(SolverKind::DpmSolver2M));
    assert!("plms".parse::<SolverKind>().unwrap_err().contains("ddpm, ddim or dpm++2m"));
    let json = serde_json::to_string(&DEFAULT_SAMPLER).unwrap();
    assert_eq!(serde_json::from_str::<SamplerConfig>(&json).unwrap(), DEFAULT_SAMPLER);
    assert!(
        serde_json::from_str::<SamplerConfig>(&json.replace("\"eta\"", "\"etaa\"")).is_err(),
        "unknown fields are refused"
    );
}
