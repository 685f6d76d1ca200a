//! A spec's hooks, run once per container (per step per node) when it is ready, before
//! any task: `createContainer` hooks, then `startContainer` ones.
//!
//! Each runs as the job's user, never root, inside the container's mount namespace,
//! with no_new_privs, from the host program the spec names: root's own regular file
//! (not a symlink, writable by root only), opened on the host and executed through
//! that descriptor, so neither the container nor the user can swap it. A root hook
//! acting on a tree the user controls is the classic symlink race (nvidia-container-
//! toolkit's CVE-2024-0132); as the user, a hook can do only what the user could.
//! Its stdin carries the OCI state; it has `timeout` (the spec's, else
//! `DEFAULT_TIMEOUT`) and is killed after it. A hook that fails or runs out of time
//! fails the step with one line naming the spec and the hook.

use super::{HookStage, SpecHook};
use crate::Container;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A hook's time when its spec gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a hook prints, kept for the error line (its last line).
const MAX_OUTPUT: usize = 4096;

/// Whether `path` may be run as a hook: an absolute path to a regular file (not a
/// symlink) that root owns and only root may write. The reason otherwise.
pub fn check_program(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot be found ({e})"))?;
    judge(&meta)?;
    if let Some(dir) = path
        .parent()
        .and_then(|d| crate::image::not_root_only(Path::new("/"), d))
    {
        return Err(format!("its folder {} is not root's alone", dir.display()));
    }
    Ok(())
}

fn judge(meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        return Err("is a symlink; name the program itself".into());
    }
    if !meta.file_type().is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err("must be owned by root and writable by root only".into());
    }
    if meta.mode() & 0o111 == 0 {
        return Err("is not executable".into());
    }
    Ok(())
}

/// The OCI state a hook reads on its stdin.
pub fn state_json(id: &str, pid: u32, annotations: &[(String, String)]) -> String {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": "created",
        "pid": pid,
        "bundle": "",
        "annotations": annotations,
    })
    .to_string()
}

/// Runs `hooks` for `container` (`id` names it in the OCI state), stages in order.
/// A named container an earlier step made ran them then: never twice.
pub fn run_all(container: &Container, hooks: &[SpecHook], id: &str) -> Result<(), String> {
    if container.named.as_ref().is_some_and(|n| n.joined) {
        return Ok(());
    }
    for stage in [HookStage::CreateContainer, HookStage::StartContainer] {
        for hook in hooks.iter().filter(|h| h.hook.stage == stage) {
            run_one(container, hook, id).map_err(|why| {
                format!(
                    "CDI spec {}: hook {} {why}; the step was stopped (ask your admin to check the spec)",
                    hook.spec.display(),
                    hook.hook.path.display()
                )
            })?;
        }
    }
    Ok(())
}

fn run_one(container: &Container, spec_hook: &SpecHook, id: &str) -> Result<(), String> {
    let hook = &spec_hook.hook;
    let cstrings = |list: &[String]| -> Result<Vec<CString>, String> {
        list.iter()
            .map(|s| {
                CString::new(s.as_str()).map_err(|_| "has a NUL byte in an argument".to_string())
            })
            .collect()
    };
    let argv = cstrings(&hook.args)?;
    let envp = cstrings(&hook.env)?;
    // Opened here, on the host, as root; judged through the descriptor that runs.
    let program = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&hook.path)
        .map_err(|e| format!("cannot be opened ({e})"))?;
    judge(&program.metadata().map_err(|e| e.to_string())?)?;
    let program: OwnedFd = program.into();
    let (stdin_read, stdin_write) = crate::sys::pipe().map_err(|e| e.to_string())?;
    let (out_read, out_write) = crate::sys::pipe().map_err(|e| e.to_string())?;
    let timeout = hook.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let parent = nix::unistd::getpid();
    match crate::sys::fork().map_err(|e| format!("cannot be started ({e})"))? {
        crate::sys::Forked::Child => {
            let code = child(
                container,
                &program,
                &stdin_read,
                &out_write,
                &argv,
                &envp,
                parent,
            );
            crate::sys::exit_now(code)
        }
        crate::sys::Forked::Parent(pid) => {
            drop((stdin_read, out_write, program));
            // Its own pid: /proc/PID/root is the container's root, never the host's.
            let state = state_json(id, pid.as_raw() as u32, &[]);
            let mut stdin = std::fs::File::from(stdin_write);
            let _ = stdin.write_all(state.as_bytes()); // a hook may not read it
            drop(stdin);
            let deadline = Instant::now() + timeout;
            let output = read_until_closed(out_read, deadline);
            let status = wait(pid, deadline);
            let last = output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| format!(": {}", l.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            match status {
                None => Err(format!(
                    "took longer than {} s and was stopped{last}",
                    timeout.as_secs()
                )),
                Some(0) => Ok(()),
                Some(code) if code >= 128 => {
                    Err(format!("was killed by signal {}{last}", code - 128))
                }
                Some(code) => Err(format!("failed with exit status {code}{last}")),
            }
        }
    }
}

