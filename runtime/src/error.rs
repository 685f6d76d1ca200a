//! One error type for preparing and joining a container. Every message is one line
//! that names the image, path or option and says what to do.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {path}: not found; check the path (it must exist on the compute node)")]
    ImageNotFound { path: PathBuf },
    #[error("image {path}: {user} cannot read it ({source}); make it readable (chmod o+r, or a group you are in)")]
    ImageUnreadable {
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    #[error("image {path}: not a container image; ferry accepts SquashFS files, Apptainer/Singularity SIF files, ext2/3/4 image files and root-filesystem folders (make one with mksquashfs ROOTFS IMAGE.sqfs)")]
    NotAnImage { path: PathBuf },
    #[error("image {path}: broken SIF file ({reason}); copy or build it again (apptainer build)")]
    SifBroken { path: PathBuf, reason: String },
    #[error("image {path}: SIF file has no primary system partition (no root filesystem to run); build a runnable image (apptainer build) or use a SquashFS image")]
    SifNoRoot { path: PathBuf },
    #[error("image {path}: the SIF's root partition ends the file without padding to 4096 bytes, which the kernel needs to mount it; pad the file (truncate -s %4096 {path}) or build it again")]
    SifPartitionTail { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is encrypted, which ferry does not support; build an unencrypted SIF (apptainer build without --encrypt)")]
    SifEncrypted { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is ext3, which ferry does not run from a SIF; rebuild it as SquashFS (apptainer build new.sif {path})")]
    SifExt3 { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is {fs}, which ferry does not run; rebuild it with a SquashFS root (apptainer build)")]
    SifUnsupportedFs { path: PathBuf, fs: &'static str },
    #[error("image {path}: folder is not a root filesystem (no bin/ or usr/bin/ in it); point to the folder that holds bin, etc and usr")]
    NotARootfs { path: PathBuf },
    #[error("image {path}: not in a trusted image folder; {hint}")]
    ImageDenied { path: PathBuf, hint: String },
    #[error("image {path}: ext images run only from this site's trusted image folders ({trusted}); no reader for ext runs with your rights here: convert it to SquashFS: mkdir DIR; /sbin/debugfs -R 'rdump / DIR' IMAGE; ferry build DIR OUT.sqfs")]
    ExtNeedsTrust { path: PathBuf, trusted: String },
    #[error("image {path}: squashfuse could not serve it ({reason}); check that it is a complete SquashFS image (unsquashfs -s IMAGE) or ask the administrators whether {helper} is installed")]
    FuseFailed {
        path: PathBuf,
        helper: PathBuf,
        reason: String,
    },
    #[error("image {path}: {what} failed: {source}")]
    ImageMount {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("image {path}: digest mismatch: expected {expected}, found {actual}; the file is not the pinned image (check the path, or pin the new digest)")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image {path}: a root folder has no digest to pin; pin an image file instead (ferry digest IMAGE)")]
    PinnedFolder { path: PathBuf },
    #[error("image {path}: a sparse file ({holes} of its {size} bytes are holes); a pinned image is verified byte by byte and this one would take far longer than its data; copy it without holes (cp --sparse=never IMAGE NEW) and pin the copy")]
    SparseImage {
        path: PathBuf,
        holes: u64,
        size: u64,
    },
    #[error("image {path}: preparing the container took longer than {seconds} s and was stopped (the site's setup_timeout); check that the image's file system answers (and that its squashfuse is not stopped), then try again")]
    SetupTimeout { path: PathBuf, seconds: u64 },
    #[error("image {path}: the file changed while it was being verified; try again once nothing writes to it")]
    ImageChanged { path: PathBuf },
    #[error("this site requires pinned images: use --container={path}@sha256:... (get the digest with: ferry digest {path})")]
    PinRequired { path: String },
    #[error("mount {spec:?}: {reason}")]
    BadMountSpec { spec: String, reason: String },
    #[error("mount source {path}: {user} cannot use it ({source}); check that it exists and that you can read it")]
    MountSource {
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    #[error("mount destination {path}: {reason}")]
    MountDestination { path: PathBuf, reason: String },
    #[error("working directory {path}: {reason}")]
    Workdir { path: PathBuf, reason: String },
    #[error("user {0}: not known on this host")]
    UnknownUser(String),
    #[error("{what}: {source}")]
    System { what: String, source: io::Error },
    #[error("{0}")]
    ImageConfig(String),
    #[error("{0}")]
    Helper(String),
}

impl Error {
    pub fn system(what: impl Into<String>, source: io::Error) -> Self {
        Error::System {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Longest message shown: a path of 80,000 characters helps nobody, and Slurm cuts
/// long lines where it likes.
const MAX_MESSAGE: usize = 1024;

/// A message as the one line the user reads: control characters (a newline in an
/// option value or a path) are escaped, and an overlong middle is cut.
pub fn one_line(message: &str) -> String {
    let escaped: String = message
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect();
    let chars: Vec<char> = escaped.chars().collect();
    if chars.len() <= MAX_MESSAGE {
        return escaped;
    }
    let keep = MAX_MESSAGE / 2;
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn messages_become_one_bounded_line() {
        assert_eq!(
            one_line("image /a\nb\tc: not found"),
            r"image /a\nb\tc: not found"
        );
        assert_eq!(one_line("plain"), "plain");
        let huge = format!("start {} end", "a/".repeat(40_000));
        let line = one_line(&huge);
        assert!(line.len() <= 1030 && line.starts_with("start ") && line.ends_with(" end"));
    }
}
