//! End-to-end tests of ferry's SPANK plugin on a running Slurm cluster.
//!
//! Every job and step runs as the unprivileged user `ferrytest` (through `runuser`),
//! from a fresh folder under /home/ferrytest, and the assertions are about what that
//! user observes: the output of their commands, the job's output file, exit codes and
//! the files they leave on the host. The plugin itself is never linked: only Slurm's
//! command-line tools are driven.
//!
//! Needs: root, a responding Slurm node, the plugin installed (`deploy/build &&
//! deploy/install`), mksquashfs, a static /bin/busybox and the user `ferrytest`
//! (`tests/prepare-host`). The tests are therefore `#[ignore]`d: a plain `cargo test`
//! lists them as ignored, and `tests/run` (which prepares all of that) runs them with
//! `--include-ignored`. Run without a prerequisite, a test fails naming it.
//!
//! Tests run in parallel; each has its own folder and images. The leak test takes an
//! exclusive lock (all the others share it), so its host-wide checks (processes of
//! ferrytest) see only its own jobs.
//!
//!     cargo test --test slurm_e2e -- --include-ignored

#[path = "slurm_e2e/adversarial.rs"]
mod adversarial;
#[path = "slurm_e2e/audit.rs"]
mod audit;
#[path = "slurm_e2e/cache.rs"]
mod cache;
#[path = "slurm_e2e/cdi.rs"]
mod cdi;
#[path = "slurm_e2e/named.rs"]
mod named;
#[path = "slurm_e2e/registry.rs"]
mod registry;
#[path = "slurm_e2e/submit.rs"]
mod submit;
#[path = "slurm_e2e/writable.rs"]
mod writable;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};
use test_support::{
    cluster_command, cluster_mount_ns, find_tool, missing_for_jobs, missing_tools, mksquashfs,
    other_cluster, sha256sum, sif_builder, slurm_node_problem, static_busybox_problem, test_user,
    BUSYBOX, CLUSTER_PID_VAR, PLUGIN_CONF, TEST_HOME, TEST_USER,
};

/// PATH of the test user's commands (the host's Slurm clients are in /usr/bin).
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// A file and a command that exist only in the test images (their content names the
/// image, so a test can tell which image a command ran in).
const ONLY_FILE: &str = "/e2e/only-in-image.txt";
const ONLY_CMD: &str = "e2e-image-cmd";
/// A folder of every test image, for --container-workdir.
const IMAGE_WORKDIR: &str = "/e2e/workdir";
/// Longest a single srun may take before `timeout` kills it.
const SRUN_SECS: u64 = 60;
/// Longest an `sbatch --wait` may take (scheduling included).
const SBATCH_SECS: u64 = 150;

// ---------------------------------------------------------------------------------
// Prerequisites.

/// Fails the test, naming what is missing, unless the cluster and the host are ready.
#[track_caller]
fn require_prerequisites() {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    test_support::require(MISSING.get_or_init(missing_prerequisites));
}

fn missing_prerequisites() -> Vec<String> {
    let mut missing = missing_for_jobs();
    missing.extend(missing_tools(&[
        "mksquashfs",
        "runuser",
        "script",
        "timeout",
        "losetup",
        "unsquashfs",
        "setcap",
        "mknod",
        // Untrusted images go through FUSE by default (apt install squashfuse).
        "squashfuse_ll",
        "mkfs.ext3",
        "podman",
    ]));
    missing.extend(static_busybox_problem(Path::new(BUSYBOX)));
    missing
}

/// The node's own mount namespace (the host's, or that of the other cluster under test),
/// as `readlink /proc/self/ns/mnt` prints it.
fn host_mount_ns() -> String {
    cluster_mount_ns()
}

// ---------------------------------------------------------------------------------
// Command results.

struct Out {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    #[track_caller]
    fn expect_ok(&self) -> &Self {
        assert!(self.ok(), "expected success:\n{self}");
        self
    }

    /// The command failed with one `ferry:` line saying `fragment` (see
    /// `assert_one_ferry_error`); returns what the user saw, stdout then stderr.
    #[track_caller]
    fn expect_one_ferry_error(&self, case: &str, fragment: &str) -> String {
        let seen = format!("{}\n{}", self.stdout, self.stderr);
        assert_one_ferry_error(case, self.code, &seen, fragment);
        seen
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "--- command: {}", self.what)?;
        writeln!(f, "--- exit code: {:?}", self.code)?;
        writeln!(f, "--- stdout:\n{}", self.stdout)?;
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// An `sbatch --wait` and what its job wrote.
struct Job {
    sbatch: Out,
    id: Option<u64>,
    /// The job's output file (stdout and stderr of the batch script and its steps).
    log: String,
}

impl Job {
    fn ok(&self) -> bool {
        self.sbatch.ok()
    }

    #[track_caller]
    fn expect_ok(&self) -> &Self {
        assert!(self.ok(), "expected the job to succeed:\n{self}");
        self
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "{}", self.sbatch)?;
        writeln!(f, "--- job {:?} output file:\n{}", self.id, self.log)
    }
}

/// The lines of ferry's own error messages (Slurm prefixes them with
/// `srun: error: `, `slurmstepd-NODE: error: `, `sbatch: error: `; Slurm 26.05 prefixes
/// what a task's hook logs with a time stamp instead, `[2026-12-01T05:28:31.474] error: `).
/// A warning at submission (`ferry: warning: `, an image missing on the submit host) is
/// not one.
fn ferry_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("ferry: ")
                || l.contains(": error: ferry: ")
                || (l.starts_with('[') && l.contains("] error: ferry: "))
        })
        .filter(|l| !l.starts_with("ferry: warning: "))
        .collect()
}

/// The step failed, printed exactly one ferry line that says `fragment`, and the
/// user's command never ran.
#[track_caller]
fn assert_one_ferry_error(case: &str, code: Option<i32>, text: &str, fragment: &str) {
    assert_ne!(
        code,
        Some(0),
        "{case}: expected a failure, got success:\n{text}"
    );
    let lines = ferry_lines(text);
    assert_eq!(
        lines.len(),
        1,
        "{case}: expected exactly one 'ferry:' line, got {}:\n{text}",
        lines.len()
    );
    assert!(
        lines[0].contains(fragment),
        "{case}: the ferry line does not say {fragment:?}:\n{text}"
    );
    assert!(
        !text.contains("SHOULD-NOT-RUN"),
        "{case}: the command ran although the step failed:\n{text}"
    );
}

/// Polls `done` every `step` until it holds or `limit` passes.
fn wait_until(limit: Duration, step: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(step);
    }
}

/// Runs a host command as root and returns its stdout (empty on failure).
fn root_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// A test's lab: its own folder under the test user's home, images, jobs.

/// Tests share this lock; the leak test takes it exclusively.
static SERIAL: RwLock<()> = RwLock::new(());

#[allow(dead_code)]
enum Serial {
    Shared(RwLockReadGuard<'static, ()>),
    Exclusive(RwLockWriteGuard<'static, ()>),
}

/// How `Lab::image_as` packages an image's root folder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Packaging {
    Squashfs,
    /// A signed SIF file around a SquashFS partition.
    Sif,
    /// An ext3 image made by mkfs.ext3 -d (Singularity 2's `.img`).
    Ext3,
}

struct Lab {
    dir: PathBuf,
    seq: AtomicUsize,
    /// Variables added to the clean environment of every command run as the user.
    env: std::sync::Mutex<Vec<(String, String)>>,
    _serial: Serial,
}

impl Lab {
    /// A fresh folder; fails the test when a prerequisite is missing. For a test that
    /// runs only on the host's cluster: it checks things there (syslog, the host's
    /// processes and mounts, its site files), so it refuses another cluster.
    #[track_caller]
    fn new(name: &str) -> Lab {
        assert!(
            other_cluster().is_none(),
            "this test runs only against the host's cluster; unset {CLUSTER_PID_VAR} \
             (the core cases, made with Lab::core, run against every release)"
        );
        Self::create(name, false)
    }

    /// Like `new`, for a core case: it checks only what the test user sees (job output,
    /// files in the lab), so it runs against the host's cluster and against the other
    /// Slurm releases of the suite (tests/slurm26/suite, `FERRY_E2E_CLUSTER_PID`).
    #[track_caller]
    fn core(name: &str) -> Lab {
        Self::create(name, false)
    }

    /// Like `new`, and no other test of this file runs meanwhile.
    #[track_caller]
    fn exclusive(name: &str) -> Lab {
        assert!(
            other_cluster().is_none(),
            "this test runs only against the host's cluster; unset {CLUSTER_PID_VAR}"
        );
        Self::create(name, true)
    }

    #[track_caller]
    fn create(name: &str, exclusive: bool) -> Lab {
        require_prerequisites();
        let serial = if exclusive {
            let serial = SERIAL.write().unwrap_or_else(|e| e.into_inner());
            // Host-wide counts start from a node without kept image mounts.
            drop_image_cache();
            Serial::Exclusive(serial)
        } else {
            Serial::Shared(SERIAL.read().unwrap_or_else(|e| e.into_inner()))
        };
        let dir = Path::new(TEST_HOME).join(format!("e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            dir,
            seq: AtomicUsize::new(0),
            env: std::sync::Mutex::new(Vec::new()),
            _serial: serial,
        };
        lab.give(&lab.dir);
        lab
    }

    /// Every later command run as the user also gets `name=value`.
    fn set_env(&self, name: &str, value: &str) {
        self.env
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// The lab folder's name, also the name of its jobs: it marks their processes.
    fn job_name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Hands `path` to the test user.
    fn give(&self, path: &Path) {
        let u = test_user();
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid)).unwrap();
    }

    fn mkdir(&self, rel: &str) -> PathBuf {
        let path = self.path(rel);
        fs::create_dir_all(&path).unwrap();
        let mut p = path.as_path();
        while p.starts_with(&self.dir) {
            self.give(p);
            p = p.parent().unwrap();
        }
        path
    }

    fn write(&self, rel: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        self.give(&path);
        path
    }

    /// Builds a busybox SquashFS image at `rel` (relative to the lab) whose image-only
    /// file and command say `marker`. Returns `rel`.
    fn image(&self, rel: &str, marker: &str) -> String {
        self.image_as(rel, marker, Packaging::Squashfs)
    }

