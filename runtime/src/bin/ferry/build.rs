//! `ferry build ROOTFS OUT.sqfs`: a reproducible SquashFS image of a root folder, made
//! by Debian's mksquashfs. The same folder gives the same bytes: every timestamp is
//! fixed, mksquashfs sorts directory entries itself, and no xattrs are stored.

use crate::cli::Compression;
use ferry_runtime::image_config::{ImageConfig, CONFIG_PATH};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
    check_output(out, force)?;
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
    squash(rootfs, out, force, all_root, compression)
}

/// Refuses to replace an existing file unless `force`.
pub fn check_output(out: &Path, force: bool) -> Result<(), String> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => Err(format!(
            "{}: is a folder; name the image file to write",
            out.display()
        )),
        Ok(_) if !force => Err(format!(
            "{}: already exists; use --force to replace it",
            out.display()
        )),
        _ => Ok(()),
    }
}

/// The fixed timestamp of every inode and of the filesystem: SOURCE_DATE_EPOCH when set
/// (the reproducible-builds convention), else 0.
fn timestamp() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Packs `rootfs` into `out` through a temporary file next to it, renamed into place
/// only on success: an interrupted or failed build leaves nothing.
pub fn squash(
    rootfs: &Path,
    out: &Path,
    force: bool,
    all_root: bool,
    compression: Compression,
) -> Result<(), String> {
    let partial = sibling(out, "partial");
    let _ = std::fs::remove_file(&partial);
    let guard = RemoveOnDrop(partial.clone());
    let time = timestamp().to_string();
    let on_terminal = std::io::stdout().is_terminal();
    let mut cmd = Command::new("mksquashfs");
    cmd.arg(rootfs)
        .arg(&partial)
        .args([
            "-noappend",
            "-no-xattrs",
            "-all-time",
            &time,
            "-mkfs-time",
            &time,
            "-comp",
            compression.mksquashfs_name(),
        ])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times.
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if all_root {
        cmd.arg("-all-root");
    }
    if !on_terminal {
        cmd.args(["-quiet", "-no-progress"]).stdout(Stdio::null());
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "mksquashfs not found; install squashfs-tools (apt install squashfs-tools)".to_string()
        }
        _ => format!("cannot run mksquashfs: {e}"),
    })?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for mksquashfs: {e}"))?;
    if ferry_runtime::interrupt::interrupted() {
        return Err(format!("interrupted; {} was not written", out.display()));
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(format!(
            "mksquashfs failed on {} ({}): {last}",
            rootfs.display(),
            output.status
        ));
    }
    check_output(out, force)?;
    std::fs::rename(&partial, out)
        .map_err(|e| format!("{}: cannot write it ({e})", out.display()))?;
    std::mem::forget(guard);
    Ok(())
}

/// A hidden name next to `path`, unique to this process, on the same filesystem.
pub fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    path.with_file_name(format!(".{name}.ferry-{what}-{}", std::process::id()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
