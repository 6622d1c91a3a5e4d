//! Replays the fuzzer's corpus (`fuzz/corpus/load/`: the seeds below and what cargo-fuzz kept)
//! and every input it ever crashed on (`fuzz/regressions/load/`) through the loader, as an
//! ordinary test: each must load or be refused, never panic.

use std::path::Path;

use burn::tensor::Device;
use ddpm::weights;
use serde_json::json;

mod common;
use common::{edit_config, tiny_weights};

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).map_or_else(|_| Vec::new(), |d| d.flatten().map(|e| e.path()).collect());
    files.sort();
    files
}

#[test]
fn corpus_and_regressions_load_or_are_refused() {
    let corpus = files("fuzz/corpus/load");
    assert!(corpus.len() >= 20, "the seed corpus is committed ({} files)", corpus.len());
    for file in corpus.iter().chain(&files("fuzz/regressions/load")) {
        let bytes = std::fs::read(file).unwrap();
        let outcome = std::panic::catch_unwind(|| weights::load(&bytes, &Device::flex()).map(drop));
        assert!(outcome.is_ok(), "{} panicked the loader", file.display());
    }
}

/// Writes the fuzzer's seed corpus: a tiny model, truncations of it, and headers
/// edited to lie about every field. Run by `scripts/fuzz.sh` when the corpus folder is empty:
/// `cargo test --release --test fuzz_corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/load");
    std::fs::create_dir_all(&dir).unwrap();
    let good = tiny_weights();
    let mut seeds: Vec<(String, Vec<u8>)> = vec![("good-f16".into(), good.clone())];
    for len in [0, 7, 8, 9, 64, good.len() / 2, good.len() - 1] {
        seeds.push((format!("truncated-{len}"), good[..len].to_vec()));
    }
    let edits = [
        ("schedule", "steps", json!(1_000_000_000_000u64)),
        ("schedule", "steps", json!(1)),
        ("schedule", "beta_end", json!(2.0)),
        ("unet", "blocks", json!(1_000_000_000u64)),
        ("unet", "image_size", json!(1u64 << 40)),
        ("unet", "image_size", json!(7)),
        ("unet", "image_channels", json!(2)),
        ("unet", "base_channels", json!(8)),
        ("unet", "channel_mults", json!([1, 2])),
        ("unet", "channel_mults", json!([0])),
        ("unet", "channel_mults", json!(vec![1; 40])),
        ("unet", "attn", json!([true, false])),
        ("unet", "groups", json!(0)),
        ("unet", "dropout", json!(-0.5)),
    ];
    for (entry, field, value) in edits {
        seeds.push((format!("{entry}-{field}-{value}"), edit_config(&good, entry, |c| c[field] = value.clone())));
    }
    for (name, bytes) in seeds {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The `.pth` fuzz target's corpus (`fuzz/corpus/import/`: small `torch.save` files of every
/// container and dtype, and what cargo-fuzz kept) and its regressions through `ddpm import`'s
/// reader: each is imported or refused, never a panic.
#[test]
fn pth_corpus_and_regressions_import_or_are_refused() {
    let corpus = files("fuzz/corpus/import");
    assert!(corpus.len() >= 8, "the .pth seed corpus is committed ({} files)", corpus.len());
    let flags = ddpm::labml::LabmlFlags { image_size: 8, ..Default::default() };
    for file in corpus.iter().chain(&files("fuzz/regressions/import")) {
        let outcome =
            std::panic::catch_unwind(|| ddpm::import::import_pth(file, None, &flags, &Device::flex()).map(drop));
        assert!(outcome.is_ok(), "{} panicked the importer", file.display());
    }
}
