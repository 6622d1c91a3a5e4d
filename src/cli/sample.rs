//! `ddpm sample`, `interpolate` and `animate`: the reverse process to PNG files, a strip and a
//! GIF. What is drawn is the library's [`SampleRequest`] / [`InterpolationRequest`], which the
//! page makes too.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use burn::tensor::Tensor;
use clap::Args;

use super::{ClassArg, Loaded, SamplerArgs, flag_error, to_vec};
use ddpm::animation;
use ddpm::atomic_write::atomic_write;
use ddpm::images::{Grid, save_png};
use ddpm::limits;
use ddpm::request::{
    CLI_BOUNDS, EditRequest, InterpolationMode, InterpolationRequest, Request, SampleRequest, drawing_pixels, grid_cols,
};

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
    /// Start from this x_T (a float32 .npy of [B, C, H, W]: another framework's noise, for a
    /// parity check) instead of the seeds' own; --count is its B, image i's later noise comes
    /// from seed S + i, and the final images are also written as OUT/x0.npy (values in [−1, 1]).
    #[arg(long, conflicts_with = "count")]
    x_t: Option<PathBuf>,
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
    /// One frame at this λ in [0, 1] instead of the strip: frame i of --frames n is λ = i/(n − 1).
    #[arg(long, conflicts_with = "frames")]
    lambda: Option<f64>,
    /// `noise`: labml's method (noise A and B to step t, mix, denoise); `slerp`: DDIM's spherical
    /// mix of the two seeds' initial noise, denoised deterministically (ignores --t; DDIM runs
    /// with η = 0, and the paper's sampler is refused).
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
    /// Frames in the GIF (x_t beside x̂₀; steps are subsampled evenly, the last always in and
    /// held): the page's "download as animation" makes the same file with the defaults.
    #[arg(long, default_value_t = animation::FRAMES)]
    frames: usize,
    #[arg(long, default_value_t = animation::SCALE)]
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
    if let Some(path) = &a.x_t {
        ensure!(!per_class, "--x-t: one class at a time (not --class all)");
        return sample_from(&a, path);
    }
    let m = if per_class { SamplerArgs { class: None, ..a.sampler.clone() } } else { a.sampler.clone() }.load()?;
    // Each class's images in its own folder, or all of them in --out: (folder, first seed, class).
    let runs: Vec<(PathBuf, u64, Option<usize>)> = match m.model.num_classes() {
        None if per_class => anyhow::bail!("--class all: this model is unconditional: it has no classes"),
        Some(classes) if per_class => {
            ensure!(
                a.count <= limits::MAX_SAMPLES / classes,
                "--count must be 1..={} with --class all ({classes} classes)",
                limits::MAX_SAMPLES / classes
            );
            (0..classes)
                .map(|k| (a.out.join(k.to_string()), a.seed.wrapping_add((k * a.count) as u64), Some(k)))
                .collect()
        }
        _ => vec![(a.out.clone(), a.seed, m.class)],
    };
    let total = runs.len() * a.count;
    ensure!(
        a.grid.is_none() || total <= limits::MAX_SAMPLE_BATCH,
        "--grid holds at most {} images",
        limits::MAX_SAMPLE_BATCH
    );
    eprintln!("sampler: {}", m.config.describe());
    let image = m.image();
    let (mut all, mut done) = (Vec::new(), 0);
    for (out, seed, class) in &runs {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        // Batches of consecutive seeds: image i is seed S + i whatever the batch.
        for first in (0..a.count).step_by(a.batch) {
            let count = a.batch.min(a.count - first);
            let request = SampleRequest {
                seed: seed.wrapping_add(first as u64),
                count,
                class: *class,
                guidance: m.guidance,
                sampler: m.sampler,
            };
            let values = to_vec(m.run(&Request::Sample(request))?);
            for (i, pixels) in values.chunks_exact(image.iter().product()).enumerate() {
                save_png(&out.join(format!("{:06}.png", first + i)), pixels, image, m.range())?;
            }
            if a.grid.is_some() {
                all.extend(values);
            }
            done += count;
            eprintln!("{done}/{total} images");
        }
    }
    if let Some(grid) = &a.grid {
        let cols = if per_class { a.count } else { grid_cols(total) };
        Grid::new(&all, [total, image[0], image[1], image[2]], cols, 2, m.range()).save_png(grid, 2)?;
    }
    Ok(())
}

