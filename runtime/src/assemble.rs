//! Carries out a plan as root, inside the forked helper: makes a private mount
//! namespace, opens the image as the user, asks `plan` for the list of operations, and
//! performs them in a short loop through `privileged::Sys` (the closed list of what
//! root does). The loop adds only what needs the live system: opening each source
//! with the right rights, resolving destinations inside the new root, and the
//! fallback for kernels without mount_setattr. Runs in a single-threaded process that
//! exits when the step ends.

use crate::as_user::AsUser;
use crate::container::ImageFacts;
use crate::error::{Result, SetupError};
use crate::image;
use crate::image_cache::NodeCache;
use crate::image_config::{
    ImageConfig, ImageConfigError, StoredProblem, CONFIG_PATH, MAX_CONFIG_SIZE,
};
use crate::mount_error::{MountError, MountStep};
use crate::plan::{self, Attrs, Bind, FileContent, Op, Plan};
use crate::privileged::{self, remount_flags, FuseHandoff, Mounted, Sys};
use crate::request::Request;
use crate::resolve::{Create, InRoot};
use crate::site;
use crate::sys;
use crate::users;
use crate::verify;
use nix::mount::MsFlags;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Builds the container in the calling (forked, single-threaded) process and pivots
/// into it. Also returns the user's process (see `as_user`): dropping it waits for it
/// to exit, which the caller does after reporting, off the step's critical path.
pub(crate) fn assemble(req: &Request, fuse: Option<FuseHandoff>) -> Result<Assembled> {
    let user = &req.user;
    // Before the namespace: the kept mounts are named in the host's.
    let (cache, cache_problem) = match NodeCache::open(&req.image_cache) {
        Ok(cache) => (cache, None),
        Err(problem) => (None, Some(problem)),
    };
    // Slurm's private /tmp per job: the container is made from the job's namespace, so
    // it sees the job's /tmp and /dev/shm as the job's other steps do. After the cache
    // (whose names live in the host's namespace), before the user's opener is forked.
    if let Some(holder) = &req.job_namespace {
        crate::job_namespace::enter(holder).map_err(|source| MountError::JobNamespace {
            path: holder.clone(),
            source,
        })?;
    }
    // First the namespace: bind sources must be opened in the namespace they are
    // mounted in (a mount of another namespace cannot be bound: EINVAL). The user's
    // opener is forked after this, so it opens them here too.
    sys::unshare_mount_namespace().map_err(|e| MountStep::Namespace.failed(e))?;
    sys::make_tree_slave(Path::new("/")).map_err(|e| MountStep::PrivateNamespace.failed(e))?;
    let as_user = AsUser::start(user).map_err(|source| SetupError::StartAsUser {
        user: user.name.clone(),
        source,
    })?;
    let image_fd = as_user
        .open(&req.image, image::OPEN_FLAGS)
        .map_err(|source| SetupError::OpenAsUser {
            user: user.name.clone(),
            source,
        })?;
    let image = image::examine(&req.image, image_fd, &user.name)?;
    let method = image::method_for(&image, &req.image_policy)?;
    let plan = plan::plan(req, image.format, method)?;
    let mut real = privileged::Real {
        req,
        as_user: &as_user,
        image: &image,
        fuse,
        verified: None,
        cache,
        cache_problem,
        cache_note: None,
    };
    // Before hashing, which can take long: a missing source fails at once.
    let sources = open_sources(&mut real, req, &plan)?;
    let (facts, verified) = verify::verify_image(req, &image)?;
    real.verified = verified;
    let built = perform(&mut real, req, &plan, sources)?;
    let (cache, cache_note) = (real.cache.take(), real.cache_note.take());
    drop(real);
    check_workdir(&as_user, user, &built.workdir, &req.image)?;
    let facts = ImageFacts {
        mounted_by: built.mounted.name().into(),
        config: built.config,
        cache: cache_note,
        ..facts
    };
    Ok(Assembled {
        facts,
        as_user,
        cache,
    })
}

/// A container made: what the helper reports, the user's process (dropping it waits
/// for it to exit) and the cache, whose lock on the entry used is held until the
/// caller holds its own.
pub(crate) struct Assembled {
    pub(crate) facts: ImageFacts,
    pub(crate) as_user: AsUser,
    pub(crate) cache: Option<NodeCache>,
}

/// What performing a plan found out.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) mounted: Mounted,
    pub(crate) config: Option<ImageConfig>,
    pub(crate) workdir: PathBuf,
}

struct OpenedSource {
    fd: OwnedFd,
    is_dir: bool,
}

/// The new root, once the plan has opened it.
struct Root {
    fd: OwnedFd,
    /// Its host name (to tell where a destination resolved).
    path: PathBuf,
    /// The writable layer's device: only there may missing folders be made.
    dev: u64,
}

impl Root {
    fn resolver(&self) -> InRoot<'_> {
        InRoot {
            root: &self.fd,
            writable_dev: Some(self.dev),
        }
    }
}

