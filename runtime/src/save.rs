//! Saving a container as a new image (`--container-save=FILE`, `ferry run --save FILE`):
//! its root, the image with the writable layer's changes on top, packed by `squash`
//! with `ferry build`'s rules (same state, same bytes), written as the user.
//!
//! Root does one short thing: in a forked child, enter the container's mount namespace,
//! take a detached copy of its root mount alone (open_tree without AT_RECURSIVE: none of
//! the binds on top of it, neither /proc, /dev, /tmp, home nor the site's), make the
//! copy read-only, and go back to the caller's namespace. The child then becomes the
//! user for good (`no_new_privs`), changes into the copy and runs mksquashfs there: the
//! image is read with the user's rights (what they cannot read is left out and named),
//! and the file is created where the user may create files, as the user. Nothing is
//! ever written into the container, and the image file is never touched.
//!
//! The new image records its parent in `/.ferry/parent.json` (the image's path and
//! digest, when the step knew it); `/.ferry/image.json`, the image's configuration,
//! comes along from the image itself.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::squash::{self, Additions, Compression};
use crate::sys;
use crate::users::User;
use crate::Container;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where a saved image names the image it was saved from.
pub const PARENT_PATH: &str = "/.ferry/parent.json";

/// Paths ferry makes in every container for its own mounts and commands: the Slurm
/// launcher's links, the host's root, the job's shared image mount. Not the user's
/// work: left out of a saved image (and the parent record, written afresh).
const FERRY_OWN: &[&str] = &[
    ".ferry/bin",
    // The account files `ferry run` without root binds over the image's.
    ".ferry/files",
    ".ferry/host",
    ".ferry/image",
    ".ferry/parent.json",
];

/// The image a container was made from, as its saved image records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentImage {
    /// The image's path on the node that saved.
    pub image: PathBuf,
    /// Its SHA-256, when the step knew it (pinned, or in the node's digest cache).
    pub digest: Option<Digest>,
}

impl ParentImage {
    /// The parent record of `container`'s image.
    pub fn of(container: &Container) -> ParentImage {
        ParentImage {
            image: container.image.clone(),
            digest: container.facts.digest.clone(),
        }
    }
}

/// A saved image.
#[derive(Debug, PartialEq, Eq)]
pub struct SavedImage {
    pub path: PathBuf,
    /// Paths of the container the user cannot read, so not in the image: folders left
    /// out, files stored empty (mksquashfs's way). Callers show them as a warning.
    pub unreadable: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("saving the container of image {}: {}: give an absolute path for the new image", image.display(), out.display())]
    RelativeOutput { image: PathBuf, out: PathBuf },
    #[error("saving the container of image {} to {}: {reason}", image.display(), out.display())]
    Failed {
        image: PathBuf,
        out: PathBuf,
        reason: String,
    },
}

/// What the saving child reports on its pipe: the unreadable paths, or why it failed.
type Report = std::result::Result<Vec<PathBuf>, String>;

/// Saves the root of the container whose mount namespace is `namespace` to `out` (an
/// absolute path; an existing file there is replaced, once the new one is complete).
/// Must be called as root, from the host's mount namespace; safe from a multi-threaded
/// process (the work happens in a forked child, which dies with the caller).
pub(crate) fn save(
    namespace: BorrowedFd<'_>,
    user: &User,
    image: &Path,
    out: &Path,
    parent: &ParentImage,
    deadline: std::time::Duration,
) -> Result<SavedImage> {
    let failed = |reason: String| -> Error {
        SaveError::Failed {
            image: image.to_path_buf(),
            out: out.to_path_buf(),
            reason,
        }
        .into()
    };
    if !out.is_absolute() {
        return Err(SaveError::RelativeOutput {
            image: image.to_path_buf(),
            out: out.to_path_buf(),
        }
        .into());
    }
    let record = serde_json::to_string(parent).map_err(|e| failed(e.to_string()))?;
    let (report_read, report_write) =
        sys::pipe().map_err(|e| Error::system("creating a pipe", e))?;
    let caller = nix::unistd::getpid();
    match sys::fork().map_err(|e| failed(format!("forking: {e}")))? {
        sys::Forked::Child => {
            drop(report_read);
            let report = pack(namespace, user, out, &record, caller, report_write.as_fd());
            let text = serde_json::to_vec(&report).unwrap_or_default();
            let _ = std::fs::File::from(report_write).write_all(&text);
            sys::exit_now(0)
        }
        sys::Forked::Parent(pid) => {
            drop(report_write);
            // The saving processes run as the user, who may stop them: never wait past
            // the deadline (slurmstepd waits here before it reports the step's end).
            let ready = sys::wait_readable(report_read.as_fd(), deadline);
            if !matches!(ready, Ok(true)) {
                sys::kill_process_group(pid);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(failed(format!(
                    "it took longer than {} s and was stopped (the site's setup_timeout); save a smaller container, or ask your admin",
                    deadline.as_secs()
                )));
            }
            let mut text = Vec::new();
            let read = std::fs::File::from(report_read).read_to_end(&mut text);
            let _ = nix::sys::wait::waitpid(pid, None);
            read.map_err(|e| failed(format!("reading the saving process's report: {e}")))?;
            match serde_json::from_slice::<Report>(&text) {
                Ok(Ok(unreadable)) => Ok(SavedImage {
                    path: out.to_path_buf(),
                    unreadable,
                }),
                Ok(Err(reason)) => Err(failed(reason)),
                Err(_) => Err(failed("the saving process died without a report".into())),
            }
        }
    }
}

