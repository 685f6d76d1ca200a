//! `ferry run` without root: the calling process enters a user namespace of its own
//! (the caller mapped to themselves, or to root inside with `--fakeroot`), in which it
//! holds the capabilities the setup needs over the namespaces it then makes; the
//! container itself is built by the same helper, plan and executor as for root.
//!
//! Where the kernel refuses, `Blocked` names the one setting that stops it, read from
//! the sysctls and the error of unshare(2), and what an admin can change.

use crate::sys;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once this process (and so every child it forks after) is in its own namespace.
static ENTERED: AtomicBool = AtomicBool::new(false);

/// Whether this process entered its own user namespace (`enter`). Reads one flag and
/// allocates nothing: usable in a forked child.
pub fn entered() -> bool {
    ENTERED.load(Ordering::Relaxed)
}

/// Who the caller is inside the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inside {
    /// Their own uid and gid (the default).
    Themselves,
    /// uid and gid 0 (`--fakeroot`): root over the container's files, nothing outside.
    Root,
}

/// Why this machine does not let a user make a user namespace.
#[derive(Debug, PartialEq, Eq)]
pub enum Blocked {
    /// `user.max_user_namespaces = 0`.
    MaxUserNamespaces,
    /// Namespaces are allowed, but this user has as many as the limit allows.
    LimitReached(i64),
    /// Debian's `kernel.unprivileged_userns_clone = 0`.
    UnprivilegedClone,
    /// Ubuntu's `kernel.apparmor_restrict_unprivileged_userns = 1`.
    AppArmor,
    /// A kernel built without user namespaces (CONFIG_USER_NS).
    NoKernelSupport,
    /// Refused for another reason (a seccomp filter of an outer container, say).
    Other(String),
}

const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";
const UNPRIVILEGED_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
const APPARMOR_RESTRICT: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";

/// What the Slurm plugin does instead, for every refusal line.
const PLUGIN_NEEDS_NONE: &str =
    "the Slurm plugin needs none of this (on a cluster with ferry: srun --container=IMAGE)";

impl Blocked {
    /// The one line the user reads: what stops it, what an admin can change.
    pub fn line(&self) -> String {
        let (why, fix) = match self {
            Blocked::MaxUserNamespaces => (
                "user namespaces are switched off on this machine (sysctl user.max_user_namespaces = 0)".to_string(),
                "an admin can allow them: sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d to keep it)".to_string(),
            ),
            Blocked::LimitReached(max) => (
                format!("you already have as many user namespaces as this machine allows (sysctl user.max_user_namespaces = {max})"),
                "end some of your containers, or an admin can raise user.max_user_namespaces".to_string(),
            ),
            Blocked::UnprivilegedClone => (
                "user namespaces are switched off for users on this machine (sysctl kernel.unprivileged_userns_clone = 0)".to_string(),
                "an admin can allow them: sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d to keep it)".to_string(),
            ),
            Blocked::AppArmor => (
                "AppArmor denies user namespaces to unconfined programs on this machine (sysctl kernel.apparmor_restrict_unprivileged_userns = 1)".to_string(),
                "an admin can allow ferry with an AppArmor profile granting userns for /usr/bin/ferry, or set that sysctl to 0".to_string(),
            ),
            Blocked::NoKernelSupport => (
                "this kernel has no user namespaces (built without CONFIG_USER_NS)".to_string(),
                "it needs a kernel with user namespaces (Linux 4.18 or later, 5.11 or later for --writable)".to_string(),
            ),
            Blocked::Other(reason) => (
                format!("making a user namespace was refused ({reason})"),
                "if this runs inside another container, its runtime may forbid it; ask your admin".to_string(),
            ),
        };
        format!("ferry run without root: {why}; {fix}; {PLUGIN_NEEDS_NONE}")
    }