/// Performs `plan` through `sys`, in order, with the bind sources `open_sources` opened
/// for it (before: the staging tmpfs hides /tmp, and the user's sources are opened by
/// the user's process).
pub(crate) fn perform<'p>(
    sys: &mut impl Sys,
    req: &Request,
    plan: &'p Plan,
    sources: Sources<'p>,
) -> Result<Built> {
    let Sources {
        opened: mut sources,
        skipped,
    } = sources;
    let mut mounted = None;
    let mut root: Option<Root> = None;
    let mut config = None;
    let mut workdir = plan.workdir.clone();
    let no_root = || MountError::PlanOrder("the plan uses the root before opening it");
    let mut binds = 0;
    // Files already written in the upper layer (`prewrite_in_upper`).
    let mut prewritten: Vec<PathBuf> = Vec::new();
    for op in &plan.ops {
        match op {
            Op::Tmpfs {
                target,
                size,
                attrs,
            } => sys
                .mount_tmpfs(target, *size, *attrs)
                .map_err(|e| MountStep::StagingTmpfs.failed(e))?,
            Op::Mkdir { path } => sys
                .mkdir(path)
                .map_err(|e| MountStep::StagingFolders.failed(e))?,
            Op::MountImage { how, target, attrs } => {
                mounted = Some(sys.mount_image(how, target, *attrs)?)
            }
            Op::Overlay {
                lower,
                upper,
                work,
                target,
                attrs,
            } => {
                if crate::userns::entered() {
                    claim_parents_in_upper(plan, lower, upper)
                        .and_then(|()| prewrite_in_upper(req, plan, lower, upper))
                        .map(|done| prewritten = done)
                        .map_err(|e| MountStep::StagingFolders.failed(e))?;
                }
                sys.mount_overlay(lower, upper, work, target, *attrs)
            }
            .map_err(|source| MountError::ImageMount {
                path: req.image.clone(),
                what: "mounting the writable layer (overlay)",
                source,
            })?,
            Op::MakeUnbindable { target } => sys
                .make_unbindable(target)
                .map_err(|e| MountStep::Unbindable.failed(e))?,
            Op::OpenRoot { path } => {
                let fd = sys
                    .open_staged(path)
                    .map_err(|e| MountStep::OpenRoot.failed(e))?;
                let stat_err = |e| MountStep::StatRoot.failed(e);
                let dev = sys::fstat(fd.as_fd()).map_err(stat_err)?.st_dev;
                let path = std::fs::read_link(sys::fd_path(fd.as_fd())).map_err(stat_err)?;
                root = Some(Root { fd, path, dev });
            }
            Op::ReadImageConfig => {
                let root = root.as_ref().ok_or_else(no_root)?;
                config = read_image_config(&root.resolver(), &req.image)?;
                workdir = effective_workdir(req, config.as_ref());
                refuse_unreadable_workdir(req, &workdir, &skipped)?;
            }
            Op::ShareImageMount {
                source,
                dest,
                attrs,
            } => {
                if mounted == Some(Mounted::OwnFuse) {
                    // Other steps of the job may take this mount from here (`share`).
                    let root = root.as_ref().ok_or_else(no_root)?;
                    share_image_mount(sys, root, source, dest, *attrs)?;
                }
            }
            Op::WriteFile { dest, .. } if prewritten.contains(dest) => {}
            Op::WriteFile { dest, content } => {
                let root = root.as_ref().ok_or_else(no_root)?;
                write_file(sys, root, req, dest, content)?
            }
            Op::Symlink { dest, target } => {
                let root = root.as_ref().ok_or_else(no_root)?;
                let (parent, name) = split(dest);
                let dir = root
                    .resolver()
                    .open(parent, Create::Dir)
                    .map_err(|source| MountError::CreateFolder {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                sys.symlink(dir.as_fd(), name, target)
                    .map_err(|source| MountError::Link {
                        path: dest.clone(),
                        source,
                    })?;
            }
            Op::HomeFolder { dest } => {
                let root = root.as_ref().ok_or_else(no_root)?;
                let made = |source| MountError::CreateFolder {
                    path: dest.clone(),
                    source,
                };
                // The folders above it are made as needed (root's); the home itself only
                // when nothing has its name: an image's own entry there (a folder, or a
                // symlink to one) is never given away.
                let (parent, name) = split(dest);
                let parent = root.resolver().open(parent, Create::Dir).map_err(made)?;
                match sys::mkdirat(parent.as_fd(), name, 0o700) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(made(e).into()),
                    Ok(()) => {
                        let home = sys::openat(
                            Some(parent.as_fd()),
                            name,
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                            0,
                        )
                        .map_err(made)?;
                        sys.give_to_user(home.as_fd()).map_err(made)?;
                    }
                }
            }
            Op::Bind(bind) => {
                let root = root.as_ref().ok_or_else(no_root)?;
                if let Some(source) = sources[binds].take() {
                    bind_one(sys, root, req, bind, &source)?;
                }
                binds += 1;
            }
            Op::RemountRoot { attrs } => {
                let root = root.as_ref().ok_or_else(no_root)?;
                sys.remount(root.fd.as_fd(), remount_flags(*attrs, MsFlags::empty()))
                    .map_err(|e| MountStep::RootReadOnly.failed(e))?
            }
            Op::Pivot => {
                let root = root.as_ref().ok_or_else(no_root)?;
                sys.pivot(root.fd.as_fd())
                    .map_err(|e| MountStep::Pivot.failed(e))?
            }
        }
    }
    let mounted = mounted.ok_or(MountError::PlanOrder("the plan mounts no image"))?;
    Ok(Built {
        mounted,
        config,
        workdir,
    })
}

/// Without root (in ferry's user namespace) the image's files belong to ids the
/// namespace does not map (root's, unless `--fakeroot` and an image served by
/// squashfuse), so nothing can be made in the image's folders, not even the account
/// files or a missing mount point. Before the overlay is mounted, the folders that
/// hold what the plan makes (account files, the home folder, the binds' destinations)
/// are made in its upper layer, which is ours: there they merge with the image's
/// folders of the same name and take ownership of them. A component the image has as
/// a symlink or a file is left to the image (the plan then fails there, clearly, as it
/// would for root).
fn claim_parents_in_upper(plan: &Plan, lower: &Path, upper: &Path) -> std::io::Result<()> {
    let mut made: Vec<PathBuf> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::WriteFile { dest, .. } | Op::Symlink { dest, .. } => Some(dest.clone()),
            Op::HomeFolder { dest } => Some(dest.clone()),
            Op::Bind(bind) => Some(bind.dest.clone()),
            _ => None,
        })
        .collect();
    made.push(Path::new(OWN_FILES).join("file"));
    for dest in made {
        let Some(parent) = dest.parent() else {
            continue;
        };
        let mut at = PathBuf::new();
        for part in parent.components().skip(1) {
            at.push(part);
            match std::fs::symlink_metadata(lower.join(&at)) {
                Ok(meta) if meta.is_dir() => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => break, // a symlink or a file in the image: its own
            }
            match std::fs::create_dir(upper.join(&at)) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// A bind whose source could not be opened, and why.
type Skipped<'p> = Vec<(&'p Bind, std::io::Error)>;

/// The plan's bind sources, opened: one entry per bind in plan order (None: skipped).
pub(crate) struct Sources<'p> {
    opened: Vec<Option<OpenedSource>>,
    skipped: Skipped<'p>,
}

