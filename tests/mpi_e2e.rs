//! End-to-end tests of MPI jobs in ferry containers on a running Slurm cluster.
//!
//! The host has no MPI at all: each image brings its own (Debian 12's Open MPI 4.1 with
//! mpi4py, and MPICH 4.0 with a small C program), and Slurm's `--mpi=pmix` /
//! `--mpi=pmi2` wire the ranks of one step together, or the image's own `mpirun` starts
//! them inside a batch job and serves them PMIx itself. Every job runs as the unprivileged
//! user `ferrytest` (through `runuser`), from a fresh folder under /home/ferrytest.
//!
//! The images are built once by `tests/images/mpi-images` (debootstrap + apt in a
//! chroot; cached under /var/cache/ferry-test-images by recipe hash, so only the first
//! run pays for the build, about 2 minutes with network access).
//!
//! Needs: root, a responding Slurm node with the mpi/pmix and mpi/pmi2 plugins (the
//! host's libpmix-dev), the plugin installed (`deploy/build && deploy/install`),
//! mksquashfs, losetup and the user `ferrytest` (`tests/prepare-host`). The tests are
//! therefore `#[ignore]`d; `tests/run` prepares all of that and runs them with
//! `--include-ignored`. Run without a prerequisite, a test fails naming it.
//!
//! The tests run one at a time (a lock): 64 ranks on a small node are enough load, and
//! the image-server check (loop devices, squashfuse) must see only its own jobs.
//!
//!     cargo test --test mpi_e2e -- --include-ignored

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use test_support::{
    cluster_command, find_tool, missing_for_jobs, missing_prerequisite, missing_tools,
    other_cluster, require, test_user, CLUSTER_PID_VAR, TEST_HOME, TEST_USER,
};

/// PATH of the test user's commands (the host's Slurm clients are in /usr/bin).
const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Longest a single srun may take before `timeout` kills it (jobs also get `-t 5`).
const SRUN_SECS: u64 = 120;
/// Longest the image build may take (first run: debootstrap and apt from the network).
const BUILD_SECS: u64 = 1200;
/// The ring program of the MPICH image.
const RING: &str = "/opt/ferry-test/ring";

/// mpi4py: an allreduce of the ranks and a token passed around a ring, printed like the
/// MPICH image's C program prints it.
const PY_RING: &str = "\
from mpi4py import MPI
c = MPI.COMM_WORLD
r, n = c.Get_rank(), c.Get_size()
s = c.allreduce(r)
t = c.sendrecv(r, dest=(r + 1) % n, source=(r - 1) % n)
ok = c.allreduce(t == (r - 1) % n, op=MPI.LAND)
print(f\"rank {r} of {n}: sum={s} ring={'ok' if ok else 'bad'} lib=OpenMPI\", flush=True)
";

/// Printed by each rank before the ring: `pmix MPI_RANK PMIX_RANK PMIX_NAMESPACE`, the
/// identity the PMIx server that started it handed over ("-" when there was none).
const PY_PMIX_ID: &str = "\
import os
from mpi4py import MPI
pmix = [os.environ.get(k, '-') for k in ('PMIX_RANK', 'PMIX_NAMESPACE')]
print('pmix', MPI.COMM_WORLD.Get_rank(), *pmix, flush=True)
";

// ---------------------------------------------------------------------------------
// Prerequisites.

/// Fails the test, naming what is missing, unless the cluster (with Slurm's MPI plugins
/// `mpi`) and the host are ready.
#[track_caller]
fn require_prerequisites(mpi: &[&str]) {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    let mut missing = MISSING.get_or_init(missing_prerequisites).clone();
    if missing.is_empty() {
        let listed = mpi_plugins();
        for plugin in mpi {
            if !listed.lines().any(|l| l.trim() == *plugin) {
                missing.push(format!(
                    "Slurm's mpi/{plugin} plugin (srun --mpi=list: {:?}; mpi/pmix needs the node's libpmix-dev and a Slurm built with PMIx)",
                    listed.trim()
                ));
            }
        }
    }
    require(&missing);
}

fn missing_prerequisites() -> Vec<String> {
    let mut missing = missing_for_jobs();
    if other_cluster().is_none() {
        missing.extend(missing_tools(&["srun"]));
    }
    missing.extend(missing_tools(&[
        "mksquashfs",
        "runuser",
        "timeout",
        "losetup",
        "flock",
    ]));
    missing
}

/// What `srun --mpi=list` prints on the cluster under test (plugin names, one a line).
fn mpi_plugins() -> &'static str {
    static LISTED: OnceLock<String> = OnceLock::new();
    LISTED.get_or_init(|| {
        match cluster_command("timeout", Path::new("/"))
            .args(["10", "srun", "--mpi=list"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) => {
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr)
            }
            Err(e) => format!("srun: {e}"),
        }
    })
}