    /// Like `image`, packaged as `packaging` says.
    fn image_as(&self, rel: &str, marker: &str, packaging: Packaging) -> String {
        assert!(
            !Path::new("/e2e").exists() && find_tool(ONLY_CMD).is_none(),
            "the host must not have the image-only /e2e or {ONLY_CMD}"
        );
        let root = self.path(&format!("{rel}.rootfs"));
        let _ = fs::remove_dir_all(&root);
        for dir in ["bin", "etc", "tmp", "usr/local/bin", "e2e/workdir"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in busybox_applets() {
            let link = root.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).unwrap();
            }
        }
        fs::write(
            root.join(ONLY_FILE.trim_start_matches('/')),
            format!("only-in-image {marker}\n"),
        )
        .unwrap();
        let cmd = root.join("usr/local/bin").join(ONLY_CMD);
        fs::write(
            &cmd,
            format!("#!/bin/sh\necho \"image-cmd {marker}\" \"$@\"\n"),
        )
        .unwrap();
        fs::set_permissions(&cmd, fs::Permissions::from_mode(0o755)).unwrap();
        let image = self.path(rel);
        if let Some(parent) = image.parent() {
            fs::create_dir_all(parent).unwrap();
            self.give(parent);
        }
        let squashfs = match packaging {
            Packaging::Squashfs => image.clone(),
            Packaging::Sif => self.path(&format!("{rel}.partition")),
            Packaging::Ext3 => {
                let out = Command::new(find_tool("mkfs.ext3").unwrap())
                    .args(["-q", "-F", "-d"])
                    .arg(&root)
                    .arg(&image)
                    .arg("16M")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "mkfs.ext3 failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
                self.give(&image);
                fs::remove_dir_all(&root).unwrap();
                return rel.to_string();
            }
        };
        mksquashfs(&root, &squashfs, &["-all-root"]);
        if packaging == Packaging::Sif {
            let partition = fs::read(&squashfs).unwrap();
            fs::remove_file(&squashfs).unwrap();
            let sif = sif_builder::build(&[
                sif_builder::deffile("Bootstrap: scratch\n"),
                sif_builder::partition(
                    sif_builder::FS_SQUASHFS,
                    sif_builder::PART_PRIMARY_SYSTEM,
                    partition,
                ),
                sif_builder::signature(2),
            ]);
            fs::write(&image, sif).unwrap();
        }
        fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
        self.give(&image);
        fs::remove_dir_all(&root).unwrap();
        rel.to_string()
    }

    /// Runs `argv` as the test user in `cwd`, under `timeout`, with a clean environment.
    fn run_in(&self, cwd: &Path, argv: &[&str], stdin: Option<&str>, secs: u64) -> Out {
        let secs = secs.to_string();
        let mut cmd = cluster_command(&runuser(), cwd);
        cmd.args(["-u", TEST_USER, "--", "timeout", "-k", "5", &secs])
            .args(argv)
            .env_clear()
            .env("PATH", USER_PATH)
            .env("HOME", TEST_HOME)
            .env("USER", TEST_USER)
            .env("LOGNAME", TEST_USER)
            .env("LANG", "C")
            .env("TERM", "dumb")
            .envs(self.env.lock().unwrap().clone())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        Out {
            what: format!("(in {}) {}", cwd.display(), argv.join(" ")),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, argv: &[&str]) -> Out {
        self.run_in(&self.dir, argv, None, SRUN_SECS)
    }

    /// `srun ARGS...` as the test user from the lab folder.
    fn srun(&self, args: &[&str]) -> Out {
        let argv: Vec<&str> = std::iter::once("srun")
            .chain(args.iter().copied())
            .collect();
        self.run(&argv)
    }

    /// Writes `body` as a job script and submits it with `sbatch --wait OPTS` from the
    /// lab folder; returns when the job has ended.
    fn sbatch(&self, opts: &[&str], body: &str) -> Job {
        self.sbatch_in(&self.dir, opts, body)
    }

    fn sbatch_in(&self, cwd: &Path, opts: &[&str], body: &str) -> Job {
        let (script, output) = self.job_files(body);
        let name = self.job_name();
        let mut argv = vec!["sbatch", "--wait", "-J", &name, "-t", "5", "-o", &output];
        argv.extend_from_slice(opts);
        argv.push(&script);
        let sbatch = self.run_in(cwd, &argv, None, SBATCH_SECS);
        let id = job_id(&sbatch.stdout);
        let log = fs::read_to_string(cwd.join(&output)).unwrap_or_default();
        Job { sbatch, id, log }
    }

    /// Submits without waiting; returns the job id.
    fn submit(&self, opts: &[&str], body: &str) -> (u64, PathBuf) {
        let (script, output) = self.job_files(body);
        let name = self.job_name();
        let mut argv = vec![
            "sbatch",
            "--parsable",
            "-J",
            &name,
            "-t",
            "5",
            "-o",
            &output,
        ];
        argv.extend_from_slice(opts);
        argv.push(&script);
        let out = self.run(&argv);
        out.expect_ok();
        let id = out
            .stdout
            .trim()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        (id, self.path(&output))
    }

    /// A new job script (absolute path) and output file name (relative).
    fn job_files(&self, body: &str) -> (String, String) {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let script = self.write(
            &format!("job-{n}.sh"),
            &format!("#!/bin/sh\n{body}\n"),
            0o755,
        );
        (script.display().to_string(), format!("job-{n}.out"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// runuser of the cluster's node (on another release's root: its own, by absolute path,
/// as the user's clean PATH has no sbin).
fn runuser() -> String {
    match other_cluster() {
        Some(_) => "/usr/sbin/runuser".to_string(),
        None => find_tool("runuser").unwrap().display().to_string(),
    }
}

fn busybox_applets() -> &'static Vec<String> {
    static APPLETS: OnceLock<Vec<String>> = OnceLock::new();
    APPLETS.get_or_init(|| {
        let out = Command::new(BUSYBOX).arg("--list").output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .map(str::to_string)
            .collect()
    })
}

fn job_id(sbatch_stdout: &str) -> Option<u64> {
    sbatch_stdout
        .lines()
        .find_map(|l| l.strip_prefix("Submitted batch job "))
        .and_then(|id| id.trim().parse().ok())
}

/// The value after `key` on the first line that has it (up to the end of the line).
fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.split_once(key)
            .map(|(_, rest)| rest.trim_end_matches('\r').trim())
    })
}

#[track_caller]
fn assert_has(text: &str, needle: &str, context: &dyn fmt::Display) {
    assert!(text.contains(needle), "expected {needle:?} in:\n{context}");
}

// ---------------------------------------------------------------------------------
// The tests.

/// `sbatch --container=IMG`: the batch script reads an image-only file, runs an
/// image-only command, and its `srun -n 2` tasks are in the image too.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn batch_script_and_its_steps_run_in_the_image() {
    let lab = Lab::core("batch");
    let image = lab.image("app.sqfs", "APP");
    let job = lab.sbatch(
        &["-n", "2", &format!("--container={image}")],
        &format!(
            r#"echo "batch-file: $(cat {ONLY_FILE})"
echo "batch-cmd: $({ONLY_CMD} one two)"
echo "batch-ns: $(readlink /proc/self/ns/mnt)"
srun -n 2 sh -c 'echo "task-$SLURM_PROCID: $(cat {ONLY_FILE}) / $({ONLY_CMD}) / $(readlink /proc/self/ns/mnt)"'
echo "srun-rc: $?""#
        ),
    );
    job.expect_ok();
    let log = &job.log;
    assert_eq!(
        value_of(log, "batch-file: "),
        Some("only-in-image APP"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "batch-cmd: "),
        Some("image-cmd APP one two"),
        "{job}"
    );
    let batch_ns = value_of(log, "batch-ns: ").unwrap_or_default();
    assert!(batch_ns.starts_with("mnt:["), "{job}");
    assert_ne!(
        batch_ns,
        host_mount_ns(),
        "the batch script ran in the host's mount namespace:\n{job}"
    );
    for task in 0..2 {
        let line = value_of(log, &format!("task-{task}: "))
            .unwrap_or_else(|| panic!("no task {task}:\n{job}"));
        assert!(
            line.starts_with("only-in-image APP / image-cmd APP / mnt:["),
            "task {task}:\n{job}"
        );
        assert!(
            !line.ends_with(&host_mount_ns()),
            "task {task} on the host:\n{job}"
        );
    }
    assert_eq!(value_of(log, "srun-rc: "), Some("0"), "{job}");
}

/// `sbatch --container=image.sif`: the batch script and its `srun -n 2` step run in the
/// image, as with a SquashFS file; the user's own SIF is served by squashfuse (the
/// default policy) straight from the root partition's offset. The user's own ext3 image
/// (Singularity 2's `.img`) is refused with what to do: no reader for ext runs with the
/// user's rights (a trusted one runs: see the site policy test).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn sif_runs_through_squashfuse_and_an_untrusted_ext_image_is_refused() {
    let lab = Lab::new("formats");
    let image = lab.image_as("image.sif", "SIF", Packaging::Sif);
    let job = lab.sbatch(
        &[
            "-n",
            "2",
            &format!("--container={image}"),
            "--container-provenance=sif.jsonl",
        ],
        &format!(
            r#"echo "batch-file: $(cat {ONLY_FILE})"
echo "batch-cmd: $({ONLY_CMD} one)"
echo "batch-user: $(id -un)"
echo "batch-ns: $(readlink /proc/self/ns/mnt)"
srun -n 2 sh -c 'echo "task-$SLURM_PROCID: $(cat {ONLY_FILE}) / $({ONLY_CMD}) / $(id -un)"'
echo "srun-rc: $?""#
        ),
    );
    job.expect_ok();
    let log = &job.log;
    let file = "only-in-image SIF";
    assert_eq!(value_of(log, "batch-file: "), Some(file), "{job}");
    assert_eq!(
        value_of(log, "batch-cmd: "),
        Some("image-cmd SIF one"),
        "{job}"
    );
    assert_eq!(value_of(log, "batch-user: "), Some(TEST_USER), "{job}");
    let batch_ns = value_of(log, "batch-ns: ").unwrap_or_default();
    assert!(batch_ns.starts_with("mnt:["), "{job}");
    assert_ne!(batch_ns, host_mount_ns(), "on the host: {job}");
    for task in 0..2 {
        assert_eq!(
            value_of(log, &format!("task-{task}: ")),
            Some(format!("{file} / image-cmd SIF / {TEST_USER}").as_str()),
            "task {task}: {job}"
        );
    }
    assert_eq!(value_of(log, "srun-rc: "), Some("0"), "{job}");
    // The batch step's squashfuse serves the job's other steps too (through the node
    // image cache, which keeps the batch step's mount).
    let records = provenance_lines(&lab.path("sif.jsonl"));
    assert_eq!(records.len(), 2, "{records:?}: {job}");
    for record in &records {
        assert_eq!(record["mounted_by"], "fuse", "{record}");
        if record["step"] != "batch" {
            assert_eq!(record["image_cache"], "hit", "{record}");
        }
    }

    let ext = lab.image_as("image.img", "EXT", Packaging::Ext3);
    let out = lab.srun(&[&format!("--container={ext}"), "echo", "SHOULD-NOT-RUN"]);
    let seen = out.expect_one_ferry_error(
        "the user's own ext image",
        "ext images run only from this site's trusted image folders",
    );
    assert!(seen.contains("ferry build DIR OUT.sqfs"), "{out}");
}

