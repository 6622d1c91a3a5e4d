//! The UNet's structure and the weights file: shapes, parameter counts, labml's keys,
//! round trips and every kind of bad file.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use ddpm::diffusion::ScheduleConfig;
use ddpm::noise::Noise;
use ddpm::unet::{ClassMix, UNet, UNetConfig};
use ddpm::weights::{self, Header, Precision, WeightsError};
use safetensors::SafeTensors;

mod common;
use common::tiny;

/// The yardstick config of the performance issue (`../shared/ref/torch_bench.py`).
fn reference() -> UNetConfig {
    UNetConfig { image_size: 32, ..UNetConfig::default() }
}

fn header(unet: &UNetConfig) -> Header {
    Header::new(unet.clone(), ScheduleConfig::default())
}

fn values(x: Tensor<4>) -> Vec<f32> {
    x.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn parameter_count_matches_pytorch() {
    // labml's UNet at base 32, widths 32/64/128, attention at the lowest level, one block:
    // 2,226,817 parameters in PyTorch.
    let device = Device::flex();
    assert_eq!(reference().init(&device).num_params(), 2_226_817);
}

/// `UNet::flops` (what `ddpm bench` reports GFLOP/s with) equals what PyTorch's
/// `FlopCounterMode` counts for the yardstick's UNet on the same config and batch: the
/// convolutions, transposed convolutions, linear layers and attention products. Three configs:
/// the yardstick's, MNIST's 28×28 (odd sizes below: 14, 7) and a wider RGB one with attention at
/// 16×16 and two blocks per level (labml's multipliers 1,2,1,1 are 1,2,2,2 here).
#[test]
fn flops_match_pytorchs_flop_counter() {
    let device = Device::flex();
    let rgb = UNetConfig {
        image_channels: 3,
        image_size: 32,
        base_channels: 64,
        channel_mults: vec![1, 2, 2, 2],
        attn: vec![false, true, false, false],
        blocks: 2,
        ..UNetConfig::default()
    };
    for (cfg, batch, torch) in
        [(reference(), 1, 518_381_568.0), (UNetConfig::default(), 2, 791_256_576.0), (rgb, 2, 5_264_310_272.0)]
    {
        assert_eq!(cfg.init(&device).flops(batch, cfg.image_size), torch, "{cfg:?}");
    }
}

#[test]
fn output_has_the_input_shape() {
    let device = Device::flex();
    for (cfg, b) in [
        (tiny(), 3),
        (UNetConfig { image_channels: 3, blocks: 2, ..tiny() }, 2),
        (UNetConfig { image_size: 16, channel_mults: vec![1, 2, 2], attn: vec![false, true, true], ..tiny() }, 1),
        (UNetConfig::default(), 2),
    ] {
        cfg.validate().unwrap();
        let model = cfg.init(&device);
        let shape = [b, cfg.image_channels, cfg.image_size, cfg.image_size];
        let x = Noise::new(0).gaussian(shape, &device);
        let t = Tensor::<1>::from_floats(vec![5.0; b].as_slice(), &device);
        assert_eq!(model.forward(x, t).dims(), shape, "{cfg:?}");
    }
}

#[test]
fn dropout_acts_in_training_only_and_follows_its_seed() {
    let device = Device::flex();
    let model = tiny().init(&device); // dropout 0.1
    let x = Noise::new(0).gaussian([2, 1, 8, 8], &device);
    let t = Tensor::<1>::from_floats([5.0, 700.0].as_slice(), &device);
    let eval = values(model.forward(x.clone(), t.clone()));
    let train = |seed| values(model.forward_train(x.clone(), t.clone(), None, None, &mut Noise::new(seed)));
    assert_ne!(train(1), eval, "masks change the training output");
    assert_eq!(train(1), train(1), "the same masks from the same seed");
    assert_ne!(train(1), train(2));
    let no_dropout = UNetConfig { dropout: 0.0, ..tiny() }.init(&device).load_record(model.clone().into_record());
    assert_eq!(values(no_dropout.forward_train(x.clone(), t.clone(), None, None, &mut Noise::new(1))), eval);
}

#[test]
fn a_batch_split_across_threads_gives_the_same_noise_prediction() {
    use ddpm::sampler::EpsTheta;
    use ddpm::threads::{Sharded, shard_ranges};
    assert_eq!(shard_ranges(7, 3), [0..3, 3..5, 5..7]);
    assert_eq!(shard_ranges(2, 2), [0..1, 1..2]);
    let device = Device::flex();
    let model = tiny().init(&device);
    let x = Noise::new(0).gaussian([5, 1, 8, 8], &device);
    let t = Tensor::<1>::from_floats([0.0, 10.0, 300.0, 600.0, 999.0].as_slice(), &device);
    let whole = values(model.forward(x.clone(), t.clone()));
    for shards in [1, 2, 3, 8] {
        let split = values(Sharded::new(&model, shards).eps(x.clone(), t.clone()));
        assert_eq!(split.len(), whole.len());
        let diff = whole.iter().zip(&split).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{shards} shards differ by {diff}");
    }
}

#[test]
fn more_blocks_and_width_mean_more_parameters() {
    let device = Device::flex();
    let base = tiny().init(&device).num_params();
    let deeper = UNetConfig { blocks: 2, ..tiny() }.init(&device).num_params();
    let wider = UNetConfig { base_channels: 16, ..tiny() }.init(&device).num_params();
    assert!(deeper > base && wider > base);
}

#[test]
fn invalid_configs_name_the_problem() {
    let msg = |c: UNetConfig| c.validate().unwrap_err();
    assert!(msg(UNetConfig { attn: vec![true], ..tiny() }).contains("same length"));
    assert!(msg(UNetConfig { image_size: 7, ..tiny() }).contains("multiple of 2"));
    assert!(msg(UNetConfig { base_channels: 6, ..tiny() }).contains("divisible"));
    assert!(msg(UNetConfig { channel_mults: vec![], attn: vec![], ..tiny() }).contains("at least one level"));
}

#[test]
fn exported_keys_are_labmls() {
    let device = Device::flex();
    let model = reference().init(&device);
    let bytes = weights::to_safetensors(&model, &header(&reference()), Precision::F32).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let shape = |k: &str| file.tensor(k).unwrap_or_else(|_| panic!("missing {k}")).shape().to_vec();
    // PyTorch layouts: Linear is [out, in], convs [out, in, k, k], transposed convs [in, out, k, k].
    assert_eq!(shape("image_proj.weight"), [32, 1, 3, 3]);
    assert_eq!(shape("time_emb.lin1.weight"), [128, 32]);
    assert_eq!(shape("time_emb.lin2.bias"), [128]);
    assert_eq!(shape("down.0.res.conv1.weight"), [32, 32, 3, 3]);
    assert_eq!(shape("down.0.res.norm1.weight"), [32]);
    assert_eq!(shape("down.0.res.time_emb.weight"), [32, 128]);
    assert_eq!(shape("down.1.conv.weight"), [32, 32, 3, 3]);
    assert_eq!(shape("down.2.res.shortcut.weight"), [64, 32, 1, 1]);
    assert_eq!(shape("down.4.attn.projection.weight"), [384, 128]);
    assert_eq!(shape("down.4.attn.norm.bias"), [128]);
    assert_eq!(shape("middle.attn.output.weight"), [128, 128]);
    assert_eq!(shape("middle.res2.conv2.weight"), [128, 128, 3, 3]);
    assert_eq!(shape("up.0.res.conv1.weight"), [128, 256, 3, 3]);
    assert_eq!(shape("up.1.res.conv1.weight"), [64, 192, 3, 3]);
    assert_eq!(shape("up.2.conv.weight"), [64, 64, 4, 4]);
    assert_eq!(shape("norm.weight"), [32]);
    assert_eq!(shape("final.weight"), [1, 32, 3, 3]);
    assert!(!file.names().iter().any(|k| k.contains("gamma") || k.contains("final_") || k.contains("Block")));
    let total: usize = file.tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>()).sum();
    assert_eq!(total, 2_226_817);
}

