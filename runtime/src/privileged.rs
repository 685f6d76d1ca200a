//! The closed list of privileged operations that build a container, in one place (as
//! bubblewrap keeps its own): the `Sys` trait has one method per operation root
//! performs on the plan's behalf, and nothing else in `assemble` changes the mount
//! table. `Real` carries them out through `sys`; the test-only `fake::Recording`
//! records them, so the unit tests check flags and order without root.
//!
//! Each method says why root needs it. Root never opens a user's path with its own
//! rights: `open_source` hands `Source::AsUser` to the process that is the user.

use crate::as_user::AsUser;
use crate::digest::{self, DigestError, FileVersion};
use crate::error::{Error, Result, SetupError};
use crate::image::OpenedImage;
use crate::image_cache::{CacheNote, Key, MountKind, NodeCache, Outcome, Taken, Trouble};
use crate::mount_error::MountError;
use crate::plan::{Attrs, ImageMount, Source};
use crate::request::Request;
use crate::share;
use crate::sys;
use nix::mount::MsFlags;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// How the image came to be mounted (the provenance record's `mounted_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mounted {
    Kernel,
    /// By a squashfuse started for this container.
    OwnFuse,
    /// A copy of the batch step's FUSE mount (`share`).
    SharedFuse,
    /// A kept mount of the node image cache (`image_cache`), by the kernel or squashfuse.
    CachedKernel,
    CachedFuse,
    Bind,
}

impl Mounted {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mounted::Kernel => "kernel",
            Mounted::OwnFuse => "fuse",
            Mounted::SharedFuse => "fuse-shared",
            Mounted::CachedKernel => "kernel",
            Mounted::CachedFuse => "fuse",
            Mounted::Bind => "bind",
        }
    }
}

/// The mount(2) flags of a remount that leaves a mount with `attrs` (and `kept`, the
/// flags it has already: a remount sets the whole set).
pub(crate) fn remount_flags(attrs: Attrs, kept: MsFlags) -> MsFlags {
    let mut flags = kept;
    for (on, flag) in [
        (attrs.readonly, MsFlags::MS_RDONLY),
        (attrs.nosuid, MsFlags::MS_NOSUID),
        (attrs.nodev, MsFlags::MS_NODEV),
    ] {
        if on {
            flags |= flag;
        }
    }
    flags
}

fn mount_attrs(attrs: Attrs) -> sys::MountAttrs {
    sys::MountAttrs {
        readonly: attrs.readonly,
        nosuid: attrs.nosuid,
        nodev: attrs.nodev,
    }
}

