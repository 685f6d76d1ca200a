//! Prepare a container once, join it from any number of processes.
//!
//! `prepare` forks a single-threaded helper that builds the mount namespace (see
//! `assemble`) and reports back on a pipe. The parent then opens the helper's namespace
//! file and lets the helper exit: the open nsfs descriptor alone keeps the namespace,
//! and so the mounts and the loop device, alive. No process, no host mount, no state
//! file is left; closing the descriptor (or the parent dying) frees everything.
//! An untrusted image under the `fuse` policy adds one process: squashfuse, running as
//! the user, started by the caller (our child, so `release` can reap it), which exits
//! when the namespace, and with it the FUSE mount, goes away.
//! Forked children inherit the descriptor and `join` with setns.

use crate::assemble;
use crate::digest::{Digest, Source, Status};
use crate::error::{Error, ErrorKind, Result};
use crate::image_cache::{self, CacheNote, InUse, Outcome, Record, Server};
use crate::image_config::ImageConfig;
use crate::mount_error::MountError;
#[cfg(test)]
use crate::mount_error::MountStep;
use crate::named::{self, NamedContainer, Slot};
use crate::privileged::FuseHandoff;
use crate::request::Request;
use crate::site::Untrusted;
use crate::sys;
use crate::users::User;
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Container {
    namespace: OwnedFd,
    pub workdir: PathBuf,
    pub user: User,
    pub image: PathBuf,
    pub facts: ImageFacts,
    /// Whether the request pinned the image's digest (and so it was verified).
    pub pinned: bool,
    /// squashfuse serving an untrusted image: our child, reaped by `release`.
    fuse_server: Option<Pid>,
    /// The site's limit on setup, also for a task's last steps before it execs.
    pub setup_timeout: Duration,
    /// The node image cache's entry this step uses, held until it ends.
    cache_use: Option<InUse>,
    /// A named container (`--container-name`): whether this step made it or joined it.
    pub named: Option<Named>,
    /// Built by `prepare_here`: this process is already inside.
    inside: bool,
}

/// What a step did with its named container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    /// True: an earlier step of the job made it; false: this step did.
    pub joined: bool,
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
    /// Whether the digest was verified, looked up, or why it is unknown.
    #[serde(default)]
    pub digest_status: Status,
    /// The image's stored configuration (`/.ferry/image.json`), when it has one.
    #[serde(default)]
    pub config: Option<ImageConfig>,
    /// What the node image cache did (None: the site keeps no images, or a folder).
    #[serde(default)]
    pub cache: Option<CacheNote>,
}

/// What fails in preparing a container outside the mounts themselves: the helper's
/// life, its report, and the user's process that opens the user's files.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("image {path}: preparing the container took longer than {seconds} s and was stopped (the site's setup_timeout); check that the image's file system answers (and that its squashfuse is not stopped), then try again")]
    Timeout { path: PathBuf, seconds: u64 },
    #[error("the setup helper died without a report")]
    HelperDied,
    #[error("the setup helper's report cannot be read ({0})")]
    ReportUnreadable(String),
    #[error("forking the setup helper: {0}")]
    Fork(std::io::Error),
    #[error("reading the setup helper's report: {0}")]
    ReadReport(std::io::Error),
    #[error("opening the container's mount namespace: {0}")]
    OpenNamespace(std::io::Error),
    #[error("starting a process as {user}: {source}")]
    StartAsUser {
        user: String,
        source: std::io::Error,
    },
    #[error("opening the image and mount sources as {user}: {source}")]
    OpenAsUser {
        user: String,
        source: std::io::Error,
    },
    #[error("checking the working folder as {user}: {source}")]
    CheckAsUser {
        user: String,
        source: std::io::Error,
    },
}

/// What fails when a task enters a prepared container.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("joining the container's mount namespace: {0}")]
    Join(std::io::Error),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("arming the task's deadline: {0}")]
    ArmDeadline(std::io::Error),
    #[error("becoming user {user}: {source}")]
    BecomeUser {
        user: String,
        source: std::io::Error,
    },
}

/// What the setup helper sends back on its pipe, as one JSON value: the image's facts
/// once the container is ready, or why it is not.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Report {
    Ready(Box<ImageFacts>),
    Failed(Failure),
}

