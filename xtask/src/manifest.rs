//! `weights/index.json`, the page's list of models: each one's file, title, size and SHA-256.
//! The page checks every load (from its cache or the network) against the hash, so the manifest
//! must follow the files: `cargo xtask manifest` rewrites the sizes and hashes of the listed
//! files, and a test fails when they differ from the files on disk.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

/// The manifest with each listed file's `bytes` and `sha256` as they are on disk.
fn current(root: &Path) -> Result<serde_json::Value> {
    let path = root.join("weights/index.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut manifest: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let models = manifest["models"].as_array_mut().context("weights/index.json has no `models` list")?;
    for model in models.iter_mut() {
        let file = model["file"].as_str().context("a model without `file`")?;
        ensure!(!file.contains(['/', '\\']) && !file.starts_with('.'), "`file` {file:?} must name a file in weights/");
        let bytes =
            std::fs::read(root.join("weights").join(file)).with_context(|| format!("reading weights/{file}"))?;
        model["bytes"] = bytes.len().into();
        model["sha256"] = format!("{:x}", Sha256::digest(&bytes)).into();
    }
    check_live(models)?;
    Ok(manifest)
}

/// A model's `live` (the student the page's live controls use beside it) must name another
/// listed model: the page would otherwise quietly go without its live controls.
fn check_live(models: &[serde_json::Value]) -> Result<()> {
    for model in models {
        if let Some(live) = model.get("live") {
            let live = live.as_str().with_context(|| format!("{}: `live` must be a model's id", model["id"]))?;
            ensure!(
                live != model["id"] && models.iter().any(|m| m["id"] == live),
                "{}: `live` {live:?} names no other model in weights/index.json",
                model["id"]
            );
        }
    }
    Ok(())
}

/// The files the manifest lists, as paths in the checkout (`weights/…`).
pub fn files(root: &Path) -> Result<Vec<String>> {
    let manifest = current(root)?;
    let models = manifest["models"].as_array().expect("checked by `current`");
    Ok(models.iter().map(|m| format!("weights/{}", m["file"].as_str().expect("checked by `current`"))).collect())
}

/// Rewrites `weights/index.json` with the listed files' sizes and hashes.
pub fn update(root: &Path) -> Result<()> {
    let manifest = current(root)?;
    std::fs::write(root.join("weights/index.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
    eprintln!("updated weights/index.json");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_matches_the_weights() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let text = std::fs::read_to_string(root.join("weights/index.json")).unwrap();
        let committed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(committed, current(root).unwrap(), "weights/index.json is stale: run `cargo xtask manifest`");
        let models = committed["models"].as_array().unwrap();
        assert!(models.iter().any(|m| m["file"] == "mnist.safetensors" && m["title"].is_string()));
    }

    #[test]
    fn a_live_model_must_be_another_listed_model() {
        let models = |live: &str| serde_json::json!([{ "id": "mnist", "live": live }, { "id": "mnist-fast" }]);
        check_live(models("mnist-fast").as_array().unwrap()).unwrap();
        for wrong in ["mnist", "mnist-fats"] {
            let err = check_live(models(wrong).as_array().unwrap()).unwrap_err().to_string();
            assert!(err.contains(&format!("`live` {wrong:?} names no other model")), "{err}");
        }
    }
}
