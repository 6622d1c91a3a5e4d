//! `ddpm eval`: the quality report on a folder of samples (MNIST-FD or emoji-FD and the rest).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use ddpm::eval::{self, Reference};

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of generated images as written by `ddpm sample` (28×28 digits; 32×32 RGB emoji),
    /// or of class folders 0, 1, … as `ddpm sample --class all` writes them (class agreement per
    /// class).
    #[arg(long)]
    samples: PathBuf,
    /// The real images to compare with: `mnist` or `emoji`.
    #[arg(long, default_value = "mnist")]
    data: String,
    /// The class the samples were drawn for (`ddpm sample --class K`): also report the share the
    /// classifier assigns to it (class agreement).
    #[arg(long)]
    expect_class: Option<usize>,
    /// The classifier, trained on first use and cached here [default:
    /// weights/mnist-classifier.safetensors or weights/emoji-classifier.safetensors].
    #[arg(long)]
    classifier: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let reference = Reference::named(&a.data)?;
    let classifier =
        a.classifier.unwrap_or_else(|| format!("weights/{}-classifier.safetensors", reference.name).into());
    let report = eval::run(&reference, &a.samples, &classifier, a.expect_class)?;
    writeln!(std::io::stdout(), "{report}").context("writing the report")
}
