//! Distillation, stage 1 (Meng et al. 2023): the student made from a teacher starts as the
//! teacher's conditional prediction whatever w; its target is eq. 6 computed item by item; one
//! pass of the student is what sampling uses for guidance; training moves the student towards
//! the guided teacher; a run resumes exactly and refuses a teacher that changed. Stage 2
//! (Salimans & Ho's progressive distillation): the student's target is one step where its
//! teacher takes two, on grids that nest; its run resumes exactly and names its sampler.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ddpm::data::Dataset;
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::guidance::{Guidance, Guided};
use ddpm::noise::Noise;
use ddpm::sampler::EpsTheta;
use ddpm::solvers::ddim::Ddim;
use ddpm::solvers::{SamplerConfig, Solver};
use ddpm::train::progressive::Halving;
use ddpm::train::{DistilConfig, TrainConfig, Trainer};
use ddpm::unet::{ClassMix, UNet, UNetConfig};
use ddpm::weights::{self, Header, Precision};
use sha2::{Digest, Sha256};

mod common;
use common::{TempDir, bars, recipe, seeded, tiny};

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn labelled() -> Dataset {
    let mut data = bars(12);
    data.labels = Some((0..12).map(|i| (i % 3) as u8).collect());
    data
}

fn teacher_config() -> UNetConfig {
    UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() }
}

/// A conditional tiny teacher after a few steps (so that its classes mean something), and its
/// weights file. Its start is drawn from a fixed seed (`seeded`), so that every run trains the
/// same teacher.
fn teacher(dir: &TempDir) -> (UNet, std::path::PathBuf) {
    let device = Device::flex();
    let header = Header::new(teacher_config(), ScheduleConfig::default());
    let start = seeded(teacher_config().init(&device), 7, "");
    let start = weights::to_safetensors(&start, &header, Precision::F32).unwrap();
    let mut trainer = Trainer::new(
        teacher_config(),
        ScheduleConfig::default(),
        TrainConfig { label_dropout: 0.3, ..recipe(8, 6, 1e-2) },
        &device,
    )
    .unwrap();
    trainer.start_from(weights::load(&start, &device.clone().autodiff()).unwrap().0);
    for _ in 0..8 {
        trainer.step(&labelled()).unwrap();
    }
    let model = trainer.model.valid();
    let path = dir.join("teacher.safetensors");
    std::fs::write(&path, weights::to_safetensors(&model, &header, Precision::F32).unwrap()).unwrap();
    (model, path)
}

fn distil_recipe(path: &std::path::Path, steps: usize, lr: f64) -> TrainConfig {
    let bytes = std::fs::read(path).unwrap();
    TrainConfig {
        label_dropout: 0.1,
        distil: Some(DistilConfig {
            teacher: path.to_string_lossy().into_owned(),
            teacher_sha256: format!("{:x}", Sha256::digest(&bytes)),
            w_min: 0.0,
            w_max: 4.0,
            teacher_steps: None,
        }),
        ..recipe(steps, 6, lr)
    }
}

/// The student's start as `ddpm distil` makes it: the teacher's weights with a guidance input,
/// whose first layer (drawn by burn from the global generator that the tests running beside this
/// one share) is drawn from a fixed seed instead, so that every run starts from the same weights.
fn student_start(teacher: &std::path::Path) -> Vec<u8> {
    let device = Device::flex();
    let (model, _) = weights::load(&std::fs::read(teacher).unwrap(), &device).unwrap();
    let config = UNetConfig { guidance_input: true, ..teacher_config() };
    let header = Header::new(config, ScheduleConfig::default());
    weights::to_safetensors(&seeded(model.with_guidance_input(), 8, "w_emb.lin1"), &header, Precision::F32).unwrap()
}