/// The user's own image in a batch job: one squashfuse (the batch step's) serves the
/// batch script and every `srun` step of the job on the node, so steps start with the
/// image's cache warm; a step naming another image gets its own server; nothing is left
/// after the job.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn steps_of_a_batch_job_share_its_squashfuse() {
    let lab = Lab::exclusive("fuse-share");
    // Without the node image cache: within a job the batch step's server is shared
    // whatever the site keeps (with it, see cache::a_second_job_takes_the_kept_mount).
    let _site = audit::SiteFile::new("fuse-share", r#"{"image_cache_ttl": "0"}"#);
    let image = lab.image("job.sqfs", "JOB");
    let other = lab.image("other.sqfs", "OTHER");
    // Counts live squashfuse processes (inside the container: the host's PID space).
    lab.write(
        "count-servers",
        "n=0; for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = squashfuse_ll ] && [ \"$(cut -d' ' -f3 $p/stat 2>/dev/null)\" != Z ] && n=$((n+1)); done; echo $n\n",
        0o644,
    );
    let count = "sh count-servers";
    let job = lab.sbatch(
        &[
            "-n",
            "2",
            &format!("--container={image}"),
            "--container-provenance=share.jsonl",
        ],
        &format!(
            r#"echo "batch: $({count}) $(cat {ONLY_FILE})"
srun -n 2 sh -c 'echo "task-$SLURM_PROCID: $({count}) $(cat {ONLY_FILE})"'
srun -n 1 --container={other} sh -c 'echo "other: $({count}) $(cat {ONLY_FILE})"'
srun -n 1 sh -c 'echo "again: $(cat {ONLY_FILE})"'"#
        ),
    );
    job.expect_ok();
    let log = &job.log;
    assert_eq!(
        value_of(log, "batch: "),
        Some("1 only-in-image JOB"),
        "{job}"
    );
    for task in 0..2 {
        assert_eq!(
            value_of(log, &format!("task-{task}: ")),
            Some("1 only-in-image JOB"),
            "{job}"
        );
    }
    // Another image: a server of its own, next to the batch step's.
    assert_eq!(
        value_of(log, "other: "),
        Some("2 only-in-image OTHER"),
        "{job}"
    );
    // (Not counted: the other step's server may still be on its way out.)
    assert_eq!(value_of(log, "again: "), Some("only-in-image JOB"), "{job}");
    let records = provenance_lines(&lab.path("share.jsonl"));
    let mounted: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["step"].as_str().unwrap_or_default().to_string(),
                r["mounted_by"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    // Sorted: steps "0", "1", "2", then "batch".
    let expected: Vec<(String, String)> = [
        ("0", "fuse-shared"),
        ("1", "fuse"),
        ("2", "fuse-shared"),
        ("batch", "fuse"),
    ]
    .iter()
    .map(|(s, m)| (s.to_string(), m.to_string()))
    .collect();
    let mut sorted = mounted.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "{records:?}");
    // The batch step reaps its server when the job ends.
    let start = std::time::Instant::now();
    while !live_fuse_servers_of_test_user().is_empty() && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(live_fuse_servers_of_test_user(), Vec::<u32>::new());
}

/// `ferry cache drop --all` as root, as an admin does on a drained node: the node's
/// kept image mounts (and their loop devices and servers) go.
fn drop_image_cache() {
    let out = Command::new("/usr/bin/ferry")
        .args(["cache", "drop", "--all"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ferry cache drop --all: {out:?}");
}

/// After a test's jobs ended: no kept image mount is still in use (a step that ended,
/// even killed, lets go of its entry), then every kept mount is dropped, so what the
/// test finds left is a leak, not the node image cache.
fn settle_and_drop_image_cache() {
    let in_use = || {
        let out = Command::new("/usr/bin/ferry")
            .args(["cache", "--json"])
            .output()
            .unwrap();
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).unwrap_or_default();
        entries
            .into_iter()
            .filter(|e| e["in_use"] == true)
            .collect::<Vec<_>>()
    };
    let idle = wait_until(Duration::from_secs(20), Duration::from_millis(250), || {
        in_use().is_empty()
    });
    assert!(
        idle,
        "kept image mounts still in use after the jobs ended: {:#?}",
        in_use()
    );
    drop_image_cache();
}

/// Live (not zombie) squashfuse processes of the test user.
fn live_fuse_servers_of_test_user() -> Vec<u32> {
    live_fuse_servers_of(test_user().uid)
}

/// Live (not zombie) squashfuse processes of user `uid`.
fn live_fuse_servers_of(uid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status.lines().any(|l| l == "Name:\tsquashfuse_ll")
                && !status.lines().any(|l| l.starts_with("State:\tZ"))
                && status.lines().any(|l| {
                    l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
                })
        })
        .collect()
}

/// `srun -n 4 --container=IMG`: all four tasks see the image, in one mount namespace
/// that is not the host's.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn srun_tasks_share_one_container() {
    let lab = Lab::new("shared");
    let image = lab.image("shared.sqfs", "SHARED");
    let out = lab.srun(&[
        "-n",
        "4",
        "--overcommit",
        &format!("--container={image}"),
        "sh",
        "-c",
        &format!("echo \"task $SLURM_PROCID $(readlink /proc/self/ns/mnt) $(cat {ONLY_FILE})\""),
    ]);
    out.expect_ok();
    let mut tasks = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for line in out.stdout.lines().filter(|l| l.starts_with("task ")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[3..], ["only-in-image", "SHARED"], "{out}");
        tasks.insert(fields[1].to_string());
        namespaces.insert(fields[2].to_string());
    }
    assert_eq!(tasks.len(), 4, "expected 4 tasks:\n{out}");
    assert_eq!(
        namespaces.len(),
        1,
        "the tasks are in different mount namespaces:\n{out}"
    );
    let ns = namespaces.into_iter().next().unwrap();
    assert!(ns.starts_with("mnt:["), "{out}");
    assert_ne!(
        ns,
        host_mount_ns(),
        "the tasks ran in the host's mount namespace:\n{out}"
    );
}

/// `srun --container=IMG --pty sh` under script(1): a terminal, the image's files, the
/// shell's exit code.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn interactive_pty_shell_runs_in_the_image() {
    let lab = Lab::new("pty");
    let image = lab.image("pty.sqfs", "PTY");
    // What the shell prints differs from the echoed input ($((...)), $(...)).
    let input = format!(
        "test -t 0 && test -t 1 && echo \"tty-$((40+2))\"\n\
         cat {ONLY_FILE}\n\
         echo \"ns=$(readlink /proc/self/ns/mnt)\"\n\
         exit 3\n"
    );
    let command = format!("srun --container={image} --pty sh");
    let out = lab.run_in(
        &lab.dir,
        &["script", "-qec", &command, "/dev/null"],
        Some(&input),
        SRUN_SECS,
    );
    let text = out.stdout.replace('\r', "");
    assert_has(&text, "tty-42", &out);
    assert_has(&text, "only-in-image PTY", &out);
    let ns = value_of(&text, "ns=mnt:[").map(|rest| format!("mnt:[{rest}"));
    assert!(ns.is_some(), "no namespace line:\n{out}");
    assert_ne!(
        ns.unwrap(),
        host_mount_ns(),
        "the shell ran on the host:\n{out}"
    );
    assert_eq!(
        out.code,
        Some(3),
        "the shell's exit code did not come back:\n{out}"
    );
}

/// Job image A: `srun` inherits A, `srun --container=B` runs in B, `--container=none`
/// runs on the host, and a later plain `srun` is in A again.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn job_image_a_steps_inherit_or_choose_b_or_none() {
    let lab = Lab::core("inherit-a");
    let a = lab.image("a.sqfs", "IMAGE-A");
    let b = lab.image("b.sqfs", "IMAGE-B");
    let b_abs = lab.path(&b).display().to_string();
    let job = lab.sbatch(
        &[&format!("--container={a}")],
        &format!(
            r#"echo "batch: $(cat {ONLY_FILE})"
echo "inherit: $(srun cat {ONLY_FILE})"
echo "override: $(srun --container={b_abs} cat {ONLY_FILE})"
echo "none: $(srun --container=none sh -c 'test -e {ONLY_FILE} && echo image || echo host; readlink /proc/self/ns/mnt')" | tr '\n' ' '
echo
echo "again: $(srun cat {ONLY_FILE})""#
        ),
    );
    job.expect_ok();
    let log = &job.log;
    assert_eq!(
        value_of(log, "batch: "),
        Some("only-in-image IMAGE-A"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "inherit: "),
        Some("only-in-image IMAGE-A"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "override: "),
        Some("only-in-image IMAGE-B"),
        "{job}"
    );
    // With a private /tmp per job, Slurm runs the job's plain steps in the job's own
    // mount namespace (the node's mounts but /tmp and /dev/shm), not the node's.
    let none = value_of(log, "none: ").unwrap_or_default();
    if private_tmp_per_job() {
        assert!(
            none.starts_with("host mnt:["),
            "--container=none did not run on the host:\n{job}"
        );
    } else {
        assert_eq!(
            none,
            format!("host {}", host_mount_ns()),
            "--container=none did not run on the host:\n{job}"
        );
    }
    assert_eq!(
        value_of(log, "again: "),
        Some("only-in-image IMAGE-A"),
        "{job}"
    );
}

/// The other direction: job image B, `srun --container=A` (a relative path) runs in A.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn job_image_b_step_chooses_a() {
    let lab = Lab::core("inherit-b");
    let a = lab.image("a.sqfs", "IMAGE-A");
    let b = lab.image("b.sqfs", "IMAGE-B");
    let job = lab.sbatch(
        &[&format!("--container={b}")],
        &format!(
            r#"echo "batch: $({ONLY_CMD})"
echo "override: $(srun --container={a} {ONLY_CMD})"
echo "inherit: $(srun {ONLY_CMD})""#
        ),
    );
    job.expect_ok();
    let log = &job.log;
    assert_eq!(value_of(log, "batch: "), Some("image-cmd IMAGE-B"), "{job}");
    assert_eq!(
        value_of(log, "override: "),
        Some("image-cmd IMAGE-A"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "inherit: "),
        Some("image-cmd IMAGE-B"),
        "{job}"
    );
}

/// Relative image paths are resolved against the submit folder: for the job (also
/// when a step starts elsewhere) and for a direct srun.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn relative_image_paths_resolve_against_the_submit_folder() {
    let lab = Lab::core("relative");
    let image = lab.image("images/rel.sqfs", "REL");
    let work = lab.mkdir("work");
    let job = lab.sbatch_in(
        &work,
        &["--container=../images/rel.sqfs"],
        &format!(
            r#"echo "batch: $(cat {ONLY_FILE})"
cd /tmp && echo "elsewhere: $(srun cat {ONLY_FILE})""#
        ),
    );
    job.expect_ok();
    assert_eq!(
        value_of(&job.log, "batch: "),
        Some("only-in-image REL"),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "elsewhere: "),
        Some("only-in-image REL"),
        "{job}"
    );

    let out = lab.srun(&[&format!("--container={image}"), "cat", ONLY_FILE]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "only-in-image REL", "{out}");
    let out = lab.run_in(
        &work,
        &["srun", "--container=../images/rel.sqfs", ONLY_CMD],
        None,
        SRUN_SECS,
    );
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "image-cmd REL", "{out}");
}

