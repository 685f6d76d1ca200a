//! What the integration tests of both packages share (`tests/` of the plugin and
//! `runtime/tests/`): checking prerequisites, the test user, temporary folders, the test
//! image, running commands with a time limit, and snapshots of the host that prove a
//! run left nothing behind.
//!
//! A test that needs root, the cluster or a tool the host may lack is marked
//! `#[ignore = "needs ..."]`, so that a plain `cargo test` reports it as ignored;
//! `tests/run` prepares the host and runs them with `--include-ignored`. Once running,
//! such a test calls [`require`], which fails it, naming what is missing, instead of
//! letting it pass without having checked anything.

pub mod at_exit;
pub mod cluster;
pub mod files;
pub mod fixture;
pub mod host;
pub mod prerequisites;
pub mod process;
pub mod registry;
pub mod sif_builder;
pub mod target;
pub mod tempdir;
pub mod user;

pub use cluster::{missing_for_jobs, slurm_node_problem, PLUGIN_CONF};
pub use files::{mkdir_mode, mksquashfs, sha256sum, write_mode};
pub use fixture::{fixture, Fixture, BUSYBOX, ONLY_IN_IMAGE};
pub use host::{
    dev_ino, exclusive, ferry_processes, host_mounts, loop_devices, loop_devices_for, shared,
    HostState,
};
pub use prerequisites::{
    find_tool, is_root, missing_prerequisite, missing_tools, require, static_busybox_problem,
};
pub use process::{run_with_timeout, Outcome};
pub use target::{
    cluster_command, cluster_mount_ns, on_cluster_node, other_cluster, CLUSTER_PID_VAR,
};
pub use tempdir::{pid_tag, TempDir};
pub use user::{test_user, test_user_groups, TestUser, TEST_GROUP, TEST_HOME, TEST_USER};
