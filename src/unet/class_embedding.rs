//! Classifier-free guidance's condition (Ho & Salimans 2022): a learned vector per class, and a
//! last one for "no class" (∅), added to the time embedding. Items may mix two classes' vectors
//! (a class morph's frames).

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// The factor on the class embedding's rows where they join the time embedding. Adam moves each
/// parameter by about the learning rate per step whatever its scale, so zero-initialised rows
/// grow too slowly to steer a warm-started model (docs/mnist-model.md: a warm start without the
/// gain drew the asked digit no more often than chance). The gain gives this one table ten times
/// the network's learning rate (per-layer rates, as for embeddings in μP) and keeps the zero
/// start.
pub const CLASS_EMB_GAIN: f32 = 10.0;

/// One item's class condition: the class embedding (1 − λ)·emb(a) + λ·emb(b), classes in
/// 0..=num_classes (the last is ∅). A plain class c is `ClassMix::from(c)`; the frames of a
/// morph from class a to class b walk λ from 0 to 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassMix {
    pub a: usize,
    pub b: usize,
    pub lambda: f32,
}

impl From<usize> for ClassMix {
    fn from(class: usize) -> Self {
        Self { a: class, b: class, lambda: 0.0 }
    }
}

/// The table: row c is class c's vector, the last row ∅'s (the weights file's
/// `class_emb.weight`, [num_classes + 1, time channels]).
#[derive(Module, Debug)]
pub struct ClassEmbedding {
    weight: Param<Tensor<2>>,
}

impl ClassEmbedding {
    /// All zeros: a fresh conditional model starts as its unconditional self (and a warm start
    /// from an unconditional file, `UNet::with_classes`, as that file's model).
    pub fn zeros(num_classes: usize, dim: usize, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::zeros([num_classes + 1, dim], device)) }
    }

    /// The classes it knows; ∅ is this index.
    pub fn num_classes(&self) -> usize {
        self.weight.dims()[0] - 1
    }

    /// CLASS_EMB_GAIN · ((1 − λ)·emb(a) + λ·emb(b)) per item, [batch, dim]; without `classes`
    /// every item gets ∅'s row, and a class beyond the table is ∅.
    pub fn forward(&self, classes: Option<&[ClassMix]>, batch: usize) -> Tensor<2> {
        let null = self.num_classes();
        let mix = |i: usize| classes.map_or(ClassMix::from(null), |c| c[i]);
        let device = self.weight.device();
        let rows = |pick: fn(&ClassMix) -> usize| {
            let ids: Vec<i64> = (0..batch).map(|i| pick(&mix(i)).min(null) as i64).collect();
            self.weight.val().select(0, Tensor::<1, Int>::from_data(TensorData::new(ids, [batch]), &device))
        };
        let mut c = rows(|m| m.a);
        if (0..batch).any(|i| mix(i).lambda != 0.0) {
            let lambda = (0..batch).map(|i| mix(i).lambda).collect::<Vec<f32>>();
            let lambda = Tensor::<2>::from_data(TensorData::new(lambda, [batch, 1]), &device);
            c = c.clone() + (rows(|m| m.b) - c) * lambda;
        }
        c.mul_scalar(CLASS_EMB_GAIN)
    }
}
