//! The typed request (src/request.rs) as the page sends it (its serde form) and as it runs: one
//! value, checked once, an interpolation's ends and frames in one run.

mod common;

use burn::tensor::{Device, Tensor};
use common::tiny;
use ddpm::diffusion::{Diffusion, ScheduleConfig};
use ddpm::guidance::Guided;
use ddpm::request::{
    Bounds, InterpolationMode, InterpolationRequest, Model, PAGE_BOUNDS, Phase, Request, SampleRequest,
};
use ddpm::sampler::Sampler;
use ddpm::solvers::{SamplerChoice, SamplerConfig, SolverKind};
use ddpm::unet::{UNet, UNetConfig};

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

struct Setup {
    model: UNet,
    diffusion: Diffusion,
    device: Device,
}

impl Setup {
    fn new(num_classes: Option<usize>) -> Self {
        let device = Device::flex();
        let unet = UNetConfig { dropout: 0.0, num_classes, ..tiny() };
        let diffusion = Diffusion::new(ScheduleConfig { steps: 40, ..Default::default() });
        Self { model: unet.init(&device), diffusion, device }
    }

    fn model(&self) -> Model<'_> {
        Model {
            diffusion: &self.diffusion,
            image: [1, 8, 8],
            num_classes: self.model.num_classes(),
            default_sampler: None,
            student: None,
            named_guidance: None,
            device: &self.device,
        }
    }

    fn eps<'s>(&'s self) -> impl Fn(Option<&ddpm::guidance::Guidance>) -> Guided<'s> + 's {
        |g| Guided { model: &self.model, guidance: g.cloned() }
    }
}

#[test]
fn the_pages_json_is_the_request() {
    let page = r#"{"kind": "interpolate", "mode": "noise", "seeds": [3, 4], "classes": [1, null], "t": 20,
        "frames": 5, "guidance": 2, "sampler": {"solver": "dpm++2m", "steps": 6}}"#;
    let request: Request = serde_json::from_str(page).unwrap();
    let want = InterpolationRequest {
        mode: InterpolationMode::Noise,
        seeds: [3, 4],
        classes: [Some(1), None],
        t: 20,
        frames: 5,
        lambda: None,
        guidance: Some(2.0),
        sampler: SamplerChoice { solver: Some(SolverKind::DpmSolver2M), steps: Some(6), ..Default::default() },
    };
    assert_eq!(request, Request::Interpolate(want));
    // Left out: the defaults; misspelt or unknown: refused (a page and a library out of step).
    let short: Request = serde_json::from_str(r#"{"kind": "sample", "seed": 1, "count": 2}"#).unwrap();
    assert_eq!(
        short,
        Request::Sample(SampleRequest { seed: 1, count: 2, class: None, guidance: None, sampler: Default::default() })
    );
    for bad in [
        r#"{"kind": "sample", "seed": 1, "count": 2, "colour": 3}"#,
        r#"{"kind": "sample", "seed": 1, "count": 2, "sampler": {"stepz": 3}}"#,
        r#"{"kind": "draw", "seed": 1}"#,
    ] {
        assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
    }
}

