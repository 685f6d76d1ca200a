//! Carries out a plan as root, inside the forked helper: opens every source (user input
//! with the user's rights), makes a private mount namespace, mounts the image read-only
//! under a small writable layer, binds and writes what the plan says, and pivots into
//! the result. Runs in a single-threaded process that exits when the step ends.

use crate::as_user::AsUser;
use crate::digest::{self, Cache, Digest, Source};
use crate::error::{Error, Result};
use crate::image::{self, Format, Method, OpenedImage};
use crate::image_config::{ImageConfig, CONFIG_PATH, MAX_CONFIG_SIZE};
use crate::plan::{Bind, FileContent, Opener, Plan};
use crate::request::Request;
use crate::resolve::{Create, InRoot};
use crate::share;
use crate::site;
use crate::sys;
use crate::users;
use nix::mount::MsFlags;
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The staging folder. Mounting a tmpfs over it in the new namespace hides nothing the
/// container needs: every host source, /tmp included, is opened before that.
const STAGING: &str = "/tmp";

struct OpenedBind<'a> {
    bind: &'a Bind,
    source: OwnedFd,
    is_dir: bool,
}

/// The FUSE device the caller opened and the socket on which it takes the image
/// descriptor to start squashfuse (see `container::prepare`).
pub struct FuseHandoff {
    pub device: OwnedFd,
    pub channel: OwnedFd,
}

