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
    println!("cargo:rerun-if-env-changed=FERRY_SLURM_VERSION");
    println!("cargo:rerun-if-env-changed=FERRY_SLURM_INCLUDE");

    let version = slurm_version().unwrap_or_else(|why| {
        panic!(
            "cannot tell which Slurm to build for: {why}. Install Slurm's headers (Debian: libslurm-dev, EL: slurm-devel), \
             set FERRY_SLURM_INCLUDE to the folder holding slurm/slurm_version.h, or set FERRY_SLURM_VERSION=MAJOR.MINOR (e.g. 22.05)"
        )
    });
    println!("cargo:rustc-env=FERRY_SLURM_VERSION_NUMBER={version}");
    println!(
        "cargo:rustc-env=FERRY_SLURM_VERSION={}.{:02}",
        version >> 16,
        (version >> 8) & 0xff
    );

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

fn slurm_version() -> Result<u32, String> {
    if let Ok(v) = env::var("FERRY_SLURM_VERSION") {
        return parse_setting(&v).ok_or_else(|| {
            format!("FERRY_SLURM_VERSION={v:?} is not MAJOR.MINOR[.MICRO] or 0xMMmmuu")
        });
    }
    let include = env::var("FERRY_SLURM_INCLUDE").unwrap_or_else(|_| "/usr/include".into());
    let header = PathBuf::from(&include).join("slurm/slurm_version.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = fs::read_to_string(&header).map_err(|e| format!("{}: {e}", header.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("#define SLURM_VERSION_NUMBER"))
        .find_map(|v| parse_hex(v.trim()))
        .ok_or_else(|| format!("{} has no SLURM_VERSION_NUMBER", header.display()))
}

fn parse_hex(v: &str) -> Option<u32> {
    u32::from_str_radix(v.strip_prefix("0x")?, 16).ok()
}

fn parse_setting(v: &str) -> Option<u32> {
    if let Some(n) = parse_hex(v) {
        return Some(n);
    }
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let micro = parts.next().unwrap_or(Some(0))?;
    (major < 256 && minor < 256 && micro < 256).then_some((major << 16) | (minor << 8) | micro)
}