/// Opens the source of every bind of `plan` (the host's first, while the user's
/// process starts), in plan order. A source that cannot be opened is skipped when its
/// bind is optional and an error otherwise.
pub(crate) fn open_sources<'p>(
    sys: &mut impl Sys,
    req: &Request,
    plan: &'p Plan,
) -> Result<Sources<'p>> {
    let binds: Vec<&Bind> = plan.binds().collect();
    let mut opened: Vec<Option<OpenedSource>> = binds.iter().map(|_| None).collect();
    let mut skipped = Vec::new();
    for as_user in [false, true] {
        for (i, bind) in binds.iter().enumerate() {
            if bind.source.as_user() != as_user {
                continue;
            }
            let who = if as_user {
                req.user.name.as_str()
            } else {
                "root"
            };
            match sys.open_source(&bind.source)? {
                Ok(fd) => {
                    let st = sys::fstat(fd.as_fd()).map_err(|source| MountError::SourceStat {
                        path: bind.source.path().to_path_buf(),
                        source,
                    })?;
                    opened[i] = Some(OpenedSource {
                        fd,
                        is_dir: sys::is_dir(&st),
                    });
                }
                Err(e) if bind.optional => skipped.push((*bind, e)),
                Err(e) => {
                    let device = req.devices.mounts.iter().find(|m| {
                        as_user
                            && m.host_path == bind.source.path()
                            && m.container_path == bind.dest
                    });
                    if let Some(device) = device {
                        return Err(MountError::DeviceSource {
                            from: device.from.clone(),
                            path: bind.source.path().to_path_buf(),
                            user: who.to_string(),
                            source: e,
                        }
                        .into());
                    }
                    return Err(MountError::Source {
                        path: bind.source.path().to_path_buf(),
                        user: who.to_string(),
                        source: e,
                    }
                    .into());
                }
            }
        }
    }
    Ok(Sources { opened, skipped })
}