/// Builds the container in the calling (forked, single-threaded) process and pivots
/// into it. Also returns the user's process (see `as_user`): dropping it waits for it
/// to exit, which the caller does after reporting, off the step's critical path.
pub fn assemble(
    req: &Request,
    plan: &Plan,
    fuse: Option<FuseHandoff>,
) -> Result<(ImageFacts, AsUser)> {
    let user = &req.user;
    // First the namespace: bind sources must be opened in the namespace they are
    // mounted in (a mount of another namespace cannot be bound: EINVAL). The user's
    // opener is forked after this, so it opens them here too.
    sys::unshare_mount_namespace().map_err(|e| Error::system("creating a mount namespace", e))?;
    sys::make_tree_slave(Path::new("/"))
        .map_err(|e| Error::system("making the mount namespace private", e))?;
    let as_user = AsUser::start(user)
        .map_err(|e| Error::system(format!("starting a process as {}", user.name), e))?;
    let mut skipped = Vec::new();
    // Ferry's and the admin's sources first, while the user's process starts.
    let host_sources = open_sources(
        plan.binds
            .iter()
            .filter(|b| b.opener == Opener::Host)
            .map(|b| (b, sys::open_path(&b.source, libc::O_PATH))),
        "root",
        &mut skipped,
    )?;
    let (image, user_sources) = open_user_inputs(&as_user, req, plan, &mut skipped)?;
    let method = image::method_for(&image, &req.image_policy)?;
    let (mut facts, verified) = verify_image(req, &image)?;
    let mut sources: Vec<OpenedBind> = user_sources.into_iter().chain(host_sources).collect();
    // Back into plan order (parents first), which the split by opener disturbed.
    sources.sort_by_key(|s| plan.binds.iter().position(|b| std::ptr::eq(b, s.bind)));

    let staging = Path::new(STAGING);
    sys::mount_fs(
        Path::new("ferry"),
        staging,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=0700,size={}", req.writable_layer_size)),
    )
    .map_err(|e| Error::system("mounting the staging tmpfs", e))?;
    for dir in ["image", "upper", "work", "root"] {
        std::fs::create_dir(staging.join(dir))
            .map_err(|e| Error::system("creating the staging folders", e))?;
    }
    let mounted = mount_image(req, &image, method, fuse, &staging.join("image"))?;
    facts.mounted_by = mounted.name().into();
    if let Some(version) = verified {
        // What was hashed is what the loop device reads, unless the file changed since.
        let now = image_file(&image).and_then(|f| digest::FileVersion::of(&f));
        if now.ok().as_ref() != Some(&version) {
            return Err(Error::ImageChanged {
                path: req.image.clone(),
            });
        }
    }
    let overlay_opts = format!(
        "lowerdir={0}/image,upperdir={0}/upper,workdir={0}/work",
        staging.display()
    );
    let root_path = staging.join("root");
    sys::mount_fs(
        Path::new("ferry"),
        &root_path,
        "overlay",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&overlay_opts),
    )
    .map_err(|e| image_err(&image, "mounting the writable layer (overlay)", e))?;
    // Unbindable (only now: overlayfs clones its layers' mounts, which must not be):
    // recursive binds of / or /tmp skip the staging tree instead of copying the
    // container into itself.
    sys::make_unbindable(staging)
        .map_err(|e| Error::system("making the staging tmpfs unbindable", e))?;
    let root = sys::open_path(&root_path, libc::O_PATH | libc::O_DIRECTORY)
        .map_err(|e| Error::system("opening the new root", e))?;
    let writable_dev = sys::fstat(root.as_fd())
        .map_err(|e| Error::system("stat of the new root", e))?
        .st_dev;
    let in_root = InRoot {
        root: &root,
        writable_dev: Some(writable_dev),
    };
    // Read before any bind: only the image's own files can answer.
    let config = read_image_config(&in_root, &req.image)?;
    if mounted == Mounted::OwnFuse {
        // Other steps of the job may take this mount from here (`share`).
        keep_image_mount(&in_root, &staging.join("image"))?;
    }
    let workdir = effective_workdir(req, plan, config.as_ref());
    if let Some((_, err)) = skipped
        .iter()
        // Missing on the host is fine (the image may have that folder: check_workdir
        // decides); present but refused to the user is the user's problem to hear about.
        .find(|(b, e)| {
            b.dest == *workdir
                && b.opener == Opener::User
                && e.kind() != std::io::ErrorKind::NotFound
        })
    {
        return Err(Error::Workdir {
            path: workdir.clone(),
            reason: format!("{} cannot use it ({err}); start from a folder you can read or choose one inside the image", user.name),
        });
    }

    for file in &plan.files {
        let content = match &file.content {
            FileContent::Passwd => std::iter::once(user)
                .chain(&req.accounts)
                .fold(read_in_root(&in_root, &file.dest), |text, u| {
                    users::merge_passwd(&text, u)
                }),
            FileContent::Group => std::iter::once(user)
                .chain(&req.accounts)
                .fold(read_in_root(&in_root, &file.dest), |text, u| {
                    users::merge_group(&text, u)
                }),
            FileContent::HostCopy(host) => match std::fs::read_to_string(host) {
                Ok(text) => text,
                Err(_) => continue, // the host has none: leave the image's
            },
        };
        write_in_root(&in_root, &file.dest, &content).map_err(|e| {
            Error::system(
                format!("writing {} in the container", file.dest.display()),
                e,
            )
        })?;
    }
    for link in &plan.links {
        let (parent, name) = split(&link.dest);
        let dir = in_root
            .open(parent, Create::Dir)
            .map_err(|e| Error::system(format!("creating {}", parent.display()), e))?;
        let _ = sys::unlinkat(dir.as_fd(), name, false);
        sys::symlinkat(&link.target, dir.as_fd(), name)
            .map_err(|e| Error::system(format!("linking {}", link.dest.display()), e))?;
    }
    for opened in &sources {
        bind_one(&in_root, &root_path, req, opened)?;
    }
    sys::remount_bind(
        &root_path,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
    .map_err(|e| Error::system("making the image root read-only", e))?;
    sys::pivot_into(root.as_fd())
        .map_err(|e| Error::system("switching to the container root", e))?;
    drop(sources);
    check_workdir(&as_user, user, &workdir, &req.image)?;
    Ok((ImageFacts { config, ..facts }, as_user))
}

/// How the user's bind sources are opened: for reading, which checks read permission
/// on the object itself (O_PATH would only check the folders above it), never waiting
/// (a FIFO opens at once) and never becoming a controlling terminal.
const USER_SOURCE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens the image and the user's bind sources in a process that is the user (see
/// `as_user`): whatever the paths name (symlinks, `/proc/PID/cwd` of someone else's
/// process), only what the user could open themselves comes back.
fn open_user_inputs<'a>(
    as_user: &AsUser,
    req: &Request,
    plan: &'a Plan,
    skipped: &mut Vec<(&'a Bind, std::io::Error)>,
) -> Result<(OpenedImage, Vec<OpenedBind<'a>>)> {
    let user = &req.user;
    let gone = |e| {
        Error::system(
            format!("opening the image and mount sources as {}", user.name),
            e,
        )
    };
    let image_fd = as_user.open(&req.image, image::OPEN_FLAGS).map_err(gone)?;
    let image = image::examine(&req.image, image_fd, &user.name)?;
    let mut opened = Vec::new();
    for bind in plan.binds.iter().filter(|b| b.opener == Opener::User) {
        opened.push((
            bind,
            as_user
                .open(&bind.source, USER_SOURCE_FLAGS)
                .map_err(gone)?,
        ));
    }
    let sources = open_sources(opened.into_iter(), &user.name, skipped)?;
    Ok((image, sources))
}

