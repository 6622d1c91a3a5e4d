//! The UNet's building blocks, as labml names them: the time embedding, the residual block,
//! single-head attention, and the resampling convolutions.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Dropout, DropoutConfig, GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::UNetConfig;
use crate::kernels::{conv2d, group_norm_swish};
use crate::noise::Noise;

pub(super) fn conv3x3(c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
}

/// Floating-point operations (2 per multiply-add, as PyTorch's `FlopCounterMode` counts them)
/// of `conv` on one r×r image, and the size of its output.
pub(super) fn conv_flops(conv: &Conv2d, r: usize) -> (f64, usize) {
    let [c_out, c_in, k, _] = conv.weight.dims();
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(top, _, bottom, _) => top + bottom,
        _ => 0,
    };
    let r_out = (r + pad - k) / conv.stride[0] + 1;
    (2.0 * (c_out * c_in * k * k * r_out * r_out) as f64, r_out)
}

/// Floating-point operations of `linear` on one row.
fn linear_flops(linear: &Linear) -> f64 {
    2.0 * linear.weight.dims().iter().product::<usize>() as f64
}

/// Swish(x) = x·σ(x) (labml's `Swish`; burn calls it SiLU).
fn swish<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    silu(x)
}

/// Sinusoidal embedding of the step t (the Transformer's positional encoding, paper §4),
/// followed by `lin1` → Swish → `lin2`.
#[derive(Module, Debug)]
pub struct TimeEmbedding {
    lin1: Linear,
    lin2: Linear,
}

impl TimeEmbedding {
    pub(super) fn new(n_channels: usize, device: &Device) -> Self {
        Self {
            lin1: LinearConfig::new(n_channels / 4, n_channels).init(device),
            lin2: LinearConfig::new(n_channels, n_channels).init(device),
        }
    }

    /// Width of the embedding.
    pub(super) fn dim(&self) -> usize {
        self.lin2.weight.dims()[1]
    }

    /// Floating-point operations per image: the two linear layers.
    pub(super) fn flops(&self) -> f64 {
        linear_flops(&self.lin1) + linear_flops(&self.lin2)
    }

    pub(super) fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let dim = self.lin1.weight.dims()[0];
        self.lin2.forward(swish(self.lin1.forward(sinusoidal_embedding(t, dim))))
    }
}

/// `[sin(t·f_0..f_{h-1}), cos(t·f_0..f_{h-1})]` with f_i = exp(−i·ln 10000 / (h − 1)), h = dim/2.
pub fn sinusoidal_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let scale = -(10_000f64.ln()) / (half as f64 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|i| (i as f64 * scale).exp() as f32).collect();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let angles = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0); // [B, half]
    Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
}

/// GroupNorm → Swish → conv, plus the projected time embedding, then GroupNorm → Swish →
/// dropout → conv, plus a (1×1-projected when widths differ) shortcut.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    time_emb: Linear,
    /// Holds the rate only: the mask comes from the caller's [`Noise`] (see [`UNet::forward_train`]).
    dropout: Dropout,
}

impl ResidualBlock {
    pub(super) fn new(cfg: &UNetConfig, c_in: usize, c_out: usize, device: &Device) -> Self {
        Self {
            norm1: GroupNormConfig::new(cfg.groups, c_in).init(device),
            conv1: conv3x3(c_in, c_out, device),
            norm2: GroupNormConfig::new(cfg.groups, c_out).init(device),
            conv2: conv3x3(c_out, c_out, device),
            shortcut: (c_in != c_out).then(|| Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)),
            time_emb: LinearConfig::new(cfg.time_channels(), c_out).init(device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
        }
    }

    /// Floating-point operations on one r×r image: its convolutions and its time projection.
    pub(super) fn flops(&self, r: usize) -> f64 {
        let convs = [Some(&self.conv1), Some(&self.conv2), self.shortcut.as_ref()];
        convs.into_iter().flatten().map(|c| conv_flops(c, r).0).sum::<f64>() + linear_flops(&self.time_emb)
    }

    pub(super) fn forward(&self, x: Tensor<4>, t: &Tensor<2>, dropout: Option<&mut Noise>) -> Tensor<4> {
        let h = conv2d(&self.conv1, group_norm_swish(&self.norm1, x.clone()));
        let h = h + self.time_emb.forward(swish(t.clone())).unsqueeze_dims::<4>(&[2, 3]);
        let h = group_norm_swish(&self.norm2, h);
        let h = match dropout {
            Some(noise) if self.dropout.prob > 0.0 => {
                let mask = noise.keep_mask(h.dims(), 1.0 - self.dropout.prob, &h.device());
                h * mask
            }
            _ => h,
        };
        let h = conv2d(&self.conv2, h);
        h + match &self.shortcut {
            Some(conv) => conv2d(conv, x),
            None => x,
        }
    }
}

