//! What the root package's integration tests (`slurm_e2e`, `mpi_e2e`) share: finding
//! tools, telling root, checking the cluster, and the rule for a missing prerequisite
//! (fail under CI=true, a loud SKIPPED elsewhere).
#![allow(dead_code)] // each test crate uses its own part

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Straight to the stderr handle: libtest captures eprintln! of passing tests.
pub fn loud_skip(reason: &str, hint: &str) {
    let banner = format!(
        "\n**********************************************************************\n\
         *** SKIPPED ({reason})\n\
         *** {hint}\n\
         **********************************************************************\n"
    );
    let _ = std::io::stderr().write_all(banner.as_bytes());
}

/// True when nothing is missing. Otherwise: with `CI=true`, panics with the reasons;
/// elsewhere prints a loud SKIPPED banner and returns false.
pub fn prerequisites(missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if ci() {
        panic!("missing prerequisite: {reason} (CI=true: these tests must run; see tests/prepare-host, deploy/slurm-cluster, deploy/install)");
    }
    loud_skip(
        &format!("missing prerequisite: {reason}"),
        "run as root on a host prepared with tests/prepare-host, deploy/slurm-cluster\n\
         *** and deploy/build && deploy/install",
    );
    false
}

pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Finds `name` on PATH or in the standard folders (a non-login root shell may lack sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let found = path
        .split(':')
        .chain(extra)
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
}

/// Why the cluster cannot take jobs, if it cannot. A node finishing the previous test's
/// job is "completing" for a moment: usable.
pub fn slurm_node_problem() -> Option<String> {
    find_tool("sinfo")?;
    let out = Command::new("timeout")
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