/// Keeps each opened bind source with what it is; a source that could not be opened is
/// skipped when its bind is optional and an error otherwise.
fn open_sources<'a>(
    opened: impl Iterator<Item = (&'a Bind, std::io::Result<OwnedFd>)>,
    who: &str,
    skipped: &mut Vec<(&'a Bind, std::io::Error)>,
) -> Result<Vec<OpenedBind<'a>>> {
    let mut out = Vec::new();
    for (bind, result) in opened {
        match result {
            Ok(source) => {
                let st = sys::fstat(source.as_fd())
                    .map_err(|e| Error::system(format!("stat of {}", bind.source.display()), e))?;
                out.push(OpenedBind {
                    bind,
                    source,
                    is_dir: sys::is_dir(&st),
                });
            }
            Err(e) if bind.optional => skipped.push((bind, e)),
            Err(e) => {
                return Err(Error::MountSource {
                    path: bind.source.clone(),
                    user: who.to_string(),
                    source: e,
                });
            }
        }
    }
    Ok(out)
}

/// How the image came to be mounted (the provenance record's `mounted_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mounted {
    Kernel,
    /// By a squashfuse started for this container.
    OwnFuse,
    /// A copy of the batch step's FUSE mount (`share`).
    SharedFuse,
    Bind,
}

impl Mounted {
    fn name(self) -> &'static str {
        match self {
            Mounted::Kernel => "kernel",
            Mounted::OwnFuse => "fuse",
            Mounted::SharedFuse => "fuse-shared",
            Mounted::Bind => "bind",
        }
    }
}

fn mount_image(
    req: &Request,
    image: &OpenedImage,
    method: Method,
    fuse: Option<FuseHandoff>,
    target: &Path,
) -> Result<Mounted> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let kernel = |result: std::io::Result<()>, what| {
        result
            .map(|_| Mounted::Kernel)
            .map_err(|e| image_err(image, what, e))
    };
    match (method, image.format) {
        (Method::Fuse, Format::Squashfs | Format::Sif { .. }) => {
            if borrow_batch_mount(req, image, target)? {
                // The caller learns from the closed channel that no server is needed.
                drop(fuse);
                return Ok(Mounted::SharedFuse);
            }
            let offset = match image.format {
                // squashfuse reads the root partition straight from the file.
                Format::Sif { offset, .. } => offset,
                _ => 0,
            };
            mount_with_fuse(req, image, offset, fuse, target).map(|_| Mounted::OwnFuse)
        }
        (Method::Bind, Format::Directory) => {
            sys::mount_bind(&sys::fd_path(image.fd.as_fd()), target, false)
                .and_then(|_| sys::remount_bind(target, ro))
                .map(|_| Mounted::Bind)
                .map_err(|e| image_err(image, "binding the root folder", e))
        }
        (Method::Kernel, Format::Squashfs) => {
            let device = loop_device(image, 0, 0)?;
            // The mount holds the device; with autoclear it frees itself when the
            // namespace and so the mount go away, so our handle can close now.
            kernel(
                sys::mount_fs(&device.path, target, "squashfs", ro, None),
                "mounting the SquashFS",
            )
        }
        (Method::Kernel, Format::Sif { offset, size }) => {
            // The root partition straight from the file: the loop device shows only it.
            let device = loop_device(image, offset, size)?;
            kernel(
                sys::mount_fs(&device.path, target, "squashfs", ro, None),
                "mounting the SIF's SquashFS partition",
            )
        }
        (Method::Kernel, Format::Ext) => {
            // The ext4 driver reads ext2 and ext3 too. `noload`: never replay the
            // journal of an image that was not unmounted cleanly (the device is
            // read-only: replaying would fail the mount, and root must not write into
            // a user's file).
            let device = loop_device(image, 0, 0)?;
            kernel(
                sys::mount_fs(&device.path, target, "ext4", ro, Some("noload")),
                "mounting the ext image",
            )
        }
        // `image::method_for` never pairs these.
        (method, format) => Err(Error::system(
            format!("image {}", image.path.display()),
            std::io::Error::other(format!(
                "no way to mount a {} image by {method:?}",
                format.name()
            )),
        )),
    }
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
    share::borrow_image_mount(peer, target)
        .map_err(|e| Error::system("returning from the batch step's mount namespace", e))
}

