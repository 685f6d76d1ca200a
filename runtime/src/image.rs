//! Opening an image with the user's rights and telling what it is, by content.

use crate::error::{Error, Result};
use crate::site::{ImagePolicy, Untrusted};
use crate::sys;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Squashfs,
    Directory,
}

#[derive(Debug)]
pub struct OpenedImage {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub format: Format,
}

const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";

/// Opens `path` with the credentials currently in force (the helper switches to the
/// user's first) and detects its format from its first bytes.
pub fn open(path: &Path, user_name: &str) -> Result<OpenedImage> {
    let fd =
        sys::open_path(path, libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => Error::ImageNotFound {
                    path: path.to_path_buf(),
                },
                _ => Error::ImageUnreadable {
                    path: path.to_path_buf(),
                    user: user_name.to_string(),
                    source: e,
                },
            }
        })?;
    let st = sys::fstat(fd.as_fd())
        .map_err(|e| Error::system(format!("image {}: stat", path.display()), e))?;
    let format = if sys::is_dir(&st) {
        if !looks_like_rootfs(&fd) {
            return Err(Error::NotARootfs {
                path: path.to_path_buf(),
            });
        }
        Format::Directory
    } else if sys::is_regular(&st) && magic_of(&fd) == Some(*SQUASHFS_MAGIC) {
        Format::Squashfs
    } else {
        return Err(Error::NotAnImage {
            path: path.to_path_buf(),
        });
    };
    Ok(OpenedImage {
        path: path.to_path_buf(),
        fd,
        format,
    })
}

fn magic_of(fd: &OwnedFd) -> Option<[u8; 4]> {
    let file = std::fs::File::from(fd.try_clone().ok()?);
    let mut magic = [0u8; 4];
    file.read_exact_at(&mut magic, 0).ok()?;
    Some(magic)
}

fn looks_like_rootfs(dir: &OwnedFd) -> bool {
    ["bin", "usr/bin"].iter().any(|p| {
        sys::openat(
            Some(dir.as_fd()),
            OsStr::new(p),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .is_ok()
    })
}

/// How an opened image becomes the container's lower layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The kernel's SquashFS driver on a loop device.
    Kernel,
    /// squashfuse, running with the user's rights.
    Fuse,
    /// A bind of a root folder (no filesystem code parses anything).
    Bind,
}

/// Applies the site's image policy to an opened image: trusted images and root folders
/// need no filesystem code of their own; other files follow `policy.untrusted`.
pub fn method_for(image: &OpenedImage, policy: &ImagePolicy) -> Result<Method> {
    let trusted = || is_trusted(image, &policy.trusted_dirs);
    match (image.format, policy.untrusted) {
        (_, Untrusted::Deny) if !trusted() => Err(Error::ImageDenied {
            path: image.path.clone(),
            hint: policy.where_trusted(),
        }),
        (Format::Directory, _) => Ok(Method::Bind),
        (Format::Squashfs, Untrusted::Kernel) => Ok(Method::Kernel),
        (Format::Squashfs, _) if trusted() => Ok(Method::Kernel),
        (Format::Squashfs, _) => Ok(Method::Fuse),
    }
}

/// True when the open image lies in a trusted folder and nobody but root can change
/// it: the file (or folder) and every folder above it are owned by root and not
/// writable by group or others, and the path still names the very file we opened.
/// Checked on each use: an admin's mistake (a group-writable folder) or a later
/// chmod makes the images untrusted again.
pub fn is_trusted(image: &OpenedImage, trusted_dirs: &[PathBuf]) -> bool {
    let Ok(opened) = sys::fstat(image.fd.as_fd()) else {
        return false;
    };
    let Ok(real) = std::fs::read_link(sys::fd_path(image.fd.as_fd())) else {
        return false;
    };
    let inside = trusted_dirs
        .iter()
        .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(&d) && real != d));
    if !inside {
        return false;
    }
    let root_only = |m: &std::fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
    match std::fs::symlink_metadata(&real) {
        Ok(m) if root_only(&m) && m.dev() == opened.st_dev && m.ino() == opened.st_ino => {}
        _ => return false,
    }
    real.ancestors()
        .skip(1)
        .all(|dir| std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && root_only(&m)))
}
