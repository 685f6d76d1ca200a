// The Slurm version a build is for, shared by the plugin's build script (build.rs) and
// the CLI's (runtime/build.rs) so `ferry version` and the plugin always agree. Included
// with `include!`: plain functions, std only.

/// Decides the Slurm version, tells cargo when to rerun, and hands it to the crate as
/// FERRY_SLURM_VERSION_NUMBER (decimal) and FERRY_SLURM_VERSION (`MAJOR.MINOR`).
fn emit_slurm_version() -> u32 {
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
    version
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