/// The hook's process: into the container, the user, then the program. Returns the
/// exit code when any step fails (the program never returns).
fn child(
    container: &Container,
    program: &OwnedFd,
    stdin: &OwnedFd,
    out: &OwnedFd,
    argv: &[CString],
    envp: &[CString],
    parent: nix::unistd::Pid,
) -> i32 {
    let say = |what: &str| {
        let _ = nix::unistd::write(out.as_fd(), format!("ferry: {what}\n").as_bytes());
        126
    };
    if crate::sys::die_with_parent(parent).is_err() {
        return 126;
    }
    for (from, to) in [
        (stdin.as_raw_fd(), 0),
        (out.as_raw_fd(), 1),
        (out.as_raw_fd(), 2),
    ] {
        if nix::unistd::dup2(from, to).is_err() {
            return 126;
        }
    }
    if let Err(e) = container.join() {
        return say(&format!("joining the container: {e}"));
    }
    if let Err(e) = container.become_user() {
        return say(&format!("becoming the user: {e}"));
    }
    // A change of ids disarms the parent-death signal: arm it again.
    if crate::sys::die_with_parent(parent).is_err() {
        return 126;
    }
    if std::env::set_current_dir("/").is_err() {
        return say("entering the container's /");
    }
    // A script's interpreter reads it as /dev/fd/N: it must stay open across exec.
    let keep = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
    if nix::fcntl::fcntl(program.as_raw_fd(), keep).is_err() {
        return say("keeping the program open");
    }
    let e = nix::unistd::fexecve(program.as_raw_fd(), argv, envp).unwrap_err();
    say(&format!("running it: {e}"))
}

/// Its exit code (128+N for signal N), or None when `deadline` passed (then killed).
fn wait(pid: nix::unistd::Pid, deadline: Instant) -> Option<i32> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut pause = Duration::from_micros(100);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Some(128 + signal as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Some(126),
        }
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What the hook wrote (its last `MAX_OUTPUT` bytes), read until it closes its end of
/// the pipe, which it does by exiting (so this wakes as soon as it ends), or until
/// `deadline` (a hook that outlives it, or leaves a process holding the pipe).
fn read_until_closed(pipe: OwnedFd, deadline: Instant) -> String {
    let mut file = std::fs::File::from(pipe);
    let mut kept: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::sys::wait_readable(file.as_fd(), left) {
            Ok(true) => {}
            _ => break,
        }
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                let excess = kept.len().saturating_sub(MAX_OUTPUT);
                kept.drain(..excess);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_state_is_oci_created() {
        let state: serde_json::Value =
            serde_json::from_str(&state_json("ferry-1.0", 42, &[("a".into(), "b".into())]))
                .unwrap();
        assert_eq!(state["status"], "created");
        assert_eq!(state["pid"], 42);
        assert_eq!(state["id"], "ferry-1.0");
        assert_eq!(state["annotations"]["a"], "b");
        assert!(state["ociVersion"].as_str().unwrap().starts_with("1."));
    }

    #[test]
    fn only_roots_own_regular_programs_run() {
        if !crate::is_root() {
            eprintln!("skipped: the programs must be root's, and this test is not root");
            return;
        }
        let dir = Scratch::new("cdi-hooks");
        std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o755)).unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(judge(&meta(&good)), Ok(()));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(judge(&meta(&link)).unwrap_err().contains("symlink"));
        let open = dir.join("open");
        std::fs::write(&open, "").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(judge(&meta(&open)).unwrap_err().contains("root only"));
        let plain = dir.join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(judge(&meta(&plain)).unwrap_err().contains("executable"));
        assert!(judge(&meta(&dir)).unwrap_err().contains("regular"));
    }
}
