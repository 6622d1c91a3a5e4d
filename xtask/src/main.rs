//! The project's commands beyond cargo's own:
//! * `cargo xtask build-web`: the page's wasm module: the library for wasm32 (release, wasm
//!   SIMD), `wasm-bindgen` (built from crates.io as a library, no downloaded binary) and
//!   `wasm-opt` from the npm package `binaryen` when installed;
//! * `cargo xtask serve`: builds, then serves `www/` and `weights/` on 127.0.0.1;
//! * `cargo xtask test`: every test: `cargo test --release`, then the page in headless Chromium;
//! * `cargo xtask bench-web`: the page's speed as JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
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
        Some("build-web") => build_web(&root),
        Some("serve") => {
            if !args.iter().any(|a| a == "--no-build") {
                build_web(&root)?;
            }
            let port: u16 = flag("--port").unwrap_or_else(|| "8080".into()).parse().context("--port takes a number")?;
            serve(&root, port)
        }
        Some("test") => {
            npm_install(&root)?;
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo(&root, &["test", "--release", "-p", "ddpm-web"])?;
            build_web(&root)?;
            node_with_server(&root, &["--test", "--test-concurrency=1", "tests/browser/"])
        }
        Some("bench-web") => {
            npm_install(&root)?;
            cargo(&root, &["build", "--release", "-p", "ddpm-web"])?;
            build_web(&root)?;
            node_with_server(&root, &["tests/browser/bench.mjs"])
        }
        _ => bail!("usage: cargo xtask build-web | serve [--port 8080] [--no-build] | test | bench-web"),
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"))
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo).current_dir(root).args(args).status()?;
    ensure!(status.success(), "cargo {} failed", args.join(" "));
    Ok(())
}

/// The npm packages the tests use (playwright-core, pngjs) and binaryen's wasm-opt.
fn npm_install(root: &Path) -> Result<()> {
    if root.join("node_modules/.package-lock.json").exists() {
        return Ok(());
    }
    let status = Command::new("npm")
        .current_dir(root)
        .args(["ci", "--no-audit", "--no-fund"])
        .status()
        .context("running npm (install Node.js and npm)")?;
    ensure!(status.success(), "npm ci failed");
    Ok(())
}

/// Serves the demo on a free port and runs node with DDPM_URL (the page) and DDPM_BIN (the
/// native `ddpm`, for parity checks) set.
fn node_with_server(root: &Path, args: &[&str]) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let url = format!("http://{}/", listener.local_addr()?);
    let served = root.to_path_buf();
    std::thread::spawn(move || accept(&served, listener));
    let bin = target_dir(root).join("release/ddpm");
    let status = Command::new("node")
        .current_dir(root)
        .args(args)
        .env("DDPM_URL", &url)
        .env("DDPM_BIN", &bin)
        .status()
        .context("running node")?;
    ensure!(status.success(), "node {} failed", args.join(" "));
    Ok(())
}

fn build_web(root: &Path) -> Result<()> {
    eprintln!("building the wasm module (a cold build of burn takes ~20 minutes on 2 cores)...");
    cargo(
        root,
        &["rustc", "--lib", "--crate-type", "cdylib", "--target", "wasm32-unknown-unknown", "--profile", "wasm"],
    )?;
    let wasm = target_dir(root).join("wasm32-unknown-unknown/wasm/ddpm.wasm");
    let out = root.join("www/pkg");
    let bg = out.join("ddpm_bg.wasm");
    // wasm-opt takes minutes: skip bindgen and optimisation when the stamp written after the
    // last complete run names this very build.
    let stamp = out.join("build.stamp");
    let meta = std::fs::metadata(&wasm)?;
    let id = format!("{:?} {}", meta.modified()?, meta.len());
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == id) && bg.exists() {
        eprintln!("{} is up to date", bg.display());
        return Ok(());
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
    if wasm_opt.exists() {
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
            .args(["-Oz", "--strip-debug", "--strip-producers", "-o"])
            .arg(&bg)
            .arg(&bg)
            .status()?;
        ensure!(status.success(), "wasm-opt failed");
        // Only an optimised module counts as done: after `npm install` the next build optimises.
        std::fs::write(&stamp, id)?;
    } else {
        eprintln!("note: {} not found (npm install): the wasm is not size-optimised", wasm_opt.display());
    }
    eprintln!("wrote {} ({} bytes)", bg.display(), std::fs::metadata(&bg)?.len());
    Ok(())
}

/// A small static file server: `/weights/...` from weights/, everything else from www/.
fn serve(root: &Path, port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!("serving the demo at http://{}/ (Ctrl-C stops)", listener.local_addr()?);
    accept(root, listener);
    Ok(())
}

fn accept(root: &Path, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            if let Err(e) = respond(&root, stream) {
                eprintln!("request failed: {e}");
            }
        });
    }
}

fn respond(root: &Path, mut stream: TcpStream) -> Result<()> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let file = resolve(root, path);
    let (status, body, kind) = match (method, file.as_deref().map(std::fs::read)) {
        ("GET" | "HEAD", Some(Ok(body))) => ("200 OK", body, content_type(file.as_deref().expect("resolved"))),
        ("GET" | "HEAD", _) => ("404 Not Found", b"not found\n".to_vec(), "text/plain"),
        _ => ("405 Method Not Allowed", b"GET only\n".to_vec(), "text/plain"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(&body)?;
    }
    Ok(())
}

/// Maps a URL path to a file, refusing anything that climbs out of the served folders.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c.starts_with('.')) {
        return None;
    }
    let file = match rel.strip_prefix("weights/") {
        Some(w) => root.join("weights").join(w),
        None if rel.is_empty() => root.join("www/index.html"),
        None => root.join("www").join(rel),
    };
    file.is_file().then_some(file)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript",
        "css" => "text/css",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}