/// A failed setup as it crosses the pipe: the error's category and the line the user
/// reads. An `io::Error` cannot be sent, so the category is what stays typed.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Report {
    fn failed(error: &Error) -> Report {
        Report::Failed(Failure {
            kind: error.kind(),
            message: error.to_string(),
        })
    }

    /// The report as the parent reads it back: a value the helper did not write in
    /// full (it died, or wrote something else, or a kind this build does not know) is
    /// an error, never defaults.
    fn decode(text: &str) -> Result<ImageFacts> {
        if text.trim().is_empty() {
            return Err(SetupError::HelperDied.into());
        }
        match serde_json::from_str(text) {
            Ok(Report::Ready(facts)) => Ok(*facts),
            Ok(Report::Failed(Failure { kind, message })) => Err(Error::Helper {
                kind,
                message: message.trim().to_string(),
            }),
            Err(e) => Err(SetupError::ReportUnreadable(e.to_string()).into()),
        }
    }
}

/// Builds the container for `req`. Must be called as root; safe to call from a
/// multi-threaded process (the work happens in a forked child).
///
/// Nothing here waits past `req.setup_timeout`: Slurm cannot cancel a step whose setup
/// has not finished, so at the deadline the helper (with the user's opener, which dies
/// with it) and the image's server are killed and the step fails with one line.
pub fn prepare(req: &Request) -> Result<Container> {
    match &req.named {
        None => prepare_new(req),
        Some(named) => prepare_named(req, named),
    }
}

/// The job's container named `named` on this node: joined when an earlier step made it
/// (from the same image), else made now and kept for the job's later steps.
fn prepare_named(req: &Request, named: &NamedContainer) -> Result<Container> {
    let failed = |what: &str, e: std::io::Error| {
        Error::Named(format!(
            "--container-name={}: {what}: {e}; try again, or ask your admin to check the node (ferry doctor)",
            named.name
        ))
    };
    let deadline = Instant::now() + req.setup_timeout;
    let slot = Slot::lock(named, deadline).map_err(|e| failed("opening it", e))?;
    if let Some(found) = slot.existing().map_err(|e| failed("opening it", e))? {
        let record = found.record;
        let pinned = req.pinned.as_ref().map(|d| d.to_string());
        if record.uid != req.user.uid || record.image != req.image || record.pinned != pinned {
            return Err(Error::Named(format!(
                "--container-name={}: this job's container of that name was made from image {}{}; this step asks for {}{}: give the same image, or another name",
                named.name,
                record.image.display(),
                record.pinned.map(|p| format!("@{p}")).unwrap_or_default(),
                req.image.display(),
                pinned.map(|p| format!("@{p}")).unwrap_or_default(),
            )));
        }
        return Ok(Container {
            namespace: found.namespace,
            workdir: assemble::effective_workdir(req, record.facts.config.as_ref()),
            user: req.user.clone(),
            image: req.image.clone(),
            facts: record.facts,
            pinned: req.pinned.is_some(),
            fuse_server: None,
            setup_timeout: req.setup_timeout,
            cache_use: None,
            named: Some(Named {
                name: named.name.clone(),
                joined: true,
            }),
            inside: false,
        });
    }
    let mut container = match prepare_new(req) {
        Ok(container) => container,
        Err(e) => {
            slot.forget();
            return Err(e);
        }
    };
    let record = named::Record {
        image: req.image.clone(),
        pinned: req.pinned.as_ref().map(|d| d.to_string()),
        uid: req.user.uid,
        facts: container.facts.clone(),
        server: None,
        namespace: 0,
    };
    let ferry = req
        .cache_janitor
        .clone()
        .unwrap_or_else(|| PathBuf::from("/usr/bin/ferry"));
    let server = container.fuse_server.map(|p| p.as_raw() as u32);
    if let Err(e) = slot.keep(&container.namespace, record, server, named, &ferry) {
        container.release();
        slot.forget();
        return Err(failed("keeping it for the job's later steps", e));
    }
    // Its squashfuse now lives as long as the container: the warden ends it.
    container.fuse_server = None;
    container.named = Some(Named {
        name: named.name.clone(),
        joined: false,
    });
    Ok(container)
}

