//! Work done with a user's rights, truly: in a forked child that has the user's real,
//! effective and saved ids and groups, and so no capabilities at all.
//!
//! Changing only the filesystem ids (setfsuid) is not enough: a root process keeps
//! CAP_SYS_PTRACE and the like, with which the kernel follows `/proc/PID/cwd` and
//! `/proc/PID/root` of any process, and lets it open another user's `/proc/PID/ns/*`.
//! A process that is the user is refused there exactly as the user is. The child opens
//! what it is asked to and hands the descriptors back over a socket (SCM_RIGHTS); root
//! then uses those descriptors, never the paths.
//!
//! One child serves the whole setup: it is forked in the container's new mount
//! namespace (so what it opens can be bound there) and follows the helper's
//! `pivot_root` into the new root (pivot_root moves every process of the namespace
//! whose root was the old one), where it checks the working folder. It dies with its
//! parent (the setup helper, which is killed at its deadline), keeps no descriptor of
//! the helper's but its socket, and is not dumpable: the user can stop or kill it (that
//! only fails their own step) but cannot reach into it.
//!
//! In ferry's own user namespace (`ferry run` without root) the helper is the user
//! already; its only extra rights are capabilities inside that namespace, which it
//! lowers from its effective set for each look and raises again after: no child.

use crate::sys;
use crate::users::User;
use nix::unistd::Pid;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A process that is the user, taking requests until it is dropped.
pub struct AsUser {
    /// None in ferry's own user namespace (`ferry run` without root): the caller is
    /// the user already, and only lowers its capabilities in that namespace for each
    /// look (see `as_the_caller`), instead of asking a child.
    child: Option<Child>,
}

struct Child {
    channel: OwnedFd,
    pid: Pid,
    /// Its first message (that it became the user) has been read.
    started: std::cell::Cell<bool>,
}

/// What the child is asked to do with a path.
#[derive(Clone, Copy)]
enum Request {
    /// `open(path, flags)`: answers with the descriptor.
    Open(libc::c_int),
    /// `chdir(path)`: answers with success or the errno.
    Enter,
}

/// The success code of an answer; any other is an errno.
const OK: u64 = 0;

impl AsUser {
    /// Forks the child, which becomes the user. Must be called from a single-threaded
    /// process (the helper). A failure to become the user is the first request's error.
    pub fn start(user: &User) -> io::Result<AsUser> {
        if crate::userns::entered() {
            return Ok(AsUser { child: None });
        }
        let (ours, theirs) = sys::message_pair()?;
        let groups: Vec<nix::unistd::Gid> = user
            .gids()
            .into_iter()
            .map(nix::unistd::Gid::from_raw)
            .collect();
        let parent = nix::unistd::getpid();
        match sys::fork()? {
            sys::Forked::Child => {
                drop(ours);
                sys::close_all_but(theirs.as_fd());
                let became = std::env::set_current_dir("/")
                    .and_then(|_| sys::become_ids(user.uid, user.gid, &groups))
                    .and_then(|_| sys::tie_to_parent(parent));
                let status = became.as_ref().map_or_else(errno_of, |_| OK);
                if sys::send_message(theirs.as_fd(), status, None).is_ok() && became.is_ok() {
                    serve(theirs.as_fd());
                }
                sys::exit_now(0)
            }
            sys::Forked::Parent(pid) => {
                drop(theirs);
                // Whether it became the user is read with the first answer: the
                // caller goes on with its own work meanwhile.
                Ok(AsUser {
                    child: Some(Child {
                        channel: ours,
                        pid,
                        started: std::cell::Cell::new(false),
                    }),
                })
            }
        }
    }

    /// Opens `path` with `open(2)` flags as the user. The outer error: the child is gone.
    pub fn open(&self, path: &Path, flags: libc::c_int) -> io::Result<io::Result<OwnedFd>> {
        let Some(child) = &self.child else {
            return as_the_caller(|| sys::open_path(path, flags));
        };
        child.ask(Request::Open(flags), path)?;
        Ok(match child.answer()? {
            (OK, Some(fd)) => Ok(fd),
            (OK, None) => Err(io::Error::other("no descriptor came back")),
            (errno, _) => Err(io::Error::from_raw_os_error(errno as i32)),
        })
    }

    /// Whether the user can enter the folder `path` (chdir, in the child's current
    /// mount namespace and root). The outer error: the child is gone.
    pub fn can_enter(&self, path: &Path) -> io::Result<io::Result<()>> {
        let Some(child) = &self.child else {
            // The caller's own folder afterwards is the root (it just pivoted there).
            return as_the_caller(|| {
                std::env::set_current_dir(path).and_then(|_| std::env::set_current_dir("/"))
            });
        };
        child.ask(Request::Enter, path)?;
        Ok(match child.answer()? {
            (OK, _) => Ok(()),
            (errno, _) => Err(io::Error::from_raw_os_error(errno as i32)),
        })
    }
}

/// Runs `look` with no effective capability (so the kernel checks the caller's own
/// rights, as for a process outside any namespace), then raises them again. The outer
/// error: the capabilities could not be changed.
fn as_the_caller<T>(look: impl FnOnce() -> io::Result<T>) -> io::Result<io::Result<T>> {
    let held = sys::capabilities()?;
    sys::set_capabilities(&held.lowered())?;
    let result = look();
    sys::set_capabilities(&held)?;
    Ok(result)
}

impl Child {
    fn ask(&self, request: Request, path: &Path) -> io::Result<()> {
        let (op, flags) = match request {
            Request::Open(flags) => (0u32, flags),
            Request::Enter => (1u32, 0),
        };
        let mut message = Vec::with_capacity(8 + path.as_os_str().len());
        message.extend_from_slice(&op.to_le_bytes());
        message.extend_from_slice(&flags.to_le_bytes());
        message.extend_from_slice(path.as_os_str().as_bytes());
        sys::send_bytes(self.channel.as_fd(), &message)
    }

    fn answer(&self) -> io::Result<(u64, Option<OwnedFd>)> {
        if !self.started.get() {
            match self.message()? {
                (OK, _) => self.started.set(true),
                (errno, _) => return Err(io::Error::from_raw_os_error(errno as i32)),
            }
        }
        self.message()
    }

    fn message(&self) -> io::Result<(u64, Option<OwnedFd>)> {
        loop {
            match sys::recv_message(self.channel.as_fd()) {
                Ok(Some(answer)) => return Ok(answer),
                Ok(None) => return Err(io::Error::other("the user's process ended early")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Child {
    /// Shutting the socket down ends the child; it is reaped here.
    fn drop(&mut self) {
        let _ = sys::shutdown(self.channel.as_fd());
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The child's loop: one answer per request, until the parent closes the socket.
fn serve(channel: BorrowedFd<'_>) {
    // On the stack: the child touches as little of its copy of the heap as it can.
    let mut buf = [0u8; 8 + libc::PATH_MAX as usize + 1];
    loop {
        let n = match sys::recv_bytes(channel, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n < 8 {
            return;
        }
        let op = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default());
        let flags = i32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
        let path = Path::new(OsStr::from_bytes(&buf[8..n]));
        let sent = match op {
            0 => match sys::open_path(path, flags) {
                Ok(fd) => sys::send_message(channel, OK, Some(fd.as_fd())),
                Err(e) => sys::send_message(channel, errno_of(&e), None),
            },
            _ => {
                let code = std::env::set_current_dir(path).map_or_else(|e| errno_of(&e), |_| OK);
                sys::send_message(channel, code, None)
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

fn errno_of(e: &io::Error) -> u64 {
    e.raw_os_error().unwrap_or(libc::EIO) as u64
}
