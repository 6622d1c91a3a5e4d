//! Training survives kill -9: `ddpm train` killed at random moments and resumed each time ends
//! with weights equal bit for bit to an uninterrupted run's, every checkpoint left behind is
//! whole, and no kill loses more than one checkpoint interval. `DDPM_SOAK_KILLS` sets the number
//! of kills (5 here; `scripts/soak.sh` runs 100 or more and keeps the JSON line this prints).
//! Also: checkpoints are written write → fsync → rename → fsync(folder), and a full disk or a
//! read-only run folder is a clear error that leaves the last checkpoint intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use safetensors::SafeTensors;

mod common;
use common::TempDir;

const EVERY: u64 = 4;
const MODEL: &[&str] = &[
    "--image-size", "8", "--channels", "1", "--base-channels", "8", "--channel-mults", "1,2", "--attn", "0,1",
    "--groups", "4", "--diffusion-steps", "50", "--batch-size", "4", "--shards", "2", "--sample-every", "0",
    "--checkpoint-every", "4", "--seed", "3",
];

fn ddpm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
}

fn images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..12u32 {
        image::GrayImage::from_fn(8, 8, |x, y| image::Luma([((x * 31 + y * 17 + i * 40) % 256) as u8]))
            .save(dir.join(format!("{i:02}.png")))
            .unwrap();
    }
}

fn train_args<'a>(data: &'a str, run: &'a str, steps: &'a str) -> Vec<&'a str> {
    [&["train", "--data", data, "--out", run, "--steps", steps][..], MODEL].concat()
}

/// A fresh folder holding the training images and a run trained for `steps` steps (none: not
/// trained yet); returns (folder, images, run).
fn trained(name: &str, steps: Option<&str>) -> (TempDir, String, std::path::PathBuf) {
    let root = TempDir::new(name);
    let data = root.join("images");
    images(&data);
    let run = root.join("run");
    if let Some(steps) = steps {
        run_ok(ddpm().args(train_args(data.to_str().unwrap(), run.to_str().unwrap(), steps)));
    }
    (root, data.to_str().unwrap().to_string(), run)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The step a checkpoint holds, read from its header; panics if the file is not whole.
fn checkpoint_step(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).expect("a checkpoint is never partial");
    assert_eq!(file.len(), 3, "model, ema and optimiser");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let state: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["state"]).unwrap();
    state["step"].as_u64().unwrap()
}