/// A step started inside a job from another folder than the job's submit folder
/// behaves like a direct srun from there: a relative `--container-mounts` source is
/// taken against that folder (as the relative image path is), and that folder, even
/// outside the home and the submit folder, is the step's working directory.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn step_started_elsewhere_in_a_job_uses_its_own_folder() {
    let lab = Lab::new("elsewhere");
    let image = lab.image("e.sqfs", "ELSEWHERE");
    let image_abs = lab.path(&image).display().to_string();
    lab.mkdir("sub/data");
    lab.write("sub/data/f.txt", "sub-data\n", 0o644);
    let outside = PathBuf::from(format!("/var/tmp/{}", lab.job_name()));
    let _ = fs::remove_dir_all(&outside);
    fs::create_dir(&outside).unwrap();
    lab.give(&outside);
    let job = lab.sbatch(
        &[],
        &format!(
            r#"cd sub && echo "mount: $(srun --container=../{image} --container-mounts=data:/mnt/d cat /mnt/d/f.txt)"
cd {outside} && echo "cwd: $(srun --container={image_abs} pwd)""#,
            outside = outside.display()
        ),
    );
    let _ = fs::remove_dir_all(&outside);
    assert_eq!(value_of(&job.log, "mount: "), Some("sub-data"), "{job}");
    assert_eq!(
        value_of(&job.log, "cwd: "),
        Some(outside.display().to_string().as_str()),
        "{job}"
    );
    job.expect_ok();
}

/// `--container-mounts` (rw and ro) and `--container-workdir`, on srun and for a
/// whole job (with a step that overrides the working directory).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn container_mounts_and_workdir() {
    let lab = Lab::core("mounts");
    let image = lab.image("m.sqfs", "MOUNTS");
    let rw = lab.mkdir("rw");
    lab.mkdir("ro");
    let keep = lab.write("ro/keep.txt", "keep\n", 0o644);
    let ro_abs = lab.path("ro").display().to_string();

    let out = lab.srun(&[
        &format!("--container={image}"),
        &format!("--container-mounts=rw:/mnt/rw,{ro_abs}:/mnt/ro:ro"),
        &format!("--container-workdir={IMAGE_WORKDIR}"),
        "sh",
        "-c",
        "echo \"pwd=$(pwd)\"
         echo written > /mnt/rw/new.txt && echo rw-write-ok
         if echo x > /mnt/ro/new.txt; then echo ro-write-SUCCEEDED; else echo ro-write-failed; fi
         if echo x >> /mnt/ro/keep.txt; then echo ro-append-SUCCEEDED; else echo ro-append-failed; fi
         echo \"ro-read=$(cat /mnt/ro/keep.txt)\"",
    ]);
    out.expect_ok();
    assert_eq!(value_of(&out.stdout, "pwd="), Some(IMAGE_WORKDIR), "{out}");
    assert_has(&out.stdout, "rw-write-ok", &out);
    assert_has(&out.stdout, "ro-write-failed", &out);
    assert_has(&out.stdout, "ro-append-failed", &out);
    assert_has(&out.stderr, "Read-only file system", &out);
    assert_eq!(value_of(&out.stdout, "ro-read="), Some("keep"), "{out}");
    let new = rw.join("new.txt");
    assert_eq!(
        fs::read_to_string(&new).ok().as_deref(),
        Some("written\n"),
        "the rw write is not on the host:\n{out}"
    );
    assert_eq!(
        fs::metadata(&new).unwrap().uid(),
        test_user().uid,
        "the file is not the user's"
    );
    assert!(
        !lab.path("ro/new.txt").exists(),
        "a write went through the ro mount"
    );
    assert_eq!(fs::read_to_string(&keep).unwrap(), "keep\n");

    // For the whole job; a step overrides the working directory.
    let job = lab.sbatch(
        &[
            &format!("--container={image}"),
            "--container-mounts=rw:/mnt/rw",
            &format!("--container-workdir={IMAGE_WORKDIR}"),
        ],
        r#"echo "batch-pwd=$(pwd)"
echo from-batch > /mnt/rw/batch.txt
srun sh -c 'echo "step-pwd=$(pwd)"; echo "step-read=$(cat /mnt/rw/batch.txt)"'
srun --container-workdir=/e2e sh -c 'echo "override-pwd=$(pwd)"'"#,
    );
    job.expect_ok();
    assert_eq!(
        value_of(&job.log, "batch-pwd="),
        Some(IMAGE_WORKDIR),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "step-pwd="),
        Some(IMAGE_WORKDIR),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "step-read="),
        Some("from-batch"),
        "{job}"
    );
    assert_eq!(value_of(&job.log, "override-pwd="), Some("/e2e"), "{job}");
    assert_eq!(
        fs::read_to_string(rw.join("batch.txt")).ok().as_deref(),
        Some("from-batch\n"),
        "{job}"
    );
}

/// Slurm's own commands from inside a containerized batch script (a busybox image
/// without any C library).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn slurm_commands_work_inside_the_batch_script() {
    let lab = Lab::core("clients");
    let image = lab.image("c.sqfs", "CLIENTS");
    let job = lab.sbatch(
        &[&format!("--container={image}")],
        &format!(
            r#"echo "in-image: $(cat {ONLY_FILE})"
echo "srun-path: $(command -v srun)"
echo "step: $(srun cat {ONLY_FILE})"
squeue -h -j "$SLURM_JOB_ID" -o "squeue: %i %T"
scontrol show job "$SLURM_JOB_ID" > /tmp/e2e-scontrol.$SLURM_JOB_ID && echo "scontrol-rc: 0"
echo "scontrol: $(grep -o "JobId=[0-9]*" /tmp/e2e-scontrol.$SLURM_JOB_ID) $(grep -o "JobState=[A-Z]*" /tmp/e2e-scontrol.$SLURM_JOB_ID)"
rm -f /tmp/e2e-scontrol.$SLURM_JOB_ID
inner=$(sbatch --parsable -t 2 -o /dev/null --hold --wrap "sleep 60") && echo "sbatch-id: $inner"
scancel "$inner" && echo "scancel-rc: 0"
echo "inner-state: $(scontrol show job "$inner" | grep -o "JobState=[A-Z]*")""#
        ),
    );
    job.expect_ok();
    let id = job.id.expect("no job id");
    let log = &job.log;
    let inner: u64 = value_of(log, "sbatch-id: ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("sbatch inside the image gave no job id:\n{job}"));
    assert!(inner > id, "{job}");
    assert_eq!(value_of(log, "scancel-rc: "), Some("0"), "{job}");
    assert_eq!(
        value_of(log, "inner-state: "),
        Some("JobState=CANCELLED"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "in-image: "),
        Some("only-in-image CLIENTS"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "srun-path: "),
        Some("/.ferry/bin/srun"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "step: "),
        Some("only-in-image CLIENTS"),
        "{job}"
    );
    assert_eq!(
        value_of(log, "squeue: "),
        Some(format!("{id} RUNNING").as_str()),
        "{job}"
    );
    assert_eq!(value_of(log, "scontrol-rc: "), Some("0"), "{job}");
    assert_eq!(
        value_of(log, "scontrol: "),
        Some(format!("JobId={id} JobState=RUNNING").as_str()),
        "{job}"
    );
}

/// uid, gid and groups inside (srun, batch script, step of the job) equal the user's
/// on the host.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn ids_inside_match_the_user() {
    let lab = Lab::core("ids");
    let image = lab.image("ids.sqfs", "IDS");
    let report = "echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G) name=$(id -un)\"";
    let container = format!("--container={image}");
    let (out, job) = std::thread::scope(|s| {
        let job =
            s.spawn(|| lab.sbatch(&[&container], &format!("{report}\nsrun sh -c '{report}'")));
        let out = lab.srun(&[&container, "sh", "-c", report]);
        (out, job.join().unwrap())
    });
    out.expect_ok();
    job.expect_ok();
    let user = test_user();
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .chain(job.log.lines())
        .filter(|l| l.starts_with("uid="))
        .collect();
    assert_eq!(lines.len(), 3, "expected 3 reports:\n{out}\n{job}");
    for line in lines {
        let uid = value_of(line, "uid=")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let gid = value_of(line, "gid=")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let groups = value_of(line, "groups=")
            .unwrap()
            .split(" name=")
            .next()
            .unwrap();
        let name = value_of(line, "name=").unwrap();
        assert_eq!(uid, user.uid.to_string(), "uid differs: {line}");
        assert_eq!(gid, user.gid.to_string(), "gid differs: {line}");
        let groups: BTreeSet<u32> = groups
            .split_whitespace()
            .map(|g| {
                g.parse()
                    .unwrap_or_else(|_| panic!("not a group id: {g:?}"))
            })
            .collect();
        assert_eq!(groups, user.gids(), "groups differ: {line}");
        assert_eq!(name, TEST_USER, "user name differs: {line}");
    }
}

/// Bad inputs for the images and options of the lab; (case, options, fragment of the
/// expected message).
fn bad_inputs(lab: &Lab) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let good = lab.image("good.sqfs", "GOOD");
    let secret = lab.image("secret.sqfs", "SECRET");
    let secret_path = lab.path(&secret);
    std::os::unix::fs::chown(&secret_path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).unwrap();
    lab.write("notimage.sqfs", "this is not a SquashFS image\n", 0o644);
    let private = lab.path("private");
    fs::create_dir(&private).unwrap(); // root's, 0700
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let with_good = |opt: String| vec![format!("--container={good}"), opt];
    vec![
        (
            "missing image",
            vec!["--container=missing.sqfs".into()],
            "not found",
        ),
        (
            "unreadable image",
            vec![format!("--container={secret}")],
            "cannot read it",
        ),
        (
            "not an image",
            vec!["--container=notimage.sqfs".into()],
            "not a container image",
        ),
        (
            "bad --container-mounts syntax",
            with_good("--container-mounts=/srv:/mnt:rx".into()),
            "--container-mounts",
        ),
        (
            "unreadable mount source",
            with_good(format!(
                "--container-mounts={}:/mnt/private",
                private.display()
            )),
            "mount source",
        ),
        (
            "workdir not in the image",
            with_good("--container-workdir=/no/such/dir".into()),
            "working directory /no/such/dir",
        ),
    ]
}

/// Every bad input: srun fails and prints one `ferry:` line that says what is wrong.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn bad_inputs_fail_srun_with_one_message() {
    let lab = Lab::core("bad-srun");
    let mut cases = bad_inputs(&lab);
    cases.push((
        "relative --container-workdir",
        vec![
            "--container=good.sqfs".into(),
            "--container-workdir=rel".into(),
        ],
        "absolute",
    ));
    srun_each_is_refused(&lab, &cases);
}

