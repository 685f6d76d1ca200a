//! Snapshots of the host (loop devices, mounts, `ferry` processes) to prove that a run
//! left nothing behind, and the lock that keeps other tests of the process from
//! running ferry meanwhile.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::prerequisites::find_tool;
use crate::tempdir::pid_tag;

static HOST_LOCK: RwLock<()> = RwLock::new(());

/// Held by tests that only need the host to work: they may run in parallel.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    HOST_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// Held by tests that compare host snapshots: no other test of this process runs
/// ferry meanwhile, so a loop device or process seen is theirs.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    HOST_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------
// Host snapshots: what a run must not leave behind.

#[derive(Debug, Clone)]
pub struct HostState {
    /// `losetup -a` lines.
    pub loops: BTreeSet<String>,
    /// Lines of the host's (this process's) /proc/self/mountinfo.
    pub mounts: BTreeSet<String>,
    /// `ferry` processes already running (another user's or test run's, on a shared
    /// machine): not ours to account for.
    pub processes: BTreeSet<u32>,
}

impl HostState {
    pub fn capture() -> HostState {
        HostState {
            loops: loop_devices(),
            mounts: host_mounts(),
            processes: ferry_processes().into_iter().map(|(pid, _)| pid).collect(),
        }
    }

    /// Fails unless, within 2 s (autoclear loop devices go asynchronously), there is no
    /// new loop device backed by this process's test files, no new mount on the host,
    /// and no `ferry` process that was not running before. `what` says which run(s) are checked.
    pub fn assert_nothing_left(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let leftovers = self.leftovers();
            if leftovers.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: left behind on the host:\n  {}",
                    leftovers.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let tag = pid_tag();
        for entry in loop_devices().difference(&self.loops) {
            if entry.contains(&tag) {
                out.push(format!("loop device: {entry}"));
            } else {
                eprintln!(
                    "note: ignoring a new loop device not backed by this test's files: {entry}"
                );
            }
        }
        for line in host_mounts().difference(&self.mounts) {
            // The node image cache's folder, bound onto itself once per boot by the
            // first step that uses it (see runtime/src/image_cache.rs): not a leak.
            if line.split_whitespace().nth(4) == Some("/run/ferry/image-cache") {
                continue;
            }
            out.push(format!("mount: {line}"));
        }
        for (pid, cmdline) in ferry_processes() {
            if !self.processes.contains(&pid) {
                out.push(format!("process {pid}: {cmdline}"));
            }
        }
        out
    }
}

pub fn loop_devices() -> BTreeSet<String> {
    let out = Command::new(find_tool("losetup").unwrap_or_else(|| "losetup".into()))
        .arg("-a")
        .output()
        .expect("running losetup -a");
    assert!(
        out.status.success(),
        "losetup -a failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Loop devices whose backing file is `image`.
pub fn loop_devices_for(image: &Path) -> Vec<String> {
    let name = image.display().to_string();
    loop_devices()
        .into_iter()
        .filter(|l| l.contains(&name))
        .collect()
}

pub fn host_mounts() -> BTreeSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Processes named `ferry` (the CLI and its setup helper both are), as (pid, cmdline).
pub fn ferry_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end() == "ferry" {
            let cmdline = fs::read(entry.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            out.push((pid, cmdline));
        }
    }
    out
}

/// `stat` of a host path as (dev, ino).
pub fn dev_ino(path: &Path) -> (u64, u64) {
    let m = fs::metadata(path).unwrap();
    (m.dev(), m.ino())
}