/// The last whole line's step in a run's log (a kill may cut the last line short).
fn last_logged(run: &Path) -> u64 {
    let text = std::fs::read_to_string(run.join("log.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64()).last().unwrap_or(0)
}

/// A weights file's tensors, bit for bit, and its metadata.
fn exported(run: &Path, out: &Path) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, String>) {
    run_ok(ddpm().args(["export", "--run", run.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    let bytes = std::fs::read(out).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file.tensors().into_iter().map(|(k, v)| (k, v.data().to_vec())).collect();
    let meta = SafeTensors::read_metadata(&bytes).unwrap().1.metadata().clone().unwrap().into_iter().collect();
    (tensors, meta)
}

/// A small deterministic generator for the kill times (xorshift), seeded from the clock unless
/// DDPM_SOAK_SEED is set; the seed is printed so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn killed_and_resumed_training_equals_an_uninterrupted_run() {
    let kills: usize = std::env::var("DDPM_SOAK_KILLS").map_or(5, |k| k.parse().expect("DDPM_SOAK_KILLS is a number"));
    let steps: u64 = std::env::var("DDPM_SOAK_STEPS").map_or(120, |k| k.parse().expect("DDPM_SOAK_STEPS is a number"));
    let seed = std::env::var("DDPM_SOAK_SEED").map_or_else(
        |_| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1,
        |s| s.parse().unwrap(),
    );
    let mut rng = Rng(seed);
    let (root, data, _) = trained("soak", None);
    let (data_s, steps_s) = (data.as_str(), steps.to_string());

    let straight = root.join("straight");
    let started = Instant::now();
    run_ok(ddpm().args(train_args(data_s, straight.to_str().unwrap(), &steps_s)));
    let full_run = started.elapsed();

    let run = root.join("killed");
    let run_s = run.to_str().unwrap();
    let ckpt = run.join("checkpoint.ddpm");
    let (mut done, mut resumes, mut worst_loss) = (0usize, 0usize, 0u64);
    let mut partial_temps = 0usize;
    let started = Instant::now();
    loop {
        let mut args = train_args(data_s, run_s, &steps_s);
        if ckpt.exists() {
            args.push("--resume");
            resumes += 1;
        }
        let mut child = ddpm().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        if done == kills {
            assert!(child.wait().unwrap().success(), "the last resume runs to the end");
            break;
        }
        // Anywhere from start-up to the end of a whole run.
        std::thread::sleep(full_run.mul_f64(0.05 + 1.1 * rng.next()));
        if child.try_wait().unwrap().is_some() {
            // Finished before the kill: start the run over to keep killing it.
            std::fs::remove_dir_all(&run).unwrap();
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        done += 1;
        if run.join(".checkpoint.ddpm.tmp").exists() {
            partial_temps += 1; // killed mid-write: the next start sweeps it
        }
        if ckpt.exists() {
            let (saved, logged) = (checkpoint_step(&ckpt), last_logged(&run));
            assert!(logged <= saved + EVERY, "kill {done}: logged step {logged}, checkpoint only {saved}");
            worst_loss = worst_loss.max(logged - saved.min(logged));
        }
    }
    assert!(!run.join(".checkpoint.ddpm.tmp").exists(), "stale temporary checkpoints are swept");
    assert_eq!(checkpoint_step(&ckpt), steps);
    let (a, meta_a) = exported(&straight, &root.join("straight.safetensors"));
    let (b, meta_b) = exported(&run, &root.join("killed.safetensors"));
    assert_eq!(a.len(), b.len());
    for (key, bytes) in &a {
        assert!(b[key] == *bytes, "tensor {key} differs from the uninterrupted run's");
    }
    let recipe = |m: &BTreeMap<String, String>| m["train"].replace(run_s, "").replace(straight.to_str().unwrap(), "");
    assert_eq!(recipe(&meta_a), recipe(&meta_b));
    let text = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let logged: Vec<u64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert_eq!(logged, (1..=steps).collect::<Vec<_>>(), "the log reads as one run");
    println!(
        "{}",
        serde_json::json!({
            "kills": done, "resumes": resumes, "steps": steps, "checkpoint_every": EVERY, "seed": seed,
            "killed_mid_checkpoint_write": partial_temps, "most_steps_lost": worst_loss,
            "bit_identical": true, "seconds": started.elapsed().as_secs_f64(),
        })
    );
}

#[test]
fn checkpoints_are_fsynced_then_renamed_then_the_folder_fsynced() {
    let (root, _, run) = trained("fsync", Some("4"));
    let trace = root.join("trace");
    let out = root.join("w.safetensors");
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,fsync,fdatasync,rename,renameat,renameat2,close", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_ddpm"))
        .args(["export", "--run", run.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .status()
        .expect("strace is installed (.ci/run installs it)");
    assert!(status.success());
    let lines: Vec<String> = std::fs::read_to_string(&trace).unwrap().lines().map(str::to_owned).collect();
    // A CPU-only command starts no GPU runtime (it used to load the optimiser state onto burn's
    // default device, wgpu, and probe Vulkan and EGL).
    let gpu: Vec<&String> = lines.iter().filter(|l| l.contains("libvulkan") || l.contains("libEGL")).collect();
    assert!(gpu.is_empty(), "ddpm export opened GPU libraries: {:?}", &gpu[..gpu.len().min(3)]);
    let fd_of = |needle: &str| -> (usize, String) {
        let i = lines.iter().position(|l| l.contains("openat(") && l.contains(needle)).expect(needle);
        (i, lines[i].rsplit("= ").next().unwrap().trim().to_string())
    };
    let (open_tmp, tmp_fd) = fd_of(".w.safetensors.tmp");
    let sync_tmp =
        lines.iter().skip(open_tmp).position(|l| l.contains(&format!("fsync({tmp_fd})"))).unwrap() + open_tmp;
    let rename = lines.iter().position(|l| l.contains("rename") && l.contains(".w.safetensors.tmp")).unwrap();
    let dir = format!("\"{}\"", root.display());
    let open_dir = lines.iter().skip(rename).position(|l| l.contains("openat(") && l.contains(&dir)).unwrap() + rename;
    let dir_fd = lines[open_dir].rsplit("= ").next().unwrap().trim().to_string();
    let sync_dir = lines.iter().skip(open_dir).position(|l| l.contains(&format!("fsync({dir_fd})")));
    assert!(open_tmp < sync_tmp && sync_tmp < rename && sync_dir.is_some(), "{}", lines.join("\n"));
}

/// Runs `f` with a fresh tmpfs of `bytes` mounted at a folder of `root` (needs root, as CI has).
fn with_tmpfs(root: &Path, bytes: usize, f: impl FnOnce(&Path)) {
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"]).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root and must be able to mount a tmpfs for this test");
        eprintln!("skipped: cannot mount a tmpfs here (not root)");
        return;
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_full_disk_or_a_read_only_folder_keeps_the_last_checkpoint() {
    let (root, data_s, _) = trained("disk", None);
    with_tmpfs(&root, 8 << 20, |mnt| {
        let run = mnt.join("run");
        let run_s = run.to_str().unwrap();
        run_ok(ddpm().args(train_args(&data_s, run_s, "4")));
        let ckpt = run.join("checkpoint.ddpm");
        let size = std::fs::metadata(&ckpt).unwrap().len() as usize;
        let before = std::fs::read(&ckpt).unwrap();
        // Fill the disk until less than half a checkpoint is free.
        let mut filler = std::fs::File::create(mnt.join("filler")).unwrap();
        use std::io::Write;
        let block = vec![0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        drop(filler);
        let free = |f: &std::fs::File| f.set_len(f.metadata().unwrap().len() - (size as u64 / 2));
        free(&std::fs::OpenOptions::new().write(true).open(mnt.join("filler")).unwrap()).unwrap();
        let out = ddpm().args([&train_args(&data_s, run_s, "8")[..], &["--resume"]].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("No space left on device") && stderr.contains("is unchanged"), "{stderr}");
        assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the last good checkpoint is intact");
        assert!(!run.join(".checkpoint.ddpm.tmp").exists(), "the failed write is cleaned up");
        std::fs::remove_file(mnt.join("filler")).unwrap();

        let ro = Command::new("mount").args(["-o", "remount,ro"]).arg(mnt).status().unwrap();
        assert!(ro.success());
        let out = ddpm().args([&train_args(&data_s, run_s, "8")[..], &["--resume"]].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("Read-only file system"), "{stderr}");
        assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    });
}

#[test]
fn a_damaged_checkpoint_is_an_error_naming_it() {
    let (_root, data, run) = trained("damaged", Some("4"));
    let (data_s, run_s) = (data.as_str(), run.to_str().unwrap());
    let ckpt = run.join("checkpoint.ddpm");
    let good = std::fs::read(&ckpt).unwrap();
    let n = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // Cut short, and (the header intact) the model's record overwritten with junk.
    let mut junk = good.clone();
    junk[n..n + 4096].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 131 % 251) as u8);
    for damaged in [good[..good.len() / 2].to_vec(), good[..n - 10].to_vec(), junk] {
        std::fs::write(&ckpt, &damaged).unwrap();
        let out = ddpm().args([&train_args(data_s, run_s, "8")[..], &["--resume"]].concat()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("checkpoint") && stderr.contains("damaged"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