/// Missing on the host is fine (the image may have that folder: `check_workdir`
/// decides); present but refused to the user is the user's problem to hear about.
fn refuse_unreadable_workdir(req: &Request, workdir: &Path, skipped: &Skipped) -> Result<()> {
    let refused = skipped.iter().find(|(b, e)| {
        b.dest == workdir && b.source.as_user() && e.kind() != std::io::ErrorKind::NotFound
    });
    match refused {
        Some((_, err)) => Err(MountError::Workdir {
            path: workdir.to_path_buf(),
            reason: format!("{} cannot use it ({err}); start from a folder you can read or choose one inside the image", req.user.name),
        }
        .into()),
        None => Ok(()),
    }
}

fn write_file(
    sys: &mut impl Sys,
    root: &Root,
    req: &Request,
    dest: &Path,
    content: &FileContent,
) -> Result<()> {
    let in_root = root.resolver();
    let Some(text) = file_text(req, content, || read_in_root(&in_root, dest)) else {
        return Ok(()); // the host has none: leave the image's
    };
    let (parent, name) = split(dest);
    in_root
        .open(parent, Create::Dir)
        .and_then(|dir| match sys.write_file(dir.as_fd(), name, &text) {
            // Without root, an image file squashfuse serves with ids the namespace
            // does not map cannot be replaced (EOVERFLOW): ours is bound over it.
            Err(e) if crate::userns::entered() && e.raw_os_error() == Some(libc::EOVERFLOW) => {
                bind_over_image_file(sys, root, dir.as_fd(), dest, &text)
            }
            written => written,
        })
        .map_err(|source| {
            MountError::WriteFile {
                path: dest.to_path_buf(),
                source,
            }
            .into()
        })
}

/// What `content` becomes: the image's file (`image_file`) with the users' entries
/// added, or a copy of the host's file (None when the host has none: the image's stays).
fn file_text(
    req: &Request,
    content: &FileContent,
    image_file: impl FnOnce() -> String,
) -> Option<String> {
    let users = || std::iter::once(&req.user).chain(&req.accounts);
    Some(match content {
        FileContent::Passwd => users().fold(image_file(), |text, u| users::merge_passwd(&text, u)),
        FileContent::Group => users().fold(image_file(), |text, u| users::merge_group(&text, u)),
        FileContent::HostCopy(host) => std::fs::read_to_string(host).ok()?,
    })
}

/// Without root, the files the plan writes go straight into the upper layer before the
/// overlay is mounted, where the image has them as plain files below plain folders (or
/// not at all): no copy-up or whiteout through the overlay, and no file bound over an
/// image file whose owner the namespace does not map. Returns the destinations done;
/// the others are written through the root as for root. The lower layer is the
/// user's own image read with the user's rights, so this needs no care beyond the
/// image's own symlinks, which are left to the general path.
fn prewrite_in_upper(
    req: &Request,
    plan: &Plan,
    lower: &Path,
    upper: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let lower_dir = sys::open_path(lower, libc::O_PATH | libc::O_DIRECTORY)?;
    let in_lower = InRoot {
        root: &lower_dir,
        writable_dev: None,
    };
    let plain = |relative: &Path, last_may_be_file: bool| {
        let mut at = lower.to_path_buf();
        let parts: Vec<_> = relative.components().collect();
        parts.iter().enumerate().all(|(i, part)| {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => i + 1 < parts.len() || !last_may_be_file,
                Ok(meta) if meta.is_file() => last_may_be_file && i + 1 == parts.len(),
                Ok(_) => false,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            }
        })
    };
    let mut done = Vec::new();
    for op in &plan.ops {
        let Op::WriteFile { dest, content } = op else {
            continue;
        };
        let Ok(relative) = dest.strip_prefix("/") else {
            continue;
        };
        if !plain(relative, true) {
            continue;
        }
        if let Some(text) = file_text(req, content, || read_in_root(&in_lower, dest)) {
            let target = upper.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)?
                .write_all(text.as_bytes())?;
        }
        done.push(dest.clone());
    }
    Ok(done)
}

/// Where, without root, the account files that are bound over the image's own are
/// written (a folder of the root's writable layer: see `claim_parents_in_upper`).
const OWN_FILES: &str = "/.ferry/files";

