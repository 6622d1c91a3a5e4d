//! Training (Algorithm 1 of the paper): Adam with warm-up and global-norm gradient clipping,
//! an exponential moving average of the weights (what the paper evaluates and we export),
//! atomic checkpoints that resume a run exactly ([`checkpoint`]), a stop on the first non-finite
//! loss, and the loop that drives it all ([`fit`]).

mod averaging;
pub mod checkpoint;
mod config;
pub mod fit;
pub mod progressive;
mod shards;
mod trainer;

pub use averaging::average;
pub use config::{DistilConfig, TrainConfig};
pub use fit::{FitOptions, Observer, Outcome, checkpoint_path, fit};
pub use trainer::{StepStats, Trainer};
