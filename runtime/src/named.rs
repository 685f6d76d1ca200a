//! Named containers (`--container-name=NAME`): the first step of a job that names one
//! on a node creates it, and later steps of the same job join it, writes included.
//!
//! A named container is the creating step's mount namespace, kept alive after that
//! step by a warden: `ferry named-warden`, a root process started detached (out of the
//! job's cgroups) that holds the namespace open as a file descriptor. Later steps of the
//! job open that descriptor through /proc and their tasks join it as they would their
//! own container; no image is opened or mounted again. The warden ends the container
//! when the job no longer runs on the node (no slurmstepd of the job here, and the
//! controller no longer lists it as running): it kills what still runs inside, the
//! image's squashfuse when the creating step started one, and lets the namespace go,
//! and with it every mount, the loop device and the writable layer.
//!
//! What decides is beyond the user's reach: the folder `/run/ferry/named` is root's
//! (0700), its entries are named by Slurm's job id and the node, the record says which
//! uid and image made the container, and the warden is found by pid and start time.

use crate::container::ImageFacts;
use crate::image_cache;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the named containers of the jobs on this node are recorded.
pub const NAMED_DIR: &str = "/run/ferry/named";
/// The longest name: it becomes one folder name on the node.
const MAX_NAME: usize = 64;
/// The most named containers one job keeps on a node (each holds its image mount, its
/// writable layer and a warden until the job ends).
const MAX_PER_JOB: usize = 16;
const RECORD_FILE: &str = "entry.json";
const WARDEN_FILE: &str = "warden";
const LOCK_FILE: &str = "lock";
/// The cgroup a named container's squashfuse moves to: out of the step that started
/// it (Slurm would kill it at that step's end), until its warden ends it.
const NAMED_CGROUP: &str = "ferry-named";
/// How long a step waits for the warden it started to hold the namespace.
const WARDEN_START: Duration = Duration::from_secs(5);
/// How often the warden asks the controller whether the job still runs, once no
/// slurmstepd of the job is left on the node.
const CONTROLLER_POLL: Duration = Duration::from_secs(5);
/// The longest wait between two questions to the controller.
const CONTROLLER_POLL_MAX: Duration = Duration::from_secs(60);

/// A name is 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit: it names a
/// folder on each node, so no `/`, no `..`, nothing a shell or a log would misread.
pub fn check_name(name: &str) -> Result<(), String> {
    if plain_name(name) {
        return Ok(());
    }
    Err(format!(
        "--container-name={name}: give 1 to {MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit"
    ))
}

fn plain_name(name: &str) -> bool {
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    starts_well && allowed && name.len() <= MAX_NAME
}

/// Which named container a step asks for: its job, the node it runs on (two slurmd of
/// one host keep theirs apart) and the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedContainer {
    pub job: u32,
    pub node: String,
    pub name: String,
}

impl NamedContainer {
    /// The container's folder: NAMED_DIR/NODE.JOB/NAME.
    fn dir(&self) -> PathBuf {
        Path::new(NAMED_DIR)
            .join(format!("{}.{}", self.node, self.job))
            .join(&self.name)
    }
}

/// What the creating step records for the steps that join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) image: PathBuf,
    pub(crate) pinned: Option<String>,
    pub(crate) uid: u32,
    pub(crate) facts: ImageFacts,
    /// The squashfuse the creating step started (its warden ends it).
    pub(crate) server: Option<image_cache::Server>,
    /// The container's mount namespace (its inode): what the warden holds is checked
    /// against it.
    #[serde(default)]
    pub(crate) namespace: u64,
}

/// The warden holding a container: its pid, start time and the descriptor number of the
/// namespace in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Warden {
    pid: u32,
    start_time: u64,
    fd: i32,
}

/// A named container's folder, locked against other steps of the job on this node
/// while one creates or joins it.
pub(crate) struct Slot {
    dir: PathBuf,
    _lock: fs::File,
}

/// A container found in a slot: its namespace and how it was made.
pub(crate) struct Found {
    pub(crate) namespace: OwnedFd,
    pub(crate) record: Record,
}