#[test]
fn an_export_is_reproducible_byte_for_byte() {
    // safetensors writes its metadata in a HashMap's order, new with every map: twelve entries
    // come out in the same order twice by chance once in 12! runs.
    let device = Device::flex();
    let cfg = tiny();
    let model = cfg.init(&device);
    let info = (0..8).map(|i| (format!("entry{i}"), format!("value {i}"))).collect();
    let h = Header { info, ..header(&cfg) };
    let first = weights::to_safetensors(&model, &h, Precision::F16).unwrap();
    let second = weights::to_safetensors(&model, &h, Precision::F16).unwrap();
    assert!(first == second, "two exports of one model differ");
    assert_eq!(weights::load(&first, &device).unwrap().1, h);
}

#[test]
fn f32_round_trip_is_bit_exact() {
    let device = Device::flex();
    let cfg = tiny();
    let model = cfg.init(&device);
    let bytes = weights::to_safetensors(&model, &header(&cfg), Precision::F32).unwrap();
    let (loaded, h) = weights::load(&bytes, &device).unwrap();
    assert_eq!(h.unet, cfg);
    let again = weights::to_safetensors(&loaded, &h, Precision::F32).unwrap();
    let (a, b) = (SafeTensors::deserialize(&bytes).unwrap(), SafeTensors::deserialize(&again).unwrap());
    assert_eq!(a.len(), b.len());
    for (name, view) in a.tensors() {
        assert_eq!(view.data(), b.tensor(&name).unwrap().data(), "{name} changed in the round trip");
    }
    let x = Noise::new(1).gaussian([2, 1, 8, 8], &device);
    let t = Tensor::<1>::from_floats([3.0, 900.0], &device);
    // Same weights; the loaded Linear weights are transposed views, so summation order (and the
    // last bit) may differ, and on AMX CPUs the convolutions' bf16x3 products carry that on.
    for (a, b) in values(model.forward(x.clone(), t.clone())).iter().zip(values(loaded.forward(x, t))) {
        assert!((a - b).abs() < common::kernel_tolerance(), "{a} vs {b}");
    }
}

