//! The steps of a job share the batch step's FUSE mount of their image on a node.
//!
//! Under the `fuse` policy each container would start its own squashfuse, so every
//! `srun` step of a batch job would read the user's image cold. Instead, a step looks
//! for its job's batch step on this node, and if that one serves the very same image
//! file for the same user, it takes a copy of that mount (the batch step keeps it at
//! `SHARED_IMAGE` in its container) instead of starting a server. The batch step
//! outlives the job's other steps, so the server does too.
//!
//! Everything used to decide is beyond the user's reach: the batch slurmstepd is a
//! root process named by Slurm, the server must be its child, run the site's helper as
//! the user, and hold (as its image, fd 4) the same file and version the step opened
//! with the user's rights; the mount is taken from the namespace the root process
//! holds. Any doubt, and the step starts its own server as before.

use crate::sys;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where a container served by its own squashfuse keeps the image mount (read-only):
/// in a batch step, other steps of the job take it from there.
pub const SHARED_IMAGE: &str = "/.ferry/image";

/// The mount namespace of `job`'s batch step on this node, when its squashfuse (the
/// site's `helper`, running as `uid`) serves the file open as `image`.
pub fn batch_step_namespace(
    job: u32,
    uid: u32,
    image: BorrowedFd<'_>,
    helper: &Path,
) -> Option<OwnedFd> {
    let want = sys::fstat(image).ok()?;
    let helper = fs::canonicalize(helper).ok()?;
    // One pass over the processes, reading only their short name until one looks like
    // the helper (the kernel keeps the first 15 bytes of the program's name).
    let comm: Vec<u8> = helper
        .file_name()?
        .as_encoded_bytes()
        .iter()
        .take(15)
        .copied()
        .collect();
    let title = format!("slurmstepd: [{job}.batch]");
    // Root by its status (a /proc folder's owner is not proof: a process that made
    // itself non-dumpable shows as root's there).
    let is_batch_stepd = |pid: u32| {
        let dir = proc_dir(pid);
        fs::read_to_string(dir.join("status"))
            .is_ok_and(|status| field(&status, "Uid:") == Some(vec![0; 4]))
            && fs::read(dir.join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).next() == Some(title.as_bytes()))
    };
    let (server, stepd) = sys::process_ids().find_map(|pid| {
        let dir = proc_dir(pid);
        if fs::read(dir.join("comm")).ok()?.strip_suffix(b"\n")? != comm.as_slice() {
            return None;
        }
        let status = fs::read_to_string(dir.join("status")).ok()?;
        let parent = field(&status, "PPid:")?.first().copied()?;
        let serves_our_image = field(&status, "Uid:") == Some(vec![uid; 4])
            && fs::read_link(dir.join("exe")).is_ok_and(|exe| exe == helper)
            && fs::metadata(dir.join("fd/4")).is_ok_and(|m| {
                m.dev() == want.st_dev
                    && m.ino() == want.st_ino
                    && m.size() as i64 == want.st_size
                    && (m.mtime(), m.mtime_nsec()) == (want.st_mtime, want.st_mtime_nsec)
                    && (m.ctime(), m.ctime_nsec()) == (want.st_ctime, want.st_ctime_nsec)
            });
        (serves_our_image && is_batch_stepd(parent)).then_some((pid, parent))
    })?;
    // The batch slurmstepd holds one mount namespace open: its container's.
    let ours = fs::read_link("/proc/self/ns/mnt").ok()?;
    let namespace = fs::read_dir(proc_dir(stepd).join("fd"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|fd| {
            fs::read_link(fd).is_ok_and(|l| l.to_string_lossy().starts_with("mnt:[") && l != ours)
        })?;
    let namespace = sys::open_path(&namespace, libc::O_RDONLY).ok()?;
    // Still the same server of the same slurmstepd: neither pid was reused meanwhile.
    let status = fs::read_to_string(proc_dir(server).join("status")).ok()?;
    (field(&status, "PPid:") == Some(vec![stepd])).then_some(namespace)
}

/// Mounts at `target` a copy of the image mount of the container whose namespace is
/// `peer`. Ok(false): the peer has none (the caller starts its own server). Err: the
/// helper could not return to its own namespace and must give up.
pub fn borrow_image_mount(peer: OwnedFd, target: &Path) -> std::io::Result<bool> {
    let own = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)?;
    if sys::setns_mount(peer.as_fd()).is_err() {
        return Ok(false);
    }
    let cloned = sys::clone_mount(Path::new(SHARED_IMAGE));
    sys::setns_mount(own.as_fd())?;
    let Ok(cloned) = cloned else {
        return Ok(false);
    };
    if !sys::is_fuse(cloned.as_fd()) {
        return Ok(false);
    }
    Ok(sys::attach_mount(cloned.as_fd(), target).is_ok())
}

fn proc_dir(pid: u32) -> PathBuf {
    Path::new("/proc").join(pid.to_string())
}

/// The numbers after `key` on its line of a /proc status file.
fn field(status: &str, key: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tsquashfuse_ll\nPPid:\t42\nUid:\t1003\t1003\t1003\t1003\n";
        assert_eq!(field(status, "PPid:"), Some(vec![42]));
        assert_eq!(field(status, "Uid:"), Some(vec![1003; 4]));
        assert_eq!(field(status, "Gid:"), None);
        assert_eq!(field("Uid:\tx\n", "Uid:"), None);
    }
}