/// A distillation run of the teacher at `path` from the student `start`.
fn student_trainer(path: &std::path::Path, start: &[u8], steps: usize, lr: f64) -> Trainer {
    let device = Device::flex();
    let student = UNetConfig { guidance_input: true, ..teacher_config() };
    let mut trainer =
        Trainer::new(student, ScheduleConfig::default(), distil_recipe(path, steps, lr), &device).unwrap();
    trainer.start_from(weights::load(start, &device.clone().autodiff()).unwrap().0);
    trainer
}

#[test]
fn a_fresh_student_is_its_teachers_conditional_prediction_whatever_w() {
    let dir = TempDir::new("distil-start");
    let (teacher, _) = teacher(&dir);
    let device = Device::flex();
    let student = teacher.clone().with_guidance_input();
    let x = Noise::new(5).gaussian([3, 1, 8, 8], &device);
    let t = Tensor::<1>::from_floats([20.0, 400.0, 900.0], &device);
    let classes = [ClassMix::from(0), ClassMix::from(2), ClassMix::from(3)];
    let want = values(teacher.forward_condition(x.clone(), t.clone(), Some(&classes), None));
    for w in [0.0, 1.0, 3.5] {
        let got = values(student.forward_condition(x.clone(), t.clone(), Some(&classes), Some(&[w; 3])));
        assert_eq!(got, want, "w = {w}");
    }
}

#[test]
fn the_target_is_eq_6_item_by_item_and_sampling_takes_one_student_pass() {
    let dir = TempDir::new("distil-target");
    let (teacher, _) = teacher(&dir);
    let device = Device::flex();
    let diffusion = Diffusion::new(ScheduleConfig::default());
    let x0 = Noise::new(1).gaussian([3, 1, 8, 8], &device);
    let eps = Noise::new(2).gaussian([3, 1, 8, 8], &device);
    let (t, classes, w) = ([30, 500, 950], [1, 3, 0], [0.0f32, 2.0, 3.5]);
    let x_t = diffusion.q_sample(x0, &t, eps);
    let got =
        values(diffusion.guided_teacher(x_t.clone(), &t, &classes, 3, &w, |x, t, c| {
            teacher.forward_condition(x, t, Some(&c), None)
        }));
    // By hand, one item at a time: ε(∅) + w(ε(c) − ε(∅)).
    for i in 0..3 {
        let x = x_t.clone().narrow(0, i, 1);
        let ti = Tensor::<1>::from_floats([t[i] as f32], &device);
        let cond = values(teacher.forward_class(x.clone(), ti.clone(), &[classes[i]]));
        let uncond = values(teacher.forward_class(x, ti, &[3]));
        let want: Vec<f32> = cond.iter().zip(&uncond).map(|(c, u)| u + w[i] * (c - u)).collect();
        assert!(max_diff(&got[i * 64..(i + 1) * 64], &want) < 1e-5, "item {i}");
    }
    // A student samples with one pass given w, not eq. 6's two.
    let student = teacher.with_guidance_input();
    let guidance = Guidance::class(2, 2.5, Some(3)).unwrap();
    let x = Noise::new(4).gaussian([2, 1, 8, 8], &device);
    let t = Tensor::<1>::from_floats([100.0, 700.0], &device);
    let guided = values(Guided { model: &student, guidance: Some(guidance) }.eps(x.clone(), t.clone()));
    let one_pass = values(student.forward_condition(x, t, Some(&[ClassMix::from(2); 2]), Some(&[2.5; 2])));
    assert_eq!(guided, one_pass);
}

