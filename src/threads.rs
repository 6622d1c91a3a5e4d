//! A batch split across CPU threads (natively, and in the page's threaded CPU module). burn's
//! flex backend runs its element-wise ops (adds, layout copies) on the calling thread and only
//! its matrix products on all cores, so one forward pass leaves cores idle; slices of the batch
//! run at once keep them busy. Sampling uses [`Sharded`]; training splits its gradients the
//! same way (`Trainer::step`).

use std::ops::Range;

use burn::tensor::Tensor;

use crate::guidance::Guidance;
use crate::sampler::EpsTheta;
use crate::unet::UNet;

/// `batch` items cut into `shards` contiguous slices whose sizes differ by at most one.
pub fn shard_ranges(batch: usize, shards: usize) -> Vec<Range<usize>> {
    let mut start = 0;
    (0..shards)
        .map(|k| {
            let n = batch / shards + usize::from(k < batch % shards);
            start += n;
            start - n..start
        })
        .collect()
}

/// Runs the jobs at once on flex's rayon threads (on this one if there is only one) and returns
/// their results in order. On the pool, the kernels' own splits of each job's work are cheap
/// work-stealing among the same threads; from threads of our own, every kernel call would queue
/// its pieces to the pool and put the calling thread to sleep until they were done.
pub fn run_all<T: Send>(jobs: Vec<impl FnOnce() -> T + Send>) -> Vec<T> {
    use rayon::prelude::*;
    if jobs.len() == 1 {
        return jobs.into_iter().map(|job| job()).collect();
    }
    jobs.into_par_iter().map(|job| job()).collect()
}

/// ε_θ with each batch cut into `shards` slices, run at once and put back together: the same
/// images as one pass, item by item; guided (the batch stacked with c and ∅) when asked.
pub struct Sharded<'a> {
    model: &'a UNet,
    shards: usize,
    guidance: Option<Guidance>,
}

impl<'a> Sharded<'a> {
    pub fn new(model: &'a UNet, shards: usize) -> Self {
        Self { model, shards: shards.max(1), guidance: None }
    }

    /// Classifier-free guidance towards a class, for a conditional model.
    pub fn guided(self, guidance: Option<Guidance>) -> Self {
        Self { guidance, ..self }
    }
}

impl EpsTheta for Sharded<'_> {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        Guidance::eps(self.guidance.as_ref(), self.model, x_t, t, |x_t, t, classes, w| {
            let batch = x_t.dims()[0];
            let jobs: Vec<_> = shard_ranges(batch, self.shards.min(batch))
                .into_iter()
                .map(|items| {
                    let x = x_t.clone().narrow(0, items.start, items.len());
                    let t = t.clone().narrow(0, items.start, items.len());
                    let classes = classes.as_ref().map(|c| c[items.clone()].to_vec());
                    let w = w.as_ref().map(|w| w[items].to_vec());
                    move || self.model.forward_condition(x, t, classes.as_deref(), w.as_deref())
                })
                .collect();
            Tensor::cat(run_all(jobs), 0)
        })
    }
}
