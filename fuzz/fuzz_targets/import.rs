//! `ddpm import` on arbitrary bytes: burn-store's PyTorch reader (ZIP, legacy and TAR
//! containers, the pickle), the dtype and size bounds, the config from shapes, the loader. The
//! reader opens files, so each input is written to this process's own temporary file first. Any
//! panic is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ddpm-fuzz-import-{}.pth", std::process::id()));
    std::fs::write(&path, data).expect("the temporary file is writable");
    let flags = ddpm::labml::LabmlFlags { image_size: 8, ..Default::default() };
    let _ = ddpm::import::import_pth(&path, None, &flags, &burn::tensor::Device::flex());
});