/// Builds the container in this very process, which is inside it when this returns
/// (its mount namespace, pivoted): `ferry run` without root, single-threaded, in its own
/// user namespace (`userns::enter`). The same assembly as `prepare`, without the helper
/// process: nothing here acts on the host with privileges, so there is no caller to
/// shield from a stuck setup, and a process fewer to start. An image file's squashfuse
/// is a child forked now, in the host's namespace (so it does not keep the container's
/// alive), which waits for the image the assembly sends once FUSE is mounted.
pub fn prepare_here(req: &Request) -> Result<Container> {
    if !crate::userns::entered() || req.named.is_some() {
        return Err(Error::system(
            "preparing the container in this process",
            std::io::Error::other("only for ferry run in its own user namespace"),
        ));
    }
    let fuse = if is_image_file(&req.image) {
        open_fuse(req)?
    } else {
        None // a root folder is bound: no server to start
    };
    let (handoff, server) = match fuse {
        None => (None, None),
        Some((device, ours, theirs)) => {
            let parent = nix::unistd::getpid();
            match sys::fork().map_err(SetupError::Fork)? {
                sys::Forked::Child => {
                    drop(theirs);
                    serve_when_mounted(req, device, ours, parent)
                }
                sys::Forked::Parent(pid) => {
                    drop(ours);
                    let handoff = FuseHandoff {
                        device,
                        channel: theirs.into(),
                    };
                    (Some(handoff), Some(pid))
                }
            }
        }
    };
    // The handoff is consumed (and its socket closed) by the assembly: a server that
    // was sent no image exits.
    let assembled = assemble::assemble(req, handoff);
    let server = server.and_then(|pid| match &assembled {
        Ok(made) if made.facts.mounted_by == "fuse" => Some(pid),
        _ => {
            reap(pid, SERVER_EXIT);
            None
        }
    });
    let made = assembled?;
    let namespace = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)
        .map_err(SetupError::OpenNamespace)?;
    drop(made.as_user);
    Ok(Container {
        namespace,
        workdir: assemble::effective_workdir(req, made.facts.config.as_ref()),
        user: req.user.clone(),
        image: req.image.clone(),
        facts: made.facts,
        pinned: req.pinned.is_some(),
        fuse_server: server,
        setup_timeout: req.setup_timeout,
        cache_use: None,
        named: None,
        inside: true,
    })
}

/// The child `prepare_here` forks for the image's server: waits for the image the
/// assembly sends once FUSE is mounted, then becomes squashfuse as the user. It dies
/// with its parent until then; afterwards it serves for as long as the mount is used,
/// by the command or anything it left running.
fn serve_when_mounted(req: &Request, device: OwnedFd, channel: UnixStream, parent: Pid) -> ! {
    if sys::die_with_parent(parent).is_err() {
        sys::exit_now(1);
    }
    let Ok(Some((image, offset))) = sys::recv_fd(channel.as_fd()) else {
        sys::exit_now(0); // nothing to serve: the setup failed or mounts otherwise
    };
    if sys::clear_parent_death_signal().is_err() {
        sys::exit_now(1);
    }
    let _ = with_fuse_server(req, device.as_fd(), image.as_fd(), offset, |server| {
        Ok(sys::exec_fuse_server(server))
    });
    // The assembly's first look at the mount fails (ENOTCONN): the error the user reads.
    sys::exit_now(127)
}