#[test]
fn distillation_moves_the_student_towards_the_guided_teacher() {
    let dir = TempDir::new("distil-learns");
    let (teacher, path) = teacher(&dir);
    let device = Device::flex();
    let diffusion = Diffusion::new(ScheduleConfig::default());
    // A fixed probe at two strengths. The fresh student predicts ε(c) (w = 1) for every w; one
    // that ignored w could at best predict one w̄ for all, and moving from w = 1 towards w = 3
    // takes it away from w = 0: only a student that reads w gets closer at both.
    let x0 = Noise::new(11).gaussian([6, 1, 8, 8], &device).clamp(-1.0, 1.0);
    let eps = Noise::new(12).gaussian([6, 1, 8, 8], &device);
    let (t, classes) = ([50, 200, 400, 600, 800, 950], [0, 1, 2, 0, 1, 2]);
    let x_t = diffusion.q_sample(x0.clone(), &t, eps.clone());
    let t_tensor = diffusion.t_tensor_items(&t, &device);
    let mixes: Vec<ClassMix> = classes.iter().map(|&c| c.into()).collect();
    let error = |student: &UNet, w: f32| {
        let w = [w; 6];
        let target = values(diffusion.guided_teacher(x_t.clone(), &t, &classes, 3, &w, |x, t, c| {
            teacher.forward_condition(x, t, Some(&c), None)
        }));
        let got = values(student.forward_condition(x_t.clone(), t_tensor.clone(), Some(&mixes), Some(&w)));
        got.iter().zip(&target).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / got.len() as f32
    };
    let mut trainer = student_trainer(&path, &student_start(&path), 400, 3e-3);
    let before = [0.0, 3.0].map(|w| error(&trainer.model.valid(), w));
    for _ in 0..400 {
        trainer.step(&labelled()).unwrap();
    }
    let after = [0.0, 3.0].map(|w| error(&trainer.model.valid(), w));
    for i in 0..2 {
        assert!(before[i] > 0.0, "the probe must tell guided from conditional");
        let w = [0, 3][i];
        assert!(
            after[i] < 0.75 * before[i],
            "w = {w}: the student's error went from {} to only {}",
            before[i],
            after[i]
        );
    }
}

#[test]
fn a_distillation_run_resumes_exactly_and_refuses_a_changed_teacher() {
    let dir = TempDir::new("distil-resume");
    let (_, path) = teacher(&dir);
    let device = Device::flex();
    let data = labelled();
    let start = student_start(&path);
    let mut straight = student_trainer(&path, &start, 8, 1e-3);
    let all: Vec<f64> = (0..8).map(|_| straight.step(&data).unwrap().loss).collect();
    let mut first = student_trainer(&path, &start, 8, 1e-3);
    let head: Vec<f64> = (0..4).map(|_| first.step(&data).unwrap().loss).collect();
    let ckpt = dir.join("checkpoint.ddpm");
    first.save(&ckpt).unwrap();
    drop(first);
    let mut resumed = Trainer::load(&ckpt, &device).unwrap();
    let tail: Vec<f64> = (0..4).map(|_| resumed.step(&data).unwrap().loss).collect();
    assert_eq!(head, all[..4]);
    assert_eq!(tail, all[4..], "the resumed half repeats the straight run's losses exactly");
    // The teacher's file rewritten (one byte of its weights): the run is not resumed.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let e = Trainer::load(&ckpt, &device).err().expect("a changed teacher is refused").to_string();
    assert!(e.contains("changed since the run started"), "{e}");
}

/// A stage-1 student whose w embedding is drawn from a seed (a fresh one ignores w), saved as
/// stage 2's teacher.
fn stage1_student(dir: &TempDir) -> (UNet, std::path::PathBuf) {
    let (teacher, _) = teacher(dir);
    let student = seeded(teacher.with_guidance_input(), 9, "w_emb");
    let config = UNetConfig { guidance_input: true, ..teacher_config() };
    let header = Header::new(config, ScheduleConfig::default());
    let path = dir.join("student1.safetensors");
    std::fs::write(&path, weights::to_safetensors(&student, &header, Precision::F32).unwrap()).unwrap();
    (student, path)
}

