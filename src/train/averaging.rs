//! Averages of weights: the exponential moving average a run keeps (what the paper evaluates and
//! we export) and the plain mean of several snapshots (`ddpm average`).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::unet::UNet;

/// The parameters in visiting order, flattened (a module's visit order is fixed by its type).
#[derive(Default)]
struct Flatten(Vec<Tensor<1>>);

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Stochastic weight averaging (Izmailov et al. 2018): the plain mean of snapshots of one run,
/// taken where each cycle of the learning rate has decayed, lands in a flatter region of the loss
/// than any one of them. A running mean is an EMA whose decay grows: θ̄_k = (k−1)/k · θ̄_{k−1} + θ_k / k.
pub fn average(models: Vec<UNet>) -> UNet {
    let mut models = models.into_iter();
    let mut mean = models.next().expect("at least one model to average");
    for (model, k) in models.zip(2..) {
        let mut current = Flatten::default();
        model.visit(&mut current);
        let mut update = EmaUpdate { current: current.0.into_iter(), decay: (k - 1) as f64 / k as f64 };
        mean = mean.map(&mut update);
    }
    mean
}

/// The EMA step θ̄ ← d·θ̄ + (1 − d)·θ of `ema` towards `model`'s weights.
pub(super) fn ema_update(ema: UNet, model: &UNet, decay: f64) -> UNet {
    let mut current = Flatten::default();
    model.visit(&mut current);
    ema.map(&mut EmaUpdate { current: current.0.into_iter(), decay })
}

/// Maps each parameter θ̄ to d·θ̄ + (1 − d)·θ, the θ in visiting order.
struct EmaUpdate<I> {
    current: I,
    decay: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for EmaUpdate<I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let theta = self.current.next().expect("EMA and model have the same parameters");
        let (id, avg, _) = param.consume();
        let shape = avg.shape();
        let theta = theta.reshape(shape);
        Param::initialized(id, avg.mul_scalar(self.decay) + theta.mul_scalar(1.0 - self.decay))
    }
}
