//! `ferry build ROOTFS OUT.sqfs`: a reproducible SquashFS image of a root folder, made
//! by the library's `squash` (the same folder gives the same bytes); this file checks
//! the arguments.

use crate::cli::Compression;
use ferry_runtime::image_config::{ImageConfig, CONFIG_PATH};
use ferry_runtime::squash;
use std::path::Path;

pub fn build_command(
    rootfs: &Path,
    out: &Path,
    force: bool,
    all_root: bool,
    compression: Compression,
) -> Result<(), String> {
    let meta = std::fs::metadata(rootfs).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{}: not found; give a root folder", rootfs.display())
        }
        _ => format!("{}: cannot read it ({e})", rootfs.display()),
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "{}: not a folder; ferry build makes an image of a root folder (for an archive use ferry import)",
            rootfs.display()
        ));
    }
    // A stored configuration is kept as it is, but only if the runtime can read it.
    let config = rootfs.join(CONFIG_PATH.trim_start_matches('/'));
    if let Ok(text) = std::fs::read(&config) {
        ImageConfig::parse(&text, rootfs).map_err(|e| e.to_string())?;
    }
    squash::check_output(out, force).map_err(|e| e.to_string())?;
    let inside = out
        .parent()
        .and_then(|p| {
            std::fs::canonicalize(if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            })
            .ok()
        })
        .zip(std::fs::canonicalize(rootfs).ok())
        .is_some_and(|(out_dir, root)| out_dir.starts_with(root));
    if inside {
        return Err(format!(
            "{}: the output is inside the folder being packed; write it elsewhere",
            out.display()
        ));
    }
    ferry_runtime::interrupt::catch_interrupts()
        .map_err(|e| format!("cannot set up interrupt handling: {e}"))?;
    squash::squash(rootfs, out, force, all_root, self::compression(compression))
        .map_err(|e| e.to_string())
}

/// The library's compression for the one the command line names.
pub fn compression(choice: Compression) -> squash::Compression {
    match choice {
        Compression::Gzip => squash::Compression::Gzip,
        Compression::Lzo => squash::Compression::Lzo,
        Compression::Lz4 => squash::Compression::Lz4,
        Compression::Zstd => squash::Compression::Zstd,
        Compression::Xz => squash::Compression::Xz,
    }
}