impl Slot {
    /// Makes (when missing) and locks the folder of `named`, waiting at most until
    /// `deadline` for another step of the job that is creating it.
    pub(crate) fn lock(named: &NamedContainer, deadline: Instant) -> io::Result<Slot> {
        if !plain_name(&named.name) || !plain_name(&named.node) {
            return Err(io::Error::other(
                "a container or node name that is not plain",
            ));
        }
        let run = sys::open_path(Path::new("/run"), libc::O_PATH | libc::O_DIRECTORY)?;
        let ferry = image_cache::open_root_dir(run.as_fd(), "ferry", true)?;
        drop(image_cache::open_root_dir(ferry.as_fd(), "named", true)?);
        let dir = named.dir();
        // Below a folder only root can enter: plain paths cannot be swapped by users.
        if let Some(job_dir) = dir.parent() {
            let kept = fs::read_dir(job_dir).map_or(0, |d| d.count());
            if !dir.exists() && kept >= MAX_PER_JOB {
                return Err(io::Error::other(format!(
                    "this job already keeps {MAX_PER_JOB} named containers on this node, the most it may; reuse one of their names"
                )));
            }
        }
        fs::create_dir_all(&dir)?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        while !sys::try_lock(lock.as_fd(), true)? {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another step of the job is still creating it",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Slot { dir, _lock: lock })
    }

    /// The container already made under this name, when its warden still holds it.
    pub(crate) fn existing(&self) -> io::Result<Option<Found>> {
        let (Ok(record), Ok(warden)) = (
            fs::read(self.dir.join(RECORD_FILE)),
            fs::read(self.dir.join(WARDEN_FILE)),
        ) else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&record).map_err(io::Error::other)?;
        let warden: Warden = serde_json::from_slice(&warden).map_err(io::Error::other)?;
        if sys::process_start_time(warden.pid) != Some(warden.start_time) {
            return Ok(None); // the warden is gone: its container with it
        }
        let path = format!("/proc/{}/fd/{}", warden.pid, warden.fd);
        let namespace = sys::open_path(Path::new(&path), libc::O_RDONLY)?;
        // Still that warden (not a pid reused meanwhile), and what it holds is the very
        // namespace the container was made in.
        if sys::process_start_time(warden.pid) != Some(warden.start_time)
            || !sys::is_nsfs(namespace.as_fd())
            || sys::namespace_inode(namespace.as_fd()).ok() != Some(record.namespace)
        {
            return Ok(None);
        }
        Ok(Some(Found { namespace, record }))
    }