/// `sample --x-t`: one run from the file's x_T, its images as PNGs and as x0.npy.
fn sample_from(a: &SampleArgs, path: &std::path::Path) -> Result<()> {
    let m = a.sampler.load()?;
    let image = m.image();
    let x_big_t = super::npy::read_images(path, image, &m.device)?;
    let count = x_big_t.dims()[0];
    eprintln!("sampler: {}, from the x_T of {}", m.config.describe(), path.display());
    let request = SampleRequest { seed: a.seed, count, class: m.class, guidance: m.guidance, sampler: m.sampler };
    let x0 = m.run_from(&request, x_big_t)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    super::npy::write(&a.out.join("x0.npy"), x0.clone())?;
    let values = to_vec(x0);
    for (i, pixels) in values.chunks_exact(image.iter().product()).enumerate() {
        save_png(&a.out.join(format!("{i:06}.png")), pixels, image, m.range())?;
    }
    if let Some(grid) = &a.grid {
        Grid::new(&values, [count, image[0], image[1], image[2]], grid_cols(count), 2, m.range()).save_png(grid, 2)?;
    }
    eprintln!("{count}/{count} images");
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
        frames: if a.lambda.is_some() { 1 } else { a.frames },
        lambda: a.lambda,
        guidance: m.guidance,
        sampler: m.sampler,
    };
    if request.mode == InterpolationMode::Noise {
        announce_start(&m, a.t);
    }
    let n = request.frames;
    let frames = m.run(&Request::Interpolate(request))?;
    Grid::new(&to_vec(frames), [n, image[0], image[1], image[2]], n, 2, m.range()).save_png(&a.out, a.scale)
}

/// Says where a partial run asked at step `t` starts when the model moves it (a distilled
/// student that knows only its grid); a bad `t` is the request's to refuse, in its order.
fn announce_start(m: &Loaded, t: usize) {
    if let Ok(from) = m.model().start_t(t, &m.config)
        && from != t
    {
        eprintln!("--t {t} starts at {from}, the nearest step of this distilled model's grid");
    }
}

pub fn animate(a: AnimateArgs) -> Result<()> {
    ensure!((2..=limits::MAX_FRAMES).contains(&a.frames), "--frames must be 2..={}", limits::MAX_FRAMES);
    ensure!((1..=limits::MAX_SCALE).contains(&a.scale), "--scale must be 1..={}", limits::MAX_SCALE);
    let m = Loaded { shards: 1, ..a.sampler.load()? };
    let request = SampleRequest { seed: a.seed, count: 1, class: m.class, guidance: m.guidance, sampler: m.sampler };
    let mut run = Request::Sample(request).start(&m.model(), &CLI_BOUNDS).map_err(flag_error)?;
    let total = run.sampler().total();
    let mut frames = Vec::new();
    while let Some(s) = run.step(|g| m.eps_theta(g)) {
        if animation::keeps(s.step.index, total, a.frames) {
            // The page's step canvases: each batch a grid with one-pixel borders.
            let grid = |x: Tensor<4>| Grid::new(&to_vec(x.clone()), x.dims(), s.cols, 1, m.range());
            frames.push(animation::frame(&grid(s.x), &grid(s.step.x0_hat), a.scale).map_err(anyhow::Error::msg)?);
        }
    }
    atomic_write(&a.out, &animation::gif(frames).map_err(anyhow::Error::msg)?)
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
    let rgba = img.to_rgba8().into_raw();
    let mut images = Vec::new();
    for &t in &a.t {
        announce_start(&m, t);
        let request = EditRequest {
            rgba: rgba.clone(),
            seed: a.seed,
            t,
            class: m.class,
            guidance: m.guidance,
            sampler: m.sampler,
        };
        images.extend(to_vec(m.run(&Request::Edit(request))?));
    }
    if a.t.len() == 1 {
        return Grid::new(&images, [1, c, size, size], 1, 0, m.range()).save_png(&a.out, a.scale);
    }
    let pixels = drawing_pixels(&rgba, c, size, m.range()).map_err(anyhow::Error::msg)?;
    let strip = [pixels, images].concat();
    let n = a.t.len() + 1;
    Grid::new(&strip, [n, c, size, size], n, 2, m.range()).save_png(&a.out, a.scale)
}
