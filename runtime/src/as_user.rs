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
//! The child dies with its parent (the setup helper, which is killed at its deadline),
//! keeps no descriptor of the helper's but its socket, and is not dumpable: the user
//! can stop or kill it (that only fails their own step) but cannot reach into it.

use crate::sys;
use crate::users::User;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

/// Opens each path with `open(2)` flags as `user`: one result per path, in order.
pub fn open_all(
    user: &User,
    paths: &[(&Path, libc::c_int)],
) -> io::Result<Vec<io::Result<OwnedFd>>> {
    let answers = run(user, |channel| {
        for (path, flags) in paths {
            let answer = sys::open_path(path, *flags);
            let sent = match &answer {
                Ok(fd) => sys::send_message(channel, OK, Some(fd.as_fd())),
                Err(e) => sys::send_message(channel, errno_of(e), None),
            };
            if sent.is_err() {
                return;
            }
        }
    })?;
    if answers.len() != paths.len() {
        return Err(io::Error::other("the user's opener ended early"));
    }
    Ok(answers
        .into_iter()
        .map(|a| {
            a.into_result()?
                .ok_or_else(|| io::Error::other("no descriptor came back"))
        })
        .collect())
}

/// Whether `user` can enter the folder `path` (chdir, in the caller's mount namespace).
pub fn can_enter(user: &User, path: &Path) -> io::Result<()> {
    let answers = run(user, |channel| {
        let code = match std::env::set_current_dir(path) {
            Ok(()) => OK,
            Err(e) => errno_of(&e),
        };
        let _ = sys::send_message(channel, code, None);
    })?;
    match answers.into_iter().next() {
        Some(answer) => answer.into_result().map(drop),
        None => Err(io::Error::other("the user's check ended early")),
    }
}

/// The success code; any other is an errno.
const OK: u64 = 0;

fn errno_of(e: &io::Error) -> u64 {
    e.raw_os_error().unwrap_or(libc::EIO) as u64
}

struct Answer {
    code: u64,
    fd: Option<OwnedFd>,
}

impl Answer {
    fn into_result(self) -> io::Result<Option<OwnedFd>> {
        match self.code {
            OK => Ok(self.fd),
            errno => Err(io::Error::from_raw_os_error(errno as i32)),
        }
    }
}

/// Forks the child, lets it become `user` and do `work`, and collects its messages until
/// it closes the socket. Must be called from a single-threaded process (the helper).
/// The child's first message says whether it became the user; an error there is ours.
fn run(user: &User, work: impl FnOnce(BorrowedFd<'_>)) -> io::Result<Vec<Answer>> {
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
                work(theirs.as_fd());
            }
            sys::exit_now(0)
        }
        sys::Forked::Parent(pid) => {
            drop(theirs);
            let mut answers = Vec::new();
            let outcome = loop {
                match sys::recv_message(ours.as_fd()) {
                    Ok(Some((code, fd))) => answers.push(Answer { code, fd }),
                    Ok(None) => break Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
            let _ = nix::sys::wait::waitpid(pid, None);
            outcome?;
            let mut answers = answers.into_iter();
            match answers.next().map(Answer::into_result) {
                Some(Ok(_)) => Ok(answers.collect()),
                Some(Err(e)) => Err(e),
                None => Err(io::Error::other(
                    "the user's process died before it started",
                )),
            }
        }
    }
}
