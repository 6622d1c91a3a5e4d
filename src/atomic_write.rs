//! Files that are either the old version or the new one, whole, whatever happens mid-write:
//! training checkpoints, exported weights, the evaluator's cached classifier.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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
