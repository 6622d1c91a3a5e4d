//! labml.ai's annotated UNet (`labml_nn/diffusion/ddpm/unet.py`) and ours: the same module tree
//! and `state_dict()` keys, so a model crosses over by its shapes alone. What shapes cannot tell
//! (GroupNorm groups, T and β, the image size, the data range, the softmax axis) comes from
//! [`LabmlFlags`], labml's defaults unless the user says otherwise. Where labml's function differs
//! from our default one the config says so, and the model computes labml's function exactly:
//! * its width multipliers compound (`[1, 2, 2, 4]` at 64 channels is 64/128/256/1,024): ours are
//!   the products, `[1, 2, 4, 16]`;
//! * its attention block builds a GroupNorm and never applies it: `attn_norm: false`;
//! * its experiment trains on images in [0, 1] (`ToTensor` without normalisation):
//!   `data_range: [0, 1]`.
//!
//! Going back ([`labml_unet_args`]) is the reverse: the multipliers as ratios, refused for a
//! model labml's `UNet` cannot compute (a normalised attention, other groups, classes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diffusion::ScheduleConfig;
use crate::images::DataRange;
use crate::unet::{SoftmaxAxis, UNetConfig};

/// What a `state_dict` does not hold, with labml's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LabmlFlags {
    /// GroupNorm groups in the residual and attention blocks (labml: 32; the output's: 8).
    pub groups: usize,
    /// Height = width of the images (labml's experiment: 32).
    pub image_size: usize,
    /// T and β₁..β_T, linear (labml: 1,000 steps, 1e-4 to 0.02).
    pub steps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// The interval of the training images (labml's experiment: [0, 1]).
    pub data_range: DataRange,
    /// The attention's softmax axis (labml-nn since late 2022: the keys).
    pub softmax: SoftmaxAxis,
}

impl Default for LabmlFlags {
    fn default() -> Self {
        Self {
            groups: 32,
            image_size: 32,
            steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            data_range: DataRange { lo: 0.0, hi: 1.0 },
            softmax: SoftmaxAxis::Keys,
        }
    }
}

/// labml's `UNet(image_channels, n_channels, ch_mults, is_attn, n_blocks)`: the constructor call
/// that builds a model of these shapes in PyTorch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabmlUNetArgs {
    pub image_channels: usize,
    pub n_channels: usize,
    /// Compounding: level i is `n_channels × ch_mults[0] × … × ch_mults[i]` wide.
    pub ch_mults: Vec<usize>,
    pub is_attn: Vec<bool>,
    pub n_blocks: usize,
}

