//! The noise-prediction network ε_θ(x_t, t): a UNet after labml.ai's annotated DDPM
//! (`labml_nn/diffusion/ddpm/unet.py`), which follows the paper's PixelCNN++-style backbone
//! (Ho et al. 2020, §4 and Appendix B).
//!
//! Module and parameter names match labml's so the two read side by side, and the exported
//! safetensors keys equal labml's `state_dict()` keys (`down.0.res.conv1.weight`, ...).
//! Three departures, each a config field so that an imported labml model (`ddpm import`)
//! computes exactly what labml computes:
//! * channel multipliers mean "level width = base × mult" (labml compounds them; the importer
//!   multiplies them out, which is exact);
//! * the attention block applies its GroupNorm before the projection, as the paper's code does
//!   (`attn_norm`; labml builds it and never applies it);
//! * the attention's softmax runs over the keys (`attn_softmax`; labml-nn before late 2022 ran
//!   it over the queries, its issue #146).

use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

mod blocks;
mod class_embedding;
mod guidance_embedding;

pub use blocks::{AttentionBlock, ResBlock, Resample, ResidualBlock, SoftmaxAxis, TimeEmbedding, sinusoidal_embedding};
use blocks::{conv_flops, conv3x3};
pub use class_embedding::{CLASS_EMB_GAIN, ClassEmbedding, ClassMix};
pub use guidance_embedding::{GuidanceEmbedding, W_EMB_GAIN, W_SCALE};

use crate::kernels::{conv_transpose2d, conv2d, group_norm_swish};
use crate::limits;
use crate::noise::Noise;

/// Everything needed to build a UNet; stored in the weights file so a reader can rebuild the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Channels of the images (1 for MNIST, 3 for RGB).
    pub image_channels: usize,
    /// Height = width of the images.
    pub image_size: usize,
    /// Width of the first level (labml's `n_channels`).
    pub base_channels: usize,
    /// Level i has `base_channels * channel_mults[i]` channels (the paper's meaning).
    pub channel_mults: Vec<usize>,
    /// Self-attention after each residual block at level i (labml's `is_attn`).
    pub attn: Vec<bool>,
    /// Residual blocks per level (labml's `n_blocks`).
    pub blocks: usize,
    /// GroupNorm groups in residual and attention blocks (labml: 32).
    pub groups: usize,
    /// Dropout inside residual blocks while training (paper: 0.1).
    pub dropout: f64,
    /// Classes of a class-conditional model (Ho & Salimans 2022): a learned embedding of
    /// `num_classes + 1` rows, the last one "no class" (∅), added to the time embedding. None:
    /// unconditional, as every file written before it (and such files are written as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// A distilled student's input for the guidance strength w ([`GuidanceEmbedding`]): one
    /// pass gives the guided prediction. Needs classes. Absent (false) in every other file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guidance_input: bool,
    /// Whether the attention block normalises its input (GroupNorm) before the projection:
    /// true as in the paper's code and every model trained here; false for labml's UNet, which
    /// builds the GroupNorm (its weights are in the file) and never applies it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub attn_norm: bool,
    /// The axis of the attention's softmax: the keys (the Transformer's, labml-nn since late
    /// 2022, every model trained here) or the queries (labml-nn before).
    #[serde(default, skip_serializing_if = "SoftmaxAxis::is_keys")]
    pub attn_softmax: SoftmaxAxis,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for UNetConfig {
    /// The MNIST model: labml's structure at base 32, widths 32/64/128, attention at 7×7.
    fn default() -> Self {
        Self {
            image_channels: 1,
            image_size: 28,
            base_channels: 32,
            channel_mults: vec![1, 2, 4],
            attn: vec![false, false, true],
            blocks: 1,
            groups: 32,
            dropout: 0.1,
            num_classes: None,
            guidance_input: false,
            attn_norm: true,
            attn_softmax: SoftmaxAxis::Keys,
        }
    }
}

impl UNetConfig {
    /// Width of level `i`.
    pub fn width(&self, i: usize) -> usize {
        self.base_channels * self.channel_mults[i]
    }

    /// Channel count of the time embedding (labml: 4 × base).
    pub fn time_channels(&self) -> usize {
        4 * self.base_channels
    }

    /// Groups of the final GroupNorm (labml: 8).
    fn final_groups(&self) -> usize {
        self.groups.min(8)
    }