/// Every privileged operation of the setup. All run in the forked, single-threaded
/// helper, in the container's new mount namespace.
pub(crate) trait Sys {
    /// Opens a bind's source: the user's as the user, the host's as root (O_PATH: root
    /// only names what the admin chose). The outer error: the user's process is gone.
    fn open_source(&mut self, source: &Source) -> Result<io::Result<OwnedFd>>;
    /// The staging tmpfs (root: only root mounts).
    fn mount_tmpfs(&mut self, target: &Path, size: u64, attrs: Attrs) -> io::Result<()>;
    /// A folder in the staging tmpfs (root owns it).
    fn mkdir(&mut self, path: &Path) -> io::Result<()>;
    /// The image's file system at `target`, by `how` (root: loop devices, kernel
    /// mounts, the FUSE mount).
    fn mount_image(&mut self, how: &ImageMount, target: &Path, attrs: Attrs) -> Result<Mounted>;
    fn mount_overlay(
        &mut self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
        attrs: Attrs,
    ) -> io::Result<()>;
    fn make_unbindable(&mut self, target: &Path) -> io::Result<()>;
    /// Opens a folder of the staging tree (O_PATH), which only root can reach.
    fn open_staged(&mut self, path: &Path) -> io::Result<OwnedFd>;
    /// Binds `source` onto `dest` through descriptors, restricted by `attrs` before it
    /// is attached (Linux 5.12+; ENOSYS before).
    fn bind_restricted(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        recursive: bool,
        attrs: Attrs,
    ) -> io::Result<()>;
    /// The older way: a plain bind, to be remounted with its restrictions at once.
    fn bind(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        recursive: bool,
    ) -> io::Result<()>;
    /// Remounts the mount `mount` is the root of with exactly `flags`.
    fn remount(&mut self, mount: BorrowedFd<'_>, flags: MsFlags) -> io::Result<()>;
    /// Writes a regular file `name` in the writable layer's folder `dir`, replacing
    /// what the image has there.
    fn write_file(&mut self, dir: BorrowedFd<'_>, name: &OsStr, content: &str) -> io::Result<()>;
    /// Makes `name` in `dir` a symlink to `target`, replacing what the image has.
    fn symlink(&mut self, dir: BorrowedFd<'_>, name: &OsStr, target: &Path) -> io::Result<()>;
    /// Gives a folder just made in the writable layer to the user (mode 0700).
    fn give_to_user(&mut self, dir: BorrowedFd<'_>) -> io::Result<()>;
    /// Makes `root` the namespace's `/` and detaches the host's.
    fn pivot(&mut self, root: BorrowedFd<'_>) -> io::Result<()>;
}

/// How the user's bind sources are opened: for reading, which checks read permission
/// on the object itself (O_PATH would only check the folders above it), never waiting
/// (a FIFO opens at once) and never becoming a controlling terminal.
const USER_SOURCE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;

/// The FUSE device the caller opened and the socket on which it takes the image
/// descriptor to start squashfuse (see `container::prepare`).
pub(crate) struct FuseHandoff {
    pub(crate) device: OwnedFd,
    pub(crate) channel: OwnedFd,
}

/// The operations as the kernel performs them.
pub(crate) struct Real<'a> {
    pub(crate) req: &'a Request,
    pub(crate) as_user: &'a AsUser,
    pub(crate) image: &'a OpenedImage,
    pub(crate) fuse: Option<FuseHandoff>,
    /// The file version whose digest was verified: re-checked once mounted.
    pub(crate) verified: Option<FileVersion>,
    /// The node image cache, when the site keeps images (opened before the namespace).
    pub(crate) cache: Option<NodeCache>,
    /// Why the cache could not be used for this step (it goes on without).
    pub(crate) cache_problem: Option<String>,
    /// What the cache did for this step.
    pub(crate) cache_note: Option<CacheNote>,
}

impl Sys for Real<'_> {
    fn open_source(&mut self, source: &Source) -> Result<io::Result<OwnedFd>> {
        match source {
            Source::Host(path) => Ok(sys::open_path(path, libc::O_PATH)),
            Source::AsUser(path) => self
                .as_user
                .open(path, USER_SOURCE_FLAGS)
                .map_err(|source| {
                    SetupError::OpenAsUser {
                        user: self.req.user.name.clone(),
                        source,
                    }
                    .into()
                }),
        }
    }

    fn mount_tmpfs(&mut self, target: &Path, size: u64, attrs: Attrs) -> io::Result<()> {
        sys::mount_fs(
            Path::new("ferry"),
            target,
            "tmpfs",
            remount_flags(attrs, MsFlags::empty()),
            Some(&format!("mode=0700,size={size}")),
        )
    }

    fn mkdir(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn mount_image(&mut self, how: &ImageMount, target: &Path, attrs: Attrs) -> Result<Mounted> {
        let flags = remount_flags(attrs, MsFlags::empty());
        let image = self.image;
        let cached = self.cache_key(how)?;
        if let Some((key, version)) = &cached {
            if let Some(mounted) = self.take_from_cache(how, key, version, target)? {
                if mounted == Mounted::CachedFuse {
                    // The caller learns from the closed channel that no server is needed.
                    self.fuse = None;
                }
                return Ok(mounted);
            }
        }
        let mounted = match how {
            ImageMount::Fuse { offset } => {
                if borrow_batch_mount(self.req, image, target)? {
                    // The caller learns from the closed channel that no server is needed.
                    self.fuse = None;
                    return Ok(Mounted::SharedFuse);
                }
                mount_with_fuse(self.req, image, *offset, self.fuse.take(), target)?;
                Mounted::OwnFuse
            }
            ImageMount::Folder => {
                sys::mount_bind(&sys::fd_path(image.fd.as_fd()), target, false)
                    .and_then(|_| sys::remount_bind(target, flags))
                    .map_err(|e| image_err(image, "binding the root folder", e))?;
                Mounted::Bind
            }
            ImageMount::Kernel {
                fstype,
                options,
                offset,
                size,
                what,
            } => {
                let device = loop_device(image, *offset, *size)?;
                // The mount holds the device; with autoclear it frees itself when the
                // namespace and so the mount go away, so our handle can close now.
                sys::mount_fs(&device.path, target, fstype, flags, *options)
                    .map_err(|e| image_err(image, what, e))?;
                Mounted::Kernel
            }
        };
        if let Some(version) = &self.verified {
            // What was hashed is what the loop device reads, unless the file changed since.
            let now = image_file(image).and_then(|f| FileVersion::of(&f));
            if now.ok().as_ref() != Some(version) {
                return Err(DigestError::Changed {
                    path: self.req.image.clone(),
                }
                .into());
            }
        }
        if let (Some((key, version)), Mounted::Kernel | Mounted::OwnFuse) = (cached, mounted) {
            // A mount this step made (a borrowed one ends with the batch step that serves it).
            self.keep_in_cache(key, version, target)?;
        }
        Ok(mounted)
    }

    fn mount_overlay(
        &mut self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
        attrs: Attrs,
    ) -> io::Result<()> {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        sys::mount_fs(
            Path::new("ferry"),
            target,
            "overlay",
            remount_flags(attrs, MsFlags::empty()),
            Some(&options),
        )
    }

    fn make_unbindable(&mut self, target: &Path) -> io::Result<()> {
        sys::make_unbindable(target)
    }

    fn open_staged(&mut self, path: &Path) -> io::Result<OwnedFd> {
        sys::open_path(path, libc::O_PATH | libc::O_DIRECTORY)
    }

    fn bind_restricted(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        recursive: bool,
        attrs: Attrs,
    ) -> io::Result<()> {
        sys::bind_through_fds(source, dest, recursive, mount_attrs(attrs))
    }

    fn bind(
        &mut self,
        source: BorrowedFd<'_>,
        dest: BorrowedFd<'_>,
        recursive: bool,
    ) -> io::Result<()> {
        sys::mount_bind(&sys::fd_path(source), &sys::fd_path(dest), recursive)
    }

    fn remount(&mut self, mount: BorrowedFd<'_>, flags: MsFlags) -> io::Result<()> {
        sys::remount_bind(&sys::fd_path(mount), flags)
    }

    fn write_file(&mut self, dir: BorrowedFd<'_>, name: &OsStr, content: &str) -> io::Result<()> {
        // Without root the image's own file is not ours to write (see
        // `assemble::claim_parents_in_upper`): ours replaces it.
        let replace = crate::userns::entered();
        match sys::openat(Some(dir), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(existing) if replace || !sys::is_regular(&sys::fstat(existing.as_fd())?) => {
                sys::unlinkat(dir, name, false)?
            }
            _ => {}
        }
        let fd = sys::openat(
            Some(dir),
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
            0o644,
        )?;
        std::fs::File::from(fd).write_all(content.as_bytes())
    }

    fn symlink(&mut self, dir: BorrowedFd<'_>, name: &OsStr, target: &Path) -> io::Result<()> {
        let _ = sys::unlinkat(dir, name, false);
        sys::symlinkat(target, dir, name)
    }

    fn give_to_user(&mut self, dir: BorrowedFd<'_>) -> io::Result<()> {
        sys::give_folder(dir, self.req.user.uid, self.req.user.gid, 0o700)
    }

    fn pivot(&mut self, root: BorrowedFd<'_>) -> io::Result<()> {
        sys::pivot_into(root)
    }
}

impl Real<'_> {
    /// The cache key of this image mounted `how`, when the node keeps images and the
    /// image is a file (a root folder has nothing to decompress).
    fn cache_key(&self, how: &ImageMount) -> Result<Option<(Key, FileVersion)>> {
        if self.cache.is_none() && self.cache_problem.is_none() {
            return Ok(None);
        }
        let driver;
        let kind = match how {
            ImageMount::Folder => return Ok(None),
            ImageMount::Kernel {
                fstype,
                options,
                offset,
                size,
                ..
            } => MountKind {
                driver: fstype,
                options: *options,
                offset: *offset,
                size: *size,
                uid: None,
            },
            ImageMount::Fuse { offset } => {
                driver = format!("fuse:{}", self.req.image_policy.fuse_helper.display());
                MountKind {
                    driver: &driver,
                    options: None,
                    offset: *offset,
                    size: 0,
                    uid: Some(self.req.user.uid),
                }
            }
        };
        let version = image_file(self.image)
            .and_then(|f| FileVersion::of(&f))
            .map_err(|e| image_err(self.image, "reading the image's version", e))?;
        Ok(Some((Key::new(&version, &kind), version)))
    }

    /// Mounts the cache's kept mount for `key` at `target` when there is one.
    fn take_from_cache(
        &mut self,
        how: &ImageMount,
        key: &Key,
        version: &FileVersion,
        target: &Path,
    ) -> Result<Option<Mounted>> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(None);
        };
        let fuse = matches!(how, ImageMount::Fuse { .. });
        let outcome = match cache.take(key, target, fuse) {
            Ok(Taken::Mounted) => Outcome::Hit,
            Ok(Taken::Broken) => Outcome::Broken,
            Ok(Taken::Missing) => return Ok(None),
            Err(Trouble::Failed(problem)) => {
                self.cache_problem = Some(format!("taking its kept mount: {problem}"));
                return Ok(None);
            }
            Err(Trouble::Stranded(e)) => return Err(stranded(self.image, e)),
        };
        self.note_cache(key.clone(), outcome, version.clone(), None);
        Ok((outcome == Outcome::Hit).then_some(if fuse {
            Mounted::CachedFuse
        } else {
            Mounted::CachedKernel
        }))
    }

    /// Keeps the image mount just made at `target` in the cache for later steps.
    fn keep_in_cache(&mut self, key: Key, version: FileVersion, target: &Path) -> Result<()> {
        if let Some(problem) = self.cache_problem.take() {
            self.note_cache(key, Outcome::NotKept, version, Some(problem));
            return Ok(());
        }
        let Some(cache) = self.cache.as_mut() else {
            return Ok(());
        };
        let kept = match cache.keep(&key, target, version.size) {
            Ok(kept) => kept,
            Err(Trouble::Failed(problem)) => {
                let problem = Some(format!("keeping its mount: {problem}"));
                self.note_cache(key, Outcome::NotKept, version, problem);
                return Ok(());
            }
            Err(Trouble::Stranded(e)) => return Err(stranded(self.image, e)),
        };
        let outcome = match (kept, &self.cache_note) {
            (true, _) => Outcome::Kept,
            (false, Some(note)) if note.outcome == Outcome::Broken => Outcome::Broken,
            (false, _) => Outcome::NotKept,
        };
        self.note_cache(key, outcome, version, None);
        Ok(())
    }

    fn note_cache(
        &mut self,
        key: Key,
        outcome: Outcome,
        version: FileVersion,
        problem: Option<String>,
    ) {
        self.cache_note = Some(CacheNote {
            key,
            outcome,
            version,
            problem,
        });
    }
}

/// The helper could not return to the step's own namespace from another: it must not
/// go on building the container.
fn stranded(image: &OpenedImage, e: io::Error) -> Error {
    image_err(
        image,
        "returning to the step's namespace from the node image cache",
        e,
    )
}

/// For a step of a batch job: mounts a copy of the batch step's FUSE mount of this very
/// image at `target` when there is one on this node (see `share`). False: start a
/// server of our own.
fn borrow_batch_mount(req: &Request, image: &OpenedImage, target: &Path) -> Result<bool> {
    let Some(job) = req.share_with_batch_step_of else {
        return Ok(false);
    };
    let Some(peer) = share::batch_step_namespace(
        job,
        req.user.uid,
        image.fd.as_fd(),
        &req.image_policy.fuse_helper,
    ) else {
        return Ok(false);
    };
    share::borrow_image_mount(peer, target).map_err(|e| MountError::BorrowBatchMount(e).into())
}

/// Mounts FUSE on `target` with the device the caller opened and hands the caller the
/// image (and where its SquashFS starts), which starts squashfuse as the user and
/// closes its copy of the device. Ours closes here too, so the server holds the only
/// one: if it cannot start (or dies), the connection aborts and every access fails at
/// once instead of hanging.
fn mount_with_fuse(
    req: &Request,
    image: &OpenedImage,
    offset: u64,
    fuse: Option<FuseHandoff>,
    target: &Path,
) -> Result<()> {
    let failed = |reason: String| MountError::FuseFailed {
        path: image.path.clone(),
        helper: req.image_policy.fuse_helper.clone(),
        reason,
    };
    let Some(FuseHandoff { device, channel }) = fuse else {
        return Err(failed("/dev/fuse is not available on this node".into()).into());
    };
    let user = &req.user;
    sys::mount_fuse(device.as_fd(), target, user.uid, user.gid)
        .map_err(|e| image_err(image, "mounting FUSE", e))?;
    drop(device);
    sys::send_fd(channel.as_fd(), image.fd.as_fd(), offset).map_err(MountError::HandToFuse)?;
    drop(channel);
    // The first look waits for the server's answer: a dead server reads ENOTCONN here.
    std::fs::metadata(target).map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// A read-only loop device over `image` from `offset`, `size` bytes long (0: to the
/// end): one another step already made for the same file and range, or a new one.
fn loop_device(image: &OpenedImage, offset: u64, size: u64) -> Result<sys::LoopDevice> {
    let version = image_file(image)
        .and_then(|f| FileVersion::of(&f))
        .map_err(|e| image_err(image, "reading the image's version", e))?;
    let stamp = loop_stamp(&version);
    match sys::find_shared_loop(image.fd.as_fd(), offset, size, &stamp) {
        Some(shared) => Ok(shared),
        None => sys::attach_loop(image.fd.as_fd(), offset, size, &stamp)
            .map_err(|e| image_err(image, "attaching a loop device", e)),
    }
}

/// The name a loop device made from this version of a file carries: a hash of the
/// version (device, inode, size, mtime and ctime, which only a write changes, and a
/// write always does). Another step shares the device only for the very same version.
fn loop_stamp(version: &digest::FileVersion) -> sys::LoopStamp {
    use sha2::Digest as _;
    let text = serde_json::to_string(version).unwrap_or_default();
    let hash = sha2::Sha256::digest(text.as_bytes());
    let name = format!("ferry1:{:x}", hash);
    let mut stamp = [0u8; 64];
    // 7 + 64 characters: keep 63 and the terminating NUL.
    let len = name.len().min(stamp.len() - 1);
    stamp[..len].copy_from_slice(&name.as_bytes()[..len]);
    stamp
}

pub(crate) fn image_err(image: &OpenedImage, what: &'static str, source: io::Error) -> Error {
    MountError::ImageMount {
        path: image.path.clone(),
        what,
        source,
    }
    .into()
}

pub(crate) fn image_file(image: &OpenedImage) -> io::Result<std::fs::File> {
    Ok(std::fs::File::from(image.fd.try_clone()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remount_adds_restrictions_and_keeps_the_hosts() {
        let host = MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
        assert_eq!(
            remount_flags(Attrs::SAFE, host),
            host | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
        assert_eq!(
            remount_flags(Attrs::DEVICES, MsFlags::empty()),
            MsFlags::MS_NOSUID
        );
        assert_eq!(
            remount_flags(Attrs::READ_ONLY, MsFlags::MS_RELATIME),
            MsFlags::MS_RELATIME | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
        );
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A `Sys` that records each privileged operation as a typed `Call` instead of
    //! performing it. Folders it is asked to open are made under a private temporary
    //! folder (the staging tree and every bind source as a folder, unless listed in
    //! `missing` or `files`), so the executor's own path resolution runs for real and
    //! needs no root.

    use super::*;
    use std::path::PathBuf;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) enum Call {
        GiveToUser(PathBuf),
        Tmpfs {
            target: PathBuf,
            size: u64,
            attrs: Attrs,
        },
        Mkdir(PathBuf),
        MountImage {
            how: ImageMount,
            target: PathBuf,
            attrs: Attrs,
        },
        Overlay {
            target: PathBuf,
            attrs: Attrs,
        },
        Unbindable(PathBuf),
        /// Source as the host names it, destination as the container will.
        BindRestricted {
            source: PathBuf,
            dest: PathBuf,
            recursive: bool,
            attrs: Attrs,
        },
        Bind {
            source: PathBuf,
            dest: PathBuf,
            recursive: bool,
        },
        /// The mount's place in the container.
        Remount {
            target: PathBuf,
            flags: MsFlags,
        },
        WriteFile(PathBuf),
        Symlink {
            dest: PathBuf,
            target: PathBuf,
        },
        Pivot,
    }

    pub(crate) struct Recording {
        pub(crate) calls: Vec<Call>,
        /// Bind sources that cannot be opened (ENOENT).
        pub(crate) missing: Vec<PathBuf>,
        /// Bind sources their opener may not read (EACCES).
        pub(crate) refused: Vec<PathBuf>,
        /// Bind sources that are files, not folders.
        pub(crate) files: Vec<PathBuf>,
        /// Answer `bind_restricted` with ENOSYS, as kernels before 5.12 do.
        pub(crate) old_kernel: bool,
        /// How `mount_image` reports a FUSE image mounted.
        pub(crate) fuse_mounted: Mounted,
        /// Stands for the host's `/`.
        host: PathBuf,
    }

    impl Recording {
        pub(crate) fn new() -> Recording {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let host = std::env::temp_dir().join(format!(
                "ferry-fake-sys-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&host);
            std::fs::create_dir_all(&host).expect("a temporary folder");
            Recording {
                calls: Vec::new(),
                missing: Vec::new(),
                refused: Vec::new(),
                files: Vec::new(),
                old_kernel: false,
                fuse_mounted: Mounted::OwnFuse,
                host,
            }
        }

        fn on_host(&self, path: &Path) -> PathBuf {
            self.host.join(path.strip_prefix("/").unwrap_or(path))
        }

        /// Where `fd` is: inside the container root when it is there, else on the host.
        fn name_of(&self, fd: BorrowedFd<'_>) -> PathBuf {
            let real = std::fs::read_link(sys::fd_path(fd)).expect("a descriptor's name");
            let root = self.on_host(Path::new("/tmp/root"));
            let base = if real.starts_with(&root) {
                root
            } else {
                self.host.clone()
            };
            Path::new("/").join(real.strip_prefix(&base).expect("inside the fake's folder"))
        }

        /// The binds in the order they were made: (source, container destination).
        pub(crate) fn binds(&self) -> Vec<(PathBuf, PathBuf, Attrs)> {
            self.calls
                .iter()
                .filter_map(|c| match c {
                    Call::BindRestricted {
                        source,
                        dest,
                        attrs,
                        ..
                    } => Some((source.clone(), dest.clone(), *attrs)),
                    _ => None,
                })
                .collect()
        }
    }

    impl Drop for Recording {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.host);
        }
    }

    impl Sys for Recording {
        fn open_source(&mut self, source: &Source) -> Result<io::Result<OwnedFd>> {
            let path = source.path();
            if self.missing.iter().any(|m| m == path) {
                return Ok(Err(io::Error::from_raw_os_error(libc::ENOENT)));
            }
            if self.refused.iter().any(|m| m == path) {
                return Ok(Err(io::Error::from_raw_os_error(libc::EACCES)));
            }
            let fake = self.on_host(path);
            if self.files.iter().any(|f| f == path) {
                std::fs::create_dir_all(fake.parent().expect("a parent")).expect("a folder");
                std::fs::write(&fake, "").expect("a file");
            } else {
                std::fs::create_dir_all(&fake).expect("a folder");
            }
            Ok(sys::open_path(&fake, libc::O_PATH))
        }

        fn mount_tmpfs(&mut self, target: &Path, size: u64, attrs: Attrs) -> io::Result<()> {
            self.calls.push(Call::Tmpfs {
                target: target.into(),
                size,
                attrs,
            });
            Ok(())
        }

        fn mkdir(&mut self, path: &Path) -> io::Result<()> {
            self.calls.push(Call::Mkdir(path.into()));
            Ok(())
        }

        fn mount_image(
            &mut self,
            how: &ImageMount,
            target: &Path,
            attrs: Attrs,
        ) -> Result<Mounted> {
            self.calls.push(Call::MountImage {
                how: how.clone(),
                target: target.into(),
                attrs,
            });
            Ok(match how {
                ImageMount::Kernel { .. } => Mounted::Kernel,
                ImageMount::Fuse { .. } => self.fuse_mounted,
                ImageMount::Folder => Mounted::Bind,
            })
        }

        fn mount_overlay(
            &mut self,
            _lower: &Path,
            _upper: &Path,
            _work: &Path,
            target: &Path,
            attrs: Attrs,
        ) -> io::Result<()> {
            self.calls.push(Call::Overlay {
                target: target.into(),
                attrs,
            });
            Ok(())
        }

        fn make_unbindable(&mut self, target: &Path) -> io::Result<()> {
            self.calls.push(Call::Unbindable(target.into()));
            Ok(())
        }

        fn open_staged(&mut self, path: &Path) -> io::Result<OwnedFd> {
            let fake = self.on_host(path);
            std::fs::create_dir_all(&fake)?;
            sys::open_path(&fake, libc::O_PATH | libc::O_DIRECTORY)
        }

        fn bind_restricted(
            &mut self,
            source: BorrowedFd<'_>,
            dest: BorrowedFd<'_>,
            recursive: bool,
            attrs: Attrs,
        ) -> io::Result<()> {
            if self.old_kernel {
                return Err(io::Error::from_raw_os_error(libc::ENOSYS));
            }
            let call = Call::BindRestricted {
                source: self.name_of(source),
                dest: self.name_of(dest),
                recursive,
                attrs,
            };
            self.calls.push(call);
            Ok(())
        }

        fn bind(
            &mut self,
            source: BorrowedFd<'_>,
            dest: BorrowedFd<'_>,
            recursive: bool,
        ) -> io::Result<()> {
            let call = Call::Bind {
                source: self.name_of(source),
                dest: self.name_of(dest),
                recursive,
            };
            self.calls.push(call);
            Ok(())
        }

        fn remount(&mut self, mount: BorrowedFd<'_>, flags: MsFlags) -> io::Result<()> {
            let target = self.name_of(mount);
            self.calls.push(Call::Remount { target, flags });
            Ok(())
        }

        fn write_file(
            &mut self,
            dir: BorrowedFd<'_>,
            name: &OsStr,
            _content: &str,
        ) -> io::Result<()> {
            let dest = self.name_of(dir).join(name);
            self.calls.push(Call::WriteFile(dest));
            Ok(())
        }

        fn give_to_user(&mut self, dir: BorrowedFd<'_>) -> io::Result<()> {
            let path = self.name_of(dir);
            self.calls.push(Call::GiveToUser(path));
            Ok(())
        }

        fn symlink(&mut self, dir: BorrowedFd<'_>, name: &OsStr, target: &Path) -> io::Result<()> {
            let dest = self.name_of(dir).join(name);
            self.calls.push(Call::Symlink {
                dest,
                target: target.into(),
            });
            Ok(())
        }

        fn pivot(&mut self, _root: BorrowedFd<'_>) -> io::Result<()> {
            self.calls.push(Call::Pivot);
            Ok(())
        }
    }
}
