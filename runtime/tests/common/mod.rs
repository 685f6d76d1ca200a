//! Helpers for ferry's integration tests: prerequisites, a test image built once per
//! test process, temporary folders, running the `ferry` binary, and snapshots of the
//! host (loop devices, mounts, processes) to prove that nothing is left behind.
//!
//! The tests need root, mksquashfs, a static busybox, gcc (with libc6-dev for
//! `-static`) and the test user `ferrytest` in the group `ferrylab`:
//! `sudo tests/prepare-host` sets all of that up.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub const TEST_USER: &str = "ferrytest";
pub const TEST_GROUP: &str = "ferrylab";
/// Where the test finds busybox; Debian's busybox-static puts it here.
pub const BUSYBOX: &str = "/bin/busybox";
/// Content of the file that exists only in the test image.
pub const ONLY_IN_IMAGE: &str = "this file exists only in the test image\n";
/// Longest a single `ferry` run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `ferry` binary cargo built for these tests.
pub fn ferry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

// ---------------------------------------------------------------------------------
// Prerequisites.

/// True when the tests can run. Otherwise, with `CI=true` it panics with the reason
/// (CI must never skip silently); elsewhere it prints a loud SKIPPED line to stderr and
/// returns false, and the test returns early.
pub fn require_root_and_tools() -> bool {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("missing prerequisite: {reason} (CI=true: the ferry integration tests must run; see tests/prepare-host)");
    }
    // Straight to the process's stderr: eprintln! would be captured (and hidden) by the
    // test harness for a test that passes.
    let stars = "*".repeat(72);
    let _ = writeln!(
        std::io::stderr(),
        "\n{stars}\n*** SKIPPED (missing prerequisite: {reason})\n\
         *** run the tests as root after `sudo tests/prepare-host`\n{stars}"
    );
    false
}

fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (the tests mount images; run them as root)".to_string());
    }
    for tool in ["mksquashfs", "gcc"] {
        if find_tool(tool).is_none() {
            missing.push(format!("{tool} not found on PATH"));
        }
    }
    match fs::read(BUSYBOX) {
        Err(e) => missing.push(format!("{BUSYBOX}: {e} (install busybox-static)")),
        Ok(elf) if !is_static_elf(&elf) => missing.push(format!(
            "{BUSYBOX} is not statically linked (install busybox-static)"
        )),
        Ok(_) => {}
    }
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
    missing
}

/// Finds `name` in PATH (and the sbin folders, which a non-login root shell may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
}

/// A 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

// ---------------------------------------------------------------------------------
// The test user, as the host sees them.

pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// All groups (primary included), as (gid, name).
    pub groups: Vec<(u32, String)>,
}

pub fn test_user() -> TestUser {
    let user = nix::unistd::User::from_name(TEST_USER)
        .unwrap()
        .expect("the test user exists");
    TestUser {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        groups: test_user_groups(),
    }
}