/// Runs `srun OPTS echo SHOULD-NOT-RUN` for every case at once: each must fail with one
/// `ferry:` line holding its fragment (in what the user sees, not our command line).
fn srun_each_is_refused(lab: &Lab, cases: &[(&str, Vec<String>, &str)]) {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(case, opts, fragment)| {
                s.spawn(move || {
                    let mut args: Vec<&str> = opts.iter().map(String::as_str).collect();
                    args.extend(["echo", "SHOULD-NOT-RUN"]);
                    let out = lab.srun(&args);
                    out.expect_one_ferry_error(case, fragment);
                })
            })
            .collect();
        let failures: Vec<_> = handles
            .into_iter()
            .zip(cases)
            .filter_map(|(h, (case, _, _))| h.join().err().map(|_| *case))
            .collect();
        assert!(failures.is_empty(), "failed cases: {failures:?}");
    });
}

/// Every bad input given to sbatch: sbatch refuses what it can check on the submit host
/// (syntax, an image or mount source that is there but unusable: no job), the job fails
/// for the rest (its output file has one `ferry:` line); a bad `srun` inside a good job
/// fails too.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn bad_inputs_fail_batch_jobs_with_one_message() {
    let lab = Lab::core("bad-sbatch");
    let cases = bad_inputs(&lab);
    std::thread::scope(|s| {
        let lab = &lab;
        let mut handles: Vec<_> = cases
            .iter()
            .map(|(case, opts, fragment)| {
                s.spawn(move || {
                    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
                    let job = lab.sbatch(&opts, "echo SHOULD-NOT-RUN");
                    // A syntax error is refused by sbatch itself (no job, no file).
                    let text = format!("{}\n{}", job.sbatch.stderr, job.log);
                    assert_one_ferry_error(case, job.sbatch.code, &text, fragment);
                    // Checked at submission (tests/slurm_e2e/submit.rs has more).
                    let refused_at_submission = [
                        "bad --container-mounts syntax",
                        "unreadable image",
                        "not an image",
                        "unreadable mount source",
                    ];
                    if refused_at_submission.contains(case) {
                        assert_eq!(job.id, None, "{case}: the job was submitted:\n{job}");
                    } else {
                        assert!(job.id.is_some(), "{case}: not submitted:\n{job}");
                        assert!(!job.log.is_empty(), "{case}: empty output file:\n{job}");
                    }
                })
            })
            .collect();
        handles.push(s.spawn(move || {
            let job = lab.sbatch(
                &["--container=good.sqfs"],
                "srun --container=missing.sqfs echo SHOULD-NOT-RUN\necho \"inner-rc: $?\"",
            );
            job.expect_ok();
            let rc = value_of(&job.log, "inner-rc: ").unwrap_or("?");
            assert_ne!(rc, "0", "the failing step reported success:\n{job}");
            assert_one_ferry_error("missing image in a step", Some(1), &job.log, "not found");
        }));
        let names: Vec<&str> = cases
            .iter()
            .map(|c| c.0)
            .chain(["step inside a job"])
            .collect();
        let failures: Vec<_> = handles
            .into_iter()
            .zip(names)
            .filter_map(|(h, case)| h.join().err().map(|_| case))
            .collect();
        assert!(failures.is_empty(), "failed cases: {failures:?}");
    });
}

/// After 200 steps mixed with failures and a job cancelled during a running step, with
/// a site file that trusts one folder (its image is mounted by the kernel, the user's
/// own through squashfuse): no loop device of our images, no mount of ours on the
/// host, no process of the test user left, and every step that ran had the user's
/// uid and no capabilities.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn nothing_leaks_after_many_steps_and_a_cancel() {
    let lab = Lab::exclusive("leaks");
    let image = lab.image("leak.sqfs", "LEAK");
    lab.write("notimage.sqfs", "not an image\n", 0o644);
    let trusted = adversarial::TrustedDir::new("leak-trusted");
    let vetted = trusted.dir.join("vetted.sqfs");
    fs::copy(lab.path(&image), &vetted).unwrap();
    std::os::unix::fs::chown(&vetted, Some(0), Some(0)).unwrap();
    let site_file = trusted.dir.join("site.json");
    fs::write(
        &site_file,
        format!(
            r#"{{"trusted_image_dirs": ["{}"], "untrusted_images": "fuse"}}"#,
            trusted.dir.display()
        ),
    )
    .unwrap();
    let _site = PlugstackArgs::add(&format!("site_config={}", site_file.display()));
    let vetted_opt = format!("--container={}", vetted.display());
    // Runs only as the user with no capabilities, then shows the image's file.
    let checked = format!(
        "[ \"$(id -u)\" = {} ] && grep -q ^CapEff:.0000000000000000 /proc/self/status && cat {ONLY_FILE}",
        test_user().uid
    );
    let before = pids_of_test_user();
    if !before.is_empty() {
        eprintln!("warning: processes of {TEST_USER} before the test (ignored): {before:?}");
    }
    let container = format!("--container={image}");
    let job_name = lab.job_name();
    const LOOP_STEPS: usize = 150;
    const DIRECT_STEPS: usize = 50;

    // 150 steps from one batch script, 3 in 10 failing (image, exit code, workdir).
    let loop_script = format!(
        r#"checked='{checked}'
ok=0; failed=0
run() {{ if srun "$@" >/dev/null 2>&1; then ok=$((ok+1)); else failed=$((failed+1)); fi; }}
i=0
while [ $i -lt {LOOP_STEPS} ]; do
  case $((i % 10)) in
    3) run --container=missing.sqfs true ;;
    6) run sh -c 'exit 7' ;;
    8) run --container-workdir=/no/such/dir true ;;
    1|5) run {vetted_opt} sh -c "$checked" ;;
    *) run sh -c "$checked" ;;
  esac
  i=$((i+1))
done
echo "loop: ok=$ok failed=$failed""#
    );
    let started = Instant::now();
    // Not `sbatch --wait`: it polls at 2, 10 and 42 s, and this job takes 10-20 s.
    let (loop_id, loop_out) = lab.submit(&[&container], &loop_script);

    std::thread::scope(|s| {
        // 50 direct steps meanwhile, half of them failing.
        let direct = s.spawn(|| {
            let mut failures = Vec::new();
            for i in 0..DIRECT_STEPS {
                let (args, should_work): (Vec<&str>, bool) = match i % 4 {
                    0 => (
                        vec![&container, "-n", "2", "--overcommit", "cat", ONLY_FILE],
                        true,
                    ),
                    1 => (vec!["--container=missing.sqfs", "true"], false),
                    2 => (vec![&vetted_opt, "sh", "-c", &checked], true),
                    _ => (vec!["--container=notimage.sqfs", "true"], false),
                };
                let args: Vec<&str> = ["-J", &job_name].into_iter().chain(args).collect();
                let out = lab.srun(&args);
                if out.ok() != should_work {
                    failures.push(format!("{out}"));
                }
            }
            failures
        });

        // A job cancelled while its step runs.
        let (cancel_id, cancel_out) = lab.submit(&[&container], "srun sleep 300");
        let step = format!("{cancel_id}.0");
        let running = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            root_output(
                "squeue",
                &["-h", "-s", "-j", &cancel_id.to_string(), "-o", "%i"],
            )
            .lines()
            .any(|l| l.trim() == step)
        });
        assert!(running, "step {step} never started");
        std::thread::sleep(Duration::from_millis(500)); // let the task start its command
        lab.run(&["scancel", &cancel_id.to_string()]).expect_ok();
        assert!(
            job_gone(cancel_id, Duration::from_secs(60)),
            "job {cancel_id} still in squeue after scancel"
        );
        let state = root_output("scontrol", &["show", "job", "-o", &cancel_id.to_string()]);
        assert_has(&state, "JobState=CANCELLED", &state);
        let log = fs::read_to_string(&cancel_out).unwrap_or_default();
        assert!(
            ferry_lines(&log).is_empty(),
            "ferry complained during the cancel:\n{log}"
        );

        let failures = direct.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} direct steps ended unexpectedly:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });

    assert!(
        job_gone(loop_id, Duration::from_secs(120)),
        "the loop job {loop_id} did not end"
    );
    let log = fs::read_to_string(&loop_out).unwrap_or_default();
    let state = root_output("scontrol", &["show", "job", "-o", &loop_id.to_string()]);
    assert_has(&state, "JobState=COMPLETED", &format!("{state}\n{log}"));
    let expect = format!("ok={} failed={}", LOOP_STEPS / 10 * 7, LOOP_STEPS / 10 * 3);
    assert_eq!(value_of(&log, "loop: "), Some(expect.as_str()), "{log}");
    eprintln!(
        "leak test: {} steps in {:.1} s",
        LOOP_STEPS + DIRECT_STEPS + 1,
        started.elapsed().as_secs_f64()
    );

    // Everything is released shortly after the jobs end, once the node image cache has
    // let go of what it keeps.
    settle_and_drop_image_cache();
    let dir = lab.dir.display().to_string();
    // New processes of the test user that are not ours (another test suite running as
    // ferrytest meanwhile) are reported, not failed on.
    let mut others = BTreeSet::new();
    let mut leftovers = || -> Vec<String> {
        let mut found = Vec::new();
        for line in root_output("losetup", &["-a"]).lines() {
            if line.contains(&dir) || line.contains(&trusted.dir.display().to_string()) {
                found.push(format!("loop device: {line}"));
            }
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mounts.lines() {
            if line.contains(&dir) || adversarial::mounted_by_ferry(line) {
                found.push(format!("host mount: {line}"));
            }
        }
        for pid in pids_of_test_user().difference(&before) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            let line = format!("process of {TEST_USER}: {pid} {cmdline}");
            if started_by_us(*pid, &job_name) {
                found.push(line);
            } else {
                others.insert(line);
            }
        }
        found
    };
    let clean = wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
        leftovers().is_empty()
    });
    let left = if clean { Vec::new() } else { leftovers() };
    if !others.is_empty() {
        eprintln!("note: other processes of {TEST_USER} (not from this test) seen meanwhile:");
        others.iter().for_each(|l| eprintln!("  {l}"));
    }
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
}

/// True when the process belongs to this test's jobs: its environment (Slurm's
/// SLURM_JOB_NAME, SLURM_SUBMIT_DIR, PWD) or its working directory names `marker`. A
/// process whose environment cannot be read (a zombie) counts as ours.
fn started_by_us(pid: u32, marker: &str) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    environ.is_empty()
        || String::from_utf8_lossy(&environ).contains(marker)
        || cwd.to_string_lossy().contains(marker)
}