/// The forked child's work: the root part, then the rest as the user.
fn pack(
    namespace: BorrowedFd<'_>,
    user: &User,
    out: &Path,
    record: &str,
    caller: nix::unistd::Pid,
    report: BorrowedFd<'_>,
) -> Report {
    // A group of its own (mksquashfs joins it), which the caller kills whole at its
    // deadline; a name that is not slurmstepd's (process trackers skip those); not
    // dumpable, though the user owns it soon: it is a copy of slurmstepd's memory.
    sys::own_process_group(c"ferry-save")
        .and_then(|_| sys::tie_to_parent(caller))
        .map_err(|e| format!("starting: {e}"))?;
    let root = root_mount_alone(namespace)
        .map_err(|e| format!("taking a copy of the container's root: {e}"))?;
    // The copy stays reachable as the working folder alone; nothing else of the
    // caller's (slurmstepd's sockets, the namespace) reaches the user's mksquashfs.
    nix::unistd::fchdir(root.as_raw_fd())
        .map_err(|e| format!("entering the copy of the container's root: {e}"))?;
    drop(root);
    sys::close_all_but(report);
    sys::become_user(user.uid, user.gid, &user.gids())
        .and_then(|_| sys::set_no_new_privs())
        .and_then(|_| sys::tie_to_parent(caller))
        .map_err(|e| format!("becoming {}: {e}", user.name))?;
    let mut pseudo = Vec::new();
    let mut exclude: Vec<&str> = FERRY_OWN.to_vec();
    match std::fs::symlink_metadata(".ferry") {
        Ok(m) if m.is_dir() => {}
        found => {
            // No /.ferry (or something else by that name, which ferry's own name wins).
            if found.is_ok() {
                exclude.push(".ferry");
            }
            pseudo.push("/.ferry d 755 0 0".to_string());
        }
    }
    pseudo.push(format!(
        "{PARENT_PATH} f 644 0 0 printf %s \"${PARENT_VAR}\""
    ));
    let env = [(PARENT_VAR, record.to_string())];
    let additions = Additions {
        pseudo: &pseudo,
        exclude: &exclude,
        env: &env,
    };
    squash::squash_with(
        Path::new("."),
        out,
        true,
        false,
        Compression::Gzip,
        &additions,
    )
    .map(|packed| packed.unreadable)
    .map_err(|e| match e {
        squash::SquashError::Failed { last_line, .. } => format!(
            "mksquashfs failed as {}: {last_line}; save to a folder you can write",
            user.name
        ),
        other => other.to_string(),
    })
}

/// The variable the parent record reaches mksquashfs's pseudo file in.
const PARENT_VAR: &str = "FERRY_PARENT_RECORD";

/// A detached, read-only copy of the root mount of the container `namespace`, without
/// anything mounted on it. Root, in a single-threaded child: enters the container's
/// namespace (which makes its root this process's `/`), clones that mount alone, and
/// returns to the namespace it came from before anything else.
fn root_mount_alone(namespace: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    if crate::userns::entered() {
        // Without root the host's namespace is not ours to return to (its owner is
        // the host's user namespace): a copy of it, ours, is.
        sys::unshare_mount_namespace()?;
    }
    let home = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)?;
    sys::setns_mount(namespace)?;
    let copy = sys::clone_mount(Path::new("/"));
    sys::setns_mount(home.as_fd())?;
    let copy = copy?;
    sys::set_mount_attrs(
        copy.as_fd(),
        sys::MountAttrs {
            readonly: true,
            nosuid: true,
            nodev: true,
        },
        false,
    )?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_record_is_plain_json_with_the_digest_when_known() {
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32)));
        let parent = ParentImage {
            image: "/images/base.sqfs".into(),
            digest: digest.clone(),
        };
        let text = serde_json::to_string(&parent).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"image":"/images/base.sqfs","digest":"sha256:{}"}}"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(serde_json::from_str::<ParentImage>(&text).unwrap(), parent);
        let unknown = ParentImage {
            image: "/images/base.sqfs".into(),
            digest: None,
        };
        assert_eq!(
            serde_json::to_string(&unknown).unwrap(),
            r#"{"image":"/images/base.sqfs","digest":null}"#
        );
    }

    #[test]
    fn a_relative_output_is_refused_before_anything_runs() {
        let user = crate::request::Request::example().user;
        let ns = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY).unwrap();
        let parent = ParentImage {
            image: "/img.sqfs".into(),
            digest: None,
        };
        let err = save(
            ns.as_fd(),
            &user,
            Path::new("/img.sqfs"),
            Path::new("out.sqfs"),
            &parent,
            std::time::Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "saving the container of image /img.sqfs: out.sqfs: give an absolute path for the new image"
        );
    }
}