#[test]
fn f16_round_trip_is_within_half_precision() {
    let device = Device::flex();
    let cfg = tiny();
    let model = cfg.init(&device);
    let f32_bytes = weights::to_safetensors(&model, &header(&cfg), Precision::F32).unwrap();
    let f16_bytes = weights::to_safetensors(&model, &header(&cfg), Precision::F16).unwrap();
    assert!(f16_bytes.len() < f32_bytes.len() * 6 / 10);
    let (loaded, _) = weights::load(&f16_bytes, &device).unwrap();
    let back = weights::to_safetensors(&loaded, &header(&cfg), Precision::F32).unwrap();
    let (a, b) = (SafeTensors::deserialize(&f32_bytes).unwrap(), SafeTensors::deserialize(&back).unwrap());
    for (name, view) in a.tensors() {
        let other = b.tensor(&name).unwrap();
        for (x, y) in view.data().chunks_exact(4).zip(other.data().chunks_exact(4)) {
            let (x, y) = (f32::from_le_bytes(x.try_into().unwrap()), f32::from_le_bytes(y.try_into().unwrap()));
            // f16 has an 11-bit significand: relative error ≤ 2^-11, plus subnormal rounding.
            assert!((x - y).abs() <= x.abs() * 4.9e-4 + 6e-8, "{name}: {x} vs {y}");
        }
    }
}

