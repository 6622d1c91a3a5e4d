//! Which diffusion steps a run evaluates the network at, and where it ends.
//!
//! Our step t is the paper's t + 1, so t = 0 still holds a little noise (ᾱ_0 = 1 − β_1); x₀
//! itself is "ᾱ = 1", which no step has. Two spacings:
//! * trailing: K evaluations at t_i = ⌊(i + 1)·n/K⌋ − 1 (n = t_start + 1), the last update
//!   landing on x₀ exactly (ᾱ = 1, log-SNR λ = ∞): the grid DDIM has always used here;
//! * log-SNR: K + 1 points uniform in λ = log(α/σ) = ½ log(ᾱ/(1 − ᾱ)) from t_start to t = 0,
//!   each rounded to the nearest step, evaluated at the first K; the run ends at x_{t=0}
//!   (σ = 0.01) as DPM-Solver's reference code ends at its smallest t. Lu et al. recommend
//!   this spacing for small images (DPM-Solver, arXiv 2206.00927); on the shipped digits it
//!   spends half its evaluations below t = 100 and drew worse digits than the trailing grid at
//!   every NFE measured (docs/samplers.md), so every rule defaults to the trailing grid.

use serde::{Deserialize, Serialize};

use crate::diffusion::Diffusion;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Spacing {
    #[serde(rename = "trailing")]
    Trailing,
    #[serde(rename = "logsnr")]
    LogSnr,
}

impl Spacing {
    pub const ALL: [Spacing; 2] = [Spacing::Trailing, Spacing::LogSnr];

    pub fn name(self) -> &'static str {
        match self {
            Spacing::Trailing => "trailing",
            Spacing::LogSnr => "logsnr",
        }
    }

    /// The grid of a run of `steps` evaluations from T − 1, started at `t_start`: a partial run
    /// keeps the density of steps, K·(t_start + 1)/T of them (at least one).
    pub fn grid(self, steps: usize, t_start: usize, diffusion: &Diffusion) -> Grid {
        let n = t_start + 1;
        let k = ((steps as f64 * n as f64 / diffusion.steps() as f64).round() as usize).clamp(1, n);
        match self {
            Spacing::Trailing => Grid { t: (0..k).rev().map(|i| (i + 1) * n / k - 1).collect(), end: None },
            Spacing::LogSnr => {
                let lambda = |t: usize| 0.5 * (diffusion.alpha_bar[t] / (1.0 - diffusion.alpha_bar[t])).ln();
                let (from, to) = (lambda(t_start), lambda(0));
                // λ rises as t falls: the nearest step to each target by a scan down from t_start.
                let mut points: Vec<usize> = Vec::with_capacity(k + 1);
                for j in 0..=k {
                    let target = from + (to - from) * j as f64 / k as f64;
                    let t = (0..=t_start)
                        .min_by(|&a, &b| (lambda(a) - target).abs().total_cmp(&(lambda(b) - target).abs()))
                        .expect("t_start ≥ 0");
                    if points.last() != Some(&t) {
                        points.push(t);
                    }
                }
                match points.len() {
                    // t_start = 0: one evaluation, straight to x₀.
                    1 => Grid { t: points, end: None },
                    _ => {
                        let end = points.pop();
                        Grid { t: points, end }
                    }
                }
            }
        }
    }
}

impl std::str::FromStr for Spacing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Spacing::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown spacing {s:?} (trailing or logsnr)"))
    }
}

/// The steps of one run: the network runs at each `t[i]` (descending), the update moves to
/// `t[i + 1]`, and the last to `end` (None: x₀, ᾱ = 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    pub t: Vec<usize>,
    pub end: Option<usize>,
}

impl Grid {
    /// The paper's sampler: every step from `t_start` down to 0, then x₀.
    pub fn every_step(t_start: usize) -> Grid {
        Grid { t: (0..=t_start).rev().collect(), end: None }
    }

    /// Where the update after evaluation `i` lands.
    pub fn next(&self, i: usize) -> Option<usize> {
        self.t.get(i + 1).copied().or(self.end)
    }
}
