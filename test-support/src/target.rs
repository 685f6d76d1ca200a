//! Which Slurm cluster the end-to-end tests drive. By default the host's own. With
//! `FERRY_E2E_CLUSTER_PID=PID` set, a cluster of another Slurm release that runs in the
//! mount namespace, and under the root, of process PID (tests/slurm26/suite starts one):
//! every Slurm command, and every command run as the test user, then enters that
//! namespace through `nsenter`. The suite binds the test user's home and the test image
//! cache into that root at the same paths, so what jobs leave there is checked from here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The variable naming a process of the other cluster's mount namespace.
pub const CLUSTER_PID_VAR: &str = "FERRY_E2E_CLUSTER_PID";

/// The process whose namespace holds the cluster under test, when it is not the host's.
pub fn other_cluster() -> Option<u32> {
    let pid = std::env::var(CLUSTER_PID_VAR).ok()?;
    let pid = pid
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{CLUSTER_PID_VAR}={pid:?} is not a process id"));
    assert!(
        Path::new(&format!("/proc/{pid}/ns/mnt")).exists(),
        "{CLUSTER_PID_VAR}={pid}: no such process (is the other cluster's suite still running?)"
    );
    Some(pid)
}

/// `program` (a command of the cluster's node: a Slurm client, runuser, ...) to be run
/// in `cwd` on the cluster under test. The caller adds arguments and environment.
pub fn cluster_command(program: &str, cwd: &Path) -> Command {
    match other_cluster() {
        None => {
            let mut cmd = Command::new(program);
            cmd.current_dir(cwd);
            cmd
        }
        Some(pid) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg("-t")
                .arg(pid.to_string())
                .args(["-m", "-r"])
                // nsenter opens the folder before it enters: name it through the root.
                .arg(format!("--wd=/proc/{pid}/root{}", cwd.display()))
                .arg("--")
                .arg(program)
                .current_dir("/");
            cmd
        }
    }
}

/// The mount namespace of the cluster's node, as `readlink /proc/self/ns/mnt` prints it
/// there: what a step that runs outside any image sees.
pub fn cluster_mount_ns() -> String {
    let link = match other_cluster() {
        None => PathBuf::from("/proc/self/ns/mnt"),
        Some(pid) => PathBuf::from(format!("/proc/{pid}/ns/mnt")),
    };
    std::fs::read_link(link).unwrap().display().to_string()
}

/// `abs`, a path of the cluster's node, as seen from here.
pub fn on_cluster_node(abs: &str) -> PathBuf {
    match other_cluster() {
        None => PathBuf::from(abs),
        Some(pid) => PathBuf::from(format!("/proc/{pid}/root{abs}")),
    }
}