#[test]
fn bad_weights_files_are_errors_not_panics() {
    let device = Device::flex();
    let cfg = tiny();
    let model = cfg.init(&device);
    let good = weights::to_safetensors(&model, &header(&cfg), Precision::F16).unwrap();
    let err = |bytes: &[u8]| weights::load(bytes, &device).err().expect("must fail");

    // Random bytes, empty, truncated.
    let random: Vec<u8> = Noise::new(5).gaussian_vec(1000).iter().map(|v| (v * 100.0) as u8).collect();
    assert!(matches!(err(&random), WeightsError::NotSafetensors(_)));
    assert!(matches!(err(&[]), WeightsError::NotSafetensors(_)));
    assert!(matches!(err(&good[..good.len() - 10]), WeightsError::NotSafetensors(_)));
    assert!(matches!(err(&good[..good.len() / 2]), WeightsError::NotSafetensors(_)));

    // A safetensors file that is not ours.
    let plain = safetensors::serialize(Vec::<(&str, safetensors::tensor::TensorView)>::new(), None).unwrap();
    assert!(matches!(err(&plain), WeightsError::Format(_)));

    // Another model's config: every tensor's shape is checked against the file's own config,
    // and a file whose config disagrees with its tensors fails by name.
    let other = UNetConfig { base_channels: 16, ..cfg.clone() };
    let lying = weights::to_safetensors(&model, &header(&other), Precision::F16).unwrap();
    let e = err(&lying);
    assert!(matches!(e, WeightsError::Shape { .. }), "{e}");
    assert!(e.to_string().contains("image_proj.weight"), "{e}");

    // A config that cannot build a model.
    let broken =
        weights::to_safetensors(&model, &header(&UNetConfig { attn: vec![true], ..cfg.clone() }), Precision::F16)
            .unwrap();
    assert!(matches!(err(&broken), WeightsError::Config(_)));

    // A future format version (same length, so the file stays well-formed).
    let mut future = good.clone();
    let version = format!("\"format_version\":\"{}", weights::FORMAT_VERSION);
    let at = future.windows(19).position(|w| w == version.as_bytes()).expect("version in header");
    future[at + 18] = b'9';
    assert!(matches!(err(&future), WeightsError::Version { .. }), "{}", err(&future));
    let reads = format!("this build reads versions 1 to {}", weights::FORMAT_VERSION);
    assert!(err(&future).to_string().contains(&reads), "{}", err(&future));
}

#[test]
fn a_file_names_its_default_sampler_from_format_version_2() {
    use ddpm::solvers::{SamplerConfig, SolverKind, Spacing};
    let device = Device::flex();
    let cfg = tiny();
    let model = cfg.init(&device);
    let own = SamplerConfig { solver: SolverKind::DpmSolver2M, steps: 4, eta: 0.0, spacing: Spacing::Trailing };
    let with = |sampler: Option<SamplerConfig>| Header { sampler, ..header(&cfg) };
    let bytes = weights::to_safetensors(&model, &with(Some(own)), Precision::F16).unwrap();
    assert_eq!(weights::load(&bytes, &device).unwrap().1.sampler, Some(own));
    let plain = weights::to_safetensors(&model, &with(None), Precision::F16).unwrap();
    assert_eq!(weights::read_header(&plain).unwrap().sampler, None);
    // Refused: a sampler the model cannot run (steps > T), a field no version knows, and a
    // version-1 file (written before the field existed) that carries one.
    let edit = common::set_metadata;
    let config = |e: WeightsError| match e {
        WeightsError::Config(m) => m,
        other => panic!("{other}"),
    };
    let long = r#"{"solver":"ddim","steps":1001,"eta":0.0,"spacing":"trailing"}"#;
    assert!(config(weights::read_header(&edit(&bytes, "sampler", long)).unwrap_err()).contains("1..=1000"));
    let unknown = r#"{"solver":"ddim","steps":10,"eta":0.0,"spacing":"trailing","order":3}"#;
    assert!(
        config(weights::read_header(&edit(&bytes, "sampler", unknown)).unwrap_err()).contains("unknown field `order`")
    );
    let old = edit(&bytes, "format_version", "1");
    assert!(config(weights::read_header(&old).unwrap_err()).contains("not part of format version 1"));
    // A version-1 file without it (every file shipped before) still loads.
    assert_eq!(weights::read_header(&edit(&plain, "format_version", "1")).unwrap().sampler, None);
}

