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
    #[error("image {path}: not a container image; ferry runs SquashFS image files and root-filesystem folders (make one with mksquashfs ROOTFS IMAGE.sqfs)")]
    NotAnImage { path: PathBuf },
    #[error("image {path}: folder is not a root filesystem (no bin/ or usr/bin/ in it); point to the folder that holds bin, etc and usr")]
    NotARootfs { path: PathBuf },
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
    #[error("image {path}: a root folder has no digest to pin; pin a SquashFS image instead (ferry digest IMAGE)")]
    PinnedFolder { path: PathBuf },
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