fn pids_of_test_user() -> BTreeSet<u32> {
    root_output("pgrep", &["-u", TEST_USER])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits until the `squeue` of the cluster under test no longer lists the job (ended,
/// whatever the outcome).
fn job_gone(id: u64, limit: Duration) -> bool {
    let id = id.to_string();
    wait_until(limit, Duration::from_millis(200), || {
        let out = cluster_command("squeue", Path::new("/"))
            .args(["-h", "-j", &id, "-o", "%i"])
            .stdin(Stdio::null())
            .output();
        // A finished job is not listed; a purged one is an error ("Invalid job id").
        matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim().is_empty())
    })
}

/// A failed setup also reaches the admins: one line in syslog (tag `ferry`) naming the
/// job, the step and the uid, with the same message the user saw.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn failures_are_logged_to_syslog_with_job_and_step() {
    let lab = Lab::new("syslog");
    let syslog = syslog_file();
    let job = lab.sbatch(
        &["--container=missing-for-syslog.sqfs"],
        "echo SHOULD-NOT-RUN",
    );
    let id = job.id.expect("the job was submitted");
    assert!(job.log.contains("not found"), "{job}");
    let uid = test_user().uid;
    let wanted = format!("job {id} step batch uid {uid}: image ");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&fs::read(syslog).unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| l.contains(&wanted)) {
            assert!(
                line.contains(" ferry[") && line.contains("missing-for-syslog.sqfs: not found"),
                "{line}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no syslog line with {wanted:?} in {}",
            syslog.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------
// Digests (IMAGE@sha256:HEX), FERRY_IMAGE / FERRY_IMAGE_DIGEST, provenance records and
// the site setting require_digest.

/// A well-formed digest that no image has.
fn zero_digest() -> String {
    format!("sha256:{}", "0".repeat(64))
}

fn node_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A busybox root folder (an image that is a folder) at `rel` in the lab, root's.
fn folder_image(lab: &Lab, rel: &str) -> PathBuf {
    let root = lab.path(rel);
    for dir in ["bin", "etc", "tmp"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in busybox_applets() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    root
}

/// The syslog file the plugin's records reach; fails the test when there is none.
/// A socket whose daemon is gone refuses messages, so the check sends one.
#[track_caller]
fn syslog_file() -> &'static Path {
    let syslog = Path::new("/var/log/syslog");
    let accepts = std::os::unix::net::UnixDatagram::unbound()
        .and_then(|socket| socket.send_to(b"<14>ferry-tests: syslog probe", "/dev/log"))
        .is_ok();
    if !(accepts && syslog.exists()) {
        test_support::missing_prerequisite(
            "a syslog daemon listening on /dev/log and writing /var/log/syslog \
             (tests/run starts rsyslogd)",
        );
    }
    syslog
}

/// The provenance records of job `job` in syslog (`ferry[PID]: provenance {json}`), by
/// step; waits up to 10 s until every step of `steps` has one.
fn syslog_records(
    syslog: &Path,
    job: u64,
    steps: &[&str],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut found = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        found.clear();
        let text = String::from_utf8_lossy(&fs::read(syslog).unwrap()).into_owned();
        for line in text.lines().filter(|l| l.contains(" ferry[")) {
            let Some((_, json)) = line.split_once("]: provenance ") else {
                continue;
            };
            let record: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("syslog record is not JSON ({e}): {line}"));
            if record["job"] == job {
                let step = record["step"].as_str().unwrap_or("?").to_string();
                assert!(
                    found.insert(step.clone(), record).is_none(),
                    "two syslog records for job {job} step {step}"
                );
            }
        }
        if steps.iter().all(|s| found.contains_key(*s)) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "syslog has records of job {job} for steps {:?}, expected {steps:?}",
            found.keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The records of a `--container-provenance` file: one JSON object per line.
fn provenance_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("provenance file {}: {e}", path.display()));
    assert!(
        text.ends_with('\n'),
        "{} ends with a newline",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// `--container=IMG@sha256:HEX` through srun and sbatch: the right digest runs (and the
/// job's environment names the image and its digest), a wrong one fails with one line
/// giving both digests and nothing runs, a malformed one is refused before submission,
/// a pinned root folder is refused, an image nobody pinned runs without a digest (it is
/// not hashed), and after the image file is rebuilt the old pin fails with the new
/// digest while the new pin runs the new image.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn pinned_images_run_only_when_the_digest_matches() {
    let lab = Lab::core("pin");
    let image = lab.image("pin.sqfs", "PIN");
    let abs = lab.path(&image).display().to_string();
    let digest = sha256sum(&lab.path(&image));
    let wrong = zero_digest();
    let folder = folder_image(&lab, "rootfs").display().to_string();
    let pinned = format!("--container={image}@{digest}");
    let mismatch = format!("image {abs}: digest mismatch: expected {wrong}, found {digest}");
    let env_report = "echo \"env: $FERRY_IMAGE $FERRY_IMAGE_DIGEST\"";
    let env_expected = format!("{abs} {digest}");
    // An image no step pins: unpinned images are never hashed before their tasks.
    let unpinned = lab.image("unpinned.sqfs", "UNPINNED");
    let unpinned_abs = lab.path(&unpinned).display().to_string();

    std::thread::scope(|s| {
        let lab = &lab;
        let (unpinned, unpinned_abs) = (&unpinned, &unpinned_abs);
        let (pinned, mismatch, wrong, env_expected) = (&pinned, &mismatch, &wrong, &env_expected);
        let folder = &folder;
        let image = &image;
        let abs = &abs;
        let digest = &digest;
        let mut cases: Vec<(&str, std::thread::ScopedJoinHandle<()>)> = Vec::new();
        cases.push((
            "srun, right digest",
            s.spawn(move || {
                let out = lab.srun(&[
                    pinned,
                    "sh",
                    "-c",
                    &format!("cat {ONLY_FILE}; {env_report}"),
                ]);
                out.expect_ok();
                assert_has(&out.stdout, "only-in-image PIN", &out);
                assert_eq!(
                    value_of(&out.stdout, "env: "),
                    Some(env_expected.as_str()),
                    "{out}"
                );
            }),
        ));
        cases.push((
            "srun, unpinned and never pinned: not hashed, the digest is unknown",
            s.spawn(move || {
                let out = lab.srun(&[
                    &format!("--container={unpinned}"),
                    "--container-provenance=unpinned.jsonl",
                    "sh",
                    "-c",
                    env_report,
                ]);
                out.expect_ok();
                assert_eq!(
                    value_of(&out.stdout, "env: "),
                    Some(unpinned_abs.as_str()),
                    "no FERRY_IMAGE_DIGEST: {out}"
                );
                let records = provenance_lines(&lab.path("unpinned.jsonl"));
                assert_eq!(records.len(), 1, "{records:?}");
                let r = &records[0];
                assert_eq!(r["pinned"], false, "{r:#}");
                assert!(r["digest"].is_null(), "{r:#}");
                assert!(r["digest_source"].is_null(), "{r:#}");
                assert_eq!(r["digest_status"], "unknown_unpinned", "{r:#}");
            }),
        ));
        cases.push((
            "srun, wrong digest",
            s.spawn(move || {
                let out = lab.srun(&[
                    &format!("--container={image}@{wrong}"),
                    "echo",
                    "SHOULD-NOT-RUN",
                ]);
                out.expect_one_ferry_error("srun, wrong digest", mismatch);
            }),
        ));
        cases.push((
            "srun, malformed digest",
            s.spawn(move || {
                let out = lab.srun(&[
                    &format!("--container={image}@sha256:abc"),
                    "echo",
                    "SHOULD-NOT-RUN",
                ]);
                let seen = out.expect_one_ferry_error("srun, malformed", "64 hex digits");
                assert_has(&seen, &format!("{abs}@sha256:abc"), &out);
            }),
        ));
        cases.push((
            "srun, pinned root folder",
            s.spawn(move || {
                let out = lab.srun(&[
                    &format!("--container={folder}@{digest}"),
                    "echo",
                    "SHOULD-NOT-RUN",
                ]);
                out.expect_one_ferry_error(
                    "srun, pinned folder",
                    &format!("image {folder}: a root folder has no digest to pin"),
                );
            }),
        ));
        cases.push((
            "sbatch, right digest",
            s.spawn(move || {
                let job = lab.sbatch(
                    &[pinned],
                    &format!(
                        "echo \"batch: $(cat {ONLY_FILE})\"\n{env_report}\n\
                         echo \"step: $(srun sh -c 'cat {ONLY_FILE}; echo $FERRY_IMAGE_DIGEST')\" | tr '\\n' ' '"
                    ),
                );
                job.expect_ok();
                assert_eq!(value_of(&job.log, "batch: "), Some("only-in-image PIN"), "{job}");
                assert_eq!(value_of(&job.log, "env: "), Some(env_expected.as_str()), "{job}");
                assert_eq!(
                    value_of(&job.log, "step: "),
                    Some(format!("only-in-image PIN {digest}").as_str()),
                    "{job}"
                );
            }),
        ));
        cases.push((
            "sbatch, wrong digest",
            s.spawn(move || {
                let job = lab.sbatch(
                    &[&format!("--container={image}@{wrong}")],
                    "echo SHOULD-NOT-RUN",
                );
                // Compared at submission: no job.
                assert_eq!(job.id, None, "a wrong pin was submitted:\n{job}");
                let text = format!("{}\n{}", job.sbatch.stderr, job.log);
                assert_one_ferry_error("sbatch, wrong digest", job.sbatch.code, &text, mismatch);
            }),
        ));
        cases.push((
            "sbatch, malformed digest",
            s.spawn(move || {
                let job = lab.sbatch(
                    &[&format!("--container={image}@sha256:{}", "z".repeat(64))],
                    "echo SHOULD-NOT-RUN",
                );
                assert_eq!(job.id, None, "a malformed pin was submitted:\n{job}");
                let text = format!("{}\n{}", job.sbatch.stderr, job.log);
                assert_one_ferry_error(
                    "sbatch, malformed",
                    job.sbatch.code,
                    &text,
                    "64 hex digits",
                );
            }),
        ));
        cases.push((
            "step with a wrong digest inside a good job",
            s.spawn(move || {
                let job = lab.sbatch(
                    &[pinned],
                    &format!(
                        "srun --container={abs}@{wrong} echo SHOULD-NOT-RUN\necho \"inner-rc: $?\"\n\
                         echo \"after: $(srun cat {ONLY_FILE})\""
                    ),
                );
                job.expect_ok();
                assert_ne!(value_of(&job.log, "inner-rc: "), Some("0"), "{job}");
                assert_one_ferry_error("wrong digest in a step", Some(1), &job.log, mismatch);
                assert_eq!(value_of(&job.log, "after: "), Some("only-in-image PIN"), "{job}");
            }),
        ));
        let failed: Vec<&str> = cases
            .into_iter()
            .filter_map(|(case, h)| h.join().err().map(|_| case))
            .collect();
        assert!(failed.is_empty(), "failed cases: {failed:?}");
    });

    // The image is rebuilt at the same path: the old pin no longer runs.
    lab.image("pin.sqfs", "PIN-2");
    let digest2 = sha256sum(&lab.path(&image));
    assert_ne!(digest, digest2);
    let out = lab.srun(&[&pinned, "echo", "SHOULD-NOT-RUN"]);
    out.expect_one_ferry_error(
        "old pin after the rebuild",
        &format!("image {abs}: digest mismatch: expected {digest}, found {digest2}"),
    );
    let out = lab.srun(&[
        &format!("--container={image}@{digest2}"),
        "sh",
        "-c",
        &format!("cat {ONLY_FILE}; {env_report}"),
    ]);
    out.expect_ok();
    assert_has(&out.stdout, "only-in-image PIN-2", &out);
    assert_eq!(
        value_of(&out.stdout, "env: "),
        Some(format!("{abs} {digest2}").as_str()),
        "{out}"
    );
}

/// `sbatch --container-provenance=prov.jsonl` appends one JSON line per step of the job
/// (batch script, then each srun, also one started from another folder; one line per
/// step however many tasks), written by the user, each naming the job, step, node,
/// user, image, its digest (sha256sum's), whether it was pinned, where the digest came
/// from and its status, the mounts and the working directory; syslog has the same
/// records. An srun
/// with its own `--container-provenance` writes its step there instead, and a direct
/// `srun --container-provenance` writes its one step.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn provenance_records_every_step_of_a_job() {
    let lab = Lab::new("provenance");
    let image = lab.image("prov.sqfs", "PROV");
    let image_path = lab.path(&image);
    let abs = image_path.display().to_string();
    let digest = sha256sum(&image_path);
    let meta = fs::metadata(&image_path).unwrap();
    lab.mkdir("data");
    lab.write("data/f.txt", "data-file\n", 0o644);
    let sub = lab.mkdir("sub");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let env_report = "echo \"$FERRY_IMAGE $FERRY_IMAGE_DIGEST\"";
    let job = lab.sbatch(
        &[
            "-n",
            "2",
            &format!("--container={image}@{digest}"),
            "--container-mounts=data:/mnt/data:ro",
            "--container-provenance=prov.jsonl",
        ],
        &format!(
            r#"echo "batch-env: $({env_report})"
echo "step0: $(srun -n 1 sh -c '{env_report}; cat /mnt/data/f.txt' | tr '\n' ' ')"
cd sub && srun -n 2 --container={abs} sh -c 'echo "step1-env-$SLURM_PROCID: $({env_report})"'
cd .. && srun -n 1 --container-provenance=step2.jsonl true && echo step2-ok"#
        ),
    );
    job.expect_ok();
    let id = job.id.expect("no job id");
    let expected_env = format!("{abs} {digest}");
    assert_eq!(
        value_of(&job.log, "batch-env: "),
        Some(expected_env.as_str()),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "step0: "),
        Some(format!("{expected_env} data-file").as_str()),
        "{job}"
    );
    for task in 0..2 {
        assert_eq!(
            value_of(&job.log, &format!("step1-env-{task}: ")),
            Some(expected_env.as_str()),
            "{job}"
        );
    }
    assert_has(&job.log, "step2-ok", &job);

    let file = lab.path("prov.jsonl");
    assert_eq!(
        fs::metadata(&file).unwrap().uid(),
        test_user().uid,
        "the provenance file is the user's"
    );
    assert!(
        !sub.join("prov.jsonl").exists(),
        "the step started from sub/ wrote to sub/prov.jsonl"
    );
    let records = provenance_lines(&file);
    let steps: Vec<&str> = records
        .iter()
        .map(|r| r["step"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        steps,
        ["batch", "0", "1"],
        "{}",
        fs::read_to_string(&file).unwrap()
    );
    let step2 = provenance_lines(&lab.path("step2.jsonl"));
    assert_eq!(step2.len(), 1, "{step2:?}");
    assert_eq!(step2[0]["step"], "2");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lab_dir = lab.dir.display().to_string();
    let sub_dir = sub.display().to_string();
    // Step 1 is unpinned: not hashed, its digest is the one the batch step's
    // verification left in this node's cache.
    let expect = [
        ("batch", true, "computed", "verified", lab_dir.as_str()),
        ("0", true, "cache", "verified", lab_dir.as_str()),
        ("1", false, "cache", "cached", sub_dir.as_str()),
        ("2", true, "cache", "verified", lab_dir.as_str()),
    ];
    let all: Vec<&serde_json::Value> = records.iter().chain(&step2).collect();
    for (r, (step, pinned, source, status, workdir)) in all.iter().zip(expect) {
        let show = serde_json::to_string_pretty(r).unwrap();
        assert_eq!(r["step"], step, "{show}");
        assert_eq!(r["type"], "ferry-provenance", "{show}");
        assert_eq!(r["version"], 1, "{show}");
        assert_eq!(r["job"], id, "{show}");
        assert_eq!(r["user"], TEST_USER, "{show}");
        assert_eq!(r["uid"], test_user().uid, "{show}");
        assert_eq!(r["node"], node_hostname(), "{show}");
        assert_eq!(r["image"], abs.as_str(), "{show}");
        assert_eq!(r["format"], "squashfs", "{show}");
        assert_eq!(r["digest"], digest.as_str(), "{show}");
        assert_eq!(r["pinned"], pinned, "{show}");
        assert_eq!(r["digest_source"], source, "{show}");
        assert_eq!(r["digest_status"], status, "{show}");
        assert_eq!(r["size"], meta.len(), "{show}");
        assert_eq!(r["mtime_unix"], meta.mtime(), "{show}");
        assert_eq!(r["workdir"], workdir, "{show}");
        assert_eq!(
            r["mounts"],
            serde_json::json!([{
                "source": lab.path("data").display().to_string(),
                "destination": "/mnt/data",
                "readonly": true,
            }]),
            "{show}"
        );
        let t = r["time_unix"].as_u64().unwrap_or(0);
        assert!(
            started <= t && t <= now,
            "time_unix {t} not in [{started}, {now}]: {show}"
        );
        for key in ["ferry_version", "slurm_version", "slurm_built_for"] {
            assert!(
                r[key]
                    .as_str()
                    .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())),
                "{key} is not a version: {show}"
            );
        }
    }

    let logged = syslog_records(syslog_file(), id, &["batch", "0", "1", "2"]);
    for r in &all {
        let step = r["step"].as_str().unwrap();
        assert_eq!(
            &logged[step], *r,
            "syslog's record of step {step} differs from the file's"
        );
    }

    // A direct srun: its one step, written once although it has two tasks.
    let out = lab.srun(&[
        "-n",
        "2",
        "--overcommit",
        &format!("--container={image}"),
        "--container-provenance=direct.jsonl",
        "sh",
        "-c",
        "echo \"job=$SLURM_JOB_ID\"",
    ]);
    out.expect_ok();
    let direct = provenance_lines(&lab.path("direct.jsonl"));
    assert_eq!(direct.len(), 1, "one record for one step:\n{direct:?}");
    let job_id: u64 = value_of(&out.stdout, "job=").unwrap().parse().unwrap();
    assert_eq!(direct[0]["job"], job_id);
    assert_eq!(direct[0]["step"], "0");
    assert_eq!(direct[0]["pinned"], false);
    // Unpinned, in a new job that may run on another node: the digest is that node's
    // cache's when the job above verified the image there, else unknown (never hashed).
    match direct[0]["digest_status"].as_str() {
        Some("cached") => {
            assert_eq!(direct[0]["digest"], digest.as_str());
            assert_eq!(direct[0]["digest_source"], "cache");
        }
        Some("unknown_unpinned") => {
            assert!(direct[0]["digest"].is_null(), "{:#}", direct[0]);
            assert!(direct[0]["digest_source"].is_null(), "{:#}", direct[0]);
        }
        _ => panic!("unexpected digest_status: {:#}", direct[0]),
    }
    assert_eq!(direct[0]["mounts"], serde_json::json!([]));
}