/// Format version 3: a distilled student's guidance input. Its file loads with the input and
/// computes what the model computed; the same config in a version-2 file (written before the
/// field existed) is refused, naming the field, and a conditional model's version-2 file loads.
#[test]
fn a_student_with_a_guidance_input_needs_format_version_3() {
    let device = Device::flex();
    let cfg = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() };
    let student = cfg.init(&device).with_guidance_input();
    let student_cfg = UNetConfig { guidance_input: true, ..cfg.clone() };
    let bytes = weights::to_safetensors(&student, &header(&student_cfg), Precision::F32).unwrap();
    let (loaded, _) = weights::load(&bytes, &device).unwrap();
    assert!(loaded.takes_guidance());
    let (x, t) = (Tensor::<4>::ones([1, 1, 8, 8], &device).mul_scalar(0.3), Tensor::<1>::from_floats([500.0], &device));
    let mixes = [ClassMix::from(1)];
    let eps = |m: &UNet, w: f32| m.forward_condition(x.clone(), t.clone(), Some(&mixes), Some(&[w])).into_data();
    // Equal weights, but not one memory layout: on the AMX path (bf16x3 tile products, within 2⁻¹²
    // of the largest value) the sums round differently, by up to about 5e-6 here.
    eps(&loaded, 2.5).assert_approx_eq::<f32>(&eps(&student, 2.5), burn::tensor::Tolerance::absolute(1e-4));
    let old = common::set_metadata(&bytes, "format_version", "2");
    let e = weights::read_header(&old).unwrap_err().to_string();
    assert!(e.contains("`guidance_input` is not part of format version 2"), "{e}");
    let plain = weights::to_safetensors(&cfg.init(&device), &header(&cfg), Precision::F32).unwrap();
    assert!(weights::read_header(&common::set_metadata(&plain, "format_version", "2")).is_ok());
    // A guidance input needs classes.
    assert!(UNetConfig { guidance_input: true, ..tiny() }.validate().unwrap_err().contains("guidance_input"));
}

