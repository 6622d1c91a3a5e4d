//! The weights loader on arbitrary bytes: the safetensors parse, the metadata, the config
//! bounds, the shape checks and the model build, exactly as `ddpm sample` and the page run them.
//! Any panic (debug assertions and overflow checks are on in fuzz builds) is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ddpm::weights::load(data, &burn::tensor::Device::flex());
});
