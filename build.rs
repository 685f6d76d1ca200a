//! Generates the SPANK bindings from our own header and fixes the Slurm version the
//! plugin is built for. Slurm loads a SPANK plugin only when its major.minor equals
//! the running Slurm's, so the version is never guessed:
//! 1. FERRY_SLURM_VERSION (e.g. `22.05` or `0x160508`), if set;
//! 2. else SLURM_VERSION_NUMBER from `$FERRY_SLURM_INCLUDE/slurm/slurm_version.h`
//!    (default include folder /usr/include);
//! 3. else the build stops and says how to set it.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=slurm-headers/spank.h");
    println!("cargo:rerun-if-changed=spank/exports.map");
    let version = emit_slurm_version();

    let bindings = bindgen::Builder::default()
        .header("slurm-headers/spank.h")
        .clang_arg(format!("-DSLURM_VERSION_NUMBER={version:#x}"))
        .allowlist_function("spank_.*|slurm_(error|info|verbose|debug)")
        .allowlist_type("spank_.*")
        .allowlist_var("ESPANK_.*|S_.*")
        .rustified_enum("spank_context")
        .constified_enum_module("spank_item|spank_err")
        .layout_tests(true)
        .generate()
        .expect("bindgen could not read slurm-headers/spank.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("spank_bindings.rs");
    bindings
        .write_to_file(out)
        .expect("writing the SPANK bindings");

    let map = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("spank/exports.map");
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        map.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,relro,-z,now");
}

include!("slurm-headers/version.rs");