/// Writes `text` as a file of `OWN_FILES` and binds it over `dest` (in `dir`).
fn bind_over_image_file(
    sys: &mut impl Sys,
    root: &Root,
    dir: BorrowedFd<'_>,
    dest: &Path,
    text: &str,
) -> std::io::Result<()> {
    let (_, name) = split(dest);
    let own = root.resolver().open(Path::new(OWN_FILES), Create::Dir)?;
    sys.write_file(own.as_fd(), name, text)?;
    let source = sys::openat(Some(own.as_fd()), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    let target = sys::openat(Some(dir), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
    bind_restricted(
        sys,
        root,
        source.as_fd(),
        target.as_fd(),
        dest,
        false,
        Attrs::SAFE,
    )
    .map_err(|(_, e)| e)
}

/// Which part of a restricted bind failed.
enum BindStep {
    Bind,
    Reopen,
    Remount,
}

/// Binds `source` onto `dest` (open inside the root at `at`) with `attrs` on it and,
/// when `recursive`, on every mount below it. Through descriptors where the kernel can
/// (the restriction is in place before the bind is visible); before Linux 5.12 a plain
/// bind, then a remount of what the name now leads to, keeping the host's own flags.
fn bind_restricted(
    sys: &mut impl Sys,
    root: &Root,
    source: BorrowedFd<'_>,
    dest: BorrowedFd<'_>,
    at: &Path,
    recursive: bool,
    attrs: Attrs,
) -> std::result::Result<(), (BindStep, std::io::Error)> {
    match sys.bind_restricted(source, dest, recursive, attrs) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        done => return done.map_err(|e| (BindStep::Bind, e)),
    }
    sys.bind(source, dest, recursive)
        .map_err(|e| (BindStep::Bind, e))?;
    // Reopen: the name now leads to the new mount's root, which is what we remount.
    let mounted = root
        .resolver()
        .open(at, Create::Nothing)
        .map_err(|e| (BindStep::Reopen, e))?;
    let flags = remount_flags(attrs, kept_flags(&mounted));
    sys.remount(mounted.as_fd(), flags)
        .map_err(|e| (BindStep::Remount, e))
}

/// Binds the image mount read-only at `dest` inside the new root (the folder resolved
/// and made inside the root: the image's own symlinks cannot move it).
fn share_image_mount(
    sys: &mut impl Sys,
    root: &Root,
    image: &Path,
    dest: &Path,
    attrs: Attrs,
) -> Result<()> {
    let failed = |source| MountError::ShareImage {
        dest: dest.to_path_buf(),
        source,
    };
    let at = dest.strip_prefix("/").unwrap_or(dest);
    let dest_fd = root.resolver().open(at, Create::Dir).map_err(failed)?;
    let source = sys.open_staged(image).map_err(failed)?;
    bind_restricted(sys, root, source.as_fd(), dest_fd.as_fd(), at, false, attrs)
        .map_err(|(_, e)| failed(e).into())
}

fn bind_one(
    sys: &mut impl Sys,
    root: &Root,
    req: &Request,
    bind: &Bind,
    opened: &OpenedSource,
) -> Result<()> {
    let source_path = bind.source.path();
    let create = if opened.is_dir {
        Create::Dir
    } else {
        Create::File
    };
    let dest_err = |reason: String| MountError::Destination {
        path: bind.dest.clone(),
        reason,
    };
    let dest = root.resolver().open(&bind.dest, create).map_err(|e| {
        dest_err(format!("cannot be created in the container ({e}); choose a destination in the image's own folders"))
    })?;
    if bind.user_destination {
        // The image's symlinks (`/data -> /`) and the user's (`~/l -> /etc`) were
        // followed inside the root: judge where the destination really is.
        let resolved = in_container_path(dest.as_fd(), &root.path)
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
            source_path.display(),
            kinds.0,
            kinds.1
        ))
        .into());
    }
    bind_restricted(
        sys,
        root,
        opened.fd.as_fd(),
        dest.as_fd(),
        &bind.dest,
        bind.recursive,
        bind.attrs,
    )
    .map_err(|(step, e)| match step {
        BindStep::Bind => MountError::Bind {
            from: source_path.to_path_buf(),
            to: bind.dest.clone(),
            source: e,
        }
        .into(),
        BindStep::Reopen => dest_err(e.to_string()).into(),
        BindStep::Remount => MountError::Restrict {
            dest: bind.dest.clone(),
            source: e,
        }
        .into(),
    })
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
    let gone = |source| SetupError::CheckAsUser {
        user: user.name.clone(),
        source,
    };
    as_user.can_enter(workdir).map_err(gone)?.map_err(|e| {
        MountError::Workdir {
            path: workdir.to_path_buf(),
            reason: format!(
                "{} cannot enter it in the container of image {} ({e}); choose a folder that exists there and that you can enter, or mount one there",
                user.name,
                image.display()
            ),
        }
        .into()
    })
}

/// Where the command starts: an explicit request, else the image's WorkingDir, else
/// the plan's default (the caller's folder).
pub(crate) fn effective_workdir(req: &Request, config: Option<&ImageConfig>) -> PathBuf {
    match (&req.workdir, config.and_then(ImageConfig::workdir)) {
        (None, Some(image_dir)) => image_dir,
        _ => plan::default_workdir(req),
    }
}

