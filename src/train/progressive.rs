//! Distillation, stage 2: progressive distillation (Salimans & Ho 2022, arXiv 2202.00512,
//! Algorithm 2) of a guided student (Meng et al. 2023, arXiv 2210.03142, §3.2). The teacher, a
//! student that takes w, samples by DDIM η = 0 over N trailing steps; the new student learns to
//! take in one step what the teacher takes in two, so that it samples in N/2, and the next
//! stage halves that again. Trailing grids nest (the N/2-step grid is every second point of the
//! N-step one), so each student step t → t'' spans exactly the teacher's t → t' → t''.

use std::ops::Range;

use burn::tensor::Tensor;

use crate::diffusion::Diffusion;
use crate::noise::Noise;
use crate::solvers::ddim::Ddim;
use crate::solvers::{Grid, SamplerConfig, Solver, Spacing};

/// The teacher's grid and the student's half of it.
pub struct Halving {
    teacher: Grid,
    student: Grid,
}

impl Halving {
    /// For a teacher sampled over `teacher_steps` trailing steps of `diffusion`.
    pub fn new(teacher_steps: usize, diffusion: &Diffusion) -> Result<Self, String> {
        let t_max = diffusion.steps();
        if teacher_steps < 2 || teacher_steps % 2 != 0 || teacher_steps > t_max {
            return Err(format!("the teacher's steps must be even and in 2..={t_max}, got {teacher_steps}"));
        }
        let teacher = Spacing::Trailing.grid(teacher_steps, t_max - 1, diffusion);
        let student = Spacing::Trailing.grid(teacher_steps / 2, t_max - 1, diffusion);
        // ⌊(K − j)·T/K⌋ − 1 = ⌊(2K − 2j)·T/(2K)⌋ − 1: student point j is teacher point 2j.
        if student.t.iter().enumerate().any(|(j, &t)| teacher.t.get(2 * j) != Some(&t)) {
            return Err(format!(
                "the {}-step grid is not every second point of the {teacher_steps}-step one",
                teacher_steps / 2
            ));
        }
        Ok(Self { teacher, student })
    }

    /// The sampler the student is drawn with: DDIM η = 0 over its trailing grid.
    pub fn student_sampler(&self) -> SamplerConfig {
        SamplerConfig::ddim(self.student.t.len(), 0.0)
    }

    /// `batch` steps drawn uniformly from the student's grid, in descending order: the items
    /// are exchangeable, so sorting their t changes no item's distribution, and it makes the
    /// items the teacher runs at one t adjacent.
    pub fn draw_t(&self, batch: usize, noise: &mut Noise) -> Vec<usize> {
        let mut t: Vec<usize> = (0..batch).map(|_| self.student.t[noise.below(self.student.t.len())]).collect();
        t.sort_unstable_by(|a, b| b.cmp(a));
        t
    }

    /// The teacher's two steps from the student's step t: t → t' → t'' (None: x₀).
    fn teacher_steps_from(&self, t: usize) -> Option<(usize, Option<usize>)> {
        let i = self.teacher.t.iter().position(|&s| s == t)?;
        Some((*self.teacher.t.get(i + 1)?, self.teacher.next(i + 1)))
    }

    /// The student's targets at `x_t` (its items' steps `t` from [`Self::draw_t`]): for each
    /// run of items at one t, the teacher's two DDIM η = 0 steps t → t' → t'' (x̂₀ clipped, as
    /// sampling clips it) and the ε that takes x_t to the teacher's x_t'' in one step
    /// ([`Diffusion::eps_for_step`]). `eps_theta(x, t, items)` is the teacher's guided
    /// prediction at step t for those items of the batch.
    pub fn targets(
        &self,
        diffusion: &Diffusion,
        x_t: Tensor<4>,
        t: &[usize],
        eps_theta: impl Fn(Tensor<4>, usize, Range<usize>) -> Tensor<4>,
    ) -> Result<Tensor<4>, String> {
        let mut targets = Vec::new();
        let mut start = 0;
        while start < t.len() {
            let t0 = t[start];
            let items = start..start + t[start..].iter().take_while(|&&s| s == t0).count();
            let (t1, t2) =
                self.teacher_steps_from(t0).ok_or_else(|| format!("step {t0} is not on the student's grid"))?;
            let x = x_t.clone().narrow(0, items.start, items.len());
            // η = 0 adds no noise: `z` is never drawn.
            let zeros = x.zeros_like();
            let mut z = || zeros.clone();
            let mut ddim = Ddim { eta: 0.0 };
            let eps = eps_theta(x.clone(), t0, items.clone());
            let (x1, _) = ddim.step(diffusion, x.clone(), t0, Some(t1), eps, &mut z);
            let eps = eps_theta(x1.clone(), t1, items.clone());
            let (x2, _) = ddim.step(diffusion, x1, t1, t2, eps, &mut z);
            targets.push(diffusion.eps_for_step(x, t0, x2, t2));
            start = items.end;
        }
        Ok(Tensor::cat(targets, 0))
    }
}