/// The plugin line of plugstack.conf with extra arguments, put back when dropped (also
/// when the test panics). Written by rename, so no reader sees half a file.
struct PlugstackArgs {
    original: Vec<u8>,
}

impl PlugstackArgs {
    fn add(args: &str) -> PlugstackArgs {
        let original = fs::read(PLUGIN_CONF).unwrap();
        let text = String::from_utf8(original.clone()).unwrap();
        assert!(
            !text.contains(args),
            "{PLUGIN_CONF} already has {args:?} (left by an interrupted test?):\n{text}"
        );
        let mut changed = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if (t.starts_with("required") || t.starts_with("optional"))
                    && t.contains("ferry.so")
                {
                    changed += 1;
                    format!("{} {args}", l.trim_end())
                } else {
                    l.to_string()
                }
            })
            .collect();
        assert_eq!(changed, 1, "one plugin line in {PLUGIN_CONF}:\n{text}");
        let guard = PlugstackArgs { original };
        write_by_rename(Path::new(PLUGIN_CONF), (lines.join("\n") + "\n").as_bytes());
        guard
    }
}

impl Drop for PlugstackArgs {
    fn drop(&mut self) {
        write_by_rename(Path::new(PLUGIN_CONF), &self.original);
    }
}

fn write_by_rename(path: &Path, content: &[u8]) {
    // Not *.conf: plugstack.conf includes plugstack.conf.d/*.conf.
    let tmp = path.with_extension("conf.e2e-new");
    fs::write(&tmp, content).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// With `require_digest=yes` in plugstack.conf, an unpinned image is refused (srun,
/// sbatch, a step of a pinned job) with the message that says how to pin it; pinned
/// images, `--container=none` and steps without a container run. Exclusive: no other
/// test of this file runs while the setting is in place.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn the_site_can_require_pinned_images() {
    let lab = Lab::exclusive("require-digest");
    let image = lab.image("req.sqfs", "REQ");
    let abs = lab.path(&image).display().to_string();
    let digest = sha256sum(&lab.path(&image));
    let refusal = format!(
        "this site requires pinned images: use --container={abs}@sha256:... (get the digest with: ferry digest {abs})"
    );
    {
        let _setting = PlugstackArgs::add("require_digest=yes");

        let out = lab.srun(&[&format!("--container={image}"), "echo", "SHOULD-NOT-RUN"]);
        out.expect_one_ferry_error("srun, unpinned", &refusal);

        let out = lab.srun(&[&format!("--container={image}@{digest}"), "cat", ONLY_FILE]);
        out.expect_ok();
        assert_eq!(out.stdout.trim(), "only-in-image REQ", "{out}");

        let out = lab.srun(&["sh", "-c", "echo host-step"]);
        out.expect_ok();
        assert_eq!(out.stdout.trim(), "host-step", "{out}");

        let job = lab.sbatch(&[&format!("--container={image}")], "echo SHOULD-NOT-RUN");
        let text = format!("{}\n{}", job.sbatch.stderr, job.log);
        assert_one_ferry_error("sbatch, unpinned", job.sbatch.code, &text, &refusal);

        let job = lab.sbatch(
            &[&format!("--container={image}@{digest}")],
            &format!(
                "echo \"batch: $(cat {ONLY_FILE})\"\n\
                 echo \"step: $(srun cat {ONLY_FILE})\"\n\
                 echo \"none: $(srun --container=none sh -c 'test -e {ONLY_FILE} && echo image || echo host')\"\n\
                 srun --container={abs} echo SHOULD-NOT-RUN\n\
                 echo \"unpinned-rc: $?\""
            ),
        );
        job.expect_ok();
        assert_eq!(
            value_of(&job.log, "batch: "),
            Some("only-in-image REQ"),
            "{job}"
        );
        assert_eq!(
            value_of(&job.log, "step: "),
            Some("only-in-image REQ"),
            "{job}"
        );
        assert_eq!(value_of(&job.log, "none: "), Some("host"), "{job}");
        assert_ne!(value_of(&job.log, "unpinned-rc: "), Some("0"), "{job}");
        assert_one_ferry_error("unpinned step in a job", Some(1), &job.log, &refusal);
    }
    // The setting is gone: unpinned images run again.
    let out = lab.srun(&[&format!("--container={image}"), "cat", ONLY_FILE]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "only-in-image REQ", "{out}");
}

