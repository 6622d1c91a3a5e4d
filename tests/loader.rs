//! Loading a weights file is a trust boundary: a file whose header lies about the model, a
//! truncated or corrupted file, or one with any field set to an extreme value gets one error
//! naming the field, never a panic or an allocation the file's own size does not justify.

use burn::tensor::Device;
use ddpm::diffusion::Diffusion;
use ddpm::weights;
use proptest::prelude::*;
use serde_json::{Value, json};

mod common;
use common::{edit_config, tiny_weights};

fn load_error(bytes: &[u8]) -> String {
    match weights::load(bytes, &Device::flex()) {
        Ok(_) => panic!("the edited file loaded"),
        Err(e) => e.to_string(),
    }
}

/// Each of these aborted `ddpm sample` in the allocator (exit 134) before the bounds: the
/// shipped tensors, with one config number made huge.
#[test]
fn lying_headers_on_the_shipped_tensors_name_the_field() {
    let shipped = std::fs::read("weights/mnist.safetensors").expect("the shipped weights");
    let cases: [(&str, &str, Value, &str); 10] = [
        ("schedule", "steps", json!(1_000_000_000_000u64), "steps"),
        ("unet", "blocks", json!(1_000_000_000u64), "blocks"),
        ("unet", "image_size", json!(1_000_000_000u64), "image_size"),
        ("unet", "image_size", json!(1u64 << 40), "image_size"),
        ("unet", "image_channels", json!(2), "image_channels"),
        ("unet", "base_channels", json!(1u64 << 33), "base_channels"),
        ("unet", "channel_mults", json!([1u64 << 62, 2, 4]), "channel_mults[0]"),
        ("unet", "channel_mults", json!(vec![1; 40]), "levels"),
        ("unet", "groups", json!(1_000_000), "groups"),
        ("unet", "image_size", json!(4096), "image_size"),
    ];
    for (entry, field, value, needle) in cases {
        let edited = edit_config(&shipped, entry, |c| c[field] = value.clone());
        let e = load_error(&edited);
        assert!(e.contains(needle), "{entry}.{field} = {value}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // Within bounds but not this file's model: the first tensor that differs is named.
    let e = load_error(&edit_config(&shipped, "unet", |c| c["base_channels"] = json!(32)));
    assert!(e.contains("has shape"), "{e}");
}

#[test]
fn every_truncation_and_size_is_refused() {
    let bytes = tiny_weights();
    assert!(weights::load(&bytes, &Device::flex()).is_ok());
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        assert!(weights::load(&bytes[..len], &Device::flex()).is_err(), "a {len}-byte prefix loaded");
    }
    assert!(weights::check_size(ddpm::limits::MAX_WEIGHTS_BYTES).is_ok());
    let e = weights::check_size(ddpm::limits::MAX_WEIGHTS_BYTES + 1).unwrap_err().to_string();
    assert!(e.contains("above the largest supported weights file"), "{e}");
}

/// Values a lying header would use: zero, one, powers of two around the bounds and the integer
/// widths, negatives, fractions, and things that are not numbers at all.
fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(3)),
        (1u32..64).prop_map(|b| json!(1u64 << b)),
        (1u32..64).prop_map(|b| json!((1u64 << b) - 1)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(i64::MIN)),
        Just(json!(0.5)),
        Just(json!(1e308)),
        Just(json!(-1e-300)),
        Just(json!("12")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        prop::collection::vec(0u64..70_000, 0..12).prop_map(|v| json!(v)),
        prop::collection::vec(any::<bool>(), 0..12).prop_map(|v| json!(v)),
    ]
}

const FIELDS: [(&str, &str); 12] = [
    ("unet", "image_channels"),
    ("unet", "image_size"),
    ("unet", "base_channels"),
    ("unet", "channel_mults"),
    ("unet", "attn"),
    ("unet", "blocks"),
    ("unet", "groups"),
    ("unet", "dropout"),
    ("schedule", "steps"),
    ("schedule", "beta_start"),
    ("schedule", "beta_end"),
    ("unet", "no_such_field"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// One to three fields set to extreme values: an error, or (when the values happen to fit
    /// the file's tensors) a model that runs a step.
    #[test]
    fn any_extreme_header_is_an_error_or_a_working_model(
        edits in prop::collection::vec((0..FIELDS.len(), extreme()), 1..4),
    ) {
        let mut bytes = tiny_weights();
        for (field, value) in &edits {
            let (entry, name) = FIELDS[*field];
            bytes = edit_config(&bytes, entry, |c| c[name] = value.clone());
        }
        match weights::load(&bytes, &Device::flex()) {
            Err(e) => prop_assert!(!e.to_string().is_empty()),
            Ok((model, header)) => {
                prop_assert!(header.unet.validate().is_ok() && header.schedule.validate().is_ok());
                let diffusion = Diffusion::new(header.schedule.clone());
                let (c, size) = (header.unet.image_channels, header.unet.image_size);
                let x = ddpm::noise::Noise::new(0).gaussian([1, c, size, size], &Device::flex());
                let t = diffusion.t_tensor(diffusion.steps() - 1, 1, &Device::flex());
                let eps = model.forward(x, t).into_data().try_into_vec::<f32>().unwrap();
                prop_assert!(eps.iter().all(|v| v.is_finite()));
            }
        }
    }

    /// Any byte of the file overwritten: parsed or refused, never a panic.
    #[test]
    fn any_corrupted_byte_is_an_error_or_a_model(at in 0usize..4096, byte in any::<u8>()) {
        let mut bytes = tiny_weights();
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = weights::load(&bytes, &Device::flex());
    }
}
