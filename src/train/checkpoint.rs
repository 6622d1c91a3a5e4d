//! Checkpoints: a run's model, EMA, Adam state, step and RNG in one safetensors file, written so
//! that a crash at any moment leaves the old checkpoint or the new one, whole.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Bytes, Device};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::trainer::{State, Trainer};
use crate::atomic_write::atomic_write;
use crate::limits;
use crate::noise::Noise;

impl Trainer {
    /// Writes the checkpoint atomically: to a temporary file first, then renamed over the old one,
    /// so a crash or Ctrl-C mid-write never leaves a broken checkpoint.
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = State {
            step: self.step,
            unet: self.unet.clone(),
            schedule: self.schedule.clone(),
            train: self.train.clone(),
            noise: self.noise.state(),
        };
        let blobs = [
            ("ema", self.ema.clone().into_record().into_bytes()?.to_vec()),
            ("model", self.model.valid().into_record().into_bytes()?.to_vec()),
            ("optim", self.optim.into_bytes()?.to_vec()),
        ];
        let views = blobs
            .iter()
            .map(|(k, b)| Ok((k.to_string(), TensorView::new(Dtype::U8, vec![b.len()], b)?)))
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let meta = HashMap::from([("state".to_string(), serde_json::to_string(&state)?)]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        atomic_write(path, &bytes)
    }

    /// Resumes the run saved at `path` on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let size = fs::metadata(path).with_context(|| format!("reading checkpoint {}", path.display()))?.len();
        // Model, EMA and Adam's two moments: four copies of the weights.
        ensure!(
            size <= 4 * limits::MAX_WEIGHTS_BYTES,
            "checkpoint {} is {size} bytes, above the largest supported ({})",
            path.display(),
            4 * limits::MAX_WEIGHTS_BYTES
        );
        let bytes = fs::read(path).with_context(|| format!("reading checkpoint {}", path.display()))?;
        let bad = |what: &str| format!("checkpoint {} is damaged: {what}", path.display());
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!(bad(&e.to_string())))?;
        let state = meta.metadata().as_ref().and_then(|m| m.get("state")).with_context(|| bad("no state"))?;
        let state: State = serde_json::from_str(state).with_context(|| bad("unreadable state"))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!(bad(&e.to_string())))?;
        let blob = |name: &str| -> Result<Bytes> {
            Ok(Bytes::from_bytes_vec(file.tensor(name).map_err(|_| anyhow::anyhow!(bad(name)))?.data().to_vec()))
        };
        let mut trainer = Self::new(state.unet, state.schedule, state.train, device)?;
        let record =
            |name: &str| -> Result<_> { burn::store::ModuleRecord::from_bytes(blob(name)?).with_context(|| bad(name)) };
        let ad = device.clone().autodiff();
        trainer.model = trainer
            .unet
            .init(&ad)
            .try_load_record(record("model")?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", bad("model")))?;
        trainer.ema = trainer
            .unet
            .init(device)
            .try_load_record(record("ema")?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", bad("ema")))?;
        trainer.optim =
            AdamConfig::new().with_epsilon(1e-8).init().from_bytes(blob("optim")?).with_context(|| bad("optimizer"))?;
        trainer.noise = Noise::from_state(&state.noise).map_err(anyhow::Error::msg)?;
        trainer.step = state.step;
        Ok(trainer)
    }
}
