//! `ddpm`: train, sample, interpolate, animate, export, benchmark and evaluate — the native CLI.
//! This file parses and dispatches; each command's arguments and calls are in `cli/`, the maths
//! in the library.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::bench::BenchArgs;
use cli::distil::DistilArgs;
use cli::eps::EpsArgs;
use cli::eval::EvalArgs;
use cli::import::ImportArgs;
use cli::sample::{AnimateArgs, EditArgs, InterpolateArgs, SampleArgs};
use cli::train::TrainArgs;
use cli::weights::{AverageArgs, ExportArgs};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep the memory it frees instead of handing it back to the kernel 10 ms
/// later (its default): a training step frees and allocates the same large activations every
/// step, and each page handed back comes back as a page fault and a zeroing pass in the kernel
/// (docs/speed.md has the share of a step). The process stays at its peak size, which it
/// reaches every step.
fn keep_freed_memory() {
    // `mi_option_purge_delay` of the mimalloc.h bundled with libmimalloc-sys 0.1.49 (v3); -1: never.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: mimalloc's options are plain integers, safe to set from any thread at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[derive(Parser)]
#[command(name = "ddpm", version, about = "Denoising Diffusion Probabilistic Models (Ho et al. 2020) on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on MNIST, the emoji or a folder of images, with checkpoints and resume.
    Train(TrainArgs),
    /// Distil a class-conditional model into a student that gives the guided prediction in one
    /// pass, with w as an input (Meng et al. 2023, stage 1).
    Distil(DistilArgs),
    /// Write a run's EMA weights (or a weights file) as a safetensors file the page and `sample`
    /// load, or shaped for labml's PyTorch UNet (`--labml`).
    Export(ExportArgs),
    /// Read a PyTorch checkpoint of labml's UNet (`torch.save(state_dict)`) into a weights file.
    Import(ImportArgs),
    /// Average weights files of one model (SWA: snapshots from the ends of learning-rate cycles).
    Average(AverageArgs),
    /// Generate images to PNG files.
    Sample(SampleArgs),
    /// Morph between two samples (labml's method: noise both to step t, mix, denoise back).
    Interpolate(InterpolateArgs),
    /// The reverse process as an animated GIF (x_t beside x̂₀).
    Animate(AnimateArgs),
    /// SDEdit: noise an image (a drawing) to step t and denoise it, optionally towards a class.
    Edit(EditArgs),
    /// The network on given inputs: ε_θ(x_t, t[, c]) for a .npy of x_t, written as .npy (for parity
    /// checks with another framework).
    Eps(EpsArgs),
    /// Time the UNet and one training and sampling step; prints JSON lines.
    Bench(BenchArgs),
    /// Score a folder of generated images: MNIST-FD or emoji-FD (Fréchet distance on classifier features),
    /// confidence, class spread, nearest training images. Prints JSON.
    Eval(EvalArgs),
}

/// Makes this thread one of the global rayon pool's (flex's and our shards' pool) instead of a
/// third thread beside its two workers on a 2-core machine: the kernels' parallel splits then run
/// one half in place, where from outside the pool every call queued both halves to the workers
/// and slept on a latch until they were done, while the idle workers' spinning took turns with
/// this thread's serial work.
fn join_thread_pool() {
    // Fails only if the pool already exists, which it cannot before the first command runs.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
}

/// burn puts a few tensors on its default device (a resumed run's optimiser state, until the
/// first step moves it beside the parameters), and with wgpu compiled in that default starts a
/// GPU runtime: adapter probing at every start, and on a machine without a display an EGL error
/// in a background thread. Every tensor of ours names its device, so the default is flex unless
/// the user sets BURN_DEVICE.
fn cpu_default_device() {
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: this runs first in main, before any other thread exists to read the environment.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
}

fn main() {
    cpu_default_device();
    keep_freed_memory();
    join_thread_pool();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Train(a) => {
            let given = matches.subcommand_matches("train").expect("the train subcommand").clone();
            cli::train::run(a, &given)
        }
        Command::Distil(a) => {
            let given = matches.subcommand_matches("distil").expect("the distil subcommand").clone();
            cli::distil::run(a, &given)
        }
        Command::Export(a) => cli::weights::export(a),
        Command::Import(a) => cli::import::run(a),
        Command::Average(a) => cli::weights::average(a),
        Command::Sample(a) => cli::sample::sample(a),
        Command::Interpolate(a) => cli::sample::interpolate(a),
        Command::Animate(a) => cli::sample::animate(a),
        Command::Edit(a) => cli::sample::edit(a),
        Command::Eps(a) => cli::eps::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Eval(a) => cli::eval::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
