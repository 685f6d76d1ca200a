//! The CLI states the Slurm version the plugin of the same build is for (`ferry
//! version`, `ferry doctor`): it is decided exactly as for the plugin (see ../build.rs).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=../slurm-headers/version.rs");
    emit_slurm_version();
}

include!("../slurm-headers/version.rs");
