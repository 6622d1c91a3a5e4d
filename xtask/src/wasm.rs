//! `cargo xtask build-web`: the page's two wasm modules, each the library for wasm32 (wasm
//! SIMD), `wasm-bindgen` (built from crates.io as a library, no downloaded binary) and
//! `wasm-opt` from the npm package `binaryen` when installed:
//! * `www/pkg/`: the main module, WebGPU with a one-thread CPU fallback;
//! * `www/pkg-threads/`: the CPU-only module for browsers without WebGPU on a cross-origin
//!   isolated page: flex on a rayon pool of web workers sharing the module's memory.
//!
//! Shared memory needs the standard library compiled with wasm atomics, which the toolchain
//! ships without: cargo rebuilds it from the `rust-src` component (`-Z build-std`). That flag
//! is unstable; `RUSTC_BOOTSTRAP=1` lets this stable toolchain take it for this one build, so
//! nothing beyond rustup's own components is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::{cargo, run, target_dir};

/// The build stamp in a module's folder: which cargo output the folder was made from.
pub const STAMP: &str = "build.stamp";

/// One of the page's modules.
pub struct Module {
    /// Its cargo profile: each module has its own folder in the target dir, so building one
    /// never evicts the other's artifacts.
    profile: &'static str,
    cargo_args: &'static [&'static str],
    /// wasm32 rustflags beside `.cargo/config.toml`'s (every crate of the build).
    rustflags: Option<&'static str>,
    /// Flags for the final link only (after `--`: changing them rebuilds no dependency).
    link_args: &'static [&'static str],
    /// Where the page loads it from, relative to the checkout.
    pub out: &'static str,
    wasm_opt_features: &'static [&'static str],
}

pub const MODULES: [Module; 2] = [
    Module {
        profile: "wasm",
        cargo_args: &[],
        rustflags: None,
        link_args: &[],
        out: "www/pkg",
        wasm_opt_features: &[],
    },
    Module {
        profile: "wasm-threads",
        cargo_args: &["--no-default-features", "--features", "threads", "-Z", "build-std=std,panic_abort"],
        // Atomics and bulk memory in every crate (std included), and 2 GiB as the memory's ceiling.
        rustflags: Some(
            "-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals -C link-arg=--max-memory=2147483648",
        ),
        // A shared memory, imported (each worker instantiates the module on the same memory), and
        // the thread-local-storage symbols wasm-bindgen's thread start-up calls: rustc 1.95 adds
        // none of these for an unstable target feature on its own (measured: an exported,
        // unshared memory that could not be posted to the workers).
        link_args: &[
            "-C",
            "link-arg=--shared-memory",
            "-C",
            "link-arg=--import-memory",
            "-C",
            "link-arg=--export=__wasm_init_tls",
            "-C",
            "link-arg=--export=__tls_size",
            "-C",
            "link-arg=--export=__tls_align",
            "-C",
            "link-arg=--export=__tls_base",
        ],
        out: "www/pkg-threads",
        wasm_opt_features: &["--enable-threads"],
    },
];

pub fn build_web(root: &Path) -> Result<()> {
    // The wasm32 target builds both modules; `rust-src` holds the standard library's sources,
    // which the threaded module's build compiles with atomics.
    let sysroot = sysroot(root)?;
    ensure_installed(
        root,
        &sysroot,
        "lib/rustlib/wasm32-unknown-unknown/lib",
        &["target", "add", "wasm32-unknown-unknown"],
    )?;
    ensure_installed(root, &sysroot, "lib/rustlib/src/rust/library/std", &["component", "add", "rust-src"])?;
    for module in &MODULES {
        module.build(root)?;
    }
    Ok(())
}

impl Module {
    fn build(&self, root: &Path) -> Result<()> {
        eprintln!("building {} (a cold build of burn takes ~20 minutes on 2 cores)...", self.out);
        let mut args = vec!["rustc", "--lib", "--crate-type", "cdylib", "--target", "wasm32-unknown-unknown"];
        args.extend(["--profile", self.profile]);
        args.extend(self.cargo_args);
        if !self.link_args.is_empty() {
            args.push("--");
            args.extend(self.link_args);
        }
        match self.rustflags {
            None => cargo(root, &args)?,
            Some(flags) => {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let status = Command::new(cargo)
                    .current_dir(root)
                    .args(&args)
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS", flags)
                    .status()
                    .context("running cargo")?;
                ensure!(status.success(), "building {} failed", self.out);
            }
        }
        let wasm = target_dir(root).join("wasm32-unknown-unknown").join(self.profile).join("ddpm.wasm");
        let out = root.join(self.out);
        let bg = out.join("ddpm_bg.wasm");
        // wasm-opt takes minutes: skip bindgen and optimisation when the stamp written after the
        // last complete run names this very build.
        let stamp = out.join(STAMP);
        let meta = std::fs::metadata(&wasm)?;
        let id = format!("{:?} {}", meta.modified()?, meta.len());
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s == id) && bg.exists() {
            eprintln!("{} is up to date", bg.display());
            return Ok(());
        }
        if out.exists() {
            // The snippets' folder names carry a hash: a stale one would ship beside the new.
            std::fs::remove_dir_all(&out)?;
        }
        std::fs::create_dir_all(&out)?;
        wasm_bindgen_cli_support::Bindgen::new()
            .input_path(&wasm)
            .web(true)?
            .omit_default_module_path(false)
            .typescript(false)
            .generate(&out)
            .context("wasm-bindgen")?;
        let wasm_opt = root.join("node_modules/.bin/wasm-opt");
        if !wasm_opt.exists() {
            eprintln!("note: {} not found (npm install): the wasm is not size-optimised", wasm_opt.display());
            return Ok(());
        }
        let features = [
            "--enable-bulk-memory",
            "--enable-nontrapping-float-to-int",
            "--enable-sign-ext",
            "--enable-mutable-globals",
            "--enable-reference-types",
            "--enable-multivalue",
            "--enable-simd",
        ];
        let status = Command::new(&wasm_opt)
            .args(features)
            .args(self.wasm_opt_features)
            .args(["-Oz", "--strip-debug", "--strip-producers", "-o"])
            .arg(&bg)
            .arg(&bg)
            .status()?;
        ensure!(status.success(), "wasm-opt failed");
        // Only an optimised module counts as done: after `npm install` the next build optimises.
        std::fs::write(&stamp, id)?;
        eprintln!("wrote {} ({} bytes)", bg.display(), std::fs::metadata(&bg)?.len());
        Ok(())
    }
}

fn sysroot(root: &Path) -> Result<PathBuf> {
    let out = Command::new("rustc").current_dir(root).args(["--print", "sysroot"]).output()?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// rustup installs `rust-toolchain.toml`'s targets and components only with the toolchain
/// itself: a toolchain that was there before (as on a fresh machine with Rust preinstalled)
/// lacks them until added. So this runs `rustup ARGS` unless `sysroot` already has `path`.
fn ensure_installed(root: &Path, sysroot: &Path, path: &str, rustup: &[&str]) -> Result<()> {
    if sysroot.join(path).is_dir() {
        return Ok(());
    }
    let what = rustup.last().expect("rustup is asked to add something");
    eprintln!("adding {what} to the toolchain (rustup {})...", rustup.join(" "));
    run(root, "rustup", rustup, &format!("{what} is missing and rustup could not be run to add it"))
}