fn prepare_new(req: &Request) -> Result<Container> {
    let deadline = Instant::now() + req.setup_timeout;
    let (result_read, result_write) =
        sys::pipe().map_err(|e| Error::system("creating a pipe", e))?;
    let (release_read, release_write) =
        sys::pipe().map_err(|e| Error::system("creating a pipe", e))?;
    let fuse = open_fuse(req)?;
    let parent = nix::unistd::getpid();
    match sys::fork().map_err(SetupError::Fork)? {
        sys::Forked::Child => {
            // Slurm cannot cancel a step in setup, but it can kill slurmstepd: the
            // helper (hashing a pinned image, say) must not live on as an orphan. This
            // thread waits below until the helper is reaped, so it cannot end first.
            if sys::die_with_parent(parent).is_err() {
                sys::exit_now(1);
            }
            drop(result_read);
            drop(release_write);
            let handoff = fuse.map(|(device, ours, theirs)| {
                drop(ours);
                FuseHandoff {
                    device,
                    channel: theirs.into(),
                }
            });
            helper(req, handoff, result_write, release_read)
        }
        sys::Forked::Parent(pid) => {
            drop(result_write);
            drop(release_read);
            // An untrusted image: the helper mounted FUSE and sends the image to serve.
            let server = match fuse {
                Some((device, ours, theirs)) => {
                    drop(theirs);
                    start_fuse_server(req, device, ours, deadline)
                }
                None => None,
            };
            let outcome = match read_report(result_read, deadline) {
                Ok(Some(report)) => Report::decode(&report).and_then(|facts| {
                    sys::open_path(Path::new(&format!("/proc/{pid}/ns/mnt")), libc::O_RDONLY)
                        .map_err(|e| SetupError::OpenNamespace(e).into())
                        .map(|ns| (ns, facts))
                }),
                Ok(None) => {
                    // Out of time: the helper may be waiting on the user's files or
                    // server, or hashing. Killing it frees its namespace (and mounts).
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    Err(SetupError::Timeout {
                        path: req.image.clone(),
                        seconds: req.setup_timeout.as_secs(),
                    }
                    .into())
                }
                Err(e) => Err(SetupError::ReadReport(e).into()),
            };
            let (namespace, facts) = match outcome {
                Ok(ready) => ready,
                Err(e) => {
                    drop(release_write);
                    let _ = nix::sys::wait::waitpid(pid, None);
                    // The namespace died with the helper: the server is exiting (or
                    // stopped by its user: then it is killed).
                    if let Some(server) = server {
                        reap(server, SERVER_EXIT);
                    }
                    return Err(e);
                }
            };
            // While the helper still holds its lock on the cache entry: ours now.
            let (cache_use, server) = match &facts.cache {
                Some(note) => after_cache(req, &facts, note, server),
                None => (None, server),
            };
            drop(release_write); // lets the helper exit
            let _ = nix::sys::wait::waitpid(pid, None);
            Ok(Container {
                namespace,
                workdir: assemble::effective_workdir(req, facts.config.as_ref()),
                user: req.user.clone(),
                image: req.image.clone(),
                facts,
                pinned: req.pinned.is_some(),
                fuse_server: server,
                setup_timeout: req.setup_timeout,
                cache_use,
                named: None,
                inside: false,
            })
        }
    }
}

/// slurmstepd's part once the helper used the node image cache: hold the entry used;
/// for a mount just kept, write its record, move its squashfuse out of the job (it now
/// outlives it: no longer ours to reap) and start a janitor, which keeps the cache
/// within its limits and expires it on time. A broken entry is dropped. Returns the entry held and
/// the server this step still reaps.
fn after_cache(
    req: &Request,
    facts: &ImageFacts,
    note: &CacheNote,
    server: Option<Pid>,
) -> (Option<InUse>, Option<Pid>) {
    match note.outcome {
        Outcome::Hit => (InUse::hold(&note.key), server),
        Outcome::NotKept => (None, server),
        Outcome::Broken => {
            let _ = image_cache::drop_key(&note.key);
            (None, server)
        }
        Outcome::Kept => {
            let held = InUse::hold(&note.key);
            let kept_server = server.and_then(|pid| Server::of(pid.as_raw() as u32));
            let record = Record {
                image: req.image.clone(),
                user: req.user.name.clone(),
                uid: req.user.uid,
                mount: if server.is_some() { "fuse" } else { "kernel" }.into(),
                size: facts.size,
                version: note.version.clone(),
                kept_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                server: kept_server,
            };
            // Recorded first: the cache's cgroup holds only the servers entries name
            // (without a record the server stays the job's, and the entry breaks).
            let recorded = image_cache::write_record(&note.key, &record).is_ok();
            if let (true, Some(s)) = (recorded, &record.server) {
                image_cache::leave_job_cgroups(s.pid);
            }
            // The janitor brings the cache back within its limits, off this step's path.
            if let Some(ferry) = &req.cache_janitor {
                let _ = image_cache::start_janitor(ferry, &req.image_cache);
            }
            // The kept server is not reaped at step end: it serves later steps.
            (
                held,
                if record.server.is_some() {
                    None
                } else {
                    server
                },
            )
        }
    }
}

