//! Classifier-free guidance (Ho & Salimans 2022, eq. 6): one network trained with and without
//! its class label gives ε̃ = ε_θ(x_t, ∅) + w·(ε_θ(x_t, c) − ε_θ(x_t, ∅)); w = 0 is the
//! unconditional model, w = 1 the conditional one, w > 1 trades diversity for fidelity to c.
//! Both predictions come from one pass over the batch stacked twice. A class morph (the page's
//! interpolation from class A to class B) mixes the two classes' embeddings frame by frame.
//! "Any class" from pure noise deals each image a class by its seed ([`prior_class`]).

use burn::tensor::Tensor;

use crate::field_error::FieldError;
use crate::noise::Noise;
use crate::sampler::EpsTheta;
use crate::unet::{ClassMix, UNet};

/// Which class each image is drawn as, and how strongly.
#[derive(Clone, Debug, PartialEq)]
pub struct Guidance {
    /// One class (or mix) for every image of a batch, or one per image (a class morph).
    classes: Vec<ClassMix>,
    /// w of eq. 6.
    pub w: f64,
}

/// The largest guidance strength the CLI and the page accept.
pub const MAX_GUIDANCE: f64 = 20.0;

/// The strength `ddpm` and the page use unless told otherwise: on the shipped class-conditional
/// digits, w = 1 draws too many of another digit and w = 1.25 digits too prototypical for the
/// MNIST-FD bar; this one meets both bars (measured: docs/mnist-model.md).
pub const DEFAULT_GUIDANCE: f64 = 1.15;

/// The class image `seed` is drawn as when none is asked for ("any"): classes dealt like a
/// shuffled deck, so each run of `num_classes` seeds from a multiple of it gets every class
/// once, in an order drawn from ChaCha stream 2 of the run's index (x_T and the sampler's z
/// come from stream 0 of the seed). Each seed's class is still uniform, and x_T ~ N(0, I) is
/// independent of it, so drawing c ~ p(c) and then x_0 ~ p_θ(x_0 | c) is ancestral sampling of
/// p(x_0) = Σ_c p(c) p(x_0 | c): the marginal itself, which the ∅ row only approximates with
/// the share of training it had (docs/mnist-model.md). Dealing rather than drawing each class
/// alone is stratified sampling: any 10·k consecutive seeds from a multiple of 10 hold every
/// digit k times, where independent draws leave each class's share about a point off at 1,000
/// images (a binomial's spread), which MNIST-FD's class-separating features feel strongly
/// (docs/mnist-model.md). Uniform p(c) is MNIST's within 1.4 points a class (8.6-11.3 %).
/// From a drawing (SDEdit) x_t already tells the class, p(c | x_t) ≠ p(c), so there no class
/// means ∅.
pub fn prior_class(seed: u64, num_classes: usize) -> usize {
    let n = num_classes as u64;
    let mut deck: Vec<usize> = (0..num_classes).collect();
    let mut noise = Noise::stream(seed / n, 2);
    // Fisher–Yates: every order of the deck equally likely.
    for i in (1..num_classes).rev() {
        deck.swap(i, noise.below(i + 1));
    }
    deck[(seed % n) as usize]
}

impl Guidance {
    /// How images starting from x_T with `seeds` are drawn: as `class`, or with none named, a
    /// conditional model draws each as its seed's [`prior_class`], an unconditional one unguided
    /// (None). The one rule of `ddpm sample` / `animate` and the page.
    pub fn from_noise(
        class: Option<usize>,
        seeds: &[u64],
        w: f64,
        num_classes: Option<usize>,
    ) -> Result<Option<Self>, FieldError> {
        match (class, num_classes) {
            (Some(c), _) => Self::class(c, w, num_classes).map(Some),
            (None, Some(n)) => {
                let classes = seeds.iter().map(|&s| prior_class(s, n).into()).collect();
                Self::morph([None, None], &[], w, num_classes).map(|g| Some(Self { classes, ..g }))
            }
            (None, None) => Ok(None),
        }
    }

    /// Every image drawn as `class`, checked against the model's classes (None: unconditional).
    pub fn class(class: usize, w: f64, num_classes: Option<usize>) -> Result<Self, FieldError> {
        Self::morph([Some(class), Some(class)], &[0.0], w, num_classes)
    }