    /// Checks that the configuration builds a working network within [`crate::limits`]; the
    /// message names the field. Bounds come first, so that the arithmetic after them cannot
    /// overflow, and the parameter count is taken from the lazily built model (burn allocates
    /// no weights until they are used).
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.channel_mults.len();
        let within = |name: &str, value: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&value) { Ok(()) } else { Err(format!("{name} {value} is outside {lo}..={hi}")) }
        };
        if !limits::IMAGE_CHANNELS.contains(&self.image_channels) {
            return Err(format!("image_channels {} is not 1 (gray) or 3 (RGB)", self.image_channels));
        }
        within("image_size", self.image_size, 1, limits::MAX_IMAGE_SIZE)?;
        if levels == 0 {
            return Err("channel_mults must name at least one level".into());
        }
        within("levels (channel_mults)", levels, 1, limits::MAX_LEVELS)?;
        within("base_channels", self.base_channels, 4, limits::MAX_WIDTH)?;
        within("blocks", self.blocks, 1, limits::MAX_BLOCKS)?;
        within("groups", self.groups, 1, limits::MAX_GROUPS)?;
        if self.attn.len() != levels {
            return Err(format!(
                "attention flags ({}) and channel multipliers ({levels}) must have the same length",
                self.attn.len()
            ));
        }
        for (i, &mult) in self.channel_mults.iter().enumerate() {
            let width = self.base_channels.checked_mul(mult).unwrap_or(usize::MAX);
            if mult == 0 || width > limits::MAX_WIDTH {
                return Err(format!(
                    "channel_mults[{i}] {mult}: level width base × mult must be 1..={}",
                    limits::MAX_WIDTH
                ));
            }
        }
        // Each downsample halves the size with a stride-2 conv, each upsample doubles it back:
        // the round trip is exact only when every level's size is even.
        let factor = 1usize << (levels - 1);
        if self.image_size % factor != 0 {
            return Err(format!(
                "image_size {} must be a positive multiple of {factor} for {levels} levels",
                self.image_size
            ));
        }
        for i in 0..levels {
            let size = self.image_size >> i;
            if self.width(i) % self.groups != 0 {
                return Err(format!("level {i} width {} is not divisible by {} groups", self.width(i), self.groups));
            }
            if self.width(i) * size * size > limits::MAX_ACTIVATION {
                return Err(format!(
                    "level {i}: width {} at {size}×{size} is above {} floats per image",
                    self.width(i),
                    limits::MAX_ACTIVATION
                ));
            }
            if self.attn[i] && size * size > limits::MAX_ATTENTION_POSITIONS {
                return Err(format!(
                    "attn[{i}]: attention at {size}×{size} is above {} positions",
                    limits::MAX_ATTENTION_POSITIONS
                ));
            }
        }
        if self.base_channels % self.final_groups() != 0 {
            return Err(format!(
                "base channels {} not divisible by {} groups",
                self.base_channels,
                self.final_groups()
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if let Some(n) = self.num_classes {
            within("num_classes", n, 1, limits::MAX_CLASSES)?;
        }
        if self.guidance_input && self.num_classes.is_none() {
            return Err("guidance_input: a guidance input needs a class-conditional model".into());
        }
        let params = self.num_params();
        if params > limits::MAX_PARAMS {
            return Err(format!("{params} parameters is above the largest supported model, {}", limits::MAX_PARAMS));
        }
        Ok(())
    }

    /// Parameters of the model, counted on a lazily built one (burn allocates no weights until
    /// they are used).
    pub fn num_params(&self) -> usize {
        self.init(&Device::flex()).num_params()
    }

    /// Builds the network with fresh weights (PyTorch-style default initialisation).
    pub fn init(&self, device: &Device) -> UNet {
        let tch = self.time_channels();
        let base = self.base_channels;
        let levels = self.channel_mults.len();
        let image_proj = conv3x3(self.image_channels, base, device);
        let time_emb = TimeEmbedding::new(tch, device);

        // Down path: `blocks` DownBlocks per level, then a Downsample except after the last level.
        let mut down = Vec::new();
        let mut width = base;
        for i in 0..levels {
            for _ in 0..self.blocks {
                down.push(Down::Block(ResBlock::new(self, width, self.width(i), self.attn[i], device)));
                width = self.width(i);
            }
            if i + 1 < levels {
                down.push(Down::Downsample(Resample::down(width, device)));
            }
        }

        let middle = MiddleBlock {
            res1: ResidualBlock::new(self, width, width, device),
            attn: AttentionBlock::new(self, width, device),
            res2: ResidualBlock::new(self, width, width, device),
        };

        // Up path, deepest level first: `blocks` UpBlocks at the level width, one more that
        // narrows to the level below, then an Upsample except at level 0. Every UpBlock eats one
        // skip tensor saved on the way down, so its residual block sees in + out channels.
        let mut up = Vec::new();
        for i in (0..levels).rev() {
            let below = if i == 0 { base } else { self.width(i - 1) };
            for _ in 0..self.blocks {
                up.push(Up::Block(ResBlock::new(self, width + width, width, self.attn[i], device)));
            }
            up.push(Up::Block(ResBlock::new(self, width + below, below, self.attn[i], device)));
            width = below;
            if i > 0 {
                up.push(Up::Upsample(Resample::up(width, device)));
            }
        }

        UNet {
            image_proj,
            time_emb,
            class_emb: self.num_classes.map(|n| ClassEmbedding::zeros(n, tch, device)),
            w_emb: self.guidance_input.then(|| GuidanceEmbedding::new(tch, device)),
            down,
            middle,
            up,
            norm: GroupNormConfig::new(self.final_groups(), base).init(device),
            final_: conv3x3(base, self.image_channels, device),
        }
    }
}

/// One entry of `down`: a block or a Downsample (their index is the labml key: `down.3.conv`).
#[derive(Module, Debug)]
pub enum Down {
    Block(ResBlock),
    Downsample(Resample<Conv2d>),
}

/// One entry of `up`: a block or an Upsample.
#[derive(Module, Debug)]
pub enum Up {
    Block(ResBlock),
    Upsample(Resample<ConvTranspose2d>),
}

/// Residual, attention, residual at the lowest resolution.
#[derive(Module, Debug)]
pub struct MiddleBlock {
    res1: ResidualBlock,
    attn: AttentionBlock,
    res2: ResidualBlock,
}

/// ε_θ(x_t, t).
#[derive(Module, Debug)]
pub struct UNet {
    image_proj: Conv2d,
    time_emb: TimeEmbedding,
    /// Conditional models only.
    class_emb: Option<ClassEmbedding>,
    /// Distilled students only: w's embedding.
    w_emb: Option<GuidanceEmbedding>,
    down: Vec<Down>,
    middle: MiddleBlock,
    up: Vec<Up>,
    norm: GroupNorm,
    /// labml's `final` (a Rust keyword); the weights file uses the name `final`.
    final_: Conv2d,
}

impl UNet {
    /// Predicts the noise in `x` ([B, C, H, W], data in [−1, 1] scaled by √ᾱ) at steps `t` ([B]).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_with(x, t, None, None, None)
    }

    /// ε_θ(x_t, t, c) with one class per item (`num_classes` is ∅); an unconditional model
    /// ignores the classes.
    pub fn forward_class(&self, x: Tensor<4>, t: Tensor<1>, classes: &[usize]) -> Tensor<4> {
        let mixes: Vec<ClassMix> = classes.iter().map(|&c| c.into()).collect();
        self.forward_with(x, t, Some(&mixes), None, None)
    }

    /// ε_θ(x_t, t, c) with each item's class embedding a mix of two classes' ([`ClassMix`]):
    /// the frames of a class morph.
    pub fn forward_mix(&self, x: Tensor<4>, t: Tensor<1>, mixes: &[ClassMix]) -> Tensor<4> {
        self.forward_with(x, t, Some(mixes), None, None)
    }

    /// ε_θ(x_t, t, c, w): each item's class (mix) and, for a model with a guidance input, its
    /// guidance strength (a model without one ignores `w`; a student given none takes w = 1).
    pub fn forward_condition(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        classes: Option<&[ClassMix]>,
        w: Option<&[f32]>,
    ) -> Tensor<4> {
        self.forward_with(x, t, classes, w, None)
    }

    /// Whether this model takes the guidance strength as an input (a distilled student).
    pub fn takes_guidance(&self) -> bool {
        self.w_emb.is_some()
    }

    /// This conditional model with a guidance input whose embedding starts at zero, so that it
    /// computes exactly what it computed before, whatever w: a distilled student's start.
    pub fn with_guidance_input(self) -> Self {
        let dim = self.time_emb.dim();
        let device = self.image_proj.weight.device();
        Self { w_emb: Some(GuidanceEmbedding::new(dim, &device)), ..self }
    }

    /// The number of classes of a conditional model (its ∅ is this index).
    pub fn num_classes(&self) -> Option<usize> {
        self.class_emb.as_ref().map(ClassEmbedding::num_classes)
    }

    /// This model made class-conditional with `num_classes` classes whose embedding starts at
    /// zero, so that it computes exactly what it computed before for every class (warm start).
    pub fn with_classes(self, num_classes: usize) -> Self {
        let dim = self.time_emb.dim();
        let device = self.image_proj.weight.device();
        Self { class_emb: Some(ClassEmbedding::zeros(num_classes, dim, &device)), ..self }
    }

    /// The same in training mode: dropout after each residual block's second Swish (Appendix B),
    /// its masks drawn from `dropout`, the project's CPU generator, so a run repeats exactly on
    /// any backend, also when a training step runs shards of its batch on several threads (burn's
    /// own dropout reads the device's one global generator, in whatever order threads reach it).
    pub fn forward_train(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        classes: Option<&[usize]>,
        w: Option<&[f32]>,
        dropout: &mut Noise,
    ) -> Tensor<4> {
        let mixes: Option<Vec<ClassMix>> = classes.map(|c| c.iter().map(|&c| c.into()).collect());
        self.forward_with(x, t, mixes.as_deref(), w, Some(dropout))
    }

    /// Floating-point operations of one forward pass over `batch` images of `image_size`² pixels (2 per multiply-add,
    /// as PyTorch's `FlopCounterMode` counts them: the convolutions, linear layers and attention
    /// products; normalisations and element-wise ops are not counted), walking the layers as
    /// [`Self::forward_with`] does. `ddpm bench` divides it by the time of a pass.
    pub fn flops(&self, batch: usize, image_size: usize) -> f64 {
        let mut r = image_size;
        let (proj, r0) = conv_flops(&self.image_proj, r);
        let mut total = self.time_emb.flops() + self.w_emb.as_ref().map_or(0.0, GuidanceEmbedding::flops) + proj;
        r = r0;
        for layer in &self.down {
            total += match layer {
                Down::Block(block) => block.flops(r),
                Down::Downsample(d) => {
                    let (f, r_out) = conv_flops(&d.conv, r);
                    r = r_out;
                    f
                }
            };
        }
        total += self.middle.res1.flops(r) + self.middle.attn.flops(r) + self.middle.res2.flops(r);
        for layer in &self.up {
            total += match layer {
                Up::Block(block) => block.flops(r),
                Up::Upsample(u) => {
                    let (f, r_out) = u.flops(r);
                    r = r_out;
                    f
                }
            };
        }
        (total + conv_flops(&self.final_, r).0) * batch as f64
    }

    fn forward_with(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        classes: Option<&[ClassMix]>,
        w: Option<&[f32]>,
        mut dropout: Option<&mut Noise>,
    ) -> Tensor<4> {
        let mut t = self.time_emb.forward(t);
        let batch = t.dims()[0];
        // Classifier-free guidance's conditioning: emb(c) added to the time embedding, and a
        // student's emb(w) beside it.
        if let Some(emb) = &self.class_emb {
            t = t + emb.forward(classes, batch);
        }
        if let Some(emb) = &self.w_emb {
            let w = w.map_or_else(|| vec![1.0; batch], <[f32]>::to_vec);
            let device = t.device();
            t = t + emb.forward(&w, &device);
        }
        let mut x = conv2d(&self.image_proj, x);
        let mut skips = vec![x.clone()];
        for layer in &self.down {
            x = match layer {
                Down::Block(block) => block.forward(x, &t, dropout.as_deref_mut()),
                Down::Downsample(d) => conv2d(&d.conv, x),
            };
            skips.push(x.clone());
        }
        let h = self.middle.res1.forward(x, &t, dropout.as_deref_mut());
        x = self.middle.res2.forward(self.middle.attn.forward(h), &t, dropout.as_deref_mut());
        for layer in &self.up {
            x = match layer {
                Up::Block(block) => {
                    let skip = skips.pop().expect("one skip per up block, by construction");
                    block.forward(Tensor::cat(vec![x, skip], 1), &t, dropout.as_deref_mut())
                }
                Up::Upsample(u) => conv_transpose2d(&u.conv, x),
            };
        }
        conv2d(&self.final_, group_norm_swish(&self.norm, x))
    }
}