/// Runs a host command as root: (success, stdout, stderr).
fn run_root(argv: &[&str]) -> Result<(bool, String, String), String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

// ---------------------------------------------------------------------------------
// The images.

struct Images {
    ompi: String,
    mpich: String,
}

/// Builds (or finds in the cache) the two MPI images, once per test binary.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/mpi-images");
        let start = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "10", &BUILD_SECS.to_string(), "bash"])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({:?}):\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            script.display(),
            out.status
        );
        let paths: Vec<&str> = stdout.lines().filter(|l| l.ends_with(".sqfs")).collect();
        assert_eq!(
            paths.len(),
            2,
            "expected two image paths:\n{stdout}\n{stderr}"
        );
        for p in &paths {
            assert!(Path::new(p).is_file(), "{p} does not exist:\n{stderr}");
        }
        let _ = std::io::stderr().write_all(
            format!(
                "mpi images ready in {:.1} s: {} {}\n",
                start.elapsed().as_secs_f64(),
                paths[0],
                paths[1]
            )
            .as_bytes(),
        );
        Images {
            ompi: paths[0].to_string(),
            mpich: paths[1].to_string(),
        }
    })
}

// ---------------------------------------------------------------------------------
// Command results.

struct Out {
    what: String,
    code: Option<i32>,
    secs: f64,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn expect_ok(&self) -> &Self {
        assert!(self.code == Some(0), "expected success:\n{self}");
        self
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        writeln!(f, "--- command: {}", self.what)?;
        writeln!(f, "--- exit code: {:?} after {:.1} s", self.code, self.secs)?;
        writeln!(f, "--- stdout:\n{}", self.stdout)?;
        write!(f, "--- stderr:\n{}", self.stderr)
    }
}

/// Checks the `rank R of N: sum=S ring=ok` lines of an `n`-rank step: one line per rank
/// 0..n, all of one job of size n, with the right sum and an intact ring.
#[track_caller]
fn assert_one_job(out: &Out, n: usize) {
    out.expect_ok();
    let mut ranks = BTreeSet::new();
    let want_sum = n * (n - 1) / 2;
    for line in out.stdout.lines().filter(|l| l.starts_with("rank ")) {
        // rank R of N: sum=S ring=ok lib=...
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f.len() >= 6 && f[2] == "of",
            "unexpected line {line:?}:\n{out}"
        );
        let rank: usize = f[1].parse().unwrap_or_else(|_| panic!("{line:?}:\n{out}"));
        assert_eq!(
            f[3],
            format!("{n}:"),
            "rank {rank} is not in one {n}-rank job (separate singletons?):\n{out}"
        );
        assert_eq!(
            f[4],
            format!("sum={want_sum}"),
            "wrong allreduce sum in {line:?}:\n{out}"
        );
        assert_eq!(f[5], "ring=ok", "the ring failed in {line:?}:\n{out}");
        assert!(ranks.insert(rank), "rank {rank} printed twice:\n{out}");
    }
    assert_eq!(
        ranks,
        (0..n).collect::<BTreeSet<_>>(),
        "expected ranks 0..{n}, one line each:\n{out}"
    );
}

// ---------------------------------------------------------------------------------
// A test's lab: its own folder under the test user's home.

/// One test at a time (see the module comment).
static SERIAL: Mutex<()> = Mutex::new(());

