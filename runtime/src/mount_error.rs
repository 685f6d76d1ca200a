//! What goes wrong building the container's mounts: the user's mount options and
//! working folder, the image's mount, and each step of performing the plan.

use crate::image::Method;
use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {spec:?}: {reason}")]
    BadSpec { spec: String, reason: String },
    #[error("mount source {path}: {user} cannot use it ({source}); check that it exists and that you can read it")]
    Source {
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    #[error("{from}: mount source {path}: {user} cannot use it ({source}); ask your admin to fix the spec or your access to the file")]
    DeviceSource {
        from: String,
        path: PathBuf,
        user: String,
        source: io::Error,
    },
    #[error("stat of {path}: {source}")]
    SourceStat { path: PathBuf, source: io::Error },
    #[error("mount destination {path}: {reason}")]
    Destination { path: PathBuf, reason: String },
    #[error("working directory {path}: {reason}")]
    Workdir { path: PathBuf, reason: String },
    #[error("image {path}: {what} failed: {source}")]
    ImageMount {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error("image {path}: squashfuse could not serve it ({reason}); check that it is a complete SquashFS image (unsquashfs -s IMAGE) or ask the administrators whether {helper} is installed")]
    FuseFailed {
        path: PathBuf,
        helper: PathBuf,
        reason: String,
    },
    #[error("image {path}: without root, SquashFS and SIF images are served through /dev/fuse, which you cannot open here ({source}); an admin can open it to users as distributions ship it (chmod 0666 /dev/fuse), or run a root folder instead (ferry doctor --user)")]
    FuseDeviceClosed { path: PathBuf, source: io::Error },
    #[error("image {path}: no way to mount a {format} image by {method:?}")]
    NoImageMount {
        path: PathBuf,
        format: &'static str,
        method: Method,
    },
    #[error("handing the image to squashfuse: {0}")]
    HandToFuse(io::Error),
    #[error("returning from the batch step's mount namespace: {0}")]
    BorrowBatchMount(io::Error),
    #[error("{step}: {source}")]
    Step { step: MountStep, source: io::Error },
    #[error("creating {path}: {source}")]
    CreateFolder { path: PathBuf, source: io::Error },
    #[error("linking {path}: {source}")]
    Link { path: PathBuf, source: io::Error },
    #[error("writing {path} in the container: {source}")]
    WriteFile { path: PathBuf, source: io::Error },
    #[error("binding the image at {dest}: {source}")]
    ShareImage { dest: PathBuf, source: io::Error },
    #[error("binding {from} to {to}: {source}")]
    Bind {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("restricting the bind {dest}: {source}")]
    Restrict { dest: PathBuf, source: io::Error },
    #[error("Slurm's private /tmp of this job: cannot enter the job's namespace {path} ({source}); the step would see the node's /tmp, so it does not run: tell the administrators (ferry doctor shows the configuration)")]
    JobNamespace { path: PathBuf, source: io::Error },
    /// A plan whose operations come in an order the executor cannot follow (a bug).
    #[error("performing the plan: {0}")]
    PlanOrder(&'static str),
}

/// The fixed steps of building the container, each named as the user reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountStep {
    Namespace,
    PrivateNamespace,
    StagingTmpfs,
    StagingFolders,
    Unbindable,
    OpenRoot,
    StatRoot,
    RootReadOnly,
    Pivot,
}

impl MountStep {
    /// This step's failure, with the system's reason.
    pub fn failed(self, source: io::Error) -> MountError {
        MountError::Step { step: self, source }
    }
}

impl fmt::Display for MountStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountStep::Namespace => "creating a mount namespace",
            MountStep::PrivateNamespace => "making the mount namespace private",
            MountStep::StagingTmpfs => "mounting the staging tmpfs",
            MountStep::StagingFolders => "creating the staging folders",
            MountStep::Unbindable => "making the staging tmpfs unbindable",
            MountStep::OpenRoot => "opening the new root",
            MountStep::StatRoot => "stat of the new root",
            MountStep::RootReadOnly => "making the image root read-only",
            MountStep::Pivot => "switching to the container root",
        })
    }
}
