//! What the end-to-end tests need of the Slurm cluster and of the installed plugin
//! (deploy/slurm-cluster, deploy/build && deploy/install, tests/prepare-host).

use std::path::Path;
use std::process::Stdio;

use crate::prerequisites::{find_tool, is_root};
use crate::target::{cluster_command, on_cluster_node, other_cluster};
use crate::user::{TEST_HOME, TEST_USER};

/// The plugstack line that the package installs.
pub const PLUGIN_CONF: &str = "/etc/slurm/plugstack.conf.d/ferry.conf";

/// What is missing for jobs that the test user runs on the cluster through the plugin:
/// root (to run them as the user), a node that takes jobs, the installed plugin, and
/// the user with their home.
pub fn missing_for_jobs() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push(format!(
            "root (the tests run jobs as {TEST_USER} through runuser)"
        ));
    }
    missing.extend(slurm_node_problem());
    if !on_cluster_node(PLUGIN_CONF).is_file() {
        missing.push(format!(
            "the ferry plugin ({PLUGIN_CONF} missing; run deploy/build && deploy/install)"
        ));
    }
    match nix::unistd::User::from_name(TEST_USER) {
        Ok(Some(_)) => {
            if !Path::new(TEST_HOME).is_dir() {
                missing.push(format!("{TEST_HOME} (home of {TEST_USER}) does not exist"));
            }
        }
        _ => missing.push(format!(
            "user {TEST_USER} does not exist (run tests/prepare-host)"
        )),
    }
    missing
}

/// Why the cluster cannot take jobs, if it cannot. A node finishing the previous test's
/// job is "completing" for a moment: usable.
pub fn slurm_node_problem() -> Option<String> {
    if other_cluster().is_none() && find_tool("sinfo").is_none() {
        return Some("sinfo not found on PATH (run deploy/slurm-cluster)".to_string());
    }
    let out = cluster_command("timeout", Path::new("/"))
        .args(["10", "sinfo", "-h", "-N", "-o", "%T"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let ready = text
                .lines()
                .any(|s| matches!(s.trim(), "idle" | "mixed" | "allocated" | "completing"));
            (!ready).then(|| {
                format!(
                    "a Slurm node that is idle, mixed, allocated or completing (sinfo says {:?}; run deploy/slurm-cluster)",
                    text.trim()
                )
            })
        }
        Ok(out) => Some(format!(
            "a responding Slurm controller (sinfo failed: {}; run deploy/slurm-cluster)",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("sinfo: {e}")),
    }
}
