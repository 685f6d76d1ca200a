//! Packing a root folder into a SquashFS image with Debian's mksquashfs, reproducibly:
//! the same folder gives the same bytes. Every inode's time and the filesystem's time
//! are fixed (`SOURCE_DATE_EPOCH`, else 0), no xattrs are stored, mksquashfs sorts
//! directory entries itself, and since squashfs-tools 4.4 its parallel readers and
//! compressors write in a fixed order whatever the number of processors (its default,
//! `-reproducible`). Folder and file times on disk therefore do not matter; names,
//! contents, modes and (without `all_root`) owners do.
//!
//! `ferry build`, `ferry import` and the store's pulls call `squash`.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// mksquashfs's compressors that the kernel's SquashFS driver and squashfuse read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Lzo,
    Lz4,
    Zstd,
    Xz,
}

impl Compression {
    /// The name mksquashfs's `-comp` takes.
    pub fn mksquashfs_name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
        }
    }
}

/// Why an image was not written; every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error("{}: is a folder; name the image file to write", out.display())]
    OutputIsFolder { out: PathBuf },
    #[error("{}: already exists; use --force to replace it", out.display())]
    OutputExists { out: PathBuf },
    #[error("mksquashfs not found; install squashfs-tools (apt install squashfs-tools)")]
    NoMksquashfs,
    #[error("cannot run mksquashfs: {0}")]
    Spawn(io::Error),
    #[error("waiting for mksquashfs: {0}")]
    Wait(io::Error),
    #[error("interrupted; {} was not written", out.display())]
    Interrupted { out: PathBuf },
    #[error("mksquashfs failed on {} ({status}): {last_line}", rootfs.display())]
    Failed {
        rootfs: PathBuf,
        status: ExitStatus,
        last_line: String,
    },
    #[error("{}: cannot write it ({source})", out.display())]
    Write { out: PathBuf, source: io::Error },
}

/// Refuses to replace an existing file unless `force`, and never replaces a folder.
pub fn check_output(out: &Path, force: bool) -> Result<(), SquashError> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.is_dir() => Err(SquashError::OutputIsFolder {
            out: out.to_path_buf(),
        }),
        Ok(_) if !force => Err(SquashError::OutputExists {
            out: out.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// The fixed timestamp of every inode and of the filesystem: SOURCE_DATE_EPOCH when set
/// (the reproducible-builds convention), else 0.
pub fn timestamp() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Packs `rootfs` into `out` through a temporary file next to it, renamed into place
/// only on success: an interrupted or failed build leaves nothing. `all_root` stores
/// every file as root's (what a caller without root wants: its files are its own, not
/// the image's owners). mksquashfs shows its progress when stdout is a terminal.
pub fn squash(
    rootfs: &Path,
    out: &Path,
    force: bool,
    all_root: bool,
    compression: Compression,
) -> Result<(), SquashError> {
    squash_with(
        rootfs,
        out,
        force,
        all_root,
        compression,
        &Additions::default(),
    )
    .map(drop)
}

/// What a caller adds to or takes from the packed folder (`save`: its provenance file
/// in, ferry's own mount points out).
#[derive(Default)]
pub struct Additions<'a> {
    /// mksquashfs pseudo definitions (`-p`), such as a file made from a command's output.
    pub pseudo: &'a [String],
    /// Paths relative to the folder, left out (mksquashfs `-wildcards -e`).
    pub exclude: &'a [&'a str],
    /// Variables the pseudo definitions' commands read; with them, mksquashfs gets no
    /// other variable but PATH.
    pub env: &'a [(&'a str, String)],
}

/// What mksquashfs could not read (with the rights it ran with) and so left out: its
/// folders skipped, its files stored empty.
#[derive(Debug, Default)]
pub struct Packed {
    pub unreadable: Vec<PathBuf>,
}

