//! The burn plumbing the three hand-written operations (convolution, transposed convolution,
//! GroupNorm + Swish) share: an operation on three f32 flex tensors with a hand-written forward
//! and backward is described by [`FlexOp`], and [`run`] and [`run_autodiff`] run it on flex and
//! register it with burn's autodiff. Each run is counted ([`fast_path_calls`]) so that a test
//! can tell the hand-written kernels ran, not burn's own ops.

use std::cell::RefCell;
use std::collections::HashMap;

#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::{TensorMetadata, flex::Flex, tensor::FloatTensor};
use burn::tensor::TensorData;

/// An operation on three contiguous f32 flex tensors (input, weight-like, bias-like), with its
/// parameters (stride, groups, ε) in `Self`.
pub(super) trait FlexOp: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The name [`fast_path_calls`] counts it under.
    fn name(&self) -> &'static str;
    /// The output's values and shape.
    fn forward(&self, inputs: [&FlexTensor; 3]) -> TensorData;
    /// ∂L/∂input for each input (each of that input's length), from ∂L/∂out.
    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, inputs: [&FlexTensor; 3], d_out: &FlexTensor) -> [Vec<f32>; 3];
}

thread_local! {
    static CALLS: RefCell<HashMap<&'static str, [usize; 2]>> = RefCell::new(HashMap::new());
}

fn count(name: &'static str, pass: usize) {
    CALLS.with(|c| c.borrow_mut().entry(name).or_default()[pass] += 1);
}

/// How often this thread ran the hand-written forward and backward of `name` ("conv2d",
/// "group_norm_swish") so far. burn runs flex's ops and autodiff's backward on the calling
/// thread, so a test sees exactly its own calls.
pub fn fast_path_calls(name: &str) -> [usize; 2] {
    CALLS.with(|c| c.borrow().get(name).copied().unwrap_or_default())
}

/// The elements of a contiguous f32 flex tensor.
pub(super) fn f32s(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}

/// Runs `op` on flex.
pub(super) fn run<K: FlexOp>(op: &K, inputs: [FlexTensor; 3]) -> FlexTensor {
    let inputs = inputs.map(|t| t.to_contiguous());
    count(op.name(), 0);
    FlexTensor::from_data(op.forward([&inputs[0], &inputs[1], &inputs[2]]))
}

/// burn's autodiff graph node of a [`FlexOp`]: the inputs are checkpointed (not the
/// intermediates, which the backward recomputes) and the three gradients registered.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
struct Node<K>(std::marker::PhantomData<K>);

#[cfg(not(target_arch = "wasm32"))]
impl<K: FlexOp> Backward<Flex, 3> for Node<K> {
    type State = ([NodeId; 3], K);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (ids, op) = ops.state;
        let d_out = grads.consume::<Flex>(&ops.node).to_contiguous();
        let inputs = ids.map(|id| checkpointer.retrieve_node_output::<FlexTensor>(id).to_contiguous());
        count(op.name(), 1);
        let d = op.backward([&inputs[0], &inputs[1], &inputs[2]], &d_out);
        for ((parent, grad), input) in ops.parents.into_iter().zip(d).zip(&inputs) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, input.shape())));
            }
        }
    }
}

/// Runs `op` under autodiff over flex.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn run_autodiff<C: CheckpointStrategy, K: FlexOp>(
    op: K,
    [a, b, c]: [FloatTensor<Autodiff<Flex, C>>; 3],
) -> FloatTensor<Autodiff<Flex, C>> {
    let node = Node::<K>(std::marker::PhantomData);
    match node.prepare::<C>([a.node(), b.node(), c.node()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let ids = [prep.checkpoint(&a), prep.checkpoint(&b), prep.checkpoint(&c)];
            let out = run(&op, [a.into_primitive(), b.into_primitive(), c.into_primitive()]);
            prep.finish((ids, op), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(run(&op, [a.into_primitive(), b.into_primitive(), c.into_primitive()])),
    }
}
