//! `ddpm sample`, `interpolate` and `animate`: the reverse process to PNG files, a strip and a
//! GIF. What is drawn is the library's [`SampleRequest`] / [`InterpolationRequest`], which the
//! page makes too.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::{Tensor, TensorData};
use clap::Args;

use super::{ClassArg, SamplerArgs, to_vec};
use ddpm::images::{Grid, save_gif, save_png};
use ddpm::limits;
use ddpm::request::{EditRequest, InterpolationRequest, SampleRequest, drawing_pixels, grid_cols};
use ddpm::threads::Sharded;

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Number of images (of each class with `--class all`); image i uses seed S + i (class k's
    /// image i seed S + k·count + i).
    #[arg(long, default_value_t = 16)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Folder for 000000.png, 000001.png, ...
    #[arg(long)]
    out: PathBuf,
    /// Also save all images as one grid PNG.
    #[arg(long)]
    grid: Option<PathBuf>,
}

#[derive(Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    seed_a: u64,
    #[arg(long, default_value_t = 1)]
    seed_b: u64,
    /// Noise level to mix at (0..T−1).
    #[arg(long, default_value_t = 500)]
    t: usize,
    #[arg(long, default_value_t = 9)]
    frames: usize,
    /// `noise`: labml's method (noise A and B to step t, mix, denoise); `slerp`: DDIM's spherical
    /// mix of the two seeds' initial noise, denoised deterministically (ignores --t and --eta).
    #[arg(long, default_value = "noise", value_parser = ["noise", "slerp"])]
    mode: String,
    /// B's class (a conditional model; `any`: the class B's seed is dealt, as in `sample`): the
    /// frames morph from --class to it [default: --class].
    #[arg(long, requires = "class")]
    to_class: Option<ClassArg>,
    /// Pixel scale of the output strip.
    #[arg(long, default_value_t = 3)]
    scale: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct AnimateArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frames in the GIF (steps are subsampled evenly; the last frame is held).
    #[arg(long, default_value_t = 60)]
    frames: usize,
    #[arg(long, default_value_t = 4)]
    scale: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    sampler: SamplerArgs,
    /// The drawing or photo to edit (PNG/JPEG; resized to the model's size when it is not).
    #[arg(long)]
    input: PathBuf,
    /// How far to noise it before denoising (0..T−1): how much the model may change it. Several
    /// (`--t 200,500,800`): a strip of the input then one result per t.
    #[arg(long, default_value = "500", value_delimiter = ',')]
    t: Vec<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pixel scale of the output PNG.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    #[arg(long)]
    out: PathBuf,
}

pub fn sample(a: SampleArgs) -> Result<()> {
    ensure!(
        (1..=limits::MAX_SAMPLES).contains(&a.count) && (1..=limits::MAX_SAMPLE_BATCH).contains(&a.batch),
        "--count must be 1..={} and --batch 1..={}",
        limits::MAX_SAMPLES,
        limits::MAX_SAMPLE_BATCH
    );
    let per_class = a.sampler.class == Some(ClassArg::All);
    let m = if per_class { SamplerArgs { class: None, ..a.sampler.clone() } } else { a.sampler.clone() }.load()?;
    let shards = a.sampler.backend.shards();
    // Each class's images in its own folder, or all of them in --out.
    let runs: Vec<(PathBuf, SampleRequest, Option<usize>)> = match m.model.num_classes() {
        None if per_class => anyhow::bail!("--class all: this model is unconditional: it has no classes"),
        Some(classes) if per_class => {
            let n = a.count;
            ensure!(
                n <= limits::MAX_SAMPLES / classes,
                "--count must be 1..={} with --class all ({classes} classes)",
                limits::MAX_SAMPLES / classes
            );
            let request = |k: usize| {
                SampleRequest::consecutive(a.seed.wrapping_add((k * n) as u64), n, a.sampler.steps, a.sampler.eta)
            };
            (0..classes).map(|k| (a.out.join(k.to_string()), request(k), Some(k))).collect()
        }
        _ => {
            vec![(a.out.clone(), SampleRequest::consecutive(a.seed, a.count, a.sampler.steps, a.sampler.eta), m.class)]
        }
    };
    let total: usize = runs.iter().map(|(_, r, _)| r.seeds.len()).sum();
    ensure!(
        a.grid.is_none() || total <= limits::MAX_SAMPLE_BATCH,
        "--grid holds at most {} images",
        limits::MAX_SAMPLE_BATCH
    );
    let image = m.image();
    let (mut all, mut done) = (Vec::new(), 0);
    for (out, request, class) in &runs {
        request.method(&m.diffusion, limits::MAX_SAMPLES).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        for (k, seeds) in request.seeds.chunks(a.batch).enumerate() {
            let batch = SampleRequest { seeds: seeds.to_vec(), ..request.clone() };
            let sampler =
                batch.sampler(&m.diffusion, image, limits::MAX_SAMPLE_BATCH, &m.device).map_err(anyhow::Error::msg)?;
            let values = to_vec(sampler.run(&m.eps_from_noise(shards, *class, seeds)?));
            for (i, pixels) in values.chunks_exact(image.iter().product()).enumerate() {
                save_png(&out.join(format!("{:06}.png", k * a.batch + i)), pixels, image)?;
            }
            if a.grid.is_some() {
                all.extend(values);
            }
            done += seeds.len();
            eprintln!("{done}/{total} images");
        }
    }
    if let Some(grid) = &a.grid {
        let cols = if per_class { a.count } else { grid_cols(total) };
        Grid::new(&all, [total, image[0], image[1], image[2]], cols, 2).save_png(grid, 2)?;
    }
    Ok(())
}

