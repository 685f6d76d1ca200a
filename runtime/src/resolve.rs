//! Path resolution inside a root (a container's, an image layer's, the host's under
//! `/.ferry/host`): the one walker of symlinks that never leaves its root.
//!
//! An image may hold symlinks such as `/etc -> /host-secrets` or `../../..`. Resolving a
//! path by name on the host would follow them out of the root. Here each component is
//! looked up beside its parent, symlinks are expanded by hand against the root, and `..`
//! never climbs above it. How a component is looked up is the caller's (`Lookup`): by
//! file descriptor with O_NOFOLLOW for root's mounts (`InRoot`), by name in a private
//! staging folder (`oci::layers`), by name under a read-only tree (`in_tree`).

use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one walk before it fails with ELOOP (Linux's own limit).
pub const MAX_SYMLINKS: usize = 40;

/// What one component of a path turned out to be.
pub enum Entry<H> {
    /// A folder: the walk goes on inside it.
    Dir(H),
    /// A symlink with this target: the walk goes on along the target, from the root when
    /// the target is absolute.
    Symlink(PathBuf),
    /// Anything else: the walk may end here, and fails with ENOTDIR if it does not.
    Other(H),
}

/// How a walk looks up one component beside the folder it has reached.
pub trait Lookup {
    /// A folder or file reached (a descriptor, a path).
    type Handle;
    /// Looks up `name` in `parent`; `is_last` when nothing follows it in the path.
    fn lookup(
        &mut self,
        parent: &Self::Handle,
        name: &OsStr,
        is_last: bool,
    ) -> io::Result<Entry<Self::Handle>>;
}

/// Resolves `path` (absolute or relative, both taken from `root`) inside `root`,
/// expanding symlinks against it and clamping `..` at it.
pub fn walk<L: Lookup>(lookup: &mut L, root: L::Handle, path: &Path) -> io::Result<L::Handle> {
    let mut pending: Vec<OsString> = components(path);
    pending.reverse(); // a stack: next component at the end
    let mut dirs: Vec<L::Handle> = vec![root];
    let mut symlinks = 0;
    let mut last: Option<L::Handle> = None;
    while let Some(name) = pending.pop() {
        if last.is_some() {
            // A previous component was not a folder but more components follow.
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let parent = dirs.last().expect("the root is never popped");
        match lookup.lookup(parent, &name, pending.is_empty())? {
            Entry::Dir(handle) => dirs.push(handle),
            Entry::Other(handle) => last = Some(handle),
            Entry::Symlink(target) => {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                if target.is_absolute() {
                    dirs.truncate(1);
                }
                let mut more = components(&target);
                more.reverse();
                pending.extend(more);
            }
        }
    }
    Ok(last.unwrap_or_else(|| dirs.pop().expect("at least the root")))
}

/// `abs`, an absolute path inside the tree whose `/` is `root`, as a path here: joined
/// by name, no symlink followed (see `in_tree` for that).
pub fn under(root: &Path, abs: &Path) -> PathBuf {
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// `path` (absolute as seen inside `root`) resolved by name under `root`, a tree nobody
/// changes under us (the read-only host root at /.ferry/host): symlinks are followed as
/// inside `root`, and missing components are kept as they are (the caller then finds
/// nothing there). The launcher uses it to find the host's programs and libraries.
pub fn in_tree(root: &Path, path: &Path) -> io::Result<PathBuf> {
    struct ByName<'a>(&'a Path);
    impl Lookup for ByName<'_> {
        type Handle = PathBuf;
        fn lookup(
            &mut self,
            parent: &PathBuf,
            name: &OsStr,
            _: bool,
        ) -> io::Result<Entry<PathBuf>> {
            let inside = parent.join(name);
            Ok(match std::fs::read_link(under(self.0, &inside)) {
                Ok(target) => Entry::Symlink(target),
                Err(_) => Entry::Dir(inside),
            })
        }
    }
    walk(&mut ByName(root), PathBuf::from("/"), path).map(|inside| under(root, &inside))
}

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

/// `InRoot`'s lookup: every component opened with O_PATH | O_NOFOLLOW beside its parent.
struct ByDescriptor<'r, 'a> {
    in_root: &'r InRoot<'a>,
    create: Create,
}

impl Lookup for ByDescriptor<'_, '_> {
    type Handle = OwnedFd;

    fn lookup(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        is_last: bool,
    ) -> io::Result<Entry<OwnedFd>> {
        let open = || {
            sys::openat(
                Some(parent.as_fd()),
                name,
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && self.create != Create::Nothing => {
                let what = if is_last { self.create } else { Create::Dir };
                self.in_root.create_entry(parent, name, what)?;
                open()?
            }
            Err(e) => return Err(e),
        };
        let st = sys::fstat(fd.as_fd())?;
        Ok(if sys::is_symlink(&st) {
            Entry::Symlink(sys::readlink_fd(fd.as_fd())?)
        } else if sys::is_dir(&st) {
            Entry::Dir(fd)
        } else {
            Entry::Other(fd)
        })
    }
}

impl InRoot<'_> {
    /// Opens `path` (absolute or relative to the root) inside the root, with O_PATH.
    pub fn open(&self, path: &Path, create: Create) -> io::Result<OwnedFd> {
        let mut lookup = ByDescriptor {
            in_root: self,
            create,
        };
        walk(&mut lookup, self.root.try_clone()?, path)
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
    use crate::scratch::Scratch;
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

    #[test]
    fn in_tree_follows_links_as_inside_the_tree() {
        let t = tempdir();
        std::fs::create_dir_all(t.join("usr/lib64")).unwrap();
        std::fs::write(t.join("usr/lib64/ld.so"), "").unwrap();
        symlink("usr/lib64", t.join("lib64")).unwrap();
        symlink("/usr/lib64/ld.so", t.join("usr/lib64/ld-linux.so")).unwrap();
        symlink("../../../../usr", t.join("usr/up")).unwrap();
        let found = in_tree(&t, Path::new("/lib64/ld-linux.so")).unwrap();
        assert_eq!(found, t.join("usr/lib64/ld.so"));
        // `..` stops at the tree's root, and a missing name is kept as it is.
        assert_eq!(
            in_tree(&t, Path::new("/usr/up/lib64")).unwrap(),
            t.join("usr/lib64")
        );
        assert_eq!(
            in_tree(&t, Path::new("/opt/none")).unwrap(),
            t.join("opt/none")
        );
        symlink("loop", t.join("loop")).unwrap();
        let err = in_tree(&t, Path::new("/loop")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
    }

    fn tempdir() -> Scratch {
        Scratch::new("resolve")
    }
}