/// Binds the image mount read-only at `share::SHARED_IMAGE` inside the new root (the
/// folder resolved and made inside the root: the image's own symlinks cannot move it).
fn keep_image_mount(in_root: &InRoot, image: &Path) -> Result<()> {
    let failed = |e| Error::system(format!("binding the image at {}", share::SHARED_IMAGE), e);
    let at = Path::new(share::SHARED_IMAGE.trim_start_matches('/'));
    let dest = in_root.open(at, Create::Dir).map_err(failed)?;
    let source = sys::open_path(image, libc::O_PATH | libc::O_DIRECTORY).map_err(failed)?;
    let read_only = sys::MountAttrs {
        readonly: true,
        nosuid: true,
        nodev: true,
    };
    match sys::bind_through_fds(source.as_fd(), dest.as_fd(), false, read_only) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        done => return done.map_err(failed),
    }
    sys::mount_bind(image, &sys::fd_path(dest.as_fd()), false).map_err(failed)?;
    // Reopen: the name now leads to the new mount's root, which is what we remount.
    let mounted = in_root.open(at, Create::Nothing).map_err(failed)?;
    sys::remount_bind(
        &sys::fd_path(mounted.as_fd()),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )
    .map_err(failed)
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
    let failed = |reason: String| Error::FuseFailed {
        path: image.path.clone(),
        helper: req.image_policy.fuse_helper.clone(),
        reason,
    };
    let Some(FuseHandoff { device, channel }) = fuse else {
        return Err(failed("/dev/fuse is not available on this node".into()));
    };
    let user = &req.user;
    sys::mount_fuse(device.as_fd(), target, user.uid, user.gid)
        .map_err(|e| image_err(image, "mounting FUSE", e))?;
    drop(device);
    sys::send_fd(channel.as_fd(), image.fd.as_fd(), offset)
        .map_err(|e| Error::system("handing the image to squashfuse", e))?;
    drop(channel);
    // The first look waits for the server's answer: a dead server reads ENOTCONN here.
    std::fs::metadata(target).map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// A read-only loop device over `image` from `offset`, `size` bytes long (0: to the
/// end): one another step already made for the same file and range, or a new one.
fn loop_device(image: &OpenedImage, offset: u64, size: u64) -> Result<sys::LoopDevice> {
    let version = image_file(image)
        .and_then(|f| digest::FileVersion::of(&f))
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

fn image_err(image: &OpenedImage, what: &'static str, source: std::io::Error) -> Error {
    Error::ImageMount {
        path: image.path.clone(),
        what,
        source,
    }
}

fn bind_one(in_root: &InRoot, root_path: &Path, req: &Request, opened: &OpenedBind) -> Result<()> {
    let bind = opened.bind;
    let create = if opened.is_dir {
        Create::Dir
    } else {
        Create::File
    };
    let dest_err = |reason: String| Error::MountDestination {
        path: bind.dest.clone(),
        reason,
    };
    let dest = in_root.open(&bind.dest, create).map_err(|e| {
        dest_err(format!("cannot be created in the container ({e}); choose a destination in the image's own folders"))
    })?;
    if bind.user_destination {
        // The image's symlinks (`/data -> /`) and the user's (`~/l -> /etc`) were
        // followed inside the root: judge where the destination really is.
        let resolved = in_container_path(dest.as_fd(), root_path)
            .ok_or_else(|| dest_err("cannot be told apart from the container's root".into()))?;
        site::destination_allowed(
            req.user_mount_destinations.as_deref(),
            &bind.dest,
            &resolved,
        )
        .map_err(dest_err)?;
    }
    let dest_is_dir = sys::is_dir(&sys::fstat(dest.as_fd()).map_err(|e| dest_err(e.to_string()))?);
    if dest_is_dir != opened.is_dir {
        let kinds = if opened.is_dir {
            ("a folder", "a file")
        } else {
            ("a file", "a folder")
        };
        return Err(dest_err(format!(
            "source {} is {} but the destination is {}",
            bind.source.display(),
            kinds.0,
            kinds.1
        )));
    }
    let failed = |what: &str, e: std::io::Error| {
        Error::system(
            format!(
                "{what} {} to {}",
                bind.source.display(),
                bind.dest.display()
            ),
            e,
        )
    };
    let attrs = sys::MountAttrs {
        readonly: bind.readonly,
        nosuid: true,
        nodev: !bind.device_nodes,
    };
    match sys::bind_through_fds(opened.source.as_fd(), dest.as_fd(), bind.recursive, attrs) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::ENOSYS) => return Err(failed("binding", e)),
        Err(_) => {} // before Linux 5.12: bind, then remount by name
    }
    sys::mount_bind(
        &sys::fd_path(opened.source.as_fd()),
        &sys::fd_path(dest.as_fd()),
        bind.recursive,
    )
    .map_err(|e| failed("binding", e))?;
    // Reopen: the name now leads to the new mount's root, which is what we remount.
    let mounted = in_root
        .open(&bind.dest, Create::Nothing)
        .map_err(|e| dest_err(e.to_string()))?;
    let mut flags = MsFlags::MS_NOSUID | kept_flags(&mounted);
    if attrs.nodev {
        flags |= MsFlags::MS_NODEV;
    }
    if bind.readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    sys::remount_bind(&sys::fd_path(mounted.as_fd()), flags)
        .map_err(|e| Error::system(format!("restricting the bind {}", bind.dest.display()), e))?;
    Ok(())
}