    /// Image i on the way from class `ends[0]` to `ends[1]` at λ_i (None: ∅, so a morph may
    /// also fade guidance in or out): the class embeddings mixed, (1 − λ)·emb(A) + λ·emb(B).
    pub fn morph(
        ends: [Option<usize>; 2],
        lambdas: &[f64],
        w: f64,
        num_classes: Option<usize>,
    ) -> Result<Self, FieldError> {
        let n = num_classes.ok_or_else(|| {
            FieldError::new("class", "this model is unconditional: it has no classes to guide towards")
        })?;
        if let Some(c) = ends.into_iter().flatten().find(|&c| c >= n) {
            return Err(FieldError::new("class", format!("class {c} is outside 0..{n} of this model")));
        }
        if !(0.0..=MAX_GUIDANCE).contains(&w) {
            return Err(FieldError::new("guidance", format!("guidance {w} must be in [0, {MAX_GUIDANCE}]")));
        }
        let [a, b] = ends.map(|c| c.unwrap_or(n));
        // The ends are exactly A's and B's rows, so a morph's ends are `ddpm sample --class`'s images.
        let classes = lambdas.iter().map(|&l| match l {
            _ if a == b || l <= 0.0 => a.into(),
            _ if l >= 1.0 => b.into(),
            _ => ClassMix { a, b, lambda: l as f32 },
        });
        Ok(Self { classes: classes.collect(), w })
    }

    /// The requested class (mix) of each of `b` images.
    fn per_image(&self, b: usize) -> Vec<ClassMix> {
        match self.classes[..] {
            [one] => vec![one; b],
            ref each => {
                assert_eq!(each.len(), b, "a morph's guidance has one class mix per image");
                each.to_vec()
            }
        }
    }

    /// The batch stacked twice with t, and the classes: the requested ones for the first half,
    /// ∅ (`null`) for the second.
    pub fn stack(&self, x_t: Tensor<4>, t: Tensor<1>, null: usize) -> (Tensor<4>, Tensor<1>, Vec<ClassMix>) {
        let b = x_t.dims()[0];
        let classes = [self.per_image(b), vec![null.into(); b]].concat();
        (Tensor::cat(vec![x_t.clone(), x_t], 0), Tensor::cat(vec![t.clone(), t], 0), classes)
    }

    /// Eq. 6 from the stacked prediction [ε(c); ε(∅)].
    pub fn combine(&self, eps: Tensor<4>) -> Tensor<4> {
        let b = eps.dims()[0] / 2;
        let (cond, uncond) = (eps.clone().narrow(0, 0, b), eps.narrow(0, b, b));
        uncond.clone() + (cond - uncond).mul_scalar(self.w)
    }

    /// ε̃ for the batch: the model's stacked pass run by `forward(x, t, classes, w)` (one
    /// pass, or shards of it). At the ends of eq. 6 one prediction is all of it, at half the
    /// cost: w = 0 gives ε(∅), w = 1 gives ε(c). A distilled student (a model with a guidance
    /// input) gives ε̃ itself in one pass, from w.
    pub fn eps(
        guidance: Option<&Guidance>,
        model: &UNet,
        x_t: Tensor<4>,
        t: Tensor<1>,
        forward: impl FnOnce(Tensor<4>, Tensor<1>, Option<Vec<ClassMix>>, Option<Vec<f32>>) -> Tensor<4>,
    ) -> Tensor<4> {
        let b = x_t.dims()[0];
        match (guidance, model.num_classes()) {
            (Some(g), Some(_)) if model.takes_guidance() => {
                forward(x_t, t, Some(g.per_image(b)), Some(vec![g.w as f32; b]))
            }
            (Some(g), Some(null)) if g.w == 0.0 => forward(x_t, t, Some(vec![null.into(); b]), None),
            (Some(g), Some(_)) if g.w == 1.0 => forward(x_t, t, Some(g.per_image(b)), None),
            (Some(g), Some(null)) => {
                let (x, t, classes) = g.stack(x_t, t, null);
                g.combine(forward(x, t, Some(classes), None))
            }
            _ => forward(x_t, t, None, None),
        }
    }
}

/// A UNet guided towards a class (or, without guidance, the UNet itself): what the page's
/// one-thread module samples with; `threads::Sharded` does the same on several threads.
pub struct Guided<'a> {
    pub model: &'a UNet,
    pub guidance: Option<Guidance>,
}

impl EpsTheta for Guided<'_> {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        Guidance::eps(self.guidance.as_ref(), self.model, x_t, t, |x, t, classes, w| {
            self.model.forward_condition(x, t, classes.as_deref(), w.as_deref())
        })
    }
}