/// The axis the attention's softmax normalises over (`UNetConfig::attn_softmax`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftmaxAxis {
    /// Each query's weights over the keys sum to one: softmax(q kᵀ/√d)·v, the Transformer's.
    #[default]
    Keys,
    /// Each key's weights over the queries sum to one: labml-nn's attention before late 2022
    /// (`attn.softmax(dim=1)` over its [b, i, j, h] scores), kept so that its models import.
    Queries,
}

impl SoftmaxAxis {
    pub fn is_keys(&self) -> bool {
        *self == Self::Keys
    }
}

/// Single-head self-attention over the H·W positions with a residual add. The GroupNorm is
/// applied first, as in the paper's code, unless the config says otherwise (labml builds
/// `norm` but skips it: its weights are loaded and unused).
#[derive(Module, Debug)]
pub struct AttentionBlock {
    norm: GroupNorm,
    projection: Linear,
    output: Linear,
    #[module(skip)]
    apply_norm: bool,
    #[module(skip)]
    softmax: SoftmaxAxis,
}

impl AttentionBlock {
    pub(super) fn new(cfg: &UNetConfig, c: usize, device: &Device) -> Self {
        Self {
            norm: GroupNormConfig::new(cfg.groups, c).init(device),
            projection: LinearConfig::new(c, 3 * c).init(device),
            output: LinearConfig::new(c, c).init(device),
            apply_norm: cfg.attn_norm,
            softmax: cfg.attn_softmax,
        }
    }

    /// Floating-point operations on one r×r image: the projections on its r² positions and the
    /// two products q·kᵀ and softmax·v of r²×r² by the width.
    pub(super) fn flops(&self, r: usize) -> f64 {
        let (n, c) = ((r * r) as f64, self.output.weight.dims()[0] as f64);
        n * (linear_flops(&self.projection) + linear_flops(&self.output)) + 2.0 * 2.0 * n * n * c
    }

    pub(super) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, hh, ww] = x.dims();
        let n = hh * ww;
        let h = if self.apply_norm { self.norm.forward(x.clone()) } else { x.clone() };
        let h = h.reshape([b, c, n]).swap_dims(1, 2); // [B, N, C]
        let qkv = self.projection.forward(h); // [B, N, 3C]
        let q = qkv.clone().narrow(2, 0, c);
        let k = qkv.clone().narrow(2, c, c);
        let v = qkv.narrow(2, 2 * c, c);
        // softmax(q kᵀ / √d_k), d_k = C (one head), over the keys (dim 2 of [B, queries, keys])
        // or, for old labml models, over the queries (dim 1).
        let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar((c as f64).powf(-0.5));
        let attn = softmax(scores, if self.softmax.is_keys() { 2 } else { 1 });
        let out = self.output.forward(attn.matmul(v)); // [B, N, C]
        x + out.swap_dims(1, 2).reshape([b, c, hh, ww])
    }
}

/// labml's DownBlock/UpBlock: a residual block, then attention at the chosen resolutions.
#[derive(Module, Debug)]
pub struct ResBlock {
    res: ResidualBlock,
    attn: Option<AttentionBlock>,
}

impl ResBlock {
    pub(super) fn new(cfg: &UNetConfig, c_in: usize, c_out: usize, attn: bool, device: &Device) -> Self {
        Self {
            res: ResidualBlock::new(cfg, c_in, c_out, device),
            attn: attn.then(|| AttentionBlock::new(cfg, c_out, device)),
        }
    }

    pub(super) fn flops(&self, r: usize) -> f64 {
        self.res.flops(r) + self.attn.as_ref().map_or(0.0, |a| a.flops(r))
    }

    pub(super) fn forward(&self, x: Tensor<4>, t: &Tensor<2>, dropout: Option<&mut Noise>) -> Tensor<4> {
        let h = self.res.forward(x, t, dropout);
        match &self.attn {
            Some(attn) => attn.forward(h),
            None => h,
        }
    }
}

/// Halves the resolution (3×3 conv, stride 2) or doubles it (4×4 transposed conv, stride 2);
/// both hold their kernel in `conv`, as labml's Downsample/Upsample do.
#[derive(Module, Debug)]
pub struct Resample<C> {
    pub(super) conv: C,
}

impl Resample<Conv2d> {
    pub(super) fn down(c: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([c, c], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        Self { conv }
    }
}

impl Resample<ConvTranspose2d> {
    /// Floating-point operations on one r×r image (each input pixel meets the whole kernel),
    /// and the size of the output: 2r.
    pub(super) fn flops(&self, r: usize) -> (f64, usize) {
        (2.0 * (self.conv.weight.dims().iter().product::<usize>() * r * r) as f64, 2 * r)
    }

    pub(super) fn up(c: usize, device: &Device) -> Self {
        let conv = ConvTranspose2dConfig::new([c, c], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(device);
        Self { conv }
    }
}