    /// Keeps `namespace` (open in this process as that descriptor) for the job's later
    /// steps: records it, moves the squashfuse `server` out of the step, and starts its
    /// warden with the `ferry` command `ferry`.
    pub(crate) fn keep(
        &self,
        namespace: &OwnedFd,
        mut record: Record,
        server: Option<u32>,
        named: &NamedContainer,
        ferry: &Path,
    ) -> io::Result<()> {
        let _ = fs::remove_file(self.dir.join(WARDEN_FILE));
        record.namespace = sys::namespace_inode(namespace.as_fd())?;
        if let Some(pid) = server {
            image_cache::move_to_cgroup(pid, NAMED_CGROUP);
            record.server = image_cache::Server::of(pid);
        }
        write_file(&self.dir.join(RECORD_FILE), &serde_json::to_vec(&record)?)?;
        let argv: Vec<CString> = [
            ferry.as_os_str().to_string_lossy().into_owned(),
            "named-warden".into(),
            "--job".into(),
            named.job.to_string(),
            "--node".into(),
            named.node.clone(),
            "--name".into(),
            named.name.clone(),
            "--from".into(),
            format!("{}/{}", std::process::id(), namespace.as_raw_fd()),
        ]
        .into_iter()
        .map(|a| CString::new(a).map_err(io::Error::other))
        .collect::<io::Result<_>>()?;
        sys::spawn_detached_with(&argv, &warden_environment())?;
        let deadline = Instant::now() + WARDEN_START;
        while !self.dir.join(WARDEN_FILE).exists() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "its keeper ({} named-warden) did not start",
                    ferry.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Slot {
    /// Removes this slot's folder (a container that could not be kept), and the job's
    /// when it was the job's only one.
    pub(crate) fn forget(self) {
        remove_container_folder(&self.dir);
    }
}

fn remove_container_folder(dir: &Path) {
    for name in [WARDEN_FILE, RECORD_FILE, LOCK_FILE] {
        let _ = fs::remove_file(dir.join(name));
    }
    let _ = fs::remove_dir(dir);
    if let Some(job_dir) = dir.parent() {
        let _ = fs::remove_dir(job_dir); // only when it was the job's last one here
    }
}

/// The warden's environment: slurmstepd's PATH (where this site's `squeue` is) after the
/// standard folders, and SLURM_CONF when the site sets it.
fn warden_environment() -> Vec<CString> {
    let mut path = String::from("/usr/sbin:/usr/bin:/sbin:/bin");
    if let Ok(site) = std::env::var("PATH") {
        for dir in site.split(':').filter(|d| d.starts_with('/')) {
            path.push(':');
            path.push_str(dir);
        }
    }
    let mut env = vec![format!("PATH={path}")];
    if let Ok(conf) = std::env::var("SLURM_CONF") {
        env.push(format!("SLURM_CONF={conf}"));
    }
    env.into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect()
}

/// Writes `bytes` to `path` whole or not at all (a reader never sees half a record).
fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let partial = path.with_extension("partial");
    fs::write(&partial, bytes)?;
    fs::rename(&partial, path)
}

/// `ferry named-warden`: holds the namespace that process `from` has open as descriptor
/// `fd` ("PID/FD") until job `job` no longer runs on this node, then ends it.
pub fn run_warden(named: &NamedContainer, from: &str) -> io::Result<()> {
    image_cache::leave_job_cgroups(std::process::id());
    let dir = named.dir();
    let (pid, fd) = from
        .split_once('/')
        .and_then(|(p, f)| Some((p.parse::<u32>().ok()?, f.parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::other(format!("--from {from}: give PID/FD")))?;
    let path = format!("/proc/{pid}/fd/{fd}");
    let namespace = sys::open_path(Path::new(&path), libc::O_RDONLY)?;
    let record: Record =
        serde_json::from_slice(&fs::read(dir.join(RECORD_FILE))?).map_err(io::Error::other)?;
    // The container's namespace, not whatever that pid holds now (if it was reused).
    if !sys::is_nsfs(namespace.as_fd())
        || sys::namespace_inode(namespace.as_fd())? != record.namespace
    {
        return Err(io::Error::other(format!(
            "{path} is not the container's namespace"
        )));
    }
    // The image cache's entry the container's image mount came from stays while it lives.
    let _cache_entry = record
        .facts
        .cache
        .as_ref()
        .and_then(|note| image_cache::InUse::hold(&note.key));
    let me = std::process::id();
    let warden = Warden {
        pid: me,
        start_time: sys::process_start_time(me).unwrap_or(0),
        fd: namespace.as_raw_fd(),
    };
    write_file(&dir.join(WARDEN_FILE), &serde_json::to_vec(&warden)?)?;
    // Between steps the controller is asked, less and less often while it says the
    // job runs (a long idle stretch of a big job costs it little).
    let mut next_ask: Option<Instant> = None;
    let mut interval = CONTROLLER_POLL;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if job_has_a_step_here(named.job) {
            next_ask = None;
            interval = CONTROLLER_POLL;
            continue;
        }
        if next_ask.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        if controller_says_ended(named.job) {
            break;
        }
        next_ask = Some(Instant::now() + interval);
        interval = (interval * 2).min(CONTROLLER_POLL_MAX);
    }
    end_container(&namespace, record.server.as_ref());
    remove_container_folder(&dir);
    Ok(())
}

/// Kills what still runs in the container and its squashfuse; the namespace goes when
/// the caller closes its descriptor.
fn end_container(namespace: &OwnedFd, server: Option<&image_cache::Server>) {
    if let Ok(inode) = sys::namespace_inode(namespace.as_fd()) {
        let link = format!("mnt:[{inode}]");
        for _ in 0..5 {
            let mut killed = 0;
            for pid in sys::process_ids() {
                let inside = fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|l| l.as_os_str() == OsStr::new(&link));
                if inside && sys::kill_if_in_namespace(pid, inode) {
                    killed += 1;
                }
            }
            if killed == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(server) = server {
        sys::kill_if_started_at(server.pid, server.start_time);
    }
}

/// Whether a slurmstepd of `job` runs on this host: root's, titled
/// `slurmstepd: [JOB.STEP]` (a user's process can take any title, not root's uid).
fn job_has_a_step_here(job: u32) -> bool {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let title = format!("slurmstepd: [{job}.");
    let root = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l[4..].split_whitespace().all(|id| id == "0"))
    };
    sys::process_ids().any(|pid| {
        // Cheap first (the folder's owner), and only the title's length of the
        // command line: users choose how long theirs are.
        if fs::metadata(format!("/proc/{pid}")).map_or(true, |m| m.uid() != 0) {
            return false;
        }
        let mut head = vec![0u8; title.len()];
        let titled = fs::File::open(format!("/proc/{pid}/cmdline"))
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|_| head == title.as_bytes());
        titled && fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| root(&s))
    })
}