fn test_user_groups() -> Vec<(u32, String)> {
    let Ok(Some(user)) = nix::unistd::User::from_name(TEST_USER) else {
        return vec![];
    };
    let name = CString::new(TEST_USER).unwrap();
    nix::unistd::getgrouplist(&name, user.gid)
        .unwrap_or_default()
        .into_iter()
        .map(|g| {
            let name = nix::unistd::Group::from_gid(g)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_default();
            (g.as_raw(), name)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Temporary folders.

/// A fresh folder, removed with everything in it when dropped. Names carry the test
/// process's pid (`ferry-test-PID-...`), so host snapshots can tell our loop devices
/// from anyone else's.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A world-traversable (0755) folder under /tmp, so that the test user can reach
    /// what the test puts in it.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(Path::new("/tmp"), tag)
    }

    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        let template = base.join(format!("{}{tag}-XXXXXX", pid_tag()));
        let path = nix::unistd::mkdtemp(&template)
            .unwrap_or_else(|e| panic!("mkdtemp {}: {e}", template.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Gives the folder to the test user (for a working directory they write in).
    pub fn give_to_test_user(&self) {
        let u = test_user();
        std::os::unix::fs::chown(&self.path, Some(u.uid), Some(u.gid)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The prefix of every temporary path this test process creates.
pub fn pid_tag() -> String {
    format!("ferry-test-{}-", std::process::id())
}

// ---------------------------------------------------------------------------------
// The test image.

pub struct Fixture {
    /// Holds the image and the root folder; removed when the test process exits.
    pub dir: PathBuf,
    /// The SquashFS image (root-owned, mode 0644).
    pub image: PathBuf,
    /// The root folder the image was made from, usable as a folder image.
    pub rootfs: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The test image, built on first use (once per test process). Call only after
/// `require_root_and_tools()` returned true.
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = TempDir::new("image");
        let fixture = build_fixture(dir.path());
        // The static is never dropped: remove the folder when the process exits
        // (the test harness returns from main or calls exit, both run atexit hooks).
        std::mem::forget(dir);
        extern "C" fn remove_fixture() {
            if let Some(f) = FIXTURE.get() {
                let _ = fs::remove_dir_all(&f.dir);
            }
        }
        #[allow(unsafe_code)] // test clean-up at exit
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe {
            libc::atexit(remove_fixture)
        };
        fixture
    })
}

fn build_fixture(dir: &Path) -> Fixture {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "data", "etc", "root"] {
        mkdir_mode(&rootfs.join(sub), 0o755);
    }
    // busybox and its applets.
    let busybox = rootfs.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox).unwrap();
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    write_mode(
        &rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write_mode(&rootfs.join("etc/group"), "root:x:0:\n", 0o644);
    // What exists only in the image.
    write_mode(&rootfs.join("data/only-in-image"), ONLY_IN_IMAGE, 0o644);
    write_mode(
        &rootfs.join("bin/image-only"),
        "#!/bin/sh\necho \"image-only command ran as $(id -un) with args: $*\"\n",
        0o755,
    );
    // A setuid-root program that reports its effective uid.
    let source = dir.join("show-euid.c");
    write_mode(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"%u\\n\", (unsigned)geteuid()); return 0; }\n",
        0o644,
    );
    let show_euid = rootfs.join("bin/show-euid");
    let gcc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&show_euid)
        .arg(&source)
        .output()
        .expect("running gcc");
    assert!(
        gcc.status.success(),
        "gcc -static failed (is libc6-dev installed? run tests/prepare-host): {}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    std::os::unix::fs::chown(&show_euid, Some(0), Some(0)).unwrap();
    fs::set_permissions(&show_euid, fs::Permissions::from_mode(0o4755)).unwrap();

    let image = dir.join("image.sqfs");
    let out = Command::new("mksquashfs")
        .arg(&rootfs)
        .arg(&image)
        .args(["-no-xattrs", "-quiet", "-noappend", "-no-progress"])
        .output()
        .expect("running mksquashfs");
    assert!(
        out.status.success(),
        "mksquashfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    Fixture {
        dir: dir.to_path_buf(),
        image,
        rootfs,
    }
}

pub fn mkdir_mode(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn write_mode(path: &Path, content: &str, mode: u32) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------
// Running ferry.

#[derive(Debug)]
pub struct Outcome {
    /// The exit status, or None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Panics, showing everything, unless the run exited 0.
    pub fn expect_success(&self, what: &str) -> &Self {
        assert_eq!(self.code, Some(0), "{what}: ferry failed: {self:#?}");
        self
    }
}

/// Runs `ferry ARGS` from `cwd` and waits for it (at most RUN_TIMEOUT).
pub fn ferry<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Outcome {
    let mut cmd = Command::new(ferry_bin());
    cmd.args(args).current_dir(cwd);
    run_with_timeout(cmd, RUN_TIMEOUT)
}

/// Runs `cmd` with captured stdout/stderr and a time limit (the child is killed and the
/// test fails when it is exceeded).
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Outcome {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Outcome {
        code: status.code(),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------
// Test isolation.

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