/// How long the FUSE server may take to notice its mount is gone before it is killed.
const SERVER_EXIT: Duration = Duration::from_secs(3);

/// The helper's whole report, read until it closes the pipe; None when `deadline` came
/// first.
fn read_report(pipe: OwnedFd, deadline: Instant) -> std::io::Result<Option<String>> {
    let mut pipe = std::fs::File::from(pipe);
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !sys::wait_readable(pipe.as_fd(), left)? {
            return Ok(None);
        }
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(Some(String::from_utf8_lossy(&report).into_owned())),
            Ok(n) => report.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

type FuseParts = (OwnedFd, UnixStream, UnixStream);

/// For a site whose untrusted images go through FUSE: the device (opened here, so that
/// the server can be our child, which we reap) and the socket the image comes back on.
fn open_fuse(req: &Request) -> Result<Option<FuseParts>> {
    if req.image_policy.untrusted != Untrusted::Fuse {
        return Ok(None);
    }
    let device = match sys::open_path(Path::new("/dev/fuse"), libc::O_RDWR) {
        Ok(device) => device,
        // Without root, nothing but FUSE reads an image file: say why it cannot.
        Err(source) if crate::userns::entered() && is_image_file(&req.image) => {
            return Err(MountError::FuseDeviceClosed {
                path: req.image.clone(),
                source,
            }
            .into())
        }
        Err(_) => return Ok(None), // only an untrusted image needs it: that one fails, clearly
    };
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::system("creating a socket pair", e))?;
    Ok(Some((device, ours, theirs)))
}

/// Whether `image` names a file (a root folder needs no FUSE; a missing image gets its
/// own line), as the caller sees it.
fn is_image_file(image: &Path) -> bool {
    std::fs::metadata(image).is_ok_and(|m| m.is_file())
}

/// Waits (until `deadline`) for the image the helper sends once it has mounted FUSE
/// (none: the image is mounted another way), then starts squashfuse on it as the user.
fn start_fuse_server(
    req: &Request,
    device: OwnedFd,
    channel: UnixStream,
    deadline: Instant,
) -> Option<Pid> {
    let left = deadline.saturating_duration_since(Instant::now());
    if !sys::wait_readable(channel.as_fd(), left).ok()? {
        return None; // the report's wait runs out too, and says so
    }
    let (image, offset) = sys::recv_fd(channel.as_fd()).ok()??;
    // On failure our device copy closes on return and the helper's first look at the
    // mount fails (ENOTCONN), which is the error the user reads.
    with_fuse_server(
        req,
        device.as_fd(),
        image.as_fd(),
        offset,
        sys::spawn_fuse_server,
    )
    .ok()
}

/// Calls `start` with the squashfuse `req`'s site runs, as `req`'s user, serving
/// `image` (its SquashFS from `offset`) through `fuse`.
fn with_fuse_server<T>(
    req: &Request,
    fuse: std::os::fd::BorrowedFd<'_>,
    image: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    start: impl FnOnce(&sys::FuseServer) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let helper = sys::cstring(&req.image_policy.fuse_helper)?;
    let user = &req.user;
    start(&sys::FuseServer {
        fuse,
        image,
        offset,
        helper: &helper,
        uid: user.uid,
        gid: user.gid,
        groups: &user.gids(),
    })
}

/// Reaps our child `pid`, killing it if it has not exited within `limit`.
fn reap(pid: Pid, limit: Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let start = Instant::now();
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(WaitStatus::StillAlive) => {
                // Still our unreaped child, so the pid cannot belong to anyone else.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return;
            }
            _ => return,
        }
    }
}

