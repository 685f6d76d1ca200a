//! What the runtime's integration tests add to `test_support`: the `ferry` binary cargo
//! built for them, and what they need from the host.
//!
//! The tests need root, mksquashfs, a static busybox, gcc (with libc6-dev for
//! `-static`) and the test user `ferrytest` in the group `ferrylab`:
//! `sudo tests/prepare-host` sets all of that up. Each such test is
//! `#[ignore = "needs root and tests/prepare-host ..."]`; run them with
//! `cargo test -p ferry-runtime -- --include-ignored` (tests/run does).

#![allow(dead_code)] // each test crate uses its own part

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub use test_support::*;

/// Longest a single `ferry` run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `ferry` binary cargo built for these tests.
pub fn ferry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// Runs `ferry ARGS` from `cwd` and waits for it (at most RUN_TIMEOUT).
pub fn ferry<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Outcome {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).current_dir(cwd);
    run_with_timeout(cmd, RUN_TIMEOUT)
}

/// `ferry ARGS` from `cwd` with only PATH and `env` in its environment, so that no
/// login, CA or cache setting of the test's own environment reaches it; not started.
pub fn ferry_command<S: AsRef<OsStr>>(cwd: &Path, args: &[S], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(name, value)| (name, value)));
    cmd
}

/// Runs [`ferry_command`] and waits for it (at most `limit`).
pub fn ferry_with_env<S: AsRef<OsStr>>(
    cwd: &Path,
    args: &[S],
    env: &[(String, String)],
    limit: Duration,
) -> Outcome {
    run_with_timeout(ferry_command(cwd, args, env), limit)
}

/// Fails the test unless the host has root, the tools and the test user of
/// tests/prepare-host, plus `more_tools`.
#[track_caller]
pub fn require_root_and_tools(more_tools: &[&str]) {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (the tests mount images; run them as root)".to_string());
    }
    missing.extend(missing_tools(&["mksquashfs", "gcc"]));
    missing.extend(missing_tools(more_tools));
    missing.extend(static_busybox_problem(Path::new(BUSYBOX)));
    match nix::unistd::User::from_name(TEST_USER) {
        Ok(Some(_)) => {
            if !test_user_groups()
                .iter()
                .any(|(_, name)| name == TEST_GROUP)
            {
                missing.push(format!(
                    "user {TEST_USER} is not a member of group {TEST_GROUP}"
                ));
            }
        }
        _ => missing.push(format!("user {TEST_USER} does not exist")),
    }
    require(&missing);
}

/// A copy of the fixture's root folder (owners and modes kept) at `dir/rootfs`, for a
/// test that changes it before packing its own images.
pub fn copy_of_fixture_rootfs(dir: &Path) -> std::path::PathBuf {
    let rootfs = dir.join("rootfs");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&fixture().rootfs)
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(copied.success(), "cp -a of the fixture failed");
    rootfs
}