/// Where the open object `fd` is inside the new root at `root_path` (as the container
/// will see it), from the kernel's own name for it.
fn in_container_path(fd: std::os::fd::BorrowedFd<'_>, root_path: &Path) -> Option<PathBuf> {
    let real = std::fs::read_link(sys::fd_path(fd)).ok()?;
    let inside = real.strip_prefix(root_path).ok()?;
    Some(Path::new("/").join(inside))
}

/// The flags the host gave the source mount: a remount must not drop `noexec` or `ro`.
fn kept_flags(fd: &OwnedFd) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::fstatvfs(fd) else {
        return MsFlags::empty();
    };
    use nix::sys::statvfs::FsFlags;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            out |= keep;
        }
    }
    out
}

/// Reads a small text file of the image (passwd, group). The image is user input, so
/// root reads at most `MAX_ACCOUNT_FILE` bytes of it and only a regular file.
fn read_in_root(in_root: &InRoot, path: &Path) -> String {
    use std::io::Read;
    const MAX_ACCOUNT_FILE: u64 = 4 << 20;
    let Ok(fd) = in_root.open(path, Create::Nothing) else {
        return String::new();
    };
    if !sys::fstat(fd.as_fd()).is_ok_and(|st| sys::is_regular(&st)) {
        return String::new();
    }
    let mut text = String::new();
    let _ = std::fs::File::open(sys::fd_path(fd.as_fd()))
        .map(|f| f.take(MAX_ACCOUNT_FILE).read_to_string(&mut text));
    text
}

/// Writes a regular file in the writable layer, replacing a symlink or file the image has.
fn write_in_root(in_root: &InRoot, path: &Path, content: &str) -> std::io::Result<()> {
    let (parent, name) = split(path);
    let dir = in_root.open(parent, Create::Dir)?;
    match sys::openat(Some(dir.as_fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
        Ok(existing) if !sys::is_regular(&sys::fstat(existing.as_fd())?) => {
            sys::unlinkat(dir.as_fd(), name, false)?
        }
        _ => {}
    }
    let fd = sys::openat(
        Some(dir.as_fd()),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        0o644,
    )?;
    std::fs::File::from(fd).write_all(content.as_bytes())
}

fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or(OsStr::new(".")),
    )
}

/// The working folder must be one the user can enter in the container: checked by a
/// process that is the user, so root's view of folders the user cannot search never
/// shapes the answer.
fn check_workdir(as_user: &AsUser, user: &users::User, workdir: &Path, image: &Path) -> Result<()> {
    let gone = |e| Error::system(format!("checking the working folder as {}", user.name), e);
    as_user.can_enter(workdir).map_err(gone)?.map_err(|e| Error::Workdir {
        path: workdir.to_path_buf(),
        reason: format!(
            "{} cannot enter it in the container of image {} ({e}); choose a folder that exists there and that you can enter, or mount one there",
            user.name,
            image.display()
        ),
    })
}

