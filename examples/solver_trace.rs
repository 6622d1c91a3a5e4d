//! One run of a sampler on a closed-form ε (data x₀ ~ N(0, s²) per pixel, so that
//! E[ε | x_t] = σ_t x_t/(ᾱ_t s² + σ_t²)), every step's x and noise z printed as JSON, for
//! `scripts/diffusers_check.py` to run diffusers' schedulers on the same grid and compare.
//! `cargo run --release --example solver_trace -- SOLVER SPACING STEPS ETA` (ETA: DDIM's, else 0)
use burn::tensor::{Device, Tensor, TensorData};
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::noise::Noise;
use ddpm::solvers::{SamplerConfig, SolverKind, Spacing};

/// s² = 4: x̂₀ leaves [−1, 1] at many steps, so the clipping is compared too.
const S2: f64 = 4.0;
const PIXELS: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [solver, spacing, steps, eta] = &args[..] else { panic!("usage: solver_trace SOLVER SPACING STEPS ETA") };
    let solver: SolverKind = solver.parse().unwrap();
    let spacing: Spacing = spacing.parse().unwrap();
    let config = SamplerConfig { solver, steps: steps.parse().unwrap(), eta: eta.parse().unwrap(), spacing };
    let device = Device::flex();
    let d = Diffusion::new(ScheduleConfig::default());
    config.check(d.steps()).unwrap();
    let grid = config.grid(d.steps() - 1, &d);
    let values = |x: &Tensor<4>| x.clone().into_data().try_into_vec::<f32>().unwrap();
    let mut x: Tensor<4> = Noise::new(1).gaussian([1, 1, 1, PIXELS], &device);
    let x_t = values(&x);
    let mut noise = Noise::new(2);
    let mut solver = config.solver();
    let (mut xs, mut zs) = (Vec::new(), Vec::new());
    for (i, &t) in grid.t.iter().enumerate() {
        let ab = d.alpha_bar[t];
        let eps = x.clone().mul_scalar((1.0 - ab).sqrt() / (ab * S2 + 1.0 - ab));
        let mut drawn = None;
        let mut z = || {
            let z = noise.gaussian_vec(PIXELS);
            drawn = Some(z.clone());
            Tensor::from_data(TensorData::new(z, [1, 1, 1, PIXELS]), &device)
        };
        let (next, _) = solver.step(&d, x, t, grid.next(i), eps, &mut z);
        x = next;
        xs.push(values(&x));
        zs.push(drawn);
    }
    let trace = serde_json::json!({
        "solver": config.solver.name(), "spacing": spacing.name(), "eta": config.eta, "s2": S2,
        "grid": grid.t, "end": grid.end, "x_T": x_t, "x": xs, "z": zs,
    });
    println!("{trace}");
}