    /// Names the reason for unshare's or the id maps' error `e`, from the sysctls.
    fn from_error(e: &io::Error) -> Blocked {
        let max = read_sysctl(MAX_USER_NAMESPACES);
        match e.raw_os_error() {
            Some(libc::EINVAL) => Blocked::NoKernelSupport,
            Some(libc::ENOSPC) | Some(libc::EUSERS) => match max {
                Some(0) => Blocked::MaxUserNamespaces,
                Some(n) => Blocked::LimitReached(n),
                None => Blocked::Other(e.to_string()),
            },
            Some(libc::EPERM) | Some(libc::EACCES) => match from_sysctls() {
                Some(reason) => reason,
                None => Blocked::Other(e.to_string()),
            },
            _ => Blocked::Other(e.to_string()),
        }
    }
}

/// The setting that switches user namespaces off, read from the sysctls alone.
pub fn from_sysctls() -> Option<Blocked> {
    if !Path::new("/proc/self/ns/user").exists() {
        return Some(Blocked::NoKernelSupport);
    }
    if read_sysctl(MAX_USER_NAMESPACES) == Some(0) {
        return Some(Blocked::MaxUserNamespaces);
    }
    if read_sysctl(UNPRIVILEGED_CLONE) == Some(0) {
        return Some(Blocked::UnprivilegedClone);
    }
    if read_sysctl(APPARMOR_RESTRICT) == Some(1) {
        return Some(Blocked::AppArmor);
    }
    None
}

fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Moves the calling process, which must be single-threaded, into a new user namespace
/// in which the caller is `inside`. Its children (the setup helper, the command) are
/// in it too; the host's PID, network and IPC namespaces stay.
pub fn enter(inside: Inside) -> Result<(), Blocked> {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    sys::unshare_user_namespace().map_err(|e| Blocked::from_error(&e))?;
    let (inner_uid, inner_gid) = match inside {
        Inside::Themselves => (uid, gid),
        Inside::Root => (0, 0),
    };
    // "deny" first: a process without privilege outside may write a gid map only then.
    let write = |file: &str, text: String| std::fs::write(format!("/proc/self/{file}"), text);
    write("setgroups", "deny".into())
        .and_then(|_| write("uid_map", format!("{inner_uid} {uid} 1\n")))
        .and_then(|_| write("gid_map", format!("{inner_gid} {gid} 1\n")))
        .map_err(|e| Blocked::from_error(&e))?;
    ENTERED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether a user namespace can be made here, tried in a forked child so the caller
/// stays where it is (for `ferry doctor`). The error is `Blocked::line`.
pub fn check() -> Result<(), String> {
    if let Some(reason) = from_sysctls() {
        return Err(reason.line());
    }
    let other = |e: io::Error| Blocked::Other(e.to_string()).line();
    let (read, write) = sys::pipe().map_err(other)?;
    match sys::fork().map_err(other)? {
        sys::Forked::Child => {
            drop(read);
            let answer = match enter(Inside::Themselves) {
                Ok(()) => String::new(),
                Err(reason) => reason.line(),
            };
            let _ = std::io::Write::write_all(&mut std::fs::File::from(write), answer.as_bytes());
            sys::exit_now(0)
        }
        sys::Forked::Parent(pid) => {
            drop(write);
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(read), &mut answer);
            let _ = nix::sys::wait::waitpid(pid, None);
            if answer.is_empty() {
                Ok(())
            } else {
                Err(answer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_names_its_setting_and_the_plugin() {
        for (reason, setting) in [
            (Blocked::MaxUserNamespaces, "user.max_user_namespaces = 0"),
            (Blocked::LimitReached(5), "user.max_user_namespaces = 5"),
            (
                Blocked::UnprivilegedClone,
                "kernel.unprivileged_userns_clone = 0",
            ),
            (
                Blocked::AppArmor,
                "kernel.apparmor_restrict_unprivileged_userns = 1",
            ),
            (Blocked::NoKernelSupport, "CONFIG_USER_NS"),
        ] {
            let line = reason.line();
            assert!(line.contains(setting), "{line}");
            assert!(
                line.contains("the Slurm plugin needs none of this"),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn errors_of_unshare_map_to_reasons() {
        assert_eq!(
            Blocked::from_error(&io::Error::from_raw_os_error(libc::EINVAL)),
            Blocked::NoKernelSupport
        );
        assert!(matches!(
            Blocked::from_error(&io::Error::from_raw_os_error(libc::EIO)),
            Blocked::Other(_)
        ));
    }
}