#[test]
fn stage_2_grids_nest_and_its_steps_are_drawn_from_the_students() {
    let diffusion = Diffusion::new(ScheduleConfig::default());
    for n in (2..=1000).step_by(2) {
        assert!(Halving::new(n, &diffusion).is_ok(), "{n} steps halve onto every second point");
    }
    for bad in [0, 7, 1002] {
        assert!(Halving::new(bad, &diffusion).is_err(), "{bad} teacher steps");
    }
    let halving = Halving::new(8, &diffusion).unwrap();
    assert_eq!(halving.student_sampler(), SamplerConfig::ddim(4, 0.0));
    let t = halving.draw_t(200, &mut Noise::new(3));
    assert!(t.windows(2).all(|p| p[0] >= p[1]), "descending, so equal steps are adjacent");
    for s in [999, 749, 499, 249] {
        assert!(t.contains(&s), "step {s} is drawn");
    }
    assert!(t.iter().all(|s| [999, 749, 499, 249].contains(s)), "only the 4-step grid's points");
}

#[test]
fn stage_2_target_is_one_step_where_the_teacher_takes_two() {
    let dir = TempDir::new("distil-stage2-target");
    let (teacher, _) = stage1_student(&dir);
    let device = Device::flex();
    let diffusion = Diffusion::new(ScheduleConfig::default());
    let halving = Halving::new(8, &diffusion).unwrap();
    // Three runs of equal t, each item its own class and w; 249 is the student's last step (onto x₀).
    let t = [999, 999, 499, 249, 249];
    let (classes, w) = ([0, 1, 3, 2, 1], [0.5f32, 3.0, 1.0, 2.0, 0.0]);
    let mixes: Vec<ClassMix> = classes.iter().map(|&c| c.into()).collect();
    let x0 = Noise::new(3).gaussian([5, 1, 8, 8], &device).clamp(-1.0, 1.0);
    let x_t = diffusion.q_sample(x0, &t, Noise::new(4).gaussian([5, 1, 8, 8], &device));
    let target = halving
        .targets(&diffusion, x_t.clone(), &t, |x, s, items| {
            let s = diffusion.t_tensor(s, items.len(), &device);
            teacher.forward_condition(x, s, Some(&mixes[items.clone()]), Some(&w[items]))
        })
        .unwrap();
    // By hand, item by item: the teacher's two DDIM η = 0 steps on the 8-step trailing grid, and
    // the student's one step with the target, x_t'' = √ᾱ_t'' x̂₀ + √(1 − ᾱ_t'') ε̃ (eq. 12).
    let grid = [999, 874, 749, 624, 499, 374, 249, 124];
    let mut z = || -> Tensor<4> { unreachable!("η = 0 draws no noise") };
    for i in 0..5 {
        let k = grid.iter().position(|&s| s == t[i]).unwrap();
        let (t1, t2) = (grid[k + 1], grid.get(k + 2).copied());
        let eps = |x: Tensor<4>, s: usize| {
            let s = diffusion.t_tensor(s, 1, &device);
            teacher.forward_condition(x, s, Some(&mixes[i..i + 1]), Some(&w[i..i + 1]))
        };
        let x = x_t.clone().narrow(0, i, 1);
        let (x1, _) = Ddim { eta: 0.0 }.step(&diffusion, x.clone(), t[i], Some(t1), eps(x.clone(), t[i]), &mut z);
        let (x2, _) = Ddim { eta: 0.0 }.step(&diffusion, x1.clone(), t1, t2, eps(x1, t1), &mut z);
        let eps_tilde = target.clone().narrow(0, i, 1);
        let ab = t2.map_or(1.0, |s| diffusion.alpha_bar[s]);
        let landed = diffusion.predict_x0(x, t[i], eps_tilde.clone()).mul_scalar(ab.sqrt())
            + eps_tilde.mul_scalar((1.0 - ab).sqrt());
        let off = max_diff(&values(landed), &values(x2));
        assert!(off < 1e-4, "item {i} (t = {}): one student step lands {off} off the teacher's two", t[i]);
    }
}

