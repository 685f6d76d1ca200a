//! Path resolution inside the container root, through file descriptors only.
//!
//! An image may hold symlinks such as `/etc -> /host-secrets` or `../../..`. Resolving a
//! mount destination by name on the host would follow them out of the root. Here every
//! component is opened with O_NOFOLLOW relative to its parent, symlinks are expanded by
//! hand against the container root, and `..` never climbs above it.

use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

const MAX_SYMLINKS: usize = 40;

/// What to create when the last component is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    Nothing,
    Dir,
    File,
}

/// Where missing components may be created: only on the filesystem whose device is
/// `writable_dev` (the container's own writable layer), never inside a host bind.
pub struct InRoot<'a> {
    pub root: &'a OwnedFd,
    pub writable_dev: Option<u64>,
}

impl InRoot<'_> {
    /// Opens `path` (absolute or relative to the root) inside the root, with O_PATH.
    pub fn open(&self, path: &Path, create: Create) -> io::Result<OwnedFd> {
        let mut pending: Vec<OsString> = components(path);
        pending.reverse(); // a stack: next component at the end
        let mut dirs: Vec<OwnedFd> = vec![self.root.try_clone()?];
        let mut symlinks = 0;
        let mut last: Option<OwnedFd> = None;
        while let Some(name) = pending.pop() {
            if let Some(file) = last.take() {
                // A previous component was not a directory but more components follow.
                drop(file);
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            if name == ".." {
                if dirs.len() > 1 {
                    dirs.pop();
                }
                continue;
            }
            let is_last = pending.is_empty();
            let parent = dirs.last().expect("the root is never popped");
            let fd = match sys::openat(
                Some(parent.as_fd()),
                &name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
            ) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create != Create::Nothing => {
                    self.create_entry(parent, &name, if is_last { create } else { Create::Dir })?;
                    sys::openat(
                        Some(parent.as_fd()),
                        &name,
                        libc::O_PATH | libc::O_NOFOLLOW,
                        0,
                    )?
                }
                Err(e) => return Err(e),
            };
            let st = sys::fstat(fd.as_fd())?;
            if sys::is_symlink(&st) {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = sys::readlink_fd(fd.as_fd())?;
                if target.is_absolute() {
                    dirs.truncate(1);
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
                continue;
            }
            if sys::is_dir(&st) {
                dirs.push(fd);
            } else {
                last = Some(fd);
            }
        }
        match last {
            Some(file) => Ok(file),
            None => Ok(dirs.pop().expect("at least the root")),
        }
    }

    fn create_entry(&self, parent: &OwnedFd, name: &OsStr, what: Create) -> io::Result<()> {
        let parent_dev = sys::fstat(parent.as_fd())?.st_dev;
        if self.writable_dev != Some(parent_dev) {
            // Creating here would write into the image or into a host folder.
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        match what {
            Create::Dir => sys::mkdirat(parent.as_fd(), name, 0o755),
            Create::File => sys::openat(
                Some(parent.as_fd()),
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
                0o644,
            )
            .map(drop),
            Create::Nothing => Ok(()),
        }
    }
}

/// The normal components of a path, `..` kept (the walker clamps it at the root).
pub fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_of(dir: &Path) -> OwnedFd {
        sys::open_path(dir, libc::O_PATH | libc::O_DIRECTORY).unwrap()
    }

    fn real(fd: &OwnedFd) -> std::path::PathBuf {
        std::fs::read_link(sys::fd_path(fd.as_fd())).unwrap()
    }

    #[test]
    fn absolute_symlink_stays_inside_the_root() {
        let t = tempdir();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        symlink("/etc", t.join("escape")).unwrap();
        let root = root_of(&t);
        let r = InRoot {
            root: &root,
            writable_dev: None,
        };
        let fd = r.open(Path::new("/escape"), Create::Nothing).unwrap();
        assert_eq!(real(&fd), t.join("etc"));
    }

    #[test]
    fn dotdot_is_clamped_at_the_root() {
        let t = tempdir();
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        symlink("../../../../..", t.join("a/b/up")).unwrap();
        let root = root_of(&t);
        let r = InRoot {
            root: &root,
            writable_dev: None,
        };
        let fd = r.open(Path::new("a/b/up"), Create::Nothing).unwrap();
        assert_eq!(real(&fd), *t);
    }

    #[test]
    fn creates_only_on_the_writable_device() {
        let t = tempdir();
        let root = root_of(&t);
        let dev = sys::fstat(root.as_fd()).unwrap().st_dev;
        let denied = InRoot {
            root: &root,
            writable_dev: Some(dev + 1),
        };
        assert!(denied.open(Path::new("x/y"), Create::Dir).is_err());
        let allowed = InRoot {
            root: &root,
            writable_dev: Some(dev),
        };
        allowed.open(Path::new("x/y"), Create::Dir).unwrap();
        allowed.open(Path::new("x/file"), Create::File).unwrap();
        assert!(t.join("x/y").is_dir());
        assert!(t.join("x/file").is_file());
    }

    #[test]
    fn symlink_loops_are_refused() {
        let t = tempdir();
        symlink("b", t.join("a")).unwrap();
        symlink("a", t.join("b")).unwrap();
        let root = root_of(&t);
        let r = InRoot {
            root: &root,
            writable_dev: None,
        };
        let err = r.open(Path::new("a"), Create::Nothing).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    /// A scratch folder removed when the test ends.
    struct Scratch(std::path::PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = std::path::PathBuf;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> Scratch {
        let base = std::env::temp_dir().join(format!(
            "ferry-resolve-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&base).unwrap();
        Scratch(base.canonicalize().unwrap())
    }
}