/// The image's `/.ferry/image.json`, resolved inside the image and read as a bounded
/// regular file (the image is user input), then judged by `ImageConfig::check_stored`,
/// the validator `ferry inspect` uses too.
fn read_image_config(in_root: &InRoot, image: &Path) -> Result<Option<ImageConfig>> {
    use std::io::Read;
    let unreadable = |problem| ImageConfigError::Unreadable {
        image: image.to_path_buf(),
        problem,
    };
    let fd = match in_root.open(Path::new(CONFIG_PATH), Create::Nothing) {
        Ok(fd) => fd,
        // No such file, or no /.ferry folder at all: an image without a configuration.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(None)
        }
        Err(e) => return Err(unreadable(StoredProblem::Open(e)).into()),
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| unreadable(StoredProblem::Read(e)))?;
    if !sys::is_regular(&st) {
        return Err(unreadable(StoredProblem::NotRegular).into());
    }
    // One byte past the limit: enough for the validator to see it is too large.
    let mut text = Vec::new();
    std::fs::File::open(sys::fd_path(fd.as_fd()))
        .and_then(|f| f.take(MAX_CONFIG_SIZE + 1).read_to_end(&mut text))
        .map_err(|e| unreadable(StoredProblem::Read(e)))?;
    Ok(Some(ImageConfig::check_stored(&text, image)?))
}

#[cfg(test)]
mod tests {
    //! The executor over the recording fake: what root would do, in which order, with
    //! which flags, without root.
    use super::*;
    use crate::error::Error;
    use crate::image::{Format, Method};
    use crate::plan::{ImageMount, Source};
    use crate::privileged::fake::{Call, Recording};
    use crate::request::MountSpec;

    fn request() -> Request {
        let mut req = Request::example();
        req.mounts = vec![MountSpec {
            source: "/data".into(),
            dest: "/data".into(),
            readonly: true,
        }];
        req
    }

    fn run(sys: &mut Recording, req: &Request, method: Method) -> Result<Built> {
        let format = match method {
            Method::Bind => Format::Directory,
            _ => Format::Squashfs,
        };
        let plan = plan::plan(req, format, method)?;
        let sources = open_sources(sys, req, &plan)?;
        perform(sys, req, &plan, sources)
    }