/// The helper's whole life: assemble, report, wait for the parent to take the namespace.
fn helper(req: &Request, fuse: Option<FuseHandoff>, result: OwnedFd, release: OwnedFd) -> ! {
    // Moved into assemble and closed when it returns, before the report: the parent
    // waits on the socket first.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assemble::assemble(req, fuse)
    }));
    let mut user_process = None;
    let mut cache = None;
    let (report, code) = match outcome {
        Ok(Ok(made)) => {
            user_process = Some(made.as_user);
            cache = made.cache;
            (Report::Ready(Box::new(made.facts)), 0)
        }
        Ok(Err(e)) => (Report::failed(&e), 1),
        Err(_) => (
            Report::Failed(Failure {
                kind: ErrorKind::Internal,
                message: "internal error: the setup helper panicked".into(),
            }),
            2,
        ),
    };
    // A report that cannot be encoded reaches the parent as an unreadable one.
    let text = serde_json::to_vec(&report).unwrap_or_default();
    let _ = std::fs::File::from(result).write_all(&text);
    // Reaped now that the caller has the report: its exit costs the step nothing.
    drop(user_process);
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(release).read(&mut byte); // returns at EOF
    drop(cache); // the parent holds the entry's lock by now
    sys::exit_now(code)
}

impl Container {
    /// Ends the container for this process: closes the namespace and, when this process
    /// started squashfuse, waits for it to exit (it does once nothing uses the mount;
    /// killed after a few seconds otherwise). Without this (dropping the container) the
    /// server is left to exit on its own.
    pub fn release(mut self) {
        // A named container outlives the step: other steps of the job may be in it
        // now, and its warden ends what is left when the job ends.
        if self.named.is_none() {
            self.end_stragglers();
        }
        let server = self.fuse_server;
        let cache_use = self.cache_use.take();
        drop(self);
        if let Some(entry) = cache_use {
            entry.release();
        }
        if let Some(pid) = server {
            reap(pid, SERVER_EXIT);
        }
    }

    /// Kills what is left in the container's mount namespace at step end: a task that
    /// double-forked away from a process tracker that follows the process tree
    /// (`proctrack/linuxproc`) would otherwise keep the namespace, and with it the
    /// image's mount and loop device, alive after the job. Under `proctrack/cgroup`
    /// Slurm has already killed them. A few rounds, for processes that fork meanwhile.
    fn end_stragglers(&self) {
        let Ok(inode) = sys::namespace_inode(self.namespace.as_fd()) else {
            return;
        };
        let link = format!("mnt:[{inode}]");
        for _ in 0..5 {
            let Ok(entries) = std::fs::read_dir("/proc") else {
                return;
            };
            let mut killed = 0;
            for pid in entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                let in_container = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|l| l.as_os_str() == std::ffi::OsStr::new(&link));
                if in_container && sys::kill_if_in_namespace(pid, inode) {
                    killed += 1;
                }
            }
            if killed == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Moves the calling process into the container's mount namespace and forbids it
    /// ever gaining privileges (setuid files, file capabilities). Needs root and a
    /// single-threaded caller (a forked task).
    /// A container `prepare_here` built is this process's own: only the second part.
    pub fn join(&self) -> Result<()> {
        if !self.inside {
            sys::setns_mount(self.namespace.as_fd()).map_err(TaskError::Join)?;
        }
        sys::set_no_new_privs().map_err(|e| TaskError::NoNewPrivs(e).into())
    }

    /// For a task between joining and exec (Slurm's own chdir, ours, the provenance
    /// file): until `end_task_deadline`, a task stuck on a file system or on the user's
    /// stopped squashfuse dies after the setup timeout instead of blocking its step for
    /// good (Slurm cannot kill a task that has not exec'd under every tracker).
    pub fn start_task_deadline(&self) -> Result<()> {
        let seconds = self.setup_timeout.as_secs().clamp(1, u32::MAX as u64) as u32;
        sys::arm_deadline(seconds).map_err(|e| TaskError::ArmDeadline(e).into())
    }

    /// Ends `start_task_deadline` (the alarm would otherwise survive exec).
    pub fn end_task_deadline() {
        sys::disarm_deadline();
    }

    /// Changes to the working directory, with the rights of the caller (run it after
    /// dropping to the user, so a folder the user may not enter fails here).
    pub fn enter_workdir(&self) -> Result<()> {
        std::env::set_current_dir(&self.workdir).map_err(|e| {
            MountError::Workdir {
                path: self.workdir.clone(),
                reason: format!("{} cannot enter it ({e})", self.user.name),
            }
            .into()
        })
    }

