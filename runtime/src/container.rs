//! Prepare a container once, join it from any number of processes.
//!
//! `prepare` forks a single-threaded helper that builds the mount namespace (see
//! `assemble`) and reports back on a pipe. The parent then opens the helper's namespace
//! file and lets the helper exit: the open nsfs descriptor alone keeps the namespace,
//! and so the mounts and the loop device, alive. No process, no host mount, no state
//! file is left; closing the descriptor (or the parent dying) frees everything.
//! Forked children inherit the descriptor and `join` with setns.

use crate::assemble::{self, ImageFacts};
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::request::Request;
use crate::sys;
use crate::users::User;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Container {
    namespace: OwnedFd,
    pub workdir: PathBuf,
    pub user: User,
    pub image: PathBuf,
    pub facts: ImageFacts,
    /// Whether the request pinned the image's digest (and so it was verified).
    pub pinned: bool,
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
    match sys::fork().map_err(|e| Error::system("forking the setup helper", e))? {
        sys::Forked::Child => {
            drop(result_read);
            drop(release_write);
            helper(req, &plan, result_write, release_read)
        }
        sys::Forked::Parent(pid) => {
            drop(result_write);
            drop(release_read);
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
            let (namespace, facts) = outcome?;
            Ok(Container {
                namespace,
                workdir: assemble::effective_workdir(req, &plan, facts.config.as_ref()),
                user: req.user.clone(),
                image: req.image.clone(),
                facts,
                pinned: req.pinned.is_some(),
            })
        }
    }
}

/// The helper's whole life: assemble, report, wait for the parent to take the namespace.
fn helper(req: &Request, plan: &Plan, result: OwnedFd, release: OwnedFd) -> ! {
    let outcome = std::panic::catch_unwind(|| assemble::assemble(req, plan));
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