struct Lab {
    dir: PathBuf,
    images: &'static Images,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// A fresh folder and the images; fails the test when a prerequisite is missing.
    /// For a test that runs only on the host's cluster (it checks the host's loop
    /// devices, processes or nodes), so it refuses another cluster.
    #[track_caller]
    fn new(name: &str) -> Lab {
        assert!(
            other_cluster().is_none(),
            "this test runs only against the host's cluster; unset {CLUSTER_PID_VAR} \
             (the core cases, made with Lab::core, run against every release)"
        );
        Self::core(name, &["pmix", "pmi2"])
    }

    /// Like `new`, for a core case that needs Slurm's MPI plugins `mpi`: it checks only
    /// what the user sees, so it also runs against the other Slurm releases of the
    /// suite (tests/slurm26/suite).
    #[track_caller]
    fn core(name: &str, mpi: &[&str]) -> Lab {
        require_prerequisites(mpi);
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let images = images();
        let dir = Path::new(TEST_HOME).join(format!("mpi-e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let user = test_user();
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
        Lab {
            dir,
            images,
            _serial: serial,
        }
    }

    /// `srun ARGS...` as the test user from the lab folder, under `timeout`, with a
    /// clean environment plus `env`.
    fn srun(&self, env: &[(&str, &str)], args: &[&str]) -> Out {
        self.srun_within(SRUN_SECS, env, args)
    }

    /// `srun` as above, killed after `secs` seconds.
    fn srun_within(&self, secs: u64, env: &[(&str, &str)], args: &[&str]) -> Out {
        let name = self.job_name();
        let mut argv = vec!["srun", "-t", "5", "-J", &name];
        argv.extend_from_slice(args);
        self.run_as_user(secs, env, &argv)
    }

    /// Writes `script` as the lab's job script and submits it with
    /// `sbatch --wait OPTS` as the test user. The result's stdout is the job's output
    /// file (what the batch script and its ranks printed), its stderr what sbatch said.
    fn sbatch(&self, opts: &[&str], script: &str) -> Out {
        let (script_file, output) = ("job.sh", "job.out");
        self.write(script_file, &format!("#!/bin/sh\n{script}\n"), 0o755);
        let name = self.job_name();
        let mut argv = vec!["sbatch", "--wait", "-t", "5", "-J", &name, "-o", output];
        argv.extend_from_slice(opts);
        argv.push(script_file);
        let mut out = self.run_as_user(SRUN_SECS, &[], &argv);
        out.stderr = format!("{}{}", out.stdout, out.stderr);
        out.stdout = fs::read_to_string(self.dir.join(output)).unwrap_or_default();
        out
    }

    /// Writes a file of the test user's into the lab folder.
    fn write(&self, name: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let user = test_user();
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }

    /// Runs `argv` (a Slurm client) as the test user from the lab folder on the cluster
    /// under test, under `timeout -k 5 SECS`, with a clean environment plus `env`.
    fn run_as_user(&self, secs: u64, env: &[(&str, &str)], argv: &[&str]) -> Out {
        let secs = secs.to_string();
        let runuser = match other_cluster() {
            // The other release's own, by absolute path (the clean PATH has no sbin).
            Some(_) => PathBuf::from("/usr/sbin/runuser"),
            None => find_tool("runuser").unwrap(),
        };
        let mut cmd = cluster_command(&runuser.display().to_string(), &self.dir);
        cmd.args(["-u", TEST_USER, "--", "timeout", "-k", "5", &secs])
            .args(argv)
            .env_clear()
            .env("PATH", USER_PATH)
            .env("HOME", TEST_HOME)
            .env("USER", TEST_USER)
            .env("LOGNAME", TEST_USER)
            .env("LANG", "C")
            .env("TERM", "dumb")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd.output().unwrap();
        let secs = start.elapsed().as_secs_f64();
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let out = Out {
            what: format!("{}{}", env.concat(), argv.join(" ")),
            code: out.status.code(),
            secs,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let _ =
            std::io::stderr().write_all(format!("{:.1} s: {}\n", out.secs, out.what).as_bytes());
        out
    }

    fn job_name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Counts what serves `image` (its loop devices and squashfuse servers, see
/// `servers_of`) every 100 ms from another thread until stopped; returns the largest
/// count seen.
struct ServerWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

/// What serves `image` to containers: its loop devices (`losetup -j`; a trusted image,
/// or a site with `untrusted_images: kernel`) and the squashfuse processes whose image
/// descriptor (fd 4, see the runtime's FUSE server) is that file (the default for a
/// user's image). One per node while steps use it, whatever their number of tasks.
fn servers_of(image: &str) -> Vec<String> {
    let (_, out, _) = run_root(&["losetup", "-j", image]).unwrap_or_default();
    let mut found: Vec<String> = out.lines().map(str::to_string).collect();
    let real = fs::canonicalize(image).unwrap_or_else(|_| PathBuf::from(image));
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let proc_dir = entry.path();
        let is_fuse = fs::read_to_string(proc_dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with("squashfuse"));
        if is_fuse && fs::read_link(proc_dir.join("fd/4")).is_ok_and(|p| p == real) {
            found.push(format!(
                "squashfuse pid {}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

impl ServerWatch {
    fn start(image: &str) -> ServerWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let image = image.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                max = max.max(servers_of(&image).len());
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (max, samples)
        });
        ServerWatch { stop, thread }
    }

    /// (largest count, samples taken)
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// ---------------------------------------------------------------------------------
// The tests.

/// mpi4py over the image's Open MPI, wired by Slurm's PMIx: one 4-rank job.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn openmpi_pmix_four_ranks_are_one_job() {
    let lab = Lab::new("ompi");
    let image = format!("--container={}", lab.images.ompi);
    let out = lab.srun(
        &[],
        &[
            "--mpi=pmix",
            "-n",
            "4",
            "--overcommit",
            &image,
            "python3",
            "-c",
            PY_RING,
        ],
    );
    assert_one_job(&out, 4);
}

/// The same with Open MPI forced onto shared memory between the ranks (ob1 PML over
/// the vader BTL): the tasks share /dev/shm and see each other's processes. Control:
/// with the `self` BTL alone the ranks have no path to each other and the step fails,
/// so the setting does reach the ranks and vader is what carries their messages.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn openmpi_pmix_shared_memory() {
    let lab = Lab::new("ompi-shm");
    let image = format!("--container={}", lab.images.ompi);
    let run = |btl| {
        lab.srun(
            &[("OMPI_MCA_pml", "ob1"), ("OMPI_MCA_btl", btl)],
            &[
                "--mpi=pmix",
                "-n",
                "4",
                "--overcommit",
                &image,
                "python3",
                "-c",
                PY_RING,
            ],
        )
    };
    assert_one_job(&run("self,vader"), 4);
    let control = run("self");
    assert_ne!(
        control.code,
        Some(0),
        "with OMPI_MCA_btl=self the ranks cannot talk, yet the step succeeded:\n{control}"
    );
    assert!(
        !control.stdout.contains("ring=ok"),
        "with OMPI_MCA_btl=self the ranks cannot talk, yet the ring went round:\n{control}"
    );
}

/// Open MPI's own launcher in the image: `mpirun -n 4` in the batch script of an
/// `sbatch --container` job starts the ranks and is their PMIx server (ORTE's, with the
/// image's PMIx), so no Slurm mpi/pmix plugin takes part: the Open MPI PMIx job that
/// also runs on a Slurm built without PMIx (Debian's 26.05). On one node mpirun takes
/// its 4 slots from the allocation and starts no daemons (no srun). Besides the ring,
/// each rank prints the PMIx rank and namespace its PMIx server gave it: every MPI rank
/// has the same PMIx rank, all in one namespace.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn openmpi_mpirun_pmix_four_ranks_are_one_job() {
    let lab = Lab::core("ompi-mpirun", &[]);
    lab.write("ring.py", &format!("{PY_PMIX_ID}{PY_RING}"), 0o644);
    let image = format!("--container={}", lab.images.ompi);
    let out = lab.sbatch(
        &["-N", "1", "-n", "4", "--overcommit", &image],
        "mpirun -n 4 python3 ring.py",
    );
    assert_one_job(&out, 4);
    let mut ranks = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for line in out.stdout.lines().filter(|l| l.starts_with("pmix ")) {
        // pmix MPI_RANK PMIX_RANK PMIX_NAMESPACE
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 4, "unexpected line {line:?}:\n{out}");
        assert_eq!(
            f[1], f[2],
            "MPI rank and PMIx rank differ in {line:?}:\n{out}"
        );
        assert_ne!(f[3], "-", "rank {} has no PMIx namespace:\n{out}", f[1]);
        ranks.insert(f[1].to_string());
        namespaces.insert(f[3].to_string());
    }
    assert_eq!(
        ranks,
        (0..4).map(|r| r.to_string()).collect::<BTreeSet<_>>(),
        "expected a PMIx identity from ranks 0..4:\n{out}"
    );
    assert_eq!(
        namespaces.len(),
        1,
        "the ranks are in {} PMIx namespaces:\n{out}",
        namespaces.len()
    );
}

/// A C program built with the image's MPICH, wired by Slurm's PMI-2: one 4-rank job.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn mpich_pmi2_four_ranks_are_one_job() {
    let lab = Lab::core("mpich", &["pmi2"]);
    let image = format!("--container={}", lab.images.mpich);
    let out = lab.srun(
        &[],
        &["--mpi=pmi2", "-n", "4", "--overcommit", &image, RING],
    );
    assert_one_job(&out, 4);
}

/// 64 ranks on one node: one job, one mount namespace, one server (loop device or
/// squashfuse) for the image.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn mpich_pmi2_sixty_four_ranks_share_one_container() {
    let lab = Lab::new("mpich64");
    let path = lab.images.mpich.as_str();
    let image = format!("--container={path}");
    // What served earlier tests' steps goes away a moment after them.
    let start = std::time::Instant::now();
    while !servers_of(path).is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = servers_of(path);

    let watch = ServerWatch::start(path);
    let ring = lab.srun(
        &[],
        &["--mpi=pmi2", "-n", "64", "--overcommit", &image, RING],
    );
    let ns = lab.srun(
        &[],
        &[
            "-n",
            "64",
            "--overcommit",
            &image,
            "sh",
            "-c",
            "echo \"ns $SLURM_PROCID $(readlink /proc/self/ns/mnt)\"",
        ],
    );
    let (max_servers, samples) = watch.finish();
    let after = servers_of(path);

    assert_one_job(&ring, 64);

    ns.expect_ok();
    let mut tasks = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    for line in ns.stdout.lines().filter(|l| l.starts_with("ns ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "unexpected line {line:?}:\n{ns}");
        tasks.insert(f[1].to_string());
        namespaces.insert(f[2].to_string());
    }
    assert_eq!(tasks.len(), 64, "expected 64 tasks:\n{ns}");
    assert_eq!(
        namespaces.len(),
        1,
        "the 64 tasks are in {} mount namespaces:\n{ns}",
        namespaces.len()
    );
    let host_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(
        namespaces.first().unwrap().as_str(),
        host_ns.to_string_lossy(),
        "the tasks ran in the host's mount namespace:\n{ns}"
    );

    assert!(
        before.len() <= 1,
        "servers of {path} before the steps: {before:?}"
    );
    assert_eq!(
        max_servers, 1,
        "{max_servers} servers (loop devices, squashfuse) of {path} at once during the steps ({samples} samples)"
    );
    assert!(
        after.len() <= 1,
        "servers of {path} after the steps: {after:?}"
    );
    let _ = std::io::stderr().write_all(
        format!(
            "64 ranks: ring {:.1} s, ns step {:.1} s; servers of the image: \
             before {}, at most {max_servers} during ({samples} samples), after {}\n",
            ring.secs,
            ns.secs,
            before.len(),
            after.len()
        )
        .as_bytes(),
    );
}

/// The nodes of the partition `pair` (deploy/slurm-cluster starts two slurmd on this
/// machine); fails the test when it has fewer than two.
#[track_caller]
fn two_nodes() -> Vec<String> {
    let (_, list, _) = run_root(&["sinfo", "-h", "-p", "pair", "-o", "%N"]).unwrap_or_default();
    let (_, names, _) =
        run_root(&["scontrol", "show", "hostnames", list.trim()]).unwrap_or_default();
    let nodes: Vec<String> = names.lines().map(str::to_string).collect();
    if nodes.len() < 2 {
        missing_prerequisite(&format!(
            "a Slurm partition `pair` with two nodes (found {nodes:?}); deploy/slurm-cluster makes it"
        ));
    }
    nodes
}

/// Wraps a rank's program so that it first says on which Slurm node it runs.
fn on_node(program: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "sh".to_string(),
        "-c".to_string(),
        "echo \"node $SLURM_PROCID $SLURMD_NODENAME\"; exec \"$@\"".to_string(),
        "sh".to_string(),
    ];
    argv.extend(program.iter().map(|a| a.to_string()));
    argv
}

/// Checks that the step's ranks ran `per_node` on each of the first two `nodes`.
#[track_caller]
fn assert_per_node(out: &Out, nodes: &[String], per_node: usize) {
    let mut found = std::collections::BTreeMap::<&str, usize>::new();
    for line in out.stdout.lines().filter(|l| l.starts_with("node ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "unexpected line {line:?}:\n{out}");
        *found.entry(f[2]).or_default() += 1;
    }
    let want: std::collections::BTreeMap<&str, usize> =
        nodes[..2].iter().map(|n| (n.as_str(), per_node)).collect();
    assert_eq!(found, want, "ranks per node:\n{out}");
}

/// One 4-rank Open MPI job over two nodes, two ranks each, wired by PMIx: every rank
/// in one job, the ring crosses between the nodes. Control: without a network
/// transport (shared memory only) the same step fails, so the ranks really are on
/// separate nodes and the messages between them went over the network.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn openmpi_pmix_two_nodes_are_one_job() {
    let lab = Lab::new("ompi-2n");
    let nodes = two_nodes();
    let image = format!("--container={}", lab.images.ompi);
    let program = on_node(&["python3", "-c", PY_RING]);
    // Without a path between the nodes Open MPI may wait forever: the control gets 20 s.
    let run = |btl, secs| {
        let mut args = vec!["-p", "pair", "-N", "2", "--ntasks-per-node=2", "--mpi=pmix"];
        args.push(&image);
        args.extend(program.iter().map(String::as_str));
        lab.srun_within(
            secs,
            &[("OMPI_MCA_pml", "ob1"), ("OMPI_MCA_btl", btl)],
            &args,
        )
    };
    let out = run("self,vader,tcp", SRUN_SECS);
    assert_one_job(&out, 4);
    assert_per_node(&out, &nodes, 2);
    let control = run("self,vader", 20);
    assert!(
        control.code != Some(0) && !control.stdout.contains("ring=ok"),
        "with shared memory only, ranks on two nodes cannot talk, yet the step succeeded:\n{control}"
    );
}

/// An MPICH job over two nodes, wired by PMI-2: one rank per node, so every message
/// crosses between the nodes. (With two ranks per node, Debian's MPICH 4.0.2 hangs in
/// MPI_Finalize about every second run on this one-machine cluster, on the host
/// without ferry just the same: both nodes share one IP address.)
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn mpich_pmi2_two_nodes_are_one_job() {
    let lab = Lab::new("mpich-2n");
    let nodes = two_nodes();
    let image = format!("--container={}", lab.images.mpich);
    let program = on_node(&[RING]);
    let mut args = vec!["-p", "pair", "-N", "2", "--ntasks-per-node=1", "--mpi=pmi2"];
    args.push(&image);
    args.extend(program.iter().map(String::as_str));
    let out = lab.srun(&[], &args);
    assert_one_job(&out, 2);
    assert_per_node(&out, &nodes, 1);
}

/// The MPI of these jobs comes from the images only: the host has none.
#[test]
#[ignore = "needs root and the Slurm cluster with its MPI plugins: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn host_has_no_mpi() {
    require_prerequisites(&["pmix", "pmi2"]);
    let found: Vec<String> = ["mpirun", "mpicc", "mpiexec"]
        .into_iter()
        .filter_map(find_tool)
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        found.is_empty(),
        "the host has MPI tools ({}); the MPI tests would not show that the images bring their own \
         (run on a host without MPI: no openmpi-bin, mpich on the host)",
        found.join(", ")
    );
}
