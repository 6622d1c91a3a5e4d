//! The reverse process's update rules, one a file behind one trait ([`Solver`]), and which of
//! them a run uses ([`SamplerConfig`]): the paper's ancestral sampler ([`ancestral`], Ho et al.
//! 2020, Algorithm 2), DDIM ([`ddim`], Song et al. 2020) and DPM-Solver++(2M) ([`dpm_solver`],
//! Lu et al. 2022, arXiv 2211.01095). The steps they visit come from [`spacing`].
//!
//! A solver sees x_t, the step t it was evaluated at, the step it moves to and ε_θ(x_t, t); it
//! never runs the network itself, so guidance, SDEdit, interpolation and per-image seeds (all in
//! [`crate::sampler`]) work with every solver alike.

pub mod ancestral;
pub mod ddim;
pub mod dpm_solver;
pub mod spacing;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::diffusion::Diffusion;
use crate::field_error::FieldError;
pub use spacing::{Grid, Spacing};

/// One update x_t → x_{t_prev}, and what it computed, for a reader to see it.
pub trait Solver {
    /// Moves `x_t` (evaluated at step `t`, ε_θ = `eps`) to step `t_prev` (None: x₀ itself,
    /// ᾱ = 1). `z` draws fresh N(0, I) noise of x's shape when the rule adds noise.
    fn step(
        &mut self,
        diffusion: &Diffusion,
        x_t: Tensor<4>,
        t: usize,
        t_prev: Option<usize>,
        eps: Tensor<4>,
        z: &mut dyn FnMut() -> Tensor<4>,
    ) -> (Tensor<4>, Update);
}

/// What one update did: x_{t_prev} = Σ coefficient · term (+ σ z), with its order of accuracy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Update {
    pub t: usize,
    /// None: the update lands on x₀ (ᾱ = 1).
    pub t_prev: Option<usize>,
    /// 1: first order (ancestral, DDIM, DPM-Solver++'s first and last steps); 2: second order.
    pub order: u8,
    /// The update as its paper writes it.
    pub rule: &'static str,
    /// Each term's coefficient this step, named as in `rule`.
    pub coefficients: Vec<(&'static str, f64)>,
    /// The standard deviation of the fresh noise added (0: deterministic).
    pub sigma: f64,
}

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolverKind {
    /// Ancestral sampling over every step (Algorithm 2, σ² = β).
    #[serde(rename = "ddpm")]
    Ddpm,
    /// DDIM with η (Song et al. 2020, eq. 12): η = 0 deterministic, η = 1 DDPM-like.
    #[serde(rename = "ddim")]
    Ddim,
    /// DPM-Solver++(2M): second-order multistep in log-SNR, data prediction.
    #[serde(rename = "dpm++2m")]
    DpmSolver2M,
}

impl SolverKind {
    pub const ALL: [SolverKind; 3] = [SolverKind::Ddpm, SolverKind::Ddim, SolverKind::DpmSolver2M];

    /// The name the CLI, the page and weights files use.
    pub fn name(self) -> &'static str {
        match self {
            SolverKind::Ddpm => "ddpm",
            SolverKind::Ddim => "ddim",
            SolverKind::DpmSolver2M => "dpm++2m",
        }
    }

    /// The evaluations a run of this rule takes when none are asked for (None: all T steps):
    /// DDIM's are the library default's; DPM-Solver++(2M)'s the fewest at which the shipped digits
    /// reach the MNIST-FD bar (docs/samplers.md).
    pub fn default_steps(self) -> Option<usize> {
        match self {
            SolverKind::Ddpm => None,
            SolverKind::Ddim => Some(DEFAULT_SAMPLER.steps),
            SolverKind::DpmSolver2M => Some(8),
        }
    }

    /// Whether the map from x_T to x₀ is deterministic (slerp interpolation needs one).
    fn deterministic(self, eta: f64) -> bool {
        match self {
            SolverKind::Ddpm => false,
            SolverKind::Ddim => eta == 0.0,
            SolverKind::DpmSolver2M => true,
        }
    }
}

impl std::str::FromStr for SolverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SolverKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown sampler {s:?} (ddpm, ddim or dpm++2m)"))
    }
}

/// A complete choice of sampler: the rule, its network evaluations (NFE), DDIM's η and the
/// spacing of the steps. Stored in a weights file as the model's own default.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerConfig {
    pub solver: SolverKind,
    /// Network evaluations of a run from T − 1 (the paper's sampler: all T).
    pub steps: usize,
    /// DDIM's η; 0 for the other rules, which have none.
    pub eta: f64,
    pub spacing: Spacing,
}

/// The sampler `ddpm sample` / `interpolate` / `animate` / `edit` and the page use when neither
/// the user nor the weights file names one: the fewest evaluations measured to meet the shipped
/// digits' class bar (agreement ≥ 98 %, every digit ≥ 95 %, MNIST-FD ≤ 1.5× its floor) on two
/// seed sets and "any"'s unconditional bar. DPM-Solver++(2M) reaches a lower MNIST-FD at 8-10
/// evaluations but draws fewer digits of the asked class at the default guidance
/// (docs/samplers.md has the table).
pub const DEFAULT_SAMPLER: SamplerConfig =
    SamplerConfig { solver: SolverKind::Ddim, steps: 10, eta: 0.0, spacing: Spacing::Trailing };