#[test]
fn what_a_student_learnt_needs_format_version_5_and_is_checked() {
    use ddpm::weights::Student;
    let device = Device::flex();
    let cfg = UNetConfig { num_classes: Some(3), guidance_input: true, dropout: 0.0, ..tiny() };
    let model = cfg.init(&device);
    let student = Student { w_min: 0.0, w_max: 4.0, grid_only: true };
    let h = Header {
        sampler: Some(ddpm::solvers::SamplerConfig::ddim(4, 0.0)),
        student: Some(student.clone()),
        ..header(&cfg)
    };
    let bytes = weights::to_safetensors(&model, &h, Precision::F16).unwrap();
    assert_eq!(weights::read_header(&bytes).unwrap(), h);
    let e = weights::read_header(&common::set_metadata(&bytes, "format_version", "4")).unwrap_err().to_string();
    assert!(e.contains("`student` is not part of format version 4"), "{e}");
    let lying = |edit: &dyn Fn(&mut Header)| {
        let mut bad = h.clone();
        edit(&mut bad);
        weights::read_header(&weights::to_safetensors(&model, &bad, Precision::F16).unwrap()).unwrap_err().to_string()
    };
    assert!(lying(&|b| b.sampler = None).contains("names its sampler"));
    assert!(lying(&|b| b.student = Some(Student { w_max: 21.0, ..student.clone() })).contains("w range 0..21"));
    let e = weights::read_header(&common::set_metadata(&bytes, "student", r#"{"w_min":0,"w_max":4,"grid":1}"#));
    assert!(e.unwrap_err().to_string().contains("unknown field `grid`"));
}

#[test]
fn a_file_names_its_own_guidance_from_format_version_6() {
    let device = Device::flex();
    let cfg = UNetConfig { num_classes: Some(3), ..tiny() };
    let model = cfg.init(&device);
    let h = Header { guidance: Some(1.3), ..header(&cfg) };
    let bytes = weights::to_safetensors(&model, &h, Precision::F16).unwrap();
    assert_eq!(weights::read_header(&bytes).unwrap(), h);
    let refused = |bytes: &[u8]| weights::read_header(bytes).unwrap_err().to_string();
    let e = refused(&common::set_metadata(&bytes, "format_version", "5"));
    assert!(e.contains("`guidance` is not part of format version 5"), "{e}");
    assert!(refused(&common::set_metadata(&bytes, "guidance", "strong")).contains("\"strong\" is not a number"));
    assert!(refused(&common::set_metadata(&bytes, "guidance", "21")).contains("21 is outside the model's range 0..20"));
    let plain = weights::to_safetensors(&tiny().init(&device), &header(&tiny()), Precision::F16).unwrap();
    let e = refused(&common::set_metadata(&plain, "guidance", "1.3"));
    assert!(e.contains("an unconditional model has no guidance to name"), "{e}");
}

#[test]
fn missing_and_unexpected_tensors_are_named() {
    let device = Device::flex();
    let cfg = tiny();
    let small = UNetConfig { blocks: 1, ..cfg.clone() };
    let big = UNetConfig { blocks: 2, ..cfg.clone() };
    // Tensors of a 2-block model labelled as 1-block: extra keys, or shapes that disagree.
    let bytes = weights::to_safetensors(&big.init(&device), &header(&small), Precision::F32).unwrap();
    let named = |e: WeightsError| {
        assert!(
            matches!(e, WeightsError::Shape { .. } | WeightsError::Missing(_) | WeightsError::Unexpected(_)),
            "{e}"
        );
        assert!(e.to_string().contains('`'), "names the tensor: {e}");
    };
    named(weights::load(&bytes, &device).err().unwrap());
    // Tensors of a 1-block model labelled as 2-block.
    let bytes = weights::to_safetensors(&small.init(&device), &header(&big), Precision::F32).unwrap();
    named(weights::load(&bytes, &device).err().unwrap());
}

/// labml's structure from shapes alone (`ddpm import`): our own model's keys and shapes give
/// back its config, with labml's compounding multipliers multiplied out (labml's `[1, 2, 2, 4]`
/// is widths ×1, ×2, ×4, ×16) and its attention unnormalised; and the way back
/// (`labml_unet_args`) divides them again, refusing what labml's UNet cannot compute.
#[test]
fn labml_configs_come_from_shapes_and_go_back() {
    use ddpm::labml::{LabmlFlags, config_from_shapes, labml_unet_args};
    use std::collections::BTreeMap;
    let cfg = UNetConfig {
        image_channels: 3,
        image_size: 16,
        base_channels: 32,
        channel_mults: vec![1, 2, 4, 16],
        attn: vec![false, false, true, true],
        blocks: 2,
        attn_norm: false,
        ..UNetConfig::default()
    };
    let bytes = weights::to_safetensors(&cfg.init(&Device::flex()), &header(&cfg), Precision::F16).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        file.tensors().into_iter().map(|(k, v)| (k, v.shape().to_vec())).collect();
    let flags = LabmlFlags { image_size: 16, ..LabmlFlags::default() };
    let (unet, schedule) = config_from_shapes(&shapes, &flags).unwrap();
    assert_eq!(unet, UNetConfig { dropout: unet.dropout, ..cfg.clone() });
    assert_eq!([schedule.data_range.lo, schedule.data_range.hi], [0.0, 1.0], "labml's experiment's range");
    let args = labml_unet_args(&unet).unwrap();
    assert_eq!((args.n_channels, args.ch_mults.clone(), args.n_blocks), (32, vec![1, 2, 2, 4], 2));

    // Shapes that do not make a labml UNet, each said.
    let without = |key: &str| {
        let mut s = shapes.clone();
        s.retain(|k, _| !k.starts_with(key));
        config_from_shapes(&s, &flags).unwrap_err()
    };
    assert!(without("image_proj").contains("`image_proj.weight` is missing"));
    assert!(without("up.14.").contains("has 15 entries"), "{}", without("up.14."));
    assert!(
        without("down.4.").contains("is past a gap in the down path (`down.4` is missing)"),
        "{}",
        without("down.4.")
    );
    let mut one_block = shapes.clone();
    one_block.retain(|k, _| !k.starts_with("down.4."));
    let renamed: BTreeMap<String, Vec<usize>> = one_block
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("down.") {
            Some(rest) if rest.split('.').next().unwrap().parse::<usize>().unwrap() > 4 => {
                let (i, tail) = rest.split_once('.').unwrap();
                (format!("down.{}.{tail}", i.parse::<usize>().unwrap() - 1), v)
            }
            _ => (k, v),
        })
        .collect();
    let e = config_from_shapes(&renamed, &flags).unwrap_err();
    assert!(e.contains("level 1 has 1 residual blocks and level 0 has 2"), "{e}");
    let odd = LabmlFlags { image_size: 12, ..flags.clone() };
    assert!(config_from_shapes(&shapes, &odd).unwrap_err().contains("image_size 12"));

    // Back to labml: refused where labml's UNet would compute something else.
    let refused = |u: UNetConfig| labml_unet_args(&u).unwrap_err();
    assert!(refused(UNetConfig { attn_norm: true, ..cfg.clone() }).contains("GroupNorm"));
    assert!(refused(UNetConfig { channel_mults: vec![1, 2, 3, 16], ..cfg.clone() }).contains("whole multiple"));
    assert!(refused(UNetConfig { num_classes: Some(10), ..cfg.clone() }).contains("class"));
    assert!(refused(UNetConfig { groups: 16, ..cfg.clone() }).contains("32"));
}

/// Format version 4: labml's attention (unnormalised, softmax over the queries) and data range
/// round-trip through a file and change what the model computes; the same fields in a
/// version-3 file are refused by name, and a [0, 1] model's pictures map 0 and 1 to black and white.
#[test]
fn labml_fields_need_format_version_4() {
    use ddpm::images::DataRange;
    use ddpm::unet::SoftmaxAxis;
    let device = Device::flex();
    let plain = tiny();
    let model = plain.init(&device);
    let x =
        Tensor::<4>::from_data(burn::tensor::TensorData::new(Noise::new(3).gaussian_vec(64), [1, 1, 8, 8]), &device);
    let t = Tensor::<1>::from_floats([400.0], &device);
    let eps = |m: &UNet| values(m.forward(x.clone(), t.clone()));
    let base = eps(&model);
    let labml = [
        UNetConfig { attn_norm: false, ..plain.clone() },
        UNetConfig { attn_softmax: SoftmaxAxis::Queries, ..plain.clone() },
    ];
    for cfg in labml {
        let schedule = ScheduleConfig { data_range: DataRange { lo: 0.0, hi: 1.0 }, ..ScheduleConfig::default() };
        let h = Header { schedule, ..header(&cfg) };
        let bytes = weights::to_safetensors(&model, &h, Precision::F32).unwrap();
        let (loaded, read) = weights::load(&bytes, &device).unwrap();
        assert_eq!(read, h);
        let other = eps(&loaded);
        let moved = base.iter().zip(&other).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(moved > 1e-3, "{cfg:?} computes what the paper's attention computes");
        let old = weights::read_header(&common::set_metadata(&bytes, "format_version", "3")).unwrap_err().to_string();
        assert!(old.contains("is not part of format version 3"), "{old}");
    }
    let unit = DataRange { lo: 0.0, hi: 1.0 };
    assert_eq!([unit.to_u8(0.0), unit.to_u8(0.5), unit.to_u8(1.0), unit.to_u8(-3.0)], [0, 128, 255, 0]);
    assert_eq!(unit.from_u8(255), 1.0);
    for p in 0..=255u8 {
        assert_eq!(DataRange::PAPER.to_u8(DataRange::PAPER.from_u8(p)), p);
        assert_eq!(unit.to_u8(unit.from_u8(p)), p);
    }
}

/// The page checks a download from its first bytes: the header alone, as read from the whole file,
/// once its last byte has arrived and not before; a bad header is refused from the prefix.
#[test]
fn a_header_is_read_from_the_first_bytes_of_a_download() {
    let cfg = UNetConfig { num_classes: Some(3), dropout: 0.0, ..tiny() };
    let bytes = weights::to_safetensors(&cfg.init(&Device::flex()), &header(&cfg), Precision::F16).unwrap();
    let end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [0, 7, 8, end - 1] {
        assert!(weights::read_header_prefix(&bytes[..cut]).unwrap().is_none(), "{cut} bytes");
    }
    let whole = weights::read_header(&bytes).unwrap();
    let from_prefix = weights::read_header_prefix(&bytes[..end]).unwrap().unwrap();
    assert_eq!((from_prefix.unet, from_prefix.schedule, from_prefix.info), (whole.unet, whole.schedule, whole.info));
    let newer = common::set_metadata(&bytes, "format_version", "99");
    let newer_end = 8 + u64::from_le_bytes(newer[..8].try_into().unwrap()) as usize;
    let e = weights::read_header_prefix(&newer[..newer_end]).unwrap_err().to_string();
    assert!(e.contains("99"), "{e}");
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(weights::read_header_prefix(&huge).is_err());
    assert!(weights::read_header_prefix(b"\x02\0\0\0\0\0\0\0{]").is_err());
}