pub fn interpolate(a: InterpolateArgs) -> Result<()> {
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let m = a.sampler.load()?;
    let image = m.image();
    let to_class = a.to_class.map(|c| c.single("--to-class all")).transpose()?;
    let class_a = a.sampler.class()?;
    let request = InterpolationRequest {
        mode: a.mode.parse().map_err(anyhow::Error::msg)?,
        seeds: [a.seed_a, a.seed_b],
        classes: [class_a, to_class.unwrap_or(class_a)],
        t: a.t,
        frames: a.frames,
        steps: a.sampler.steps,
        eta: a.sampler.eta,
    };
    request.check(&m.diffusion, limits::MAX_SAMPLE_BATCH).map_err(|e| anyhow::anyhow!("--{e}"))?;
    let [guide_ends, guide_frames] =
        request.guidance(m.w, m.model.num_classes()).map_err(|e| anyhow::anyhow!("--to-class: {e}"))?;
    let shards = a.sampler.backend.shards();
    let ends = match request.mode {
        ddpm::request::InterpolationMode::Noise => {
            let ends = request.ends().sampler(&m.diffusion, image, 2, &m.device).map_err(anyhow::Error::msg)?;
            Some(ends.run(&Sharded::new(&m.model, shards).guided(guide_ends)))
        }
        ddpm::request::InterpolationMode::Slerp => None,
    };
    let frames = request
        .sampler(&m.diffusion, image, ends, limits::MAX_SAMPLE_BATCH, &m.device)
        .map_err(anyhow::Error::msg)?
        .run(&Sharded::new(&m.model, shards).guided(guide_frames));
    Grid::new(&to_vec(frames), [a.frames, image[0], image[1], image[2]], a.frames, 2).save_png(&a.out, a.scale)
}

pub fn animate(a: AnimateArgs) -> Result<()> {
    ensure!((2..=limits::MAX_FRAMES).contains(&a.frames), "--frames must be 2..={}", limits::MAX_FRAMES);
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let m = a.sampler.load()?;
    let image = m.image();
    let request = SampleRequest::consecutive(a.seed, 1, a.sampler.steps, a.sampler.eta);
    let mut sampler = request.sampler(&m.diffusion, image, 1, &m.device).map_err(anyhow::Error::msg)?;
    let total = sampler.total();
    let mut frames = Vec::new();
    let frame = |x: Tensor<4>, x0: Tensor<4>| {
        let pair = to_vec(Tensor::cat(vec![x, x0], 0));
        Grid::new(&pair, [2, image[0], image[1], image[2]], 2, 2).scaled(a.scale)
    };
    frames.push(frame(sampler.x().clone(), sampler.x().clone()));
    let eps_theta = m.eps_from_noise(1, m.class, &request.seeds)?;
    while let Some(step) = sampler.step(&eps_theta) {
        // Evenly spaced frames, always including the last step.
        if step.index * (a.frames - 1) / total != (step.index - 1) * (a.frames - 1) / total || step.index == total {
            frames.push(frame(sampler.x().clone(), step.x0_hat));
        }
    }
    let last = frames.last().cloned().expect("at least one frame");
    frames.extend(std::iter::repeat_n(last, 15));
    save_gif(&a.out, frames, 80)
}

/// SDEdit: the input noised to --t and denoised, as the page's drawing panel does it.
pub fn edit(a: EditArgs) -> Result<()> {
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let m = a.sampler.load()?;
    let [c, size, _] = m.image();
    let img = image::open(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let img = if (img.width(), img.height()) == (size as u32, size as u32) {
        img
    } else {
        img.resize_exact(size as u32, size as u32, image::imageops::FilterType::Triangle)
    };
    ensure!(a.t.len() <= limits::MAX_FRAMES, "--t takes at most {} values", limits::MAX_FRAMES);
    let pixels = drawing_pixels(&img.to_rgba8().into_raw(), c, size).map_err(anyhow::Error::msg)?;
    let x0 = Tensor::from_data(TensorData::new(pixels.clone(), [1, c, size, size]), &m.device);
    let eps_theta = m.eps_for_edit(a.sampler.backend.shards())?;
    let mut images = Vec::new();
    for &t in &a.t {
        let request = EditRequest { seed: a.seed, t, steps: a.sampler.steps, eta: a.sampler.eta };
        let sampler = request.sampler(&m.diffusion, x0.clone()).map_err(|e| anyhow::anyhow!("--{e}"))?;
        images.extend(to_vec(sampler.run(&eps_theta)));
    }
    if a.t.len() == 1 {
        return Grid::new(&images, [1, c, size, size], 1, 0).save_png(&a.out, a.scale);
    }
    let strip = [pixels, images].concat();
    let n = a.t.len() + 1;
    Grid::new(&strip, [n, c, size, size], n, 2).save_png(&a.out, a.scale)
}