#[test]
fn a_stage_2_run_resumes_exactly_names_its_sampler_and_needs_a_student_teacher() {
    let dir = TempDir::new("distil-stage2-run");
    let (_, path) = stage1_student(&dir);
    let device = Device::flex();
    let data = labelled();
    let config = UNetConfig { guidance_input: true, ..teacher_config() };
    let recipe = |teacher: &std::path::Path| {
        let mut r = distil_recipe(teacher, 6, 1e-3);
        r.distil.as_mut().unwrap().teacher_steps = Some(8);
        r
    };
    let start = std::fs::read(&path).unwrap();
    let trainer = || {
        let mut t = Trainer::new(config.clone(), ScheduleConfig::default(), recipe(&path), &device).unwrap();
        t.start_from(weights::load(&start, &device.clone().autodiff()).unwrap().0);
        t
    };
    let mut straight = trainer();
    let all: Vec<f64> = (0..6).map(|_| straight.step(&data).unwrap().loss).collect();
    assert!(all.iter().all(|l| l.is_finite() && *l > 0.0), "{all:?}");
    assert_eq!(straight.header().sampler, Some(SamplerConfig::ddim(4, 0.0)), "the student is drawn over 4 steps");
    let mut first = trainer();
    let head: Vec<f64> = (0..3).map(|_| first.step(&data).unwrap().loss).collect();
    let ckpt = dir.join("checkpoint.ddpm");
    first.save(&ckpt).unwrap();
    let mut resumed = Trainer::load(&ckpt, &device).unwrap();
    let tail: Vec<f64> = (0..3).map(|_| resumed.step(&data).unwrap().loss).collect();
    assert_eq!([head, tail].concat(), all, "the resumed run repeats the straight run's losses exactly");
    // Stage 2 distils a student: a teacher without a guidance input is refused.
    let plain_dir = TempDir::new("distil-stage2-plain");
    let (_, plain) = teacher(&plain_dir);
    let e = Trainer::new(config, ScheduleConfig::default(), recipe(&plain), &device).err().expect("refused");
    assert!(e.to_string().contains("stage 2 distils a student"), "{e}");
}

/// Stage 1 may train a narrower student from scratch (`ddpm distil --base-channels`): the
/// teacher need only draw the same images of the same classes. Stage 2's student starts as its
/// teacher, so there the two must be one architecture.
#[test]
fn a_narrower_stage_1_student_learns_from_scratch_and_stage_2_needs_one_architecture() {
    let dir = TempDir::new("distil-narrow");
    let (_, path) = teacher(&dir);
    let device = Device::flex();
    let narrow = UNetConfig { guidance_input: true, base_channels: 4, ..teacher_config() };
    let new = |unet: UNetConfig, recipe: TrainConfig| Trainer::new(unet, ScheduleConfig::default(), recipe, &device);
    let mut trainer = new(narrow.clone(), distil_recipe(&path, 60, 3e-3)).unwrap();
    let losses: Vec<f64> = (0..60).map(|_| trainer.step(&labelled()).unwrap().loss).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[50..]));
    assert!(last < 0.5 * first, "the narrow student's loss went from {first} to only {last}");
    let e = new(UNetConfig { image_size: 16, ..narrow.clone() }, distil_recipe(&path, 1, 1e-3)).err().unwrap();
    assert!(e.to_string().contains("not of the student's image size"), "{e}");
    // The narrow student as a stage-2 teacher of a student of the first teacher's width.
    let header = Header {
        sampler: Some(SamplerConfig::ddim(8, 0.0)),
        student: Some(ddpm::weights::Student { w_min: 0.0, w_max: 4.0, grid_only: false }),
        ..Header::new(narrow, ScheduleConfig::default())
    };
    let file = dir.join("narrow.safetensors");
    std::fs::write(&file, weights::to_safetensors(&trainer.model.valid(), &header, Precision::F32).unwrap()).unwrap();
    let mut round = distil_recipe(&file, 1, 1e-3);
    round.distil.as_mut().unwrap().teacher_steps = Some(8);
    let wide = UNetConfig { guidance_input: true, ..teacher_config() };
    let e = new(wide, round).err().unwrap();
    assert!(e.to_string().contains("is not the student's architecture"), "{e}");
}