/// The configs of the model a `state_dict` holds, from its tensors' shapes (`shapes`: key →
/// shape) and `flags`. Checks the shapes against each other as far as the structure goes
/// (every level the same number of blocks, widths multiples of the first, the up path's length);
/// the loader then checks every tensor's shape against the model built from the result.
pub fn config_from_shapes(
    shapes: &BTreeMap<String, Vec<usize>>,
    flags: &LabmlFlags,
) -> Result<(UNetConfig, ScheduleConfig), String> {
    let shape = |key: &str| shapes.get(key).ok_or_else(|| format!("tensor `{key}` is missing: not labml's UNet"));
    let proj = shape("image_proj.weight")?;
    let [base, channels, 3, 3] = proj[..] else {
        return Err(format!(
            "tensor `image_proj.weight` has shape {proj:?}, labml's is [n_channels, image_channels, 3, 3]"
        ));
    };
    // The down path: residual blocks (`down.i.res.*`, with `down.i.attn.*` where attention is),
    // a Downsample (`down.i.conv.*`) between levels.
    let mut levels: Vec<Vec<(usize, bool)>> = vec![Vec::new()];
    let mut end = 0;
    for i in 0.. {
        end = i;
        let block = format!("down.{i}.res.conv1.weight");
        if let Some(s) = shapes.get(&block) {
            let attn = shapes.contains_key(&format!("down.{i}.attn.projection.weight"));
            levels.last_mut().expect("one level at least").push((s[0], attn));
        } else if shapes.contains_key(&format!("down.{i}.conv.weight")) {
            if levels.last().is_some_and(Vec::is_empty) {
                return Err(format!("tensor `down.{i}.conv.weight`: a Downsample with no block before it"));
            }
            levels.push(Vec::new());
        } else {
            break;
        }
    }
    let index = |k: &str, path: &str| k.strip_prefix(path)?.split('.').next()?.parse::<usize>().ok();
    if let Some(stray) = shapes.keys().find(|k| index(k, "down.").is_some_and(|i| i > end)) {
        return Err(format!("tensor `{stray}` is past a gap in the down path (`down.{end}` is missing)"));
    }
    if levels.last().is_some_and(Vec::is_empty) {
        return Err("the down path ends in a Downsample, or has no residual block (`down.0.res.*`)".into());
    }
    let blocks = levels[0].len();
    let mut channel_mults = Vec::new();
    let mut attn = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let (width, has_attn) = level[0];
        if level.len() != blocks {
            return Err(format!(
                "level {i} has {} residual blocks and level 0 has {blocks}: one count for all",
                level.len()
            ));
        }
        if level.iter().any(|&b| b != (width, has_attn)) {
            return Err(format!("level {i}'s blocks differ in width or attention"));
        }
        if width % base != 0 {
            return Err(format!("level {i} is {width} channels wide, not a multiple of n_channels = {base}"));
        }
        channel_mults.push(width / base);
        attn.push(has_attn);
    }
    let n = levels.len();
    let up = n * (blocks + 1) + (n - 1);
    let has = |i: usize| shapes.keys().any(|k| index(k, "up.") == Some(i));
    if !has(up - 1) || has(up) {
        return Err(format!(
            "the up path of a {n}-level, {blocks}-block UNet has {up} entries (`up.0` to `up.{}`)",
            up - 1
        ));
    }
    let unet = UNetConfig {
        image_channels: channels,
        image_size: flags.image_size,
        base_channels: base,
        channel_mults,
        attn,
        blocks,
        groups: flags.groups,
        dropout: 0.1,
        num_classes: None,
        guidance_input: false,
        attn_norm: false,
        attn_softmax: flags.softmax,
    };
    let schedule = ScheduleConfig {
        steps: flags.steps,
        beta_start: flags.beta_start,
        beta_end: flags.beta_end,
        data_range: flags.data_range,
    };
    unet.validate()?;
    schedule.validate()?;
    Ok((unet, schedule))
}

/// labml's constructor arguments for a model of ours, or why labml's `UNet` cannot compute it.
pub fn labml_unet_args(unet: &UNetConfig) -> Result<LabmlUNetArgs, String> {
    // The middle block always has attention, so this matters for every model.
    if unet.attn_norm {
        return Err("its attention normalises its input (GroupNorm), which labml's AttentionBlock builds and never \
                    applies: labml's UNet would compute another ε (train with `--attn-norm false` for labml)"
            .into());
    }
    if unet.groups != 32 {
        return Err(format!("its blocks use {} GroupNorm groups; labml's UNet always uses 32", unet.groups));
    }
    if unet.num_classes.is_some() || unet.guidance_input {
        return Err("it is class-conditional; labml's UNet has no class input".into());
    }
    if !unet.attn_softmax.is_keys() {
        return Err("its attention's softmax runs over the queries; labml-nn's today runs over the keys".into());
    }
    let mut ch_mults = Vec::new();
    let mut previous = 1;
    for (i, &mult) in unet.channel_mults.iter().enumerate() {
        if mult % previous != 0 {
            return Err(format!(
                "level {i}'s width is ×{mult} and level {}'s ×{previous}: labml's multipliers compound, so each \
                 level must be a whole multiple of the one before",
                i.saturating_sub(1)
            ));
        }
        ch_mults.push(mult / previous);
        previous = mult;
    }
    Ok(LabmlUNetArgs {
        image_channels: unet.image_channels,
        n_channels: unet.base_channels,
        ch_mults,
        is_attn: unet.attn.clone(),
        n_blocks: unet.blocks,
    })
}