    fn remounts(sys: &Recording) -> Vec<(PathBuf, MsFlags)> {
        sys.calls
            .iter()
            .filter_map(|c| match c {
                Call::Remount { target, flags } => Some((target.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn performs_the_plan_in_order_and_pivots_last() {
        let mut sys = Recording::new();
        let built = run(&mut sys, &request(), Method::Kernel).unwrap();
        assert_eq!(built.mounted, Mounted::Kernel);
        assert_eq!(built.workdir, PathBuf::from("/home/alice/project"));
        assert!(matches!(
            sys.calls[0],
            Call::Tmpfs {
                attrs: Attrs::SAFE,
                ..
            }
        ));
        assert!(matches!(
            sys.calls[5],
            Call::MountImage {
                how: ImageMount::Kernel { .. },
                attrs: Attrs::READ_ONLY,
                ..
            }
        ));
        assert!(matches!(
            sys.calls[6],
            Call::Overlay {
                attrs: Attrs::SAFE,
                ..
            }
        ));
        assert_eq!(sys.calls[7], Call::Unbindable("/tmp".into()));
        let binds: Vec<PathBuf> = sys.binds().into_iter().map(|(_, d, _)| d).collect();
        assert_eq!(
            binds,
            ["/proc", "/sys", "/dev", "/tmp", "/data", "/home/alice"].map(PathBuf::from)
        );
        let n = sys.calls.len();
        assert_eq!(
            sys.calls[n - 2],
            Call::Remount {
                target: "/".into(),
                flags: MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
            }
        );
        assert_eq!(sys.calls[n - 1], Call::Pivot);
    }

    #[test]
    fn a_writable_root_is_remounted_nosuid_nodev_but_not_read_only() {
        let mut req = request();
        req.root = crate::request::RootAccess::Writable;
        let mut sys = Recording::new();
        run(&mut sys, &req, Method::Kernel).unwrap();
        let n = sys.calls.len();
        assert_eq!(
            sys.calls[n - 2],
            Call::Remount {
                target: "/".into(),
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV
            }
        );
        assert_eq!(sys.calls[n - 1], Call::Pivot);
    }

    #[test]
    fn binds_are_restricted_before_they_are_attached() {
        let mut sys = Recording::new();
        run(&mut sys, &request(), Method::Kernel).unwrap();
        for (source, dest, attrs) in sys.binds() {
            assert!(attrs.nosuid, "{dest:?}");
            assert_eq!(attrs.nodev, dest != Path::new("/dev"), "{dest:?}");
            assert_eq!(attrs.readonly, dest == Path::new("/data"), "{dest:?}");
            assert_eq!(source, dest); // every source here binds onto its own name
        }
        assert!(remounts(&sys).len() == 1, "only the root is remounted");
    }

    #[test]
    fn old_kernels_bind_then_remount_each_bind_with_its_flags() {
        let mut sys = Recording::new();
        sys.old_kernel = true;
        run(&mut sys, &request(), Method::Kernel).unwrap();
        let plain: Vec<PathBuf> = sys
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Bind {
                    dest,
                    recursive: true,
                    ..
                } => Some(dest.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(plain.len(), 6);
        let remounts = remounts(&sys);
        // Each bind is followed by its remount; the root's comes last.
        assert_eq!(remounts.len(), plain.len() + 1);
        for (dest, flags) in &remounts {
            assert!(flags.contains(MsFlags::MS_NOSUID), "{dest:?}");
            // /dev keeps whatever its host mount has (here, the fake's folder's).
            if dest != Path::new("/dev") {
                assert!(flags.contains(MsFlags::MS_NODEV), "{dest:?}");
            }
        }
        let data = remounts
            .iter()
            .find(|(d, _)| d == Path::new("/data"))
            .unwrap();
        assert!(data.1.contains(MsFlags::MS_RDONLY));
        let home = remounts
            .iter()
            .find(|(d, _)| d == Path::new("/home/alice"))
            .unwrap();
        assert!(!home.1.contains(MsFlags::MS_RDONLY));
        let bind_at = sys
            .calls
            .iter()
            .position(|c| matches!(c, Call::Bind { dest, .. } if dest == Path::new("/data")))
            .unwrap();
        assert!(
            matches!(&sys.calls[bind_at + 1], Call::Remount { target, .. } if target == Path::new("/data"))
        );
    }

    #[test]
    fn a_missing_optional_source_is_skipped_and_a_required_one_fails() {
        let mut sys = Recording::new();
        sys.missing = vec!["/home/alice".into()];
        run(&mut sys, &request(), Method::Kernel).unwrap();
        assert!(!sys
            .binds()
            .iter()
            .any(|(_, d, _)| d == Path::new("/home/alice")));

        let mut sys = Recording::new();
        sys.missing = vec!["/data".into()];
        let err = run(&mut sys, &request(), Method::Kernel).unwrap_err();
        assert!(
            matches!(&err, Error::Mount(MountError::Source { user, .. }) if user == "alice"),
            "{err}"
        );
        assert!(
            !sys.calls.iter().any(|c| matches!(c, Call::Tmpfs { .. })),
            "nothing mounted"
        );
    }

    #[test]
    fn a_working_folder_the_user_may_not_read_is_refused() {
        let mut req = request();
        req.cwd = Some("/scratch/secret".into());
        let mut sys = Recording::new();
        sys.refused = vec!["/scratch/secret".into()];
        let err = run(&mut sys, &req, Method::Kernel).unwrap_err();
        assert!(
            matches!(err, Error::Mount(MountError::Workdir { .. })),
            "{err}"
        );
        assert!(!sys
            .calls
            .iter()
            .any(|c| matches!(c, Call::BindRestricted { .. })));
    }

    #[test]
    fn user_destinations_are_judged_where_they_resolve() {
        let mut req = request();
        req.user_mount_destinations = Some(vec!["/data".into(), "/scratch".into()]);
        let mut sys = Recording::new();
        run(&mut sys, &req, Method::Kernel).unwrap();
        assert!(sys.binds().iter().any(|(_, d, _)| d == Path::new("/data")));

        req.mounts[0].dest = "/etc/ssl".into();
        let mut sys = Recording::new();
        let err = run(&mut sys, &req, Method::Kernel).unwrap_err();
        assert!(
            matches!(err, Error::Mount(MountError::Destination { .. })),
            "{err}"
        );
        assert!(!sys.calls.contains(&Call::Pivot));
    }

    #[test]
    fn a_file_source_needs_a_file_destination() {
        let mut req = request();
        req.mounts[0] = MountSpec {
            source: "/home/alice/notes.txt".into(),
            dest: "/etc".into(),
            readonly: false,
        };
        let mut sys = Recording::new();
        sys.files = vec!["/home/alice/notes.txt".into()];
        // /etc was made a folder by the account files written before.
        let err = run(&mut sys, &req, Method::Kernel).unwrap_err().to_string();
        assert!(
            err.contains("is a file but the destination is a folder"),
            "{err}"
        );
    }

    #[test]
    fn the_fuse_mount_is_kept_for_the_job_only_when_this_container_serves_it() {
        let mut sys = Recording::new();
        let built = run(&mut sys, &request(), Method::Fuse).unwrap();
        assert_eq!(built.mounted, Mounted::OwnFuse);
        let binds = sys.binds();
        assert_eq!(
            binds[0],
            (
                "/tmp/image".into(),
                "/.ferry/image".into(),
                Attrs::READ_ONLY
            )
        );

        let mut sys = Recording::new();
        sys.fuse_mounted = Mounted::SharedFuse;
        run(&mut sys, &request(), Method::Fuse).unwrap();
        assert!(!sys
            .binds()
            .iter()
            .any(|(_, d, _)| d == Path::new("/.ferry/image")));
    }

    #[test]
    fn folders_and_files_reach_the_writable_layer_before_binds() {
        let mut sys = Recording::new();
        let mut req = request();
        req.slurm_clients = Some(crate::request::SlurmClients {
            launcher: "/usr/libexec/ferry/ferry-host-exec".into(),
            commands: vec!["srun".into()],
        });
        let built = run(&mut sys, &req, Method::Bind).unwrap();
        assert_eq!(built.mounted, Mounted::Bind);
        let first_bind = sys
            .calls
            .iter()
            .position(|c| matches!(c, Call::BindRestricted { .. }))
            .unwrap();
        let passwd = sys
            .calls
            .iter()
            .position(|c| *c == Call::WriteFile("/etc/passwd".into()))
            .unwrap();
        let link = sys
            .calls
            .iter()
            .position(|c| {
                *c == Call::Symlink {
                    dest: "/.ferry/bin/srun".into(),
                    target: "ferry-host-exec".into(),
                }
            })
            .unwrap();
        assert!(passwd < link && link < first_bind);
        let host_root = sys
            .binds()
            .into_iter()
            .find(|(_, d, _)| d == Path::new(crate::request::HOST_ROOT))
            .unwrap();
        assert_eq!(host_root.0, PathBuf::from("/"));
        assert_eq!(host_root.2, Attrs::READ_ONLY);
        assert!(matches!(
            plan::plan(&req, Format::Directory, Method::Bind)
                .unwrap()
                .binds()
                .find(|b| b.dest == Path::new(crate::request::HOST_ROOT))
                .unwrap()
                .source,
            Source::Host(_)
        ));
    }

    /// Without root, the folders that will hold what the plan makes are made in the
    /// upper layer, following the image's own folders but never over its symlinks or
    /// files.
    #[test]
    fn the_folders_the_plan_makes_in_are_claimed_in_the_upper_layer() {
        let scratch = crate::scratch::Scratch::new("claim");
        let (lower, upper) = (scratch.join("lower"), scratch.join("upper"));
        for dir in ["etc", "var", "home"] {
            std::fs::create_dir_all(lower.join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("/elsewhere", lower.join("var/run")).unwrap();
        std::fs::write(lower.join("data"), "a file").unwrap();
        std::fs::create_dir(&upper).unwrap();
        let mut req = request();
        req.mounts = vec![
            MountSpec {
                source: "/data".into(),
                dest: "/var/run/socket/x".into(),
                readonly: false,
            },
            MountSpec {
                source: "/data".into(),
                dest: "/data/inside/y".into(),
                readonly: false,
            },
            MountSpec {
                source: "/data".into(),
                dest: "/opt/new/z".into(),
                readonly: false,
            },
        ];
        let plan = plan::plan(&req, Format::Squashfs, Method::Fuse).unwrap();
        claim_parents_in_upper(&plan, &lower, &upper).unwrap();
        for made in ["etc", "home", "var", "opt/new", ".ferry/files"] {
            assert!(upper.join(made).is_dir(), "{made}");
        }
        for left in ["var/run", "data", "home/alice"] {
            assert!(!upper.join(left).exists(), "{left}");
        }
    }

    /// The executor reads the stored configuration through the validator `ferry
    /// inspect` uses: one verdict, one message, whichever way the file is wrong.
    #[test]
    fn the_stored_configuration_is_judged_by_the_one_validator() {
        let scratch = crate::scratch::Scratch::new("config");
        let root = sys::open_path(&scratch, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let in_root = InRoot {
            root: &root,
            writable_dev: None,
        };
        let image = Path::new("/img.sqfs");
        assert!(read_image_config(&in_root, image).unwrap().is_none());

        std::fs::create_dir_all(scratch.join(".ferry/image.json")).unwrap();
        let err = read_image_config(&in_root, image).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image /img.sqfs: /.ferry/image.json is not a regular file; rebuild the image with ferry import, or remove that file"
        );
        std::fs::remove_dir(scratch.join(".ferry/image.json")).unwrap();

        let mut big = b"{\"Env\": [\"A=".to_vec();
        big.resize(MAX_CONFIG_SIZE as usize + 10, b'x');
        std::fs::write(scratch.join(".ferry/image.json"), &big).unwrap();
        let err = read_image_config(&in_root, image).unwrap_err();
        assert!(
            matches!(err, Error::ImageConfig(ImageConfigError::TooLarge { .. })),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            ImageConfig::check_stored(&big, image)
                .unwrap_err()
                .to_string()
        );

        std::fs::write(
            scratch.join(".ferry/image.json"),
            br#"{"Env": "PATH=/bin"}"#,
        )
        .unwrap();
        let err = read_image_config(&in_root, image).unwrap_err();
        assert_eq!(
            err.to_string(),
            ImageConfig::check_stored(br#"{"Env": "PATH=/bin"}"#, image)
                .unwrap_err()
                .to_string()
        );

        std::fs::write(
            scratch.join(".ferry/image.json"),
            br#"{"WorkingDir": "/srv"}"#,
        )
        .unwrap();
        let config = read_image_config(&in_root, image).unwrap().unwrap();
        assert_eq!(config.workdir(), Some(PathBuf::from("/srv")));
    }
}
