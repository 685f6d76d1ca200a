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

use crate::assemble::{self, FuseHandoff, ImageFacts};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
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
}

const READY: &str = "ready";

/// Builds the container for `req`. Must be called as root; safe to call from a
/// multi-threaded process (the work happens in a forked child).
pub fn prepare(req: &Request) -> Result<Container> {
    let plan = plan::plan(req);
    let (result_read, result_write) =
        sys::pipe().map_err(|e| Error::system("creating a pipe", e))?;
    let (release_read, release_write) =
        sys::pipe().map_err(|e| Error::system("creating a pipe", e))?;
    let fuse = open_fuse(req)?;
    match sys::fork().map_err(|e| Error::system("forking the setup helper", e))? {
        sys::Forked::Child => {
            drop(result_read);
            drop(release_write);
            let handoff = fuse.map(|(device, ours, theirs)| {
                drop(ours);
                FuseHandoff {
                    device,
                    channel: theirs.into(),
                }
            });
            helper(req, &plan, handoff, result_write, release_read)
        }
        sys::Forked::Parent(pid) => {
            drop(result_write);
            drop(release_read);
            // An untrusted image: the helper mounted FUSE and sends the image to serve.
            let server = match fuse {
                Some((device, ours, theirs)) => {
                    drop(theirs);
                    start_fuse_server(req, device, ours)
                }
                None => None,
            };
            let mut report = String::new();
            let read = std::fs::File::from(result_read).read_to_string(&mut report);
            let outcome = match (read, report.strip_prefix(READY)) {
                (Ok(_), Some(facts)) => {
                    sys::open_path(Path::new(&format!("/proc/{pid}/ns/mnt")), libc::O_RDONLY)
                        .map_err(|e| Error::system("opening the container's mount namespace", e))
                        .map(|ns| {
                            (
                                ns,
                                serde_json::from_str::<ImageFacts>(facts.trim())
                                    .unwrap_or_default(),
                            )
                        })
                }
                (Ok(_), None) if !report.trim().is_empty() => {
                    Err(Error::Helper(report.trim().to_string()))
                }
                (Ok(_), None) => Err(Error::Helper(
                    "the setup helper died without a report".into(),
                )),
                (Err(e), _) => Err(Error::system("reading the setup helper's report", e)),
            };
            drop(release_write); // lets the helper exit
            let _ = nix::sys::wait::waitpid(pid, None);
            let (namespace, facts) = match outcome {
                Ok(ready) => ready,
                Err(e) => {
                    // The namespace died with the helper: the server is exiting.
                    if let Some(server) = server {
                        reap(server, SERVER_EXIT);
                    }
                    return Err(e);
                }
            };
            Ok(Container {
                namespace,
                workdir: assemble::effective_workdir(req, &plan, facts.config.as_ref()),
                user: req.user.clone(),
                image: req.image.clone(),
                facts,
                pinned: req.pinned.is_some(),
                fuse_server: server,
            })
        }
    }
}

/// How long the FUSE server may take to notice its mount is gone before it is killed.
const SERVER_EXIT: Duration = Duration::from_secs(3);

type FuseParts = (OwnedFd, UnixStream, UnixStream);

/// For a site whose untrusted images go through FUSE: the device (opened here, so that
/// the server can be our child, which we reap) and the socket the image comes back on.
fn open_fuse(req: &Request) -> Result<Option<FuseParts>> {
    if req.image_policy.untrusted != Untrusted::Fuse {
        return Ok(None);
    }
    let Ok(device) = sys::open_path(Path::new("/dev/fuse"), libc::O_RDWR) else {
        return Ok(None); // only an untrusted image needs it: that one fails, clearly
    };
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| Error::system("creating a socket pair", e))?;
    Ok(Some((device, ours, theirs)))
}

/// Waits for the image the helper sends once it has mounted FUSE (none: the image is
/// mounted another way), then starts squashfuse on it as the user.
fn start_fuse_server(req: &Request, device: OwnedFd, channel: UnixStream) -> Option<Pid> {
    let (image, offset) = sys::recv_fd(channel.as_fd()).ok()??;
    let helper = sys::cstring(&req.image_policy.fuse_helper).ok()?;
    let user = &req.user;
    // On failure our device copy closes on return and the helper's first look at the
    // mount fails (ENOTCONN), which is the error the user reads.
    sys::spawn_fuse_server(&sys::FuseServer {
        fuse: device.as_fd(),
        image: image.as_fd(),
        offset,
        helper: &helper,
        uid: user.uid,
        gid: user.gid,
        groups: &user.gids(),
    })
    .ok()
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
fn helper(
    req: &Request,
    plan: &Plan,
    fuse: Option<FuseHandoff>,
    result: OwnedFd,
    release: OwnedFd,
) -> ! {
    // Moved into assemble and closed when it returns, before the report: the parent
    // waits on the socket first.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assemble::assemble(req, plan, fuse)
    }));
    let mut result = std::fs::File::from(result);
    let code = match outcome {
        Ok(Ok(facts)) => {
            let report = format!(
                "{READY}\n{}",
                serde_json::to_string(&facts).unwrap_or_default()
            );
            let _ = result.write_all(report.as_bytes());
            0
        }
        Ok(Err(e)) => {
            let _ = result.write_all(e.to_string().as_bytes());
            1
        }
        Err(_) => {
            let _ = result.write_all(b"internal error: the setup helper panicked");
            2
        }
    };
    drop(result);
    let mut byte = [0u8; 1];
    let _ = std::fs::File::from(release).read(&mut byte); // returns at EOF
    sys::exit_now(code)
}

impl Container {
    /// Ends the container for this process: closes the namespace and, when this process
    /// started squashfuse, waits for it to exit (it does once nothing uses the mount;
    /// killed after a few seconds otherwise). Without this (dropping the container) the
    /// server is left to exit on its own.
    pub fn release(self) {
        let server = self.fuse_server;
        drop(self);
        if let Some(pid) = server {
            reap(pid, SERVER_EXIT);
        }
    }

    /// Moves the calling process into the container's mount namespace and forbids it
    /// ever gaining privileges (setuid files, file capabilities). Needs root and a
    /// single-threaded caller (a forked task).
    pub fn join(&self) -> Result<()> {
        sys::setns_mount(self.namespace.as_fd())
            .map_err(|e| Error::system("joining the container's mount namespace", e))?;
        sys::set_no_new_privs().map_err(|e| Error::system("setting no_new_privs", e))
    }

    /// Changes to the working directory, with the rights of the caller (run it after
    /// dropping to the user, so a folder the user may not enter fails here).
    pub fn enter_workdir(&self) -> Result<()> {
        std::env::set_current_dir(&self.workdir).map_err(|e| Error::Workdir {
            path: self.workdir.clone(),
            reason: format!("{} cannot enter it ({e})", self.user.name),
        })
    }

    /// Drops to the container's user: groups, gid, uid.
    pub fn become_user(&self) -> Result<()> {
        let u = &self.user;
        sys::become_user(u.uid, u.gid, &u.gids())
            .map_err(|e| Error::system(format!("becoming user {}", u.name), e))
    }
}
