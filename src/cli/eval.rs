//! `ddpm eval`: the MNIST-FD report on a folder of samples.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of generated 28×28 digits (as written by `ddpm sample`).
    #[arg(long)]
    samples: PathBuf,
    /// The digit classifier, trained on first use and cached here.
    #[arg(long, default_value = "weights/mnist-classifier.safetensors")]
    classifier: PathBuf,
}

pub fn run(a: EvalArgs) -> Result<()> {
    println!("{}", ddpm::eval::run(&a.samples, &a.classifier)?);
    Ok(())
}