/// `squash` with `additions`.
pub fn squash_with(
    rootfs: &Path,
    out: &Path,
    force: bool,
    all_root: bool,
    compression: Compression,
    additions: &Additions,
) -> Result<Packed, SquashError> {
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
    if !additions.env.is_empty() {
        // Absolute folders only: the saving process works inside the container's
        // copy, where a relative or empty PATH entry would find the image's programs.
        let path = std::env::var("PATH").unwrap_or_default();
        let path: Vec<&str> = path.split(':').filter(|d| d.starts_with('/')).collect();
        let path = if path.is_empty() {
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        } else {
            path.join(":")
        };
        cmd.env_clear().env("PATH", path);
        cmd.envs(additions.env.iter().map(|(k, v)| (k, v)));
    }
    for definition in additions.pseudo {
        cmd.arg("-p").arg(definition);
    }
    if !on_terminal {
        cmd.args(["-quiet", "-no-progress"]).stdout(Stdio::null());
    }
    // Last: `-e` takes every argument after it.
    if !additions.exclude.is_empty() {
        cmd.args(["-wildcards", "-e"]).args(additions.exclude);
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SquashError::NoMksquashfs,
        _ => SquashError::Spawn(e),
    })?;
    let output = child.wait_with_output().map_err(SquashError::Wait)?;
    if crate::interrupt::interrupted() {
        return Err(SquashError::Interrupted {
            out: out.to_path_buf(),
        });
    }
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last_line = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message")
            .to_string();
        return Err(SquashError::Failed {
            rootfs: rootfs.to_path_buf(),
            status: output.status,
            last_line,
        });
    }
    check_output(out, force)?;
    std::fs::rename(&partial, out).map_err(|source| SquashError::Write {
        out: out.to_path_buf(),
        source,
    })?;
    std::mem::forget(guard);
    Ok(Packed {
        unreadable: unreadable(&String::from_utf8_lossy(&output.stderr)),
    })
}

/// The paths mksquashfs 4.x says it could not read, as paths of the image: "Could not
/// open ./X, skipping..." (a folder) and "Failed to read file ./X, creating empty file".
fn unreadable(stderr: &str) -> Vec<PathBuf> {
    stderr
        .lines()
        .filter_map(|line| {
            line.strip_prefix("Could not open ")
                .and_then(|l| l.strip_suffix(", skipping..."))
                .or_else(|| {
                    line.strip_prefix("Failed to read file ")
                        .and_then(|l| l.strip_suffix(", creating empty file"))
                })
        })
        .map(|p| Path::new("/").join(p.trim_start_matches("./")))
        .collect()
}

/// A hidden name next to `path`, unique to this process, on the same filesystem.
pub fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    path.with_file_name(format!(".{name}.ferry-{what}-{}", std::process::id()))
}

/// A private (0700) work folder next to an image being made, on its file system,
/// removed with everything in it when dropped (also on an error or Ctrl-C).
pub struct StagingFolder(PathBuf);

impl StagingFolder {
    /// `.OUT.ferry-WHAT-PID` next to `out`; a leftover of the same name goes first.
    pub fn next_to(out: &Path, what: &str) -> Result<StagingFolder, String> {
        use std::os::unix::fs::DirBuilderExt;
        let path = sibling(out, what);
        let _ = crate::oci::remove_any(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create the staging folder {} ({e})", path.display()))?;
        Ok(StagingFolder(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        let _ = crate::oci::remove_any(&self.0);
    }
}

/// Removes the partial image unless the build succeeded (then it was renamed away).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_mksquashfs_could_not_read_is_named_as_in_the_image() {
        let stderr = "Could not open ./root, skipping...\nPseudo file \".ferry\" exists\nFailed to read file ./etc/shadow, creating empty file\n";
        assert_eq!(
            unreadable(stderr),
            [PathBuf::from("/root"), PathBuf::from("/etc/shadow")]
        );
        assert!(unreadable("").is_empty());
    }
}