    /// Saves this container's root (the image with the writable layer's changes, without
    /// the binds) as a new SquashFS image at the absolute path `out`, written as the
    /// user, recording `parent` (see `save`). For slurmstepd once the step's tasks have
    /// ended, or `ferry run` once its command has; as root, from the host's namespace.
    pub fn save(
        &self,
        out: &Path,
        parent: &crate::save::ParentImage,
    ) -> Result<crate::save::SavedImage> {
        crate::save::save(
            self.namespace.as_fd(),
            &self.user,
            &self.image,
            out,
            parent,
            self.setup_timeout,
        )
    }

    /// Drops to the container's user: groups, gid, uid.
    pub fn become_user(&self) -> Result<()> {
        let u = &self.user;
        sys::become_user(u.uid, u.gid, &u.gids()).map_err(|source| {
            TaskError::BecomeUser {
                user: u.name.clone(),
                source,
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_report_round_trips_and_nothing_defaults() {
        let facts = ImageFacts {
            format: "squashfs".into(),
            mounted_by: "kernel".into(),
            size: 4096,
            ..Default::default()
        };
        let ready = serde_json::to_string(&Report::Ready(Box::new(facts.clone()))).unwrap();
        assert_eq!(Report::decode(&ready).unwrap(), facts);

        let err = Report::decode("").unwrap_err();
        assert!(
            matches!(err, Error::Setup(SetupError::HelperDied)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "the setup helper died without a report");
        // Cut short, facts of another shape, a kind this build does not know, or a
        // failure without its kind: an error, never default facts or a guessed kind.
        for broken in [
            &ready[..ready.len() / 2],
            r#"{"Ready":{"format":7}}"#,
            "ready\n{}",
            r#"{"Failed":{"kind":"weather","message":"image /x: not found"}}"#,
            r#"{"Failed":{"message":"image /x: not found"}}"#,
            r#"{"Failed":"image /x: not found"}"#,
        ] {
            let err = Report::decode(broken).unwrap_err();
            assert!(
                matches!(&err, Error::Setup(SetupError::ReportUnreadable(_))),
                "{broken}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("the setup helper's report cannot be read ("),
                "{err}"
            );
        }
    }

    /// What the helper reports comes back in the parent as the same line and kind.
    fn across_the_pipe(error: Error) -> Error {
        let text = serde_json::to_string(&Report::failed(&error)).unwrap();
        Report::decode(&text).unwrap_err()
    }

    #[test]
    fn a_failure_keeps_its_kind_and_line_across_the_pipe() {
        let errors: Vec<Error> = vec![
            crate::image::ImageError::NotFound { path: "/x".into() }.into(),
            crate::policy::PolicyError::PinRequired { path: "/x".into() }.into(),
            crate::digest::DigestError::Changed { path: "/x".into() }.into(),
            MountStep::Pivot
                .failed(std::io::Error::from_raw_os_error(libc::EINVAL))
                .into(),
            SetupError::CheckAsUser {
                user: "alice".into(),
                source: std::io::Error::from_raw_os_error(libc::EPIPE),
            }
            .into(),
            crate::image_config::ImageConfig::check_stored(b"{", Path::new("/x"))
                .unwrap_err()
                .into(),
            crate::users::UserError::Unknown("bob".into()).into(),
        ];
        for error in errors {
            let (kind, line) = (error.kind(), error.to_string());
            let back = across_the_pipe(error);
            assert!(
                matches!(&back, Error::Helper { kind: k, message } if *k == kind && *message == line),
                "{back:?}"
            );
            assert_eq!(back.kind(), kind);
        }
        assert_eq!(
            across_the_pipe(crate::image::ImageError::NotFound { path: "/x".into() }.into())
                .to_string(),
            "image /x: not found; check the path (it must exist on the compute node)"
        );
    }

    #[test]
    fn the_report_format_is_kind_and_message() {
        let text = serde_json::to_string(&Report::failed(
            &MountStep::Namespace
                .failed(std::io::Error::from_raw_os_error(libc::EPERM))
                .into(),
        ))
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["Failed"]["kind"], "mount");
        assert!(value["Failed"]["message"]
            .as_str()
            .unwrap()
            .starts_with("creating a mount namespace: "));
    }
}
