//! `ddpm import`: a PyTorch checkpoint of labml's UNet (`torch.save(eps_model.state_dict())`)
//! as our weights file (the reading and checking: `ddpm::import`), with what was assumed printed
//! back.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use ddpm::images::DataRange;
use ddpm::import::import_pth;
use ddpm::labml::LabmlFlags;
use ddpm::unet::SoftmaxAxis;

#[derive(Clone, Copy, ValueEnum)]
enum Axis {
    Keys,
    Queries,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The checkpoint: a `.pth`/`.pt` holding a `state_dict` (or a dict holding one: --key).
    input: PathBuf,
    /// Output weights file, e.g. weights/celeba.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// The key of the `state_dict` in a checkpoint that holds more (e.g. `state_dict`,
    /// `model`); left out: the file is the `state_dict`.
    #[arg(long)]
    key: Option<String>,
    /// Height = width of the images the model was trained on.
    #[arg(long, default_value_t = LabmlFlags::default().image_size)]
    image_size: usize,
    /// GroupNorm groups of the residual and attention blocks.
    #[arg(long, default_value_t = LabmlFlags::default().groups)]
    groups: usize,
    /// Diffusion steps T.
    #[arg(long, default_value_t = LabmlFlags::default().steps)]
    steps: usize,
    /// β₁ and β_T of the linear schedule.
    #[arg(long, default_value_t = LabmlFlags::default().beta_start)]
    beta_start: f64,
    #[arg(long, default_value_t = LabmlFlags::default().beta_end)]
    beta_end: f64,
    /// The interval of the training images, `LO,HI`: labml's experiment feeds [0, 1]
    /// (`ToTensor`), a model trained on our loader's form [−1, 1].
    #[arg(long, default_value = "0,1", value_parser = parse_range, allow_hyphen_values = true)]
    data_range: DataRange,
    /// The attention's softmax axis: `keys` (labml-nn since late 2022) or `queries` (before, its
    /// issue #146).
    #[arg(long, value_enum, default_value = "keys")]
    softmax: Axis,
    /// Store half-precision weights (what the page loads fastest).
    #[arg(long)]
    f16: bool,
}

fn parse_range(text: &str) -> Result<DataRange, String> {
    let parts: Vec<f32> = text
        .split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let [lo, hi] = parts[..] else { return Err(format!("{text:?} is not LO,HI")) };
    DataRange::try_from([lo, hi])
}

pub fn run(a: ImportArgs) -> Result<()> {
    let flags = LabmlFlags {
        groups: a.groups,
        image_size: a.image_size,
        steps: a.steps,
        beta_start: a.beta_start,
        beta_end: a.beta_end,
        data_range: a.data_range,
        softmax: match a.softmax {
            Axis::Keys => SoftmaxAxis::Keys,
            Axis::Queries => SoftmaxAxis::Queries,
        },
    };
    let name = a.input.display();
    let (model, header) =
        import_pth(&a.input, a.key.as_deref(), &flags, &Device::flex()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let (unet, schedule) = (&header.unet, &header.schedule);
    eprintln!(
        "{name}: labml UNet, {} channels, widths {:?}, attention {:?}, {} blocks a level",
        unet.image_channels,
        (0..unet.channel_mults.len()).map(|i| unet.width(i)).collect::<Vec<_>>(),
        unet.attn,
        unet.blocks
    );
    eprintln!(
        "assumed (flags; labml's defaults unless given): --image-size {} --groups {} (output 8) --steps {} \
         --beta-start {} --beta-end {} --data-range {},{} --softmax {}",
        unet.image_size,
        unet.groups,
        schedule.steps,
        schedule.beta_start,
        schedule.beta_end,
        schedule.data_range.lo,
        schedule.data_range.hi,
        if unet.attn_softmax.is_keys() { "keys" } else { "queries" },
    );
    let size = super::write_weights(&a.out, &model, &header, a.f16)?;
    eprintln!("wrote {} ({size} bytes, {} parameters)", a.out.display(), burn::module::Module::num_params(&model));
    Ok(())
}
