//! Checkpoints: a run's model, EMA, Adam state, step and RNG in one safetensors file, written so
//! that a crash at any moment leaves the old checkpoint or the new one, whole.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::optim::AdamConfig;
use burn::tensor::{Bytes, Device};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{State, Trainer};
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
/// Replaces `path` with `bytes` so that a crash at any moment (kill -9, power loss) leaves
/// either the old file or the new one, whole: write a temporary file beside it, fsync it,
/// rename it over `path` (atomic within a folder), then fsync the folder so the rename itself
/// is on disk. A failed write (a full disk, a read-only folder) removes the temporary file and
/// leaves `path` as it was.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!("writing {} ({} bytes); {} is unchanged", tmp.display(), bytes.len(), path.display())
        });
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {} after writing {}", dir.display(), path.display()))
}

/// The temporary file [`atomic_write`] writes `path` through: `.NAME.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.tmp"))
}

/// Removes the temporary file a killed [`atomic_write`] of `path` left behind; returns whether
/// there was one.
pub fn sweep_temp(path: &Path) -> Result<bool> {
    let tmp = temp_path(path);
    match fs::remove_file(&tmp) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing the stale {}", tmp.display())),
    }
}
