//! The project's commands beyond cargo's own:
//! * `cargo xtask build-web`: the page's two wasm modules (src/wasm.rs);
//! * `cargo xtask serve`: builds, then serves `www/` and `weights/` on 127.0.0.1;
//! * `cargo xtask dist DIR`: builds, then writes the demo as a static folder for any static host;
//! * `cargo xtask manifest`: updates `weights/index.json` (sizes and SHA-256) after new weights;
//! * `cargo xtask test`: every test: `cargo test --release`, then the page in headless Chromium;
//! * `cargo xtask bench-web`: the page's speed as JSON lines;
//! * `cargo xtask test-interop`: labml's PyTorch UNet against ours (import, ε, DDIM, export) and
//!   the DistributedDataParallel path on two gloo processes, in a cached Python environment with
//!   torch (a multi-gigabyte download: not part of `test`).

mod manifest;
mod serve;
mod wasm;

use wasm::build_web;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo run` passes the manifest dir at run time; the compile-time one can name another
    // clone when clones share a target dir (CI's cache), as cargo does not rebuild for a move.
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let root = manifest.parent().expect("xtask lives in the workspace").to_path_buf();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    match args.first().map(String::as_str) {
        Some("build-web") => {
            npm_install(&root)?;
            build_web(&root)
        }
        Some("serve") => {
            if !args.iter().any(|a| a == "--no-build") {
                npm_install(&root)?;
                build_web(&root)?;
            }
            let port: u16 = flag("--port").unwrap_or_else(|| "8080".into()).parse().context("--port takes a number")?;
            let (listener, addr) = serve::bind(port)?;
            println!("serving the demo at http://{addr}/ (Ctrl-C stops)");
            serve::run(&root, listener)
        }
        Some("manifest") => manifest::update(&root),
        Some("dist") => {
            let out = args.get(1).filter(|a| !a.starts_with('-')).context("usage: cargo xtask dist DIR")?;
            npm_install(&root)?;
            build_web(&root)?;
            dist(&root, Path::new(out))
        }
        Some("test") => {
            test_prerequisites()?;
            npm_install(&root)?;
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo(&root, &["test", "--release", "-p", "ddpm-web"])?;
            // Apart: one invocation for both would unify their dependencies' features and build
            // burn a second time.
            cargo(&root, &["test", "--release", "-p", "xtask"])?;
            // On a CPU with AMX the first run tested the convolutions on its tiles; the f32 path
            // that every other CPU takes is tested again with the tiles switched off.
            cargo_with(&root, &["test", "--release", "-p", "ddpm-web", "--test", "conv2d"], &[("DDPM_AMX", "off")])?;
            build_web(&root)?;
            // The static folder, for the test that serves it with a plain static server.
            let out = std::env::temp_dir().join(format!("ddpm-dist-{}", std::process::id()));
            dist(&root, &out)?;
            let result =
                node_with_server(&root, &["--test", "--test-concurrency=1", "tests/browser/"], &[("DDPM_DIST", &out)]);
            let _ = std::fs::remove_dir_all(&out);
            result
        }
        Some("bench-web") => {
            npm_install(&root)?;
            cargo(&root, &["build", "--release", "-p", "ddpm-web"])?;
            build_web(&root)?;
            node_with_server(&root, &["tests/browser/bench.mjs"], &[])
        }
        Some("test-interop") => {
            let python = interop_python()?;
            cargo(&root, &["build", "--release", "-p", "ddpm-web"])?;
            let ddpm = target_dir(&root).join("release/ddpm");
            let ddpm = ddpm.to_str().context("the target dir's path is not UTF-8")?;
            run(&root, &python, &["scripts/labml_interop.py", "check", "--ddpm", ddpm], "running Python")?;
            run(&root, &python, &["scripts/train_ddp.py", "--selftest", "--ddpm", ddpm], "running Python")
        }
        _ => bail!(
            "usage: cargo xtask build-web | serve [--port 8080] [--no-build] | dist DIR | manifest | test | bench-web \
             | test-interop"
        ),
    }
}

/// The Python of a virtual environment with torch, numpy, safetensors, pillow (the PNGs of
/// `train_ddp.py --compare`) and labml-nn (without its heavy declared dependencies: its UNet
/// imports only torch): `$DDPM_INTEROP_VENV`, or one made once under
/// `~/.cache/ddpm-web/interop-venv` (about 5.7 GB: PyPI's torch is the CUDA build).
fn interop_python() -> Result<PathBuf> {
    let venv = match std::env::var_os("DDPM_INTEROP_VENV") {
        Some(v) => PathBuf::from(v),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/ddpm-web/interop-venv")
        }
    };
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    if ready.exists() {
        return Ok(python);
    }
    let here = Path::new(".");
    let venv_str = venv.to_str().context("the venv's path is not UTF-8")?;
    run(here, "python3", &["-m", "venv", venv_str], "python3 is needed (apt-get install python3 python3-venv)")?;
    let pip = |args: &[&str]| run(here, &python, &[&["-m", "pip", "install", "-q"][..], args].concat(), "running pip");
    pip(&["torch", "numpy", "safetensors", "pillow"])?;
    pip(&["--no-deps", "labml-nn==0.5.1"])?;
    std::fs::write(&ready, "")?;
    Ok(python)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Runs `program args` in `root`; an error names the command, and `missing` says what to
/// install when the program cannot be started at all.
fn run(root: &Path, program: impl AsRef<std::ffi::OsStr>, args: &[&str], missing: &str) -> Result<()> {
    run_with(root, program, args, &[], missing)
}

/// [`run`] with these environment variables set.
fn run_with(
    root: &Path,
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    env: &[(&str, &str)],
    missing: &str,
) -> Result<()> {
    let program = program.as_ref();
    let status = Command::new(program)
        .current_dir(root)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .context(missing.to_string())?;
    let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    ensure!(status.success(), "`{env}{} {}` failed", program.to_string_lossy(), args.join(" "));
    Ok(())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    cargo_with(root, args, &[])
}

fn cargo_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    run_with(root, std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()), args, env, "running cargo")
}

/// What the tests run beyond cargo and npm: Debian's Chromium (the page tests, driven by
/// playwright-core) and strace (the checkpoint write-order test). Checked before anything is
/// built; installed with apt when this runs as root (as CI does), else named.
fn test_prerequisites() -> Result<()> {
    const CHROMIUM: &str = "/usr/bin/chromium";
    let has = |program: &str| Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [("chromium", Path::new(CHROMIUM).exists()), ("strace", has("strace"))]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(package, _)| package)
        .collect();
    ensure!(
        has("node") && has("npm"),
        "the tests need Node.js and npm (https://nodejs.org, or apt-get install nodejs npm)"
    );
    if missing.is_empty() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    ensure!(
        root && has("apt-get"),
        "the tests need {0}: install them first (sudo apt-get install {0})",
        missing.join(" ")
    );
    eprintln!("installing {} with apt-get (the tests need them)", missing.join(" "));
    run(Path::new("/"), "apt-get", &["update", "-qq"], "running apt-get")?;
    let install = [&["install", "-y", "-qq"][..], &missing].concat();
    run_with(Path::new("/"), "apt-get", &install, &[("DEBIAN_FRONTEND", "noninteractive")], "running apt-get")
}

/// The npm packages the tests use (playwright-core, pngjs) and binaryen's wasm-opt.
fn npm_install(root: &Path) -> Result<()> {
    if root.join("node_modules/.package-lock.json").exists() {
        return Ok(());
    }
    run(root, "npm", &["ci", "--no-audit", "--no-fund"], "running npm (install Node.js and npm)")
}

/// Serves the demo on a free port and runs node with DDPM_URL (the page) and DDPM_BIN (the
/// native `ddpm`, for parity checks) set.
fn node_with_server(root: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<()> {
    let (listener, addr) = serve::bind(0)?;
    let url = format!("http://{addr}/");
    let served = root.to_path_buf();
    std::thread::spawn(move || {
        if let Err(e) = serve::run(&served, listener) {
            eprintln!("the test server stopped: {e:#}");
        }
    });
    let bin = target_dir(root).join("release/ddpm");
    let status = Command::new("node")
        .current_dir(root)
        .args(args)
        .env("DDPM_URL", &url)
        .env("DDPM_BIN", &bin)
        .envs(env.iter().copied())
        .status()
        .context("running node")?;
    ensure!(status.success(), "node {} failed", args.join(" "));
    Ok(())
}

/// What the page loads, relative to the site: every URL in the page is relative, so the folder
/// works under any sub-path. The weights are the manifest's models (`manifest::files`), and the
/// two modules' folders (`wasm::MODULES`) are copied whole.
const DIST_FILES: [(&str, &str); 14] = [
    ("www/index.html", "index.html"),
    ("www/app.js", "app.js"),
    ("www/draw-pad.js", "draw-pad.js"),
    ("www/link.js", "link.js"),
    ("www/live.js", "live.js"),
    ("www/plots.js", "plots.js"),
    ("www/recorder.js", "recorder.js"),
    ("www/model-client.js", "model-client.js"),
    ("www/model-worker.js", "model-worker.js"),
    ("www/weights-cache.js", "weights-cache.js"),
    ("www/style.css", "style.css"),
    ("www/examples/mnist-digits.png", "examples/mnist-digits.png"),
    ("www/examples/emoji.png", "examples/emoji.png"),
    ("weights/index.json", "weights/index.json"),
];

/// Writes the demo as a static folder `out` (created if needed): the page, its module, the
/// weights and `_headers`. Refuses a folder inside the sources, which it would overwrite.
fn dist(root: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (real, root) = (out.canonicalize()?, root.canonicalize()?);
    ensure!(
        real != root && !real.starts_with(root.join("www")) && !real.starts_with(root.join("weights")),
        "{} would overwrite the sources; pick a folder outside the checkout's root, www/ and weights/",
        out.display()
    );
    let weights = manifest::files(&root)?;
    let weights = weights.iter().map(|f| (f.as_str(), f.as_str()));
    for (from, to) in DIST_FILES.into_iter().chain(weights) {
        let to = out.join(to);
        std::fs::create_dir_all(to.parent().expect("a file in a folder"))?;
        std::fs::copy(root.join(from), &to).with_context(|| format!("copying {from} to {}", to.display()))?;
    }
    for module in wasm::MODULES {
        let site = module.out.strip_prefix("www/").expect("the modules are in www/");
        copy_tree(&root.join(module.out), &out.join(site))?;
    }
    // The dev server's headers, for hosts that read a `_headers` file (Netlify, Cloudflare Pages;
    // others take the same values in their own configuration, see docs/demo.md).
    let headers: String = serve::HEADERS.iter().map(|(name, value)| format!("  {name}: {value}\n")).collect();
    std::fs::write(out.join("_headers"), format!("/*\n{headers}"))?;
    eprintln!("wrote the demo to {} (serve it with any static file server, at any path)", out.display());
    Ok(())
}

/// Copies the folder `from` into `to`, all but the build stamp.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else if entry.file_name() != wasm::STAMP {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}
