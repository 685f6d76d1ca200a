//! Opening an image with the user's rights and telling what it is, by content.

use crate::error::{Error, Result};
use crate::sys;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
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
