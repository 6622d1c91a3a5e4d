//! Names for the build's two platform questions, so that code asks them by meaning.
fn main() {
    // Without this cargo would run the script again, and rebuild the crate, after any change
    // anywhere in the package (a docs edit).
    println!("cargo::rerun-if-changed=build.rs");
    cfg_aliases::cfg_aliases! {
        // burn's CubeCL backends (wgpu) are compiled in: always natively, in the browser's
        // WebGPU module only.
        cube: { any(not(target_arch = "wasm32"), feature = "webgpu") },
        // flex and our kernels run on a rayon pool: natively, and in the threaded browser module.
        pool: { any(not(target_arch = "wasm32"), feature = "threads") },
        // Intel's AMX tile units can be asked for (src/kernels/amx.rs): x86-64 Linux.
        amx: { all(target_arch = "x86_64", target_os = "linux") },
    }
}