/// What a user asked of the sampler; what is left out comes from the model's default or the
/// library's ([`SamplerChoice::resolve`]), so the CLI and the page fill gaps by one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerChoice {
    pub solver: Option<SolverKind>,
    pub steps: Option<usize>,
    pub eta: Option<f64>,
    pub spacing: Option<Spacing>,
}

impl SamplerChoice {
    /// The full sampler for a model of `diffusion_steps` = T whose file names `model_default`
    /// (or none). Naming another rule than the default's starts from that rule's own defaults
    /// ([`SolverKind::default_steps`], η = 0, the trailing grid). η is DDIM's alone and refused
    /// for the others.
    pub fn resolve(
        &self,
        model_default: Option<&SamplerConfig>,
        diffusion_steps: usize,
    ) -> Result<SamplerConfig, FieldError> {
        let base = *model_default.unwrap_or(&DEFAULT_SAMPLER);
        let mut config = match self.solver {
            Some(solver) if solver != base.solver => SamplerConfig {
                solver,
                steps: solver.default_steps().unwrap_or(diffusion_steps),
                eta: 0.0,
                spacing: Spacing::Trailing,
            },
            _ => base,
        };
        // A default never asks for more steps than the model has (a model of T = 8 runs all 8).
        config.steps = self.steps.unwrap_or(config.steps.min(diffusion_steps));
        if let Some(spacing) = self.spacing {
            config.spacing = spacing;
        }
        match (self.eta, config.solver) {
            (Some(eta), SolverKind::Ddim) => config.eta = eta,
            (Some(_), SolverKind::Ddpm) => {
                return Err(FieldError::new("eta", "the paper's sampler has no η (its noise is σ² = β); η is DDIM's"));
            }
            (Some(_), SolverKind::DpmSolver2M) => {
                return Err(FieldError::new("eta", "DPM-Solver++(2M) is deterministic and has no η; η is DDIM's"));
            }
            (None, _) => {}
        }
        config.check(diffusion_steps)?;
        Ok(config)
    }
}

impl SamplerConfig {
    /// The paper's sampler over all `diffusion_steps` = T steps.
    pub fn ddpm(diffusion_steps: usize) -> Self {
        Self { solver: SolverKind::Ddpm, steps: diffusion_steps, eta: 0.0, spacing: Spacing::Trailing }
    }

    /// DDIM with `steps` evaluations on the trailing grid.
    pub fn ddim(steps: usize, eta: f64) -> Self {
        Self { solver: SolverKind::Ddim, steps, eta, spacing: Spacing::Trailing }
    }

    /// Checks the config against a model of T = `diffusion_steps`.
    pub fn check(&self, diffusion_steps: usize) -> Result<(), FieldError> {
        let t = diffusion_steps;
        if !(1..=t).contains(&self.steps) {
            return Err(FieldError::new("steps", format!("sampling steps must be in 1..={t}, got {}", self.steps)));
        }
        if !(0.0..=1.0).contains(&self.eta) || (self.eta != 0.0 && self.solver != SolverKind::Ddim) {
            return Err(FieldError::new(
                "eta",
                format!("η must be in [0, 1] for DDIM and 0 otherwise, got {}", self.eta),
            ));
        }
        if self.solver == SolverKind::Ddpm && (self.steps != t || self.spacing != Spacing::Trailing) {
            return Err(FieldError::new(
                "steps",
                format!("the paper's sampler runs all {t} steps (for fewer, use ddim with η = 1); got {}", self.steps),
            ));
        }
        Ok(())
    }

    /// The same sampler made deterministic, for interpolations that mix initial noise (slerp):
    /// DDIM with η = 0; the paper's sampler is refused.
    pub fn deterministic(self) -> Result<Self, FieldError> {
        match self.solver {
            SolverKind::Ddpm => Err(FieldError::new(
                "solver",
                "a slerp interpolation needs a deterministic sampler (ddim or dpm++2m), not the paper's",
            )),
            _ if self.solver.deterministic(self.eta) => Ok(self),
            _ => Ok(Self { eta: 0.0, ..self }),
        }
    }

    /// The steps of a run from `t_start` (T − 1 from pure noise; less for SDEdit and labml's
    /// interpolation, where the NFE shrinks in proportion).
    pub fn grid(&self, t_start: usize, diffusion: &Diffusion) -> Grid {
        match self.solver {
            SolverKind::Ddpm => Grid::every_step(t_start),
            _ => self.spacing.grid(self.steps, t_start, diffusion),
        }
    }

    /// A fresh solver (a multistep one keeps its history between steps).
    pub fn solver(&self) -> Box<dyn Solver> {
        match self.solver {
            SolverKind::Ddpm => Box::new(ancestral::Ancestral),
            SolverKind::Ddim => Box::new(ddim::Ddim { eta: self.eta }),
            SolverKind::DpmSolver2M => Box::new(dpm_solver::DpmSolver2M::default()),
        }
    }

    /// A short description: "DPM-Solver++(2M), 10 steps (log-SNR)".
    pub fn describe(&self) -> String {
        match self.solver {
            SolverKind::Ddpm => format!("DDPM, all {} steps", self.steps),
            SolverKind::Ddim => format!("DDIM, {} steps, η = {} ({})", self.steps, self.eta, self.spacing.name()),
            SolverKind::DpmSolver2M => format!("DPM-Solver++(2M), {} steps ({})", self.steps, self.spacing.name()),
        }
    }
}
