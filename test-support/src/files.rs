//! Making the files of test images: folders and files with a mode, SquashFS images,
//! and their digests as `sha256sum` prints them (a tool ferry did not write).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn mkdir_mode(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn write_mode(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Packs the folder `root` into the SquashFS file `image` (replacing it), without
/// extended attributes, with `extra` options (`-all-root`, a compressor, ...).
pub fn mksquashfs(root: &Path, image: &Path, extra: &[&str]) {
    let tool = crate::prerequisites::find_tool("mksquashfs").unwrap_or_else(|| "mksquashfs".into());
    let out = Command::new(tool)
        .arg(root)
        .arg(image)
        .args(["-no-xattrs", "-quiet", "-noappend", "-no-progress"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running mksquashfs");
    assert!(
        out.status.success(),
        "mksquashfs {} failed: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sha256:HEX` of the file, as `sha256sum` computes it.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "sha256sum printed {text:?}");
    format!("sha256:{hex}")
}