/// Whether the controller says `job` no longer runs here: finished, or back in the
/// queue (requeued, held: its allocation left the node). False when it cannot be
/// asked: a container with the user's work in it is not ended on a guess.
fn controller_says_ended(job: u32) -> bool {
    let out = Command::new("squeue")
        .args(["--noheader", "--states=all", "--format=%A %T", "--jobs"])
        .arg(job.to_string())
        .stdin(Stdio::null())
        .output();
    out.is_ok_and(|out| {
        squeue_says_ended(
            job,
            out.status.success(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    })
}

/// What `squeue --states=all --format='%A %T' --jobs=JOB` answered: a line per job
/// (an array's or a heterogeneous job's id lists its elements too), of which only
/// `job`'s own counts; or an error (a job it forgot is over; any other error, such as
/// an unreachable controller, says nothing).
fn squeue_says_ended(job: u32, success: bool, stdout: &str, stderr: &str) -> bool {
    if !success {
        return stderr.contains("Invalid job id");
    }
    let own = job.to_string();
    let state = stdout.lines().find_map(|line| {
        let (id, state) = line.trim().split_once(' ')?;
        (id == own).then(|| state.trim().to_string())
    });
    match state {
        // Listed no more (--states=all lists a finished job for a while): over.
        None => true,
        Some(state) => !matches!(
            state.as_str(),
            "RUNNING" | "SUSPENDED" | "CONFIGURING" | "RESIZING" | "SIGNALING" | "STOPPED"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_folder_names() {
        for good in ["a", "build-env", "py3.11_env", "0", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\n",
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("--container-name={bad}: give 1 to 64")),
                "{err}"
            );
        }
    }

    #[test]
    fn only_a_job_that_left_the_node_ends_its_containers() {
        let ended = |out: &str| squeue_says_ended(42, true, out, "");
        for state in [
            "COMPLETED",
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "COMPLETING",
            "PENDING",
            "REQUEUED",
            "REQUEUE_HOLD",
        ] {
            assert!(ended(&format!("42 {state}\n")), "{state}");
        }
        for state in ["RUNNING", "SUSPENDED", "CONFIGURING"] {
            assert!(!ended(&format!("42 {state}\n")), "{state}");
        }
        // An array's or a het job's other elements do not decide for this one.
        assert!(!ended("41 PENDING\n42 RUNNING\n43 COMPLETED\n"));
        assert!(ended("41 RUNNING\n42 COMPLETED\n"));
        assert!(ended(""), "no longer listed");
        let forgotten = "slurm_load_jobs error: Invalid job id specified\n";
        assert!(squeue_says_ended(42, false, "", forgotten));
        let unreachable =
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n";
        assert!(!squeue_says_ended(42, false, "", unreachable));
    }

    #[test]
    fn each_node_and_job_has_its_own_folder() {
        let named = NamedContainer {
            job: 42,
            node: "vm-2".into(),
            name: "env".into(),
        };
        assert_eq!(named.dir(), PathBuf::from("/run/ferry/named/vm-2.42/env"));
    }
}