/// A step whose image has no known digest (a root folder) must not show the digest of
/// the job's image, which the step's environment inherits from the batch script.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_step_without_a_digest_does_not_inherit_the_jobs_digest() {
    let lab = Lab::new("digest-inherit");
    let image = lab.image("i.sqfs", "INHERIT");
    let digest = sha256sum(&lab.path(&image));
    let folder = folder_image(&lab, "rootfs").display().to_string();
    let job = lab.sbatch(
        &[&format!("--container={image}@{digest}")],
        &format!(
            r#"echo "batch: [$FERRY_IMAGE_DIGEST]"
srun --container={folder} sh -c 'echo "folder: [$FERRY_IMAGE] [$FERRY_IMAGE_DIGEST]"'"#
        ),
    );
    job.expect_ok();
    assert_eq!(
        value_of(&job.log, "batch: "),
        Some(format!("[{digest}]").as_str()),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "folder: "),
        Some(format!("[{folder}] []").as_str()),
        "the folder step claims the job image's digest:\n{job}"
    );
}

/// An image made by podman (`podman import` with ENV, WORKDIR), saved as a docker
/// archive, imported by the user with `ferry import`: its Env and WorkingDir reach the
/// batch script and every task of its steps, with the job's variables winning.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn imported_image_env_and_workdir_reach_the_batch_script_and_every_task() {
    let lab = Lab::new("import");
    let root = lab.path("imp.rootfs");
    for dir in ["bin", "etc", "tmp", "opt/app/bin"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in busybox_applets() {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    let greet = root.join("opt/app/bin/greet");
    fs::write(
        &greet,
        "#!/bin/sh\necho \"greeting=$APP_GREETING job=$SLURM_JOB_NAME pwd=$(pwd) path=$PATH\"\n",
    )
    .unwrap();
    fs::set_permissions(&greet, fs::Permissions::from_mode(0o755)).unwrap();
    let recipe = r#"set -euo pipefail
P="podman --root $LAB/podman-store --runroot $LAB/podman-run --storage-driver overlay"
tar -C "$LAB/imp.rootfs" -cf "$LAB/imp-root.tar" .
$P import -q --change 'ENV APP_GREETING=hello' --change 'ENV SLURM_JOB_NAME=from-image' \
  --change 'ENV PATH=/opt/app/bin:/bin' --change 'WORKDIR /opt/app' \
  "$LAB/imp-root.tar" ferry-e2e/imp >/dev/null
$P save -q --format docker-archive -o "$LAB/imp.tar" ferry-e2e/imp
$P rmi -a -f >/dev/null
rm -rf "$LAB/podman-store" "$LAB/podman-run" "$LAB/imp-root.tar" "$LAB/imp.rootfs"
chmod 644 "$LAB/imp.tar""#;
    let made = Command::new("bash")
        .args(["-c", recipe])
        .env("LAB", &lab.dir)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "podman: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The user imports it themselves (no root: the files are stored as root's).
    lab.run(&["ferry", "import", "imp.tar", "imp.sqfs"])
        .expect_ok();
    let name = lab.job_name();
    let image_path =
        "/opt/app/bin:/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/.ferry/bin";

    let job = lab.sbatch(
        &["-n", "2", "--container=imp.sqfs"],
        r#"echo "batch: $(greet)"
srun -n 2 sh -c 'echo "task-$SLURM_PROCID: $(greet)"'
srun -n 1 --container-workdir=/tmp sh -c 'echo "override: pwd=$(pwd)"'
APP_GREETING=from-job srun -n 1 sh -c 'echo "job-env: $(greet)"'
PATH=/custom:$PATH srun -n 1 sh -c 'echo "image-path: $PATH"'
PATH=/custom:$PATH srun -n 1 --container-env=LANG,PATH sh -c 'echo "job-path: $PATH"'"#,
    );
    job.expect_ok();
    let expected = format!("greeting=hello job={name} pwd=/opt/app path={image_path}");
    assert_eq!(
        value_of(&job.log, "batch: "),
        Some(expected.as_str()),
        "{job}"
    );
    for task in 0..2 {
        assert_eq!(
            value_of(&job.log, &format!("task-{task}: ")),
            Some(expected.as_str()),
            "{job}"
        );
    }
    assert_eq!(value_of(&job.log, "override: "), Some("pwd=/tmp"), "{job}");
    assert_eq!(
        value_of(&job.log, "job-env: "),
        Some(format!("greeting=from-job job={name} pwd=/opt/app path={image_path}").as_str()),
        "{job}"
    );
    // PATH is the image's, unless --container-env names it: then the job's wins.
    assert_eq!(
        value_of(&job.log, "image-path: "),
        Some(image_path),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "job-path: "),
        Some(format!("/custom:{image_path}").as_str()),
        "{job}"
    );
}

/// `--no-container-mount-home`: the home folder is not bound (the folder srun ran in
/// still is); by default it is.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn no_container_mount_home_leaves_the_home_folder_out() {
    let lab = Lab::new("nohome");
    let image = lab.image("h.sqfs", "HOME");
    let home = PathBuf::from(TEST_HOME);
    let marker = home.join(format!("ferry-home-marker-{}", std::process::id()));
    fs::write(&marker, "mine\n").unwrap();
    lab.give(&marker);
    let look = format!(
        "cat {} 2>/dev/null || echo absent; cat {ONLY_FILE}",
        marker.display()
    );
    let with_home = lab.srun(&[&format!("--container={image}"), "sh", "-c", &look]);
    let without = lab.srun(&[
        &format!("--container={image}"),
        "--no-container-mount-home",
        "sh",
        "-c",
        &look,
    ]);
    let _ = fs::remove_file(&marker);
    with_home.expect_ok();
    without.expect_ok();
    assert_eq!(
        with_home.stdout, "mine\nonly-in-image HOME\n",
        "{with_home}"
    );
    assert_eq!(without.stdout, "absent\nonly-in-image HOME\n", "{without}");
}

// ---------------------------------------------------------------------------------
// Slurm's private /tmp per job (`namespace/tmpfs`, once `job_container/tmpfs`): a
// container step's /tmp and /dev/shm are the job's, the same as a `--container=none`
// step's. On a cluster without one both are the node's, and the case checks that they
// still agree.

/// Whether the cluster's slurm.conf gives each job a private /tmp (a tmpfs plugin).
fn private_tmp_per_job() -> bool {
    let conf = fs::read_to_string(test_support::on_cluster_node("/etc/slurm/slurm.conf"))
        .unwrap_or_default();
    conf.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .rfind(|(k, _)| {
            k.trim().eq_ignore_ascii_case("NamespaceType")
                || k.trim().eq_ignore_ascii_case("JobContainerType")
        })
        .is_some_and(|(_, v)| v.trim().ends_with("/tmpfs"))
}

#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn containers_see_the_jobs_own_tmp() {
    let lab = Lab::core("jobtmp");
    let image = lab.image("app.sqfs", "APP");
    let private = private_tmp_per_job();
    let name = format!("ferry-e2e-jobtmp-{}", std::process::id());
    let (written, looked) = (lab.path("written"), lab.path("looked"));
    // The batch script (in the image) writes /tmp and /dev/shm; its container and
    // --container=none steps read them, and a none step writes /tmp for the container.
    // Then it waits (at most 60 s) while another job looks.
    let script = format!(
        r#"echo "secret-$SLURM_JOB_ID" > /tmp/{name}
echo "shm-$SLURM_JOB_ID" > /dev/shm/{name}
echo "container-tmp: $(srun -n1 cat /tmp/{name})"
echo "container-shm: $(srun -n1 cat /dev/shm/{name})"
echo "none-tmp: $(srun -n1 --container=none cat /tmp/{name})"
echo "none-shm: $(srun -n1 --container=none cat /dev/shm/{name})"
srun -n1 --container=none sh -c 'echo "none-wrote" > /tmp/{name}.none'
echo "batch-sees-none: $(cat /tmp/{name}.none)"
rm -f /dev/shm/{name}
touch {written}
i=0
while [ ! -e {looked} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "job-id: $SLURM_JOB_ID""#,
        written = written.display(),
        looked = looked.display(),
    );
    let container = format!("--container={image}");
    let (id, output) = lab.submit(&["-n1", &container], &script);
    let seen = wait_until(Duration::from_secs(90), Duration::from_millis(200), || {
        written.exists()
    });
    // Another job on the node, in a container and on the host.
    let probe = format!("cat /tmp/{name} 2>/dev/null || echo absent");
    let other_container = lab.srun(&["-n1", &container, "sh", "-c", &probe]);
    let other_none = lab.srun(&["-n1", "--container=none", "sh", "-c", &probe]);
    fs::write(&looked, "").unwrap();
    assert!(
        job_gone(id, Duration::from_secs(90)),
        "job {id} still queued"
    );
    let log = fs::read_to_string(&output).unwrap_or_default();
    let node_tmp = test_support::on_cluster_node(&format!("/tmp/{name}"));
    let left_on_node = node_tmp.exists();
    // Without a private /tmp the files are the node's: leave nothing behind.
    let _ = fs::remove_file(&node_tmp);
    let _ = fs::remove_file(test_support::on_cluster_node(&format!("/tmp/{name}.none")));
    assert!(seen, "the job never wrote /tmp:\n{log}");
    assert_eq!(
        value_of(&log, "job-id: "),
        Some(id.to_string().as_str()),
        "{log}"
    );
    let secret = format!("secret-{id}");
    let shm = format!("shm-{id}");
    assert_eq!(
        value_of(&log, "container-tmp: "),
        Some(secret.as_str()),
        "{log}"
    );
    assert_eq!(
        value_of(&log, "container-shm: "),
        Some(shm.as_str()),
        "{log}"
    );
    assert_eq!(value_of(&log, "none-tmp: "), Some(secret.as_str()), "{log}");
    assert_eq!(value_of(&log, "none-shm: "), Some(shm.as_str()), "{log}");
    assert_eq!(
        value_of(&log, "batch-sees-none: "),
        Some("none-wrote"),
        "{log}"
    );
    other_container.expect_ok();
    other_none.expect_ok();
    if private {
        for other in [&other_container, &other_none] {
            assert_eq!(other.stdout.trim(), "absent", "another job saw it: {other}");
        }
        assert!(
            !left_on_node,
            "{} stayed on the node after the job",
            node_tmp.display()
        );
    } else {
        assert!(
            left_on_node,
            "no private /tmp, yet the node's has no /tmp/{name}"
        );
    }
}