#[test]
fn requests_are_checked_once_naming_the_field() {
    let s = Setup::new(Some(3));
    let model = s.model();
    let field = |json: &str| {
        let request: Request = serde_json::from_str(json).unwrap();
        request.start(&model, &PAGE_BOUNDS).err().map(|e| e.field)
    };
    assert_eq!(field(r#"{"kind": "sample", "seed": 0, "count": 65}"#), Some("count"));
    assert_eq!(field(r#"{"kind": "sample", "seed": 0, "count": 1, "sampler": {"steps": 41}}"#), Some("steps"));
    assert_eq!(field(r#"{"kind": "sample", "seed": 0, "count": 1, "class": 3}"#), Some("class"));
    assert_eq!(field(r#"{"kind": "sample", "seed": 0, "count": 1, "guidance": 21}"#), Some("guidance"));
    let interpolation = |mode: &str, t: usize, frames: usize, solver: &str| {
        format!(
            r#"{{"kind": "interpolate", "mode": "{mode}", "seeds": [0, 1], "t": {t}, "frames": {frames},
            "sampler": {{"solver": "{solver}"}}}}"#
        )
    };
    assert_eq!(field(&interpolation("noise", 40, 3, "ddim")), Some("t"));
    assert_eq!(field(&interpolation("noise", 39, 33, "ddim")), Some("frames"));
    assert_eq!(field(&interpolation("noise", 39, 1, "ddim")), Some("frames"));
    assert_eq!(field(&interpolation("slerp", 0, 3, "ddpm")), Some("solver"));
    assert_eq!(field(&interpolation("noise", 0, 2, "ddpm")), None, "t = 0 and 2 frames are the library's minimums");
    let at = |lambda: f64, frames: usize| {
        format!(
            r#"{{"kind": "interpolate", "mode": "noise", "seeds": [0, 1], "t": 5, "frames": {frames}, "lambda": {lambda}}}"#
        )
    };
    assert_eq!(field(&at(1.5, 1)), Some("lambda"));
    assert_eq!(field(&at(-0.1, 1)), Some("lambda"));
    assert_eq!(field(&at(0.5, 3)), Some("frames"), "one frame at lambda, not a strip");
    assert_eq!(field(&at(0.5, 1)), None);
    let edit =
        |t: usize, bytes: usize| format!(r#"{{"kind": "edit", "rgba": {:?}, "seed": 1, "t": {t}}}"#, vec![0u8; bytes]);
    assert_eq!(field(&edit(40, 256)), Some("t"));
    assert_eq!(field(&edit(10, 255)), Some("rgba"));
    assert_eq!(field(&edit(0, 256)), None);
    // An unconditional model takes no guidance.
    let plain = Setup::new(None);
    let request: Request = serde_json::from_str(r#"{"kind": "sample", "seed": 0, "count": 1, "guidance": 2}"#).unwrap();
    assert_eq!(request.start(&plain.model(), &PAGE_BOUNDS).err().map(|e| e.field), Some("guidance"));
}

#[test]
fn an_interpolation_runs_whole_its_ends_then_its_frames() {
    let s = Setup::new(None);
    let config = SamplerConfig::ddim(8, 0.0);
    let request = InterpolationRequest {
        mode: InterpolationMode::Noise,
        seeds: [5, 9],
        classes: [None, None],
        t: 20,
        frames: 4,
        lambda: None,
        guidance: None,
        sampler: SamplerChoice { solver: Some(SolverKind::Ddim), steps: Some(8), eta: Some(0.0), spacing: None },
    };
    let bounds = Bounds { max_images: 8, max_frames: 8 };
    // Step by step: 8 steps of A and B (2 images), then 4 of the frames (K scaled by 21/40).
    let mut run = request.start(&s.model(), &bounds).unwrap();
    let mut seen = Vec::new();
    let mut last = None;
    while let Some(step) = run.step(s.eps()) {
        seen.push((step.phase, step.x.dims()[0], step.phase_done, step.done));
        last = Some(step.x);
    }
    let ends = seen.iter().filter(|p| p.0 == Phase::Ends).count();
    assert_eq!(ends, 8);
    assert_eq!(seen[7], (Phase::Ends, 2, true, false), "the ends' last step ends the phase, not the run");
    assert_eq!(seen.len(), 8 + 4);
    assert_eq!(*seen.last().unwrap(), (Phase::Frames, 4, true, true));
    // The same frames as the two phases run by hand: A and B, then labml's mix of them at t.
    let eps = s.eps();
    let ab = Sampler::new(&s.diffusion, &config, [1, 8, 8], &[5, 9], &s.device).run(&eps(None));
    let (a, b) = (ab.clone().narrow(0, 0, 1), ab.narrow(0, 1, 1));
    let lambdas = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
    let frames = Sampler::interpolate(&s.diffusion, &config, a, b, 20, &lambdas, request.noise_seed()).run(&eps(None));
    assert_eq!(values(last.unwrap()), values(frames.clone()));
    // And `finish`, as the CLI runs it.
    let finished = request.start(&s.model(), &bounds).unwrap().finish(s.eps());
    assert_eq!(values(finished), values(frames.clone()));
    // One frame at a slider's λ = 1/3 is the strip's frame 1 (a batch of one rounds its sums in
    // another order than a batch of four: equal to f32 rounding).
    let one = InterpolationRequest { frames: 1, lambda: Some(1.0 / 3.0), ..request.clone() };
    let one = values(one.start(&s.model(), &bounds).unwrap().finish(s.eps()));
    let frame1 = values(frames.narrow(0, 1, 1));
    let off = one.iter().zip(&frame1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(off < 1e-5, "the frame at λ = 1/3 is off the strip's frame 1 by {off}");
}

/// Steps of each phase a run takes, and its last images.
fn phases(mut run: ddpm::request::Run, s: &Setup) -> (usize, usize, Vec<f32>) {
    let (mut ends, mut frames, mut last) = (0, 0, None);
    while let Some(step) = run.step(s.eps()) {
        *if step.phase == Phase::Ends { &mut ends } else { &mut frames } += 1;
        last = Some(step.x);
    }
    (ends, frames, values(last.unwrap()))
}

#[test]
fn a_slider_s_next_frame_starts_from_the_ends_it_already_has() {
    let s = Setup::new(Some(3));
    let bounds = Bounds { max_images: 8, max_frames: 8 };
    let request = InterpolationRequest {
        mode: InterpolationMode::Noise,
        seeds: [5, 9],
        classes: [Some(0), Some(2)],
        t: 20,
        frames: 1,
        lambda: Some(0.25),
        guidance: Some(2.0),
        sampler: SamplerChoice { solver: Some(SolverKind::Ddim), steps: Some(8), eta: Some(0.0), spacing: None },
    };
    let mut run = request.start(&s.model(), &bounds).unwrap();
    while run.step(s.eps()).is_some_and(|step| step.phase == Phase::Ends) {}
    let ends = run.take_ends().expect("the ends, once drawn");
    assert!(run.take_ends().is_none(), "handed over once");
    // Another λ and t with the same ends: the frame's steps alone, the pixels of a fresh run.
    for next in [InterpolationRequest { lambda: Some(0.75), t: 30, ..request.clone() }, request.clone()] {
        let fresh = phases(next.start(&s.model(), &bounds).unwrap(), &s);
        let known = phases(next.start_with(&s.model(), &bounds, Some(&ends)).unwrap(), &s);
        assert!(fresh.0 == 8 && fresh.1 > 0, "{fresh:?}");
        assert_eq!((known.0, known.1), (0, fresh.1));
        assert_eq!(known.2, fresh.2);
    }
    // Other seeds, classes, guidance or sampler: other ends, drawn again.
    let others = [
        InterpolationRequest { seeds: [5, 10], ..request.clone() },
        InterpolationRequest { classes: [Some(0), Some(1)], ..request.clone() },
        InterpolationRequest { guidance: Some(1.5), ..request.clone() },
        InterpolationRequest { sampler: SamplerChoice { steps: Some(10), ..request.sampler }, ..request.clone() },
    ];
    for other in others {
        let (ends_steps, _, _) = phases(other.start_with(&s.model(), &bounds, Some(&ends)).unwrap(), &s);
        assert!(ends_steps > 0, "{other:?} reused ends that are not its own");
    }
}

#[test]
fn a_student_keeps_to_its_guidance_range_its_sampler_and_its_grid() {
    use ddpm::weights::Student;
    let s = Setup::new(Some(3));
    let own = SamplerConfig::ddim(4, 0.0);
    let student = Student { w_min: 0.0, w_max: 4.0, grid_only: true };
    let model = Model { default_sampler: Some(&own), student: Some(&student), ..s.model() };
    let field = |json: &str| {
        let request: Request = serde_json::from_str(json).unwrap();
        request.start(&model, &PAGE_BOUNDS).err().map(|e| (e.field, e.message))
    };
    let sample = |extra: &str| field(&format!(r#"{{"kind": "sample", "seed": 0, "count": 1{extra}}}"#));
    assert_eq!(sample(""), None);
    assert_eq!(sample(r#", "guidance": 4"#), None);
    assert_eq!(sample(r#", "guidance": 4.5"#).unwrap().0, "guidance");
    assert_eq!(sample(r#", "sampler": {"steps": 8}"#).unwrap().0, "steps");
    assert_eq!(sample(r#", "sampler": {"solver": "dpm++2m"}"#).unwrap().0, "solver");
    assert_eq!(sample(r#", "sampler": {"steps": 4, "eta": 0}"#), None, "its own sampler, spelt out");
    // T = 40 here: the 4-step grid is 39, 29, 19, 9; SDEdit from t = 23 runs from 19, as from 19.
    let edit = |t: usize| {
        let json = format!(r#"{{"kind": "edit", "rgba": {:?}, "seed": 1, "t": {t}}}"#, vec![128u8; 256]);
        let request: Request = serde_json::from_str(&json).unwrap();
        let mut run = request.start(&model, &PAGE_BOUNDS).unwrap();
        let mut steps = Vec::new();
        while let Some(step) = run.step(s.eps()) {
            steps.push(step.step.t);
        }
        steps
    };
    assert_eq!(edit(23), [19, 9]);
    assert_eq!(edit(23), edit(19));
    assert_eq!(edit(35), [39, 29, 19, 9]);
    // A stage-1 student knows every t: its edit starts where it is asked.
    let anywhere = Student { grid_only: false, ..student.clone() };
    let stage1 = Model { default_sampler: None, student: Some(&anywhere), ..s.model() };
    let json = format!(r#"{{"kind": "edit", "rgba": {:?}, "seed": 1, "t": 23}}"#, vec![128u8; 256]);
    let request: Request = serde_json::from_str(&json).unwrap();
    let mut run = request.start(&stage1, &PAGE_BOUNDS).unwrap();
    assert_eq!(run.step(s.eps()).unwrap().step.t, 23);
}

/// A file's own guidance is what a request without one draws with: the same pixels as asking
/// for it by value, not the library's default's; a student's range still bounds it.
#[test]
fn a_request_without_guidance_draws_at_the_file_s_own() {
    use ddpm::weights::Student;
    let s = Setup::new(Some(3));
    // Every weight drawn, so that the class embedding (zero at init) moves the prediction.
    let s = Setup { model: common::seeded(s.model, 1, ""), ..s };
    let draw = |model: &Model, guidance: &str| {
        let json = format!(r#"{{"kind": "sample", "seed": 3, "count": 2, "class": 1{guidance}}}"#);
        let request: Request = serde_json::from_str(&json).unwrap();
        values(request.start(model, &PAGE_BOUNDS).unwrap().finish(s.eps()))
    };
    let named = Model { named_guidance: Some(1.4), ..s.model() };
    assert_eq!(named.default_guidance(), 1.4);
    assert_eq!(draw(&named, ""), draw(&named, r#", "guidance": 1.4"#));
    assert_ne!(draw(&named, ""), draw(&s.model(), ""));
    assert_eq!(draw(&s.model(), ""), draw(&named, r#", "guidance": 1.15"#));
    let student = Student { w_min: 0.0, w_max: 1.2, grid_only: false };
    assert_eq!(Model { student: Some(&student), ..named }.default_guidance(), 1.2);
}
