//! A training step's batch split into shards whose gradients are computed on as many threads at
//! once and summed (flex runs its element-wise ops on the calling thread, so one graph leaves
//! cores idle): each shard gets its own replica of the model, and the summed gradients are put
//! back under the model's own parameter ids.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::diffusion::{Diffusion, Target};
use crate::noise::Noise;
use crate::unet::UNet;

/// One shard of a training step's batch, with its own copy of the model.
pub(super) struct Shard {
    pub replica: UNet,
    pub x0: Tensor<4>,
    pub t: Vec<usize>,
    pub classes: Option<Vec<usize>>,
    pub eps: Tensor<4>,
    /// A distillation step's targets for the shard's items: ε̃ and each item's w.
    pub teacher: Option<(Tensor<4>, Vec<f32>)>,
    /// The shard's own stream for dropout.
    pub dropout: Noise,
    /// n_k / B: the shard's share of the batch, which its mean loss is weighed by.
    pub weight: f64,
}

impl Shard {
    /// The shard's weighted loss and its gradients, flattened in the parameters' visiting order.
    pub fn run(mut self, diffusion: &Diffusion) -> (f64, Vec<Tensor<1>>) {
        let classes = self.classes.as_deref();
        let target = match self.teacher {
            Some((eps_tilde, w)) => Target::Teacher { eps_tilde, w },
            None => Target::Noise,
        };
        let loss = diffusion
            .loss(&self.replica, self.x0, &self.t, classes, self.eps, target, &mut self.dropout)
            .mul_scalar(self.weight);
        let value = loss.clone().into_scalar::<f64>();
        let grads = GradientsParams::from_grads(loss.backward(), &self.replica);
        let mut flat = FlattenGrads(&grads, Vec::new());
        self.replica.visit(&mut flat);
        (value, flat.1)
    }
}

/// Copies a module's parameters under fresh ids: each shard's autodiff graph then shares no
/// node with another's, and burn runs graphs that share nothing concurrently.
pub(super) struct Replica;

impl ModuleMapper for Replica {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        Param::initialized(ParamId::new(), param.val().detach().require_grad())
    }
}

struct FlattenGrads<'a>(&'a GradientsParams, Vec<Tensor<1>>);

impl ModuleVisitor for FlattenGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.0.get::<D>(param.id).expect("every UNet parameter takes part in the loss");
        self.1.push(grad.reshape([-1]));
    }
}

/// The shards' gradients (each flattened in the parameters' visiting order) summed, in shard
/// order, and registered under `model`'s own parameter ids.
pub(super) fn summed_gradients(model: &UNet, shards: impl Iterator<Item = Vec<Tensor<1>>>) -> GradientsParams {
    let sums = shards
        .reduce(|acc, grads| acc.into_iter().zip(grads).map(|(a, g)| a + g).collect())
        .expect("at least one shard");
    let mut assign = Assign { grads: sums.into_iter(), out: GradientsParams::new() };
    model.visit(&mut assign);
    assign.out
}

/// Registers flattened gradients, in visiting order, under the visited module's parameter ids.
struct Assign<I> {
    grads: I,
    out: GradientsParams,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleVisitor for Assign<I> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = self.grads.next().expect("one gradient per parameter");
        self.out.register::<D>(param.id, grad.reshape(param.shape()));
    }
}
