//! The audit suite: one test per finding of the security audit (the item number is in
//! each test's comment). Each attack runs as the ordinary user `ferrytest` against the
//! second ordinary user `ferryvictim` (or root), and each test asserts the fixed
//! behaviour: on a vulnerable build it fails showing the vulnerability.
//!
//! Steps that hang on a vulnerable build run under short timeouts; afterwards the
//! test unblocks or kills what it started (as root), cancels its jobs and resumes a
//! node that was drained, so that the cluster is left as it was.

use super::adversarial::TrustedDir;
use super::*;

const VICTIM: &str = "ferryvictim";
pub(super) const VICTIM_HOME: &str = "/home/ferryvictim";
/// The node of the default partition.
const NODE: &str = "vm";

// ---------------------------------------------------------------------------------
// Helpers.

/// `(uid, gid)` of the victim.
fn victim_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, VICTIM]).output().unwrap();
        assert!(
            out.status.success(),
            "user {VICTIM} missing (tests/prepare-host)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// Runs `argv` as the victim in `cwd` under `timeout`, with a clean environment.
pub(super) fn as_victim(cwd: &Path, argv: &[&str], secs: u64) -> Out {
    let secs = secs.to_string();
    let out = Command::new(find_tool("runuser").unwrap())
        .args(["-u", VICTIM, "--", "timeout", "-k", "5", &secs])
        .args(argv)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", USER_PATH)
        .env("HOME", VICTIM_HOME)
        .env("USER", VICTIM)
        .env("LOGNAME", VICTIM)
        .env("LANG", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        what: format!("(as {VICTIM} in {}) {}", cwd.display(), argv.join(" ")),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A folder of the victim's (mode 0700, in their 0700 home), removed when dropped.
struct VictimDir {
    dir: PathBuf,
}

impl VictimDir {
    fn new(name: &str) -> VictimDir {
        let dir = Path::new(VICTIM_HOME).join(format!("audit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = victim_ids();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        VictimDir { dir }
    }

    /// Copies `from` to `name` in the folder, the victim's, mode 0644.
    fn copy_in(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.dir.join(name);
        fs::copy(from, &to).unwrap();
        let (uid, gid) = victim_ids();
        std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        to
    }
}

impl Drop for VictimDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A long `sleep` started by the test (as the victim, or as root), with its working
/// directory in `cwd`; killed when dropped.
struct Sleeper {
    child: std::process::Child,
}

impl Sleeper {
    fn start(cwd: &Path, ids: Option<(u32, u32)>, secs: u32) -> Sleeper {
        // setpriv execs the sleep: the child's pid is the sleep's.
        let mut cmd = Command::new("setpriv");
        if let Some((uid, gid)) = ids {
            cmd.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
                .arg("--clear-groups");
        }
        cmd.arg("/bin/sleep")
            .arg(secs.to_string())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Sleeper {
            child: cmd.spawn().unwrap(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process is alive and its working directory is `cwd`: /proc/PID/cwd names
    /// what the test means.
    #[track_caller]
    fn assert_alive_in(&mut self, cwd: &Path) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the test's own process {} ended",
            self.pid()
        );
        assert_eq!(
            fs::read_link(format!("/proc/{}/cwd", self.pid())).unwrap(),
            cwd,
            "the test's process reference is wrong"
        );
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs each case; a failing case does not stop the others. Panics at the end naming
/// the cases that failed (each case's own panic message is printed as it happens).
struct Cases {
    failed: Vec<String>,
}

impl Cases {
    fn new() -> Cases {
        Cases { failed: Vec::new() }
    }

    fn check(&mut self, case: &str, f: impl FnOnce()) {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            self.failed.push(case.to_string());
        }
    }

    #[track_caller]
    fn finish(self) {
        assert!(self.failed.is_empty(), "failed cases: {:?}", self.failed);
    }
}

/// The ids of the lab's jobs that squeue still lists.
fn lab_jobs(lab: &Lab) -> Vec<u64> {
    root_output(
        "squeue",
        &["-h", "-u", TEST_USER, "-n", &lab.job_name(), "-o", "%i"],
    )
    .split_whitespace()
    .filter_map(|i| i.parse().ok())
    .collect()
}

/// The node's state as sinfo prints it (`idle`, `drained`, `mixed`, ...).
fn node_state() -> String {
    // One line per partition of the node: the first says it.
    root_output("sinfo", &["-h", "-N", "-n", NODE, "-o", "%T"])
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn node_drained() -> bool {
    node_state().contains("drain")
}

/// Ends every job of the lab on a vulnerable build: kills their stuck slurmstepd (and
/// its forked helpers, which carry the same title) as root, cancels the jobs, waits
/// until they are gone, and resumes the node if it was drained.
fn end_lab_jobs(lab: &Lab) {
    let jobs = lab_jobs(lab);
    for id in &jobs {
        let _ = Command::new("scancel").arg(id.to_string()).status();
    }
    for id in &jobs {
        if !job_gone(*id, Duration::from_secs(15)) {
            for pid in root_output("pgrep", &["-f", &format!("^slurmstepd: \\[{id}\\.")])
                .split_whitespace()
            {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
            let _ = Command::new("scancel").arg(id.to_string()).status();
            let _ = job_gone(*id, Duration::from_secs(60));
        }
    }
    resume_node_if_drained();
}

fn resume_node_if_drained() {
    if node_drained() {
        eprintln!("node {NODE} is {}: resuming it", node_state());
        let _ = Command::new("scontrol")
            .args(["update", &format!("nodename={NODE}"), "state=resume"])
            .status();
    }
}

/// Live processes of the test user that belong to this lab (its jobs' environment or
/// working folder names the lab), zombies left out.
fn live_lab_processes(lab: &Lab) -> Vec<String> {
    pids_of_test_user()
        .into_iter()
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim()).unwrap_or("");
            !state.starts_with('Z') && !stat.is_empty() && started_by_us(*pid, &lab.job_name())
        })
        .map(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            format!("{pid} {}", String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

/// Pids of the test user's processes whose command line is exactly `cmdline`.
fn test_user_processes(cmdline: &str) -> Vec<String> {
    root_output("pgrep", &["-u", TEST_USER, "-x", "-f", cmdline])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A site file in a root-owned folder, named in plugstack.conf until dropped.
pub(super) struct SiteFile {
    _setting: PlugstackArgs,
    _dir: TrustedDir,
}

impl SiteFile {
    pub(super) fn new(name: &str, json: &str) -> SiteFile {
        let dir = TrustedDir::new(name);
        let file = dir.dir.join("site.json");
        fs::write(&file, json).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let setting = PlugstackArgs::add(&format!("site_config={}", file.display()));
        SiteFile {
            _setting: setting,
            _dir: dir,
        }
    }
}

/// Creates a FIFO at `path`, owned by the test user.
fn mkfifo(lab: &Lab, path: &Path) {
    let out = Command::new("mkfifo")
        .args(["-m", "0644"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfifo: {out:?}");
    lab.give(path);
}

/// Opens the FIFO for reading without blocking and keeps reading it for a while: a
/// writer blocked in open() goes on.
fn unblock_fifo(path: &Path) {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(path)
    {
        let mut buf = [0u8; 4096];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            match f.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// O_NONBLOCK on Linux (x86, arm and most others).
fn libc_o_nonblock() -> i32 {
    0o4000
}

/// The FIFO given as `--container-provenance`: the step must fail within seconds
/// with one line saying it is not a regular file, and leave the node in service. When
/// the step hangs instead (vulnerable), unblocks and cancels it, resumes a drained node
/// and panics saying so.
fn provenance_fifo_attack(lab: &Lab, image: &str, tracker: &str) {
    let fifo = lab.path(&format!("prov-{tracker}.fifo"));
    mkfifo(lab, &fifo);
    let start = Instant::now();
    let out = lab.run_in(
        &lab.dir,
        &[
            "srun",
            "-J",
            &lab.job_name(),
            &format!("--container={image}"),
            &format!("--container-provenance={}", fifo.display()),
            "echo",
            "SHOULD-NOT-RUN",
        ],
        None,
        30,
    );
    let took = start.elapsed();
    if out.code == Some(124) || out.code == Some(137) {
        // The vulnerable behaviour: the task is stuck in open() of the FIFO.
        let stuck = lab_jobs(lab);
        for id in &stuck {
            let _ = Command::new("scancel").arg(id.to_string()).status();
        }
        // Under linuxproc Slurm cannot kill it: the node drains after
        // UnkillableStepTimeout (60 s here).
        let drained = tracker == "linuxproc"
            && wait_until(Duration::from_secs(150), Duration::from_secs(2), || {
                node_drained() || stuck.iter().all(|id| job_gone(*id, Duration::ZERO))
            })
            && node_drained();
        unblock_fifo(&fifo);
        end_lab_jobs(lab);
        panic!(
            "[{tracker}] the step hung in open() of the FIFO for {took:?} (killed by timeout); \
             node drained afterwards: {drained}:\n{out}"
        );
    }
    out.expect_one_ferry_error(
        &format!("provenance FIFO ({tracker})"),
        "not a regular file",
    );
    assert!(
        took < Duration::from_secs(15),
        "[{tracker}] refusing the FIFO took {took:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !node_drained(),
        "[{tracker}] node {NODE} drained: {}",
        node_state()
    );
    assert!(
        lab_jobs(lab).is_empty(),
        "[{tracker}] the job is still there"
    );
}

// ---------------------------------------------------------------------------------
// The tests.

/// Audit item 1: magic links (/proc/PID/cwd, /proc/PID/ns/*) to other users' files.
/// The image path, a symlink to it, and bind sources through another user's (or
/// root's) process are opened with the user's own rights: refused, nothing read.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_1_magic_links_to_other_users_files_are_refused() {
    let lab = Lab::new("audit-magic");
    // The victim works in a folder of their 0700 home. (The working folder itself
    // must be searchable: a name is looked up in it after /proc/PID/cwd jumps there;
    // the magic link skips the 0700 folder above it.)
    let victim = VictimDir::new("magic");
    let work = victim.dir.join("work");
    fs::create_dir(&work).unwrap();
    let (vuid, vgid) = victim_ids();
    std::os::unix::fs::chown(&work, Some(vuid), Some(vgid)).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755)).unwrap();
    let secret = lab.image("secret.sqfs", "SECRET");
    victim.copy_in(&lab.path(&secret), "work/secret.sqfs");
    fs::remove_file(lab.path(&secret)).unwrap();
    let mut victim_proc = Sleeper::start(&work, Some(victim_ids()), 120);
    // Root's folder with an image inside root's 0700 /root, and a root process working
    // there.
    assert_eq!(
        fs::metadata("/root").unwrap().mode() & 0o077,
        0,
        "precondition: /root is private"
    );
    let root_dir = Path::new("/root").join(format!("ferry-audit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root_dir);
    fs::create_dir_all(&root_dir).unwrap();
    fs::set_permissions(&root_dir, fs::Permissions::from_mode(0o755)).unwrap();
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _root_guard = RemoveDir(root_dir.clone());
    let root_secret = lab.image("rootsecret.sqfs", "ROOTSECRET");
    fs::copy(lab.path(&root_secret), root_dir.join("root.sqfs")).unwrap();
    fs::set_permissions(
        root_dir.join("root.sqfs"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut root_proc = Sleeper::start(&root_dir, None, 120);
    let image = lab.image("own.sqfs", "OWN");
    victim_proc.assert_alive_in(&work);
    root_proc.assert_alive_in(&root_dir);
    // The test user cannot read either image by its path.
    for path in [work.join("secret.sqfs"), root_dir.join("root.sqfs")] {
        let direct = lab.run(&["cat", &path.display().to_string()]);
        assert!(!direct.ok(), "{} is readable: {direct}", path.display());
    }

    let vpid = victim_proc.pid();
    let rpid = root_proc.pid();
    let link = lab.path("link.sqfs");
    std::os::unix::fs::symlink(format!("/proc/{vpid}/cwd/secret.sqfs"), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(test_user().uid), Some(test_user().gid)).unwrap();

    let mut cases = Cases::new();
    for (case, container, marker) in [
        (
            "1a: /proc/VICTIM/cwd/secret.sqfs",
            format!("/proc/{vpid}/cwd/secret.sqfs"),
            "SECRET",
        ),
        ("1b: symlink to it", "link.sqfs".to_string(), "SECRET"),
        (
            "1c: /proc/ROOT/cwd/root.sqfs",
            format!("/proc/{rpid}/cwd/root.sqfs"),
            "ROOTSECRET",
        ),
    ] {
        cases.check(case, || {
            let out = lab.srun(&[&format!("--container={container}"), "cat", ONLY_FILE]);
            assert!(
                !out.stdout.contains(marker),
                "{case}: read the other user's image:\n{out}"
            );
            out.expect_one_ferry_error(case, "cannot read it");
        });
    }
    for (case, source) in [
        (
            "1d: bind /proc/VICTIM/ns/net",
            format!("/proc/{vpid}/ns/net"),
        ),
        ("1d: bind /proc/VICTIM/cwd", format!("/proc/{vpid}/cwd")),
    ] {
        cases.check(case, || {
            let out = lab.srun(&[
                &format!("--container={image}"),
                &format!("--container-mounts={source}:/x"),
                "sh",
                "-c",
                "ls -la /x; cat /x/secret.sqfs >/dev/null && echo READ-VICTIM-FILE",
            ]);
            assert!(
                !out.stdout.contains("READ-VICTIM-FILE"),
                "{case}: read the victim's file through the bind:\n{out}"
            );
            out.expect_one_ferry_error(case, "mount source");
        });
    }
    // The references were valid all along.
    victim_proc.assert_alive_in(&work);
    root_proc.assert_alive_in(&root_dir);
    cases.finish();
}

/// Audit item 2: `--container-provenance=FIFO`. The step must not block in open()
/// (before exec, where Slurm cannot always kill it): refused within seconds with one
/// line, the node stays in service.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_2_provenance_fifo_is_refused() {
    let lab = Lab::new("audit-fifo");
    let image = lab.image("img.sqfs", "IMG");
    let tracker = if fs::read_to_string("/etc/slurm/slurm.conf")
        .unwrap_or_default()
        .contains("proctrack/linuxproc")
    {
        "linuxproc"
    } else {
        "cgroup"
    };
    provenance_fifo_attack(&lab, &image, tracker);
    let left = live_lab_processes(&lab);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The proctrack plugin of the running cluster, switched by `deploy/slurm-cluster
/// restart` (FERRY_PROCTRACK); put back to cgroup when dropped, also on failure.
/// `FERRY_CLUSTER_SCRIPT` names another copy of the script.
struct ProctrackSwitch;

impl ProctrackSwitch {
    fn script() -> PathBuf {
        std::env::var_os("FERRY_CLUSTER_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/slurm-cluster"))
    }

    fn restart(proctrack: Option<&str>) {
        let mut cmd = Command::new("bash");
        cmd.arg(Self::script()).arg("restart").stdin(Stdio::null());
        match proctrack {
            Some(p) => cmd.env("FERRY_PROCTRACK", p),
            None => cmd.env_remove("FERRY_PROCTRACK"),
        };
        let out = cmd.output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("deploy/slurm-cluster restart ({proctrack:?}):\n{said}");
        assert!(
            out.status.success(),
            "deploy/slurm-cluster restart failed:\n{said}"
        );
        let up = wait_until(Duration::from_secs(90), Duration::from_secs(1), || {
            slurm_node_problem().is_none() && !node_state().contains('*')
        });
        assert!(up, "the cluster did not come back: {}", node_state());
        // What the running slurmctld uses, not only what the file says.
        let want = format!("proctrack/{}", proctrack.unwrap_or("cgroup"));
        let config = root_output("scontrol", &["show", "config"]);
        let running = config
            .lines()
            .find(|l| l.starts_with("ProctrackType"))
            .unwrap_or_default();
        assert!(
            running.ends_with(&want),
            "after the restart: {running:?}, wanted {want}\n{said}"
        );
    }

    fn linuxproc() -> ProctrackSwitch {
        Self::restart(Some("linuxproc"));
        let conf = fs::read_to_string("/etc/slurm/slurm.conf").unwrap();
        let guard = ProctrackSwitch;
        assert!(
            conf.contains("ProctrackType=proctrack/linuxproc"),
            "FERRY_PROCTRACK=linuxproc did not select linuxproc (script {})",
            Self::script().display()
        );
        guard
    }
}

impl Drop for ProctrackSwitch {
    fn drop(&mut self) {
        resume_node_if_drained();
        Self::restart(None);
    }
}

/// Audit items 2 and 8 under `proctrack/linuxproc`, which tracks a step's processes
/// by walking the process tree. Item 8: a task that double-forks out of the tree must
/// still end with the step (ferry kills what is left in the container). Item 2: the
/// provenance FIFO must be refused before it blocks the task (which linuxproc cannot
/// kill: the node would drain with "Kill task failed"). Exclusive: restarts the
/// cluster, and restores cgroup at the end.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_2_8_under_linuxproc_double_fork_and_provenance_fifo() {
    let lab = Lab::exclusive("audit-linuxproc");
    let image = lab.image("img.sqfs", "IMG");
    let _switch = ProctrackSwitch::linuxproc();
    let mut cases = Cases::new();
    cases.check("8: double-forked task", || {
        let out = lab.srun(&[
            "-J",
            &lab.job_name(),
            &format!("--container={image}"),
            "sh",
            "-c",
            // Its own stdio: the step's output pipes must not wait for it.
            "(sleep 333 </dev/null >/dev/null 2>&1 &) ; true",
        ]);
        let gone = wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
            test_user_processes("sleep 333").is_empty()
        });
        let left = test_user_processes("sleep 333");
        for pid in &left {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        out.expect_ok();
        assert!(
            gone,
            "a double-forked `sleep 333` outlived its step by 10 s: pids {left:?}"
        );
    });
    cases.check("2: provenance FIFO under linuxproc", || {
        provenance_fifo_attack(&lab, &image, "linuxproc");
    });
    end_lab_jobs(&lab);
    cases.finish();
}

/// Audit item 3a: a pinned sparse image of 4 TiB. Hashing it would keep the root helper
/// busy for hours; it must be refused within seconds.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_3a_pinned_sparse_image_is_refused() {
    let lab = Lab::new("audit-sparse");
    let good = lab.image("good.sqfs", "GOOD");
    let sparse = lab.path("sparse.sqfs");
    fs::copy(lab.path(&good), &sparse).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&sparse)
        .unwrap()
        .set_len(4 << 40)
        .unwrap();
    lab.give(&sparse);
    let start = Instant::now();
    let out = lab.run_in(
        &lab.dir,
        &[
            "srun",
            "-J",
            &lab.job_name(),
            &format!("--container=sparse.sqfs@{}", zero_digest()),
            "echo",
            "SHOULD-NOT-RUN",
        ],
        None,
        30,
    );
    let took = start.elapsed();
    let hung = out.code == Some(124) || out.code == Some(137);
    end_lab_jobs(&lab);
    let _ = fs::remove_file(&sparse);
    assert!(
        !hung,
        "the pinned 4 TiB sparse image kept the step busy (hashing) for {took:?}:\n{out}"
    );
    out.expect_one_ferry_error("pinned sparse image", "sparse");
    assert!(took < Duration::from_secs(15), "refusing took {took:?}");
}

/// Audit item 3b: the user stops the batch step's squashfuse (SIGSTOP); a step of the
/// job that borrows that FUSE mount must give up after the site's `setup_timeout`
/// instead of hanging in setup (where Slurm cannot cancel it). Exclusive: site file.
/// (`AUDIT_SITE_WITHOUT_SETUP_TIMEOUT=1` leaves the key out of the site file, to see
/// the hang on a build that does not know the key.)
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_3b_stopped_squashfuse_hits_setup_timeout() {
    let lab = Lab::exclusive("audit-stopped-fuse");
    let image = lab.image("img.sqfs", "IMG");
    let json = if std::env::var_os("AUDIT_SITE_WITHOUT_SETUP_TIMEOUT").is_some() {
        "{}"
    } else {
        r#"{"setup_timeout": "5s"}"#
    };
    let _site = SiteFile::new("audit-timeout", json);
    let (id, log) = lab.submit(&[&format!("--container={image}")], "sleep 300");
    let batch = format!("slurmstepd: [{id}.batch]");
    let mut server = None;
    let found = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        server = root_output("pgrep", &["-u", TEST_USER, "-x", "squashfuse_ll"])
            .split_whitespace()
            .find(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .unwrap_or("0")
                    .to_string();
                let parent = fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&parent).starts_with(&batch)
            })
            .map(str::to_string);
        server.is_some()
    });
    if !found {
        end_lab_jobs(&lab);
        panic!(
            "no squashfuse of the batch step of job {id}; job output:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let server = server.unwrap();
    lab.run(&["kill", "-STOP", &server]).expect_ok();
    let start = Instant::now();
    let out = lab.run_in(
        &lab.dir,
        &[
            "srun",
            &format!("--jobid={id}"),
            "--overlap",
            &format!("--container={image}"),
            "echo",
            "SHOULD-NOT-RUN",
        ],
        None,
        90,
    );
    let took = start.elapsed();
    let _ = Command::new("kill").args(["-CONT", &server]).status();
    let _ = Command::new("scancel").arg(id.to_string()).status();
    let ended = job_gone(id, Duration::from_secs(60));
    if !ended {
        end_lab_jobs(&lab);
    }
    let left = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        live_lab_processes(&lab).is_empty()
    });
    let hung = out.code == Some(124) || out.code == Some(137);
    assert!(
        !hung,
        "the step's setup hung behind the stopped squashfuse for {took:?}:\n{out}"
    );
    out.expect_one_ferry_error("stopped squashfuse", "setup_timeout");
    assert!(
        took < Duration::from_secs(20),
        "giving up took {took:?}:\n{out}"
    );
    assert!(
        ended,
        "job {id} did not end after scancel (stuck COMPLETING?)"
    );
    assert!(left, "left behind: {:?}", live_lab_processes(&lab));
}

/// Audit item 4: an existing loop device reused for another user's pinned step. The
/// attacker's job keeps MAL mounted from x.sqfs; the file is rewritten in place with
/// GOOD's bytes (same inode, same size); the victim pins GOOD's digest and must get
/// GOOD (or a refusal), never MAL, and their provenance must not claim GOOD for MAL.
/// Exclusive: site file with `untrusted_images: kernel`.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_4_loop_device_reuse_cannot_bypass_a_pin() {
    let lab = Lab::exclusive("audit-loop");
    let _site = SiteFile::new("audit-loop", r#"{"untrusted_images": "kernel"}"#);
    let mal = lab.path(&lab.image("mal.sqfs", "MAL"));
    let good = lab.path(&lab.image("good.sqfs", "GOOD"));
    // Same size: both padded with zeros (ignored by SquashFS) to a multiple of 4096.
    let size = fs::metadata(&mal)
        .unwrap()
        .len()
        .max(fs::metadata(&good).unwrap().len())
        .div_ceil(4096)
        * 4096;
    for f in [&mal, &good] {
        fs::OpenOptions::new()
            .write(true)
            .open(f)
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let good_digest = sha256sum(&good);
    let shared = lab.mkdir("shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let x = shared.join("x.sqfs");
    fs::copy(&mal, &x).unwrap();
    fs::set_permissions(&x, fs::Permissions::from_mode(0o644)).unwrap();
    lab.give(&x);
    let victim = VictimDir::new("loop");

    // The job reads MAL's files (they stay cached with its mount), then waits.
    let (id, _) = lab.submit(
        &["--container=shared/x.sqfs"],
        &format!("cat {ONLY_FILE}; ls -lR /e2e >/dev/null; sleep 120"),
    );
    let x_text = x.display().to_string();
    let mounted = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        root_output("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"]).trim() == "RUNNING"
            && root_output("losetup", &["-a"]).contains(&x_text)
            && !test_user_processes("sleep 120").is_empty()
    });
    if !mounted {
        end_lab_jobs(&lab);
        panic!("job {id} never mounted {x_text} through a loop device");
    }
    let inode = fs::metadata(&x).unwrap().ino();
    {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::OpenOptions::new().write(true).open(&x).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&fs::read(&good).unwrap()).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(
        fs::metadata(&x).unwrap().ino(),
        inode,
        "x.sqfs was replaced"
    );
    assert_eq!(sha256sum(&x), good_digest, "x.sqfs does not hold GOOD now");

    let out = as_victim(
        &victim.dir,
        &[
            "srun",
            &format!("--container={x_text}@{good_digest}"),
            "--container-provenance=prov.jsonl",
            "cat",
            ONLY_FILE,
        ],
        SRUN_SECS,
    );
    let records = if victim.dir.join("prov.jsonl").exists() {
        provenance_lines(&victim.dir.join("prov.jsonl"))
    } else {
        Vec::new()
    };
    end_lab_jobs(&lab);
    assert!(
        !out.stdout.contains("only-in-image MAL"),
        "the victim's step pinned to GOOD ran MAL (a reused loop device):\n{out}\nprovenance: {records:?}"
    );
    if out.ok() {
        assert_eq!(out.stdout.trim(), "only-in-image GOOD", "{out}");
        assert!(
            records.iter().any(|r| r["digest"] == good_digest.as_str()),
            "GOOD ran, and the provenance does not say so: {records:?}"
        );
    } else {
        let seen = format!("{}\n{}", out.stdout, out.stderr);
        assert_eq!(ferry_lines(&seen).len(), 1, "{out}");
        assert!(
            !records.iter().any(|r| r["digest"] == good_digest.as_str()),
            "GOOD did not run, and the provenance claims it: {records:?}"
        );
    }
}

/// Audit item 5: `--container-workdir` under another user's 0700 folder (reached
/// through the host root at /.ferry/host) must not tell a folder, a file and a missing
/// name apart.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_5_workdir_does_not_reveal_other_users_files() {
    let lab = Lab::new("audit-probe");
    let victim = VictimDir::new("probe");
    let probe = victim.dir.join("probe");
    fs::create_dir_all(probe.join("d")).unwrap();
    fs::write(probe.join("f"), "f\n").unwrap();
    let (uid, gid) = victim_ids();
    for p in [probe.clone(), probe.join("d"), probe.join("f")] {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    }
    let image = lab.image("img.sqfs", "IMG");
    let base = format!("/.ferry/host{}", probe.display());
    let mut lines = Vec::new();
    let mut cases = Cases::new();
    for x in ["d", "f", "n"] {
        let out = lab.srun(&[
            &format!("--container={image}"),
            &format!("--container-workdir={base}/{x}"),
            "pwd",
        ]);
        cases.check(&format!("5: workdir {x}"), || {
            let seen = format!("{}\n{}", out.stdout, out.stderr);
            assert_ne!(out.code, Some(0), "workdir {x}: the step ran:\n{out}");
            assert_eq!(ferry_lines(&seen).len(), 1, "workdir {x}:\n{out}");
        });
        let seen = format!("{}\n{}", out.stdout, out.stderr);
        let line = ferry_lines(&seen)
            .first()
            .map(|l| l[l.find("ferry: ").unwrap()..].replace(&format!("{base}/{x}"), "{X}"))
            .unwrap_or_else(|| format!("(no ferry line; exit {:?})", out.code));
        lines.push(line);
    }
    cases.check("5: the three messages are identical", || {
        assert!(
            lines[0] == lines[1] && lines[1] == lines[2],
            "the messages tell the names apart:\n  d: {}\n  f: {}\n  n: {}",
            lines[0],
            lines[1],
            lines[2]
        );
    });
    cases.finish();
}

/// Audit item 6: `user_mount_destinations` must be checked on the destination as it
/// resolves inside the container: (a) an image symlink /data -> / and (b) a symlink of
/// the user's under /home pointing at /etc must not carry a bind into /etc.
/// Exclusive: site files.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_6_user_mount_destinations_follow_symlinks() {
    let lab = Lab::exclusive("audit-dest");
    let image = super::adversarial::crafted_image(&lab, "datalink.sqfs", |root| {
        std::os::unix::fs::symlink("/", root.join("data")).unwrap();
    });
    let plain = lab.image("plain.sqfs", "PLAIN");
    lab.write("dir/marker", "BOUND-IN-ETC\n", 0o644);
    let link = lab.path("l");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(test_user().uid), Some(test_user().gid)).unwrap();
    let mut cases = Cases::new();
    {
        let _site = SiteFile::new(
            "audit-dest-data",
            r#"{"user_mount_destinations": ["/data"]}"#,
        );
        cases.check("6a: image symlink /data -> /", || {
            let out = lab.srun(&[
                &format!("--container={image}"),
                "--container-mounts=dir:/data/etc/ferry-x",
                "sh",
                "-c",
                "cat /etc/ferry-x/marker",
            ]);
            assert!(
                !out.stdout.contains("BOUND-IN-ETC"),
                "the bind landed in the container's /etc:\n{out}"
            );
            out.expect_one_ferry_error("6a", "allows user mounts only under");
        });
    }
    {
        let _site = SiteFile::new(
            "audit-dest-home",
            r#"{"user_mount_destinations": ["/home"]}"#,
        );
        cases.check("6b: user symlink under /home -> /etc", || {
            let out = lab.srun(&[
                &format!("--container={plain}"),
                &format!("--container-mounts=dir:{}/ferry-x", link.display()),
                "sh",
                "-c",
                "cat /etc/ferry-x/marker",
            ]);
            assert!(
                !out.stdout.contains("BOUND-IN-ETC"),
                "the bind landed in the container's /etc:\n{out}"
            );
            out.expect_one_ferry_error("6b", "allows user mounts only under");
        });
    }
    cases.finish();
}

/// Audit item 7: the user's squashfuse must not inherit slurmd's environment (read
/// from inside the step through /proc/PID/environ): at most PATH.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_7_squashfuse_gets_no_slurmd_environment() {
    let lab = Lab::new("audit-fuse-env");
    let image = lab.image("img.sqfs", "IMG");
    let out = lab.srun(&[
        &format!("--container={image}"),
        "sh",
        "-c",
        r#"me=$(id -u)
for p in /proc/[0-9]*; do
  [ "$(cat $p/comm 2>/dev/null)" = squashfuse_ll ] || continue
  [ "$(awk '/^Uid:/ {print $2}' $p/status)" = "$me" ] || continue
  echo "server: ${p#/proc/}"
  tr '\0' '\n' < $p/environ | sed 's/^/env: /'
  echo "end: ${p#/proc/}"
done"#,
    ]);
    out.expect_ok();
    assert!(
        out.stdout.contains("server: "),
        "no squashfuse of the user seen:\n{out}"
    );
    let vars: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("env: "))
        .collect();
    let servers = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("server: "))
        .count();
    assert!(
        vars.len() <= servers && vars.iter().all(|v| v.starts_with("PATH=")),
        "squashfuse's environment has {} variables (for {servers} servers), not just PATH: {}",
        vars.len(),
        vars.iter()
            .map(|v| v.split('=').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// Audit item 9a: a character device in a host folder (made by root, on a filesystem
/// mounted without nodev) bound over /dev must not be usable: /dev's nodev exemption
/// is for the host's /dev only.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_9a_device_nodes_bound_over_dev_do_not_open() {
    let lab = Lab::new("audit-devs");
    let image = lab.image("img.sqfs", "IMG");
    let devs = lab.path("devs");
    fs::create_dir(&devs).unwrap();
    fs::set_permissions(&devs, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("mknod")
        .args(["-m", "0666"])
        .arg(devs.join("zero"))
        .args(["c", "1", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mknod: {out:?}");
    // Precondition: the lab's filesystem is not mounted nodev (else nothing to show).
    let findmnt = root_output(
        "findmnt",
        &["-n", "-o", "OPTIONS", "-T", devs.to_str().unwrap()],
    );
    assert!(
        !findmnt.split(',').any(|o| o.trim() == "nodev"),
        "precondition: {} is on a nodev filesystem ({findmnt})",
        devs.display()
    );
    let out = lab.srun(&[
        &format!("--container={image}"),
        "--container-mounts=devs:/dev",
        "sh",
        "-c",
        "head -c 4 /dev/zero | od -An -tx1",
    ]);
    assert!(
        !out.stdout.contains("00 00 00 00"),
        "the user's device node opened inside (read zeros):\n{out}"
    );
    assert_has(
        &format!("{}\n{}", out.stdout, out.stderr),
        "Permission denied",
        &out,
    );
}

/// Audit item 9b: a root-owned site file inside a folder the user owns (the user can
/// replace it) must not be believed: every step stops. Exclusive: site file.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_9b_site_file_in_a_users_folder_is_not_believed() {
    let lab = Lab::exclusive("audit-site-folder");
    let image = lab.image("img.sqfs", "IMG");
    let folder = lab.mkdir("site");
    let file = folder.join("site.json");
    fs::write(&file, r#"{"untrusted_images": "kernel"}"#).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(fs::metadata(&file).unwrap().uid(), 0);
    let _setting = PlugstackArgs::add(&format!("site_config={}", file.display()));
    let out = lab.srun(&[&format!("--container={image}"), "echo", "SHOULD-NOT-RUN"]);
    out.expect_one_ferry_error("site file in the user's folder", "must be owned by root");
}

/// Audit item 9c: an image's /etc/passwd naming the user with uid 0 must not survive
/// next to the real entry: inside, exactly one line for the user, with their real uid.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_9c_image_passwd_cannot_redefine_the_user() {
    let lab = Lab::new("audit-passwd");
    let image = super::adversarial::crafted_image(&lab, "passwd.sqfs", |root| {
        fs::write(
            root.join("etc/passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\n{TEST_USER}:x:0:0:fake:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
            ),
        )
        .unwrap();
    });
    let out = lab.srun(&[
        &format!("--container={image}"),
        "grep",
        &format!("^{TEST_USER}:"),
        "/etc/passwd",
    ]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{TEST_USER} has {} lines:\n{out}",
        lines.len()
    );
    assert_eq!(
        lines[0].split(':').nth(2),
        Some(test_user().uid.to_string().as_str()),
        "{out}"
    );
}

/// Audit item 9d: `sbatch --export=NONE --container=REL.sqfs` from the lab: the relative
/// image resolves against the submit folder although the job's environment is empty.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn audit_9d_export_none_with_a_relative_image() {
    let lab = Lab::new("audit-export-none");
    let image = lab.image("img.sqfs", "EXPORT-NONE");
    let job = lab.sbatch(
        &["--export=NONE", &format!("--container={image}")],
        &format!("cat {ONLY_FILE}"),
    );
    assert!(
        job.log.contains("only-in-image EXPORT-NONE"),
        "the job did not run in the image:\n{job}"
    );
    job.expect_ok();
}