/// What the caller learns about the image: for the environment and the provenance record.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageFacts {
    pub format: String,
    /// Who reads the image (`Mounted::name`): `kernel`, `fuse` (squashfuse as the user),
    /// `fuse-shared` (the batch step's squashfuse) or `bind` (a root folder).
    #[serde(default)]
    pub mounted_by: String,
    pub size: u64,
    pub mtime_unix: i64,
    pub digest: Option<Digest>,
    pub digest_source: Option<Source>,
    /// The image's stored configuration (`/.ferry/image.json`), when it has one.
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

/// Where the command starts: an explicit request, else the image's WorkingDir, else
/// the plan's default (the caller's folder).
pub fn effective_workdir(req: &Request, plan: &Plan, config: Option<&ImageConfig>) -> PathBuf {
    match (&req.workdir, config.and_then(ImageConfig::workdir)) {
        (None, Some(image_dir)) => image_dir,
        _ => plan.workdir.clone(),
    }
}

/// The image's `/.ferry/image.json`, resolved inside the image and read as a bounded
/// regular file (the image is user input).
fn read_image_config(in_root: &InRoot, image: &Path) -> Result<Option<ImageConfig>> {
    use std::io::Read;
    let bad = |what: String| {
        Error::ImageConfig(format!(
            "image {}: {CONFIG_PATH} {what}; rebuild the image with ferry import, or remove that file",
            image.display()
        ))
    };
    let fd = match in_root.open(Path::new(CONFIG_PATH), Create::Nothing) {
        Ok(fd) => fd,
        // No such file, or no /.ferry folder at all: an image without a configuration.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(bad(format!("cannot be opened ({e})"))),
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| bad(format!("cannot be read ({e})")))?;
    if !sys::is_regular(&st) {
        return Err(bad("is not a regular file".into()));
    }
    if st.st_size as u64 > MAX_CONFIG_SIZE {
        return Err(bad(format!("is larger than {MAX_CONFIG_SIZE} bytes")));
    }
    let mut text = Vec::new();
    std::fs::File::open(sys::fd_path(fd.as_fd()))
        .and_then(|f| f.take(MAX_CONFIG_SIZE).read_to_end(&mut text))
        .map_err(|e| bad(format!("cannot be read ({e})")))?;
    ImageConfig::parse(&text, image)
        .map(Some)
        .map_err(Error::ImageConfig)
}

/// Holes a hashed image may have (and still more than its data) before it is refused.
const MAX_HOLES: u64 = 1 << 30;

fn image_file(image: &OpenedImage) -> std::io::Result<std::fs::File> {
    Ok(std::fs::File::from(image.fd.try_clone()?))
}

/// Checks a pinned digest against the opened file (and hashes small unpinned images for
/// the record). Returns the file version that was verified, to re-check after mounting.
fn verify_image(
    req: &Request,
    image: &OpenedImage,
) -> Result<(ImageFacts, Option<digest::FileVersion>)> {
    use std::os::unix::fs::MetadataExt;
    let file =
        image_file(image).map_err(|e| Error::system("duplicating the image descriptor", e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::system(format!("stat of {}", req.image.display()), e))?;
    let mut facts = ImageFacts {
        format: image.format.name().into(),
        size: meta.size(),
        mtime_unix: meta.mtime(),
        ..Default::default()
    };
    if image.format == Format::Directory {
        return match req.pinned {
            Some(_) => Err(Error::PinnedFolder {
                path: req.image.clone(),
            }),
            None => Ok((facts, None)),
        };
    }
    if req.pinned.is_none() && meta.size() > req.hash_unpinned_up_to {
        return Ok((facts, None));
    }
    // Holes read as zeros at the speed of the CPU: a sparse file of terabytes would keep
    // root hashing for hours. A real image's data is on disk.
    let allocated = meta.blocks().saturating_mul(512);
    let holes = meta.size().saturating_sub(allocated);
    if holes > MAX_HOLES && holes > allocated {
        return Err(Error::SparseImage {
            path: req.image.clone(),
            holes,
            size: meta.size(),
        });
    }
    let cache = req.digest_cache.as_ref().map(Cache::new);
    let (found, source, version) = digest::digest_of(&file, cache.as_ref())
        .map_err(|e| image_err(image, "reading the image to verify its digest", e))?;
    if let Some(expected) = &req.pinned {
        if *expected != found {
            return Err(Error::DigestMismatch {
                path: req.image.clone(),
                expected: expected.to_string(),
                actual: found.to_string(),
            });
        }
    }
    facts.digest = Some(found);
    facts.digest_source = Some(source);
    Ok((facts, Some(version)))
}
