//! The node image cache: an image's mount outlives the steps that used it, for a time
//! and within limits the site sets, so the next step or job on the node that opens
//! the same file version takes that mount (and its warm page cache) instead of
//! mounting and decompressing again.
//!
//! Each kept mount lives alone in a mount namespace of its own, held by a bind mount
//! of that namespace's file at `CACHE_DIR/KEY/ns` in the host's namespace (nsfs, as
//! `ip netns` keeps network namespaces): no process holds it, no image mount shows in
//! the host's mount table, and namespaces made later (other containers, services) do
//! not copy it. Unmounting that one file frees the namespace, the image mount, its
//! loop device (autoclear) and ends its squashfuse (the FUSE connection goes).
//!
//! A step takes a kept mount only after it opened the image with the user's rights,
//! and only the one made from the very file version it opened (`Key`: device, inode,
//! size, mtime, ctime, the byte range and the driver); a squashfuse mount, whose server
//! is the user's own process, only for the same user. See SECURITY.md.
//!
//! `CACHE_DIR/KEY/lock` says who uses an entry: every step that uses it holds a shared
//! lock (its setup helper from the moment it takes the mount, then slurmstepd until the
//! step ends), and whoever drops it first takes the exclusive lock, so a mount never
//! goes while a step is taking it. The lock file's mtime is when the last step using
//! it ended. `ferry cache janitor` (started when a mount is kept) expires entries on
//! time even if no step ever runs on the node again; steps and `ferry cache` tidy too.

use crate::digest::FileVersion;
use crate::policy::CachePolicy;
use crate::sys;
use serde::{Deserialize, Serialize};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Where the kept mounts are named (root's alone; on /run, so a reboot clears it).
pub const CACHE_DIR: &str = "/run/ferry/image-cache";
const NS_FILE: &str = "ns";
const LOCK_FILE: &str = "lock";
const RECORD_FILE: &str = "entry.json";
/// Who is making an entry (pid and start time) until its namespace is in place.
const OWNER_FILE: &str = "owner";
/// Held (exclusively) by the one running janitor.
const JANITOR_LOCK: &str = ".janitor";
/// The cgroup, in every hierarchy, of the processes that outlive the job they served
/// (kept squashfuse servers and the janitor): not the job's, so Slurm neither kills
/// nor bills them.
pub const CACHE_CGROUP: &str = "ferry-image-cache";
/// How long a dropped entry's squashfuse may take to notice before it is killed.
const SERVER_EXIT: Duration = Duration::from_secs(3);
/// How often (at most) the janitor looks at entries in use (their expiry starts when
/// they end).
const RECHECK: Duration = Duration::from_secs(60);

/// Which kept mount a step may take: a hash of the file version it opened, the part of
/// the file mounted, the driver and, for squashfuse (served by the user's own process),
/// the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key(String);

/// How the image is mounted, as far as the key is concerned.
#[derive(Serialize)]
pub(crate) struct MountKind<'a> {
    pub(crate) driver: &'a str,
    pub(crate) options: Option<&'a str>,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    /// The server's user, for squashfuse; None for a kernel mount.
    pub(crate) uid: Option<u32>,
}

impl Key {
    pub(crate) fn new(version: &FileVersion, kind: &MountKind) -> Key {
        use sha2::Digest as _;
        let text = serde_json::json!({ "version": version, "mount": kind }).to_string();
        let hash = sha2::Sha256::digest(text.as_bytes());
        Key(format!("{hash:x}")[..32].to_string())
    }

    /// A key as read back from a folder name or the command line.
    pub fn parse(text: &str) -> Option<Key> {
        (text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Key(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the cache did for a step, for its record and for slurmstepd's part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The step took a kept mount.
    Hit,
    /// The step mounted the image and kept its mount for later steps.
    Kept,
    /// The step mounted the image for itself only (another step is keeping it, or it
    /// is larger than the cache may hold).
    NotKept,
    /// A kept squashfuse mount whose server is gone: dropped, and the step mounted afresh.
    Broken,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Kept => "kept",
            Outcome::NotKept => "not kept",
            Outcome::Broken => "broken",
        }
    }
}

/// What the setup helper tells slurmstepd about the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheNote {
    pub key: Key,
    pub outcome: Outcome,
    pub version: FileVersion,
    /// Why the cache could not serve or keep this image (outcome `not kept`), for the
    /// site's log: the step itself went on with a mount of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl CacheNote {
    /// The line for the site's log when the cache could not serve or keep `image`.
    pub fn problem_line(&self, image: &Path) -> Option<String> {
        self.problem.as_ref().map(|problem| {
            format!(
                "image {}: not kept warm on this node ({problem}); each step mounts it afresh until this is fixed (ferry doctor checks the image cache)",
                image.display()
            )
        })
    }
}

/// The cache as the setup helper sees it: the folder and the host's namespace, opened
/// before it makes its own namespace (the kept namespaces' files are bind mounts in
/// the host's, which a new namespace does not copy).
pub(crate) struct NodeCache {
    dir: OwnedFd,
    host: OwnedFd,
    max_bytes: u64,
    /// The shared lock on the entry this step uses: held until slurmstepd holds its own.
    held: Option<OwnedFd>,
}

impl NodeCache {
    /// The cache, when the site keeps images. Err: why it cannot be used (the folder
    /// is not root's alone, say), for the site's log.
    pub(crate) fn open(policy: &CachePolicy) -> Result<Option<NodeCache>, String> {
        if !policy.enabled() {
            return Ok(None);
        }
        let dir = open_cache_dir(true).map_err(|e| format!("opening {CACHE_DIR}: {e}"))?;
        let host = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)
            .map_err(|e| format!("opening the host's namespace: {e}"))?;
        Ok(Some(NodeCache {
            dir,
            host,
            max_bytes: policy.max_bytes,
            held: None,
        }))
    }

    /// Mounts at `target` the kept mount for `key`, if there is one that answers.
    pub(crate) fn take(&mut self, key: &Key, target: &Path, fuse: bool) -> Result<Taken, Trouble> {
        let Ok(lock) = self.open_in(key, LOCK_FILE, libc::O_RDONLY) else {
            return Ok(Taken::Missing);
        };
        if !sys::try_lock(lock.as_fd(), false).map_err(failed("locking its entry"))? {
            return Ok(Taken::Missing); // being dropped
        }
        let Ok(ns) = self.open_in(key, NS_FILE, libc::O_RDONLY) else {
            return Ok(Taken::Missing);
        };
        if !sys::is_nsfs(ns.as_fd()) {
            return Ok(Taken::Missing); // still being made by another step
        }
        let own = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)
            .map_err(failed("opening the step's namespace"))?;
        sys::setns_mount(ns.as_fd()).map_err(failed("entering the kept namespace"))?;
        let cloned = sys::clone_mount(Path::new("/"));
        // Back home before anything else: the helper must not go on in the kept namespace.
        sys::setns_mount(own.as_fd()).map_err(Trouble::Stranded)?;
        let cloned = cloned.map_err(failed("copying the kept mount"))?;
        // First: a FUSE mount whose server is gone answers nothing, not even what it is.
        if fuse && !sys::file_system_answers(cloned.as_fd()) {
            return Ok(Taken::Broken);
        }
        if sys::is_fuse(cloned.as_fd()) != fuse {
            return Ok(Taken::Missing);
        }
        sys::attach_mount(cloned.as_fd(), target).map_err(failed("attaching the kept mount"))?;
        self.held = Some(lock);
        Ok(Taken::Mounted)
    }

    /// Keeps the mount at `target` (the image just mounted, `size` bytes) under `key`:
    /// a namespace of its own whose root is that mount, named in the host's namespace.
    /// False when it is not kept (another step is keeping the same, or it is too big).
    pub(crate) fn keep(&mut self, key: &Key, target: &Path, size: u64) -> Result<bool, Trouble> {
        if size > self.max_bytes {
            return Ok(false);
        }
        match sys::mkdirat(self.dir.as_fd(), OsStr::new(key.as_str()), 0o700) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(false),
            other => other.map_err(failed("making its entry"))?,
        }
        let made = self.make_entry(key, target);
        if !matches!(made, Ok(true)) {
            let _ = remove_entry_files(&self.entry_path(key));
        }
        made
    }

    fn make_entry(&mut self, key: &Key, target: &Path) -> Result<bool, Trouble> {
        let me = std::process::id();
        let owner = format!("{me} {}\n", sys::process_start_time(me).unwrap_or(0));
        let making = failed("making its entry");
        self.create_in(key, OWNER_FILE)
            .and_then(|fd| io::Write::write_all(&mut File::from(fd), owner.as_bytes()))
            .map_err(&making)?;
        let lock = self.create_in(key, LOCK_FILE).map_err(&making)?;
        sys::try_lock(lock.as_fd(), false).map_err(&making)?;
        drop(self.create_in(key, NS_FILE).map_err(&making)?);
        let keeper =
            Keeper::start(target, self.host.as_fd()).map_err(failed("making its namespace"))?;
        let ns_file = self.entry_path(key).join(NS_FILE);
        let own = sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)
            .map_err(failed("opening the step's namespace"))?;
        // Only in the host's namespace can the namespace file be bound where it stays.
        sys::setns_mount(self.host.as_fd()).map_err(failed("entering the host's namespace"))?;
        let bound = sys::mount_bind(&keeper.namespace_file(), &ns_file, false);
        sys::setns_mount(own.as_fd()).map_err(Trouble::Stranded)?;
        drop(keeper);
        bound.map_err(failed(&format!(
            "binding its namespace at {}",
            ns_file.display()
        )))?;
        let _ = sys::unlinkat(
            self.entry_dir(key).map_err(&making)?.as_fd(),
            OsStr::new(OWNER_FILE),
            false,
        );
        self.held = Some(lock);
        Ok(true)
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        Path::new(CACHE_DIR).join(key.as_str())
    }

    fn entry_dir(&self, key: &Key) -> io::Result<OwnedFd> {
        sys::openat(
            Some(self.dir.as_fd()),
            OsStr::new(key.as_str()),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
    }

    fn open_in(&self, key: &Key, name: &str, flags: libc::c_int) -> io::Result<OwnedFd> {
        let dir = self.entry_dir(key)?;
        sys::openat(
            Some(dir.as_fd()),
            OsStr::new(name),
            flags | libc::O_NOFOLLOW,
            0,
        )
    }

    fn create_in(&self, key: &Key, name: &str) -> io::Result<OwnedFd> {
        let dir = self.entry_dir(key)?;
        sys::openat(
            Some(dir.as_fd()),
            OsStr::new(name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )
    }
}

/// Why the cache could not serve or keep a step's image. The step goes on with a mount of
/// its own, unless the helper could not return to its own namespace.
#[derive(Debug)]
pub(crate) enum Trouble {
    /// What failed and why, for the site's log.
    Failed(String),
    /// The helper is stranded in another namespace: the step must fail.
    Stranded(io::Error),
}

fn failed(what: &str) -> impl Fn(io::Error) -> Trouble + '_ {
    move |e| Trouble::Failed(format!("{what}: {e}"))
}

/// What `NodeCache::take` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    Mounted,
    Missing,
    Broken,
}

/// A child of the setup helper in a namespace of its own whose root is the image
/// mount, alive until the helper has bound its namespace file.
struct Keeper {
    pid: nix::unistd::Pid,
    /// Closed to let the child exit.
    release: Option<OwnedFd>,
}

impl Keeper {
    /// Starts the child, whose namespace the host's namespace `host` can then bind.
    fn start(image_mount: &Path, host: BorrowedFd<'_>) -> io::Result<Keeper> {
        let (ready_read, ready_write) = sys::pipe()?;
        let (release_read, release_write) = sys::pipe()?;
        let helper = nix::unistd::getpid();
        match sys::fork()? {
            sys::Forked::Child => {
                drop(ready_read);
                drop(release_write);
                let made = sys::tie_to_parent(helper)
                    .and_then(|_| unshare_bindable_from(host))
                    .and_then(|_| sys::open_path(image_mount, libc::O_PATH | libc::O_DIRECTORY))
                    .and_then(|root| sys::pivot_into(root.as_fd()));
                let answer = match &made {
                    Ok(()) => READY.to_string(),
                    Err(e) => e.to_string(),
                };
                let _ = io::Write::write_all(&mut File::from(ready_write), answer.as_bytes());
                if made.is_ok() {
                    let mut byte = [0u8; 1];
                    let _ = io::Read::read(&mut File::from(release_read), &mut byte);
                }
                sys::exit_now(0)
            }
            sys::Forked::Parent(pid) => {
                drop(ready_write);
                drop(release_read);
                let keeper = Keeper {
                    pid,
                    release: Some(release_write),
                };
                let mut answer = String::new();
                io::Read::read_to_string(
                    &mut io::Read::take(File::from(ready_read), 512),
                    &mut answer,
                )?;
                match answer.as_str() {
                    READY => Ok(keeper),
                    "" => Err(io::Error::other("its process ended without a word")),
                    why => Err(io::Error::other(why.to_string())),
                }
            }
        }
    }

    fn namespace_file(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.pid))
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.release.take());
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// What the keeper writes once its namespace is made.
const READY: &str = "ready";

/// Gives this process a mount namespace of its own that `host` may bind. The kernel
/// refuses (EINVAL, taking it for a loop) to bind the file of a namespace whose id is
/// not above the binder's. Since Linux 6.18 each CPU hands out namespace ids from a
/// batch of its own, so a namespace made later can have a smaller id than `host`'s when
/// `host` is not the node's first namespace (slurmd in a container, our Slurm 24.11
/// test). A CPU that has used up its batch takes the next one above every id handed
/// out so far: on this CPU, draw ids (UTS namespaces, ~3 µs each) until ours is above.
fn unshare_bindable_from(host: BorrowedFd<'_>) -> io::Result<()> {
    sys::unshare_mount_namespace()?;
    let Some(host_id) = sys::mount_namespace_id(host) else {
        return Ok(()); // before Linux 6.8: one global counter, always in order
    };
    let ours = || {
        sys::open_path(Path::new("/proc/self/ns/mnt"), libc::O_RDONLY)
            .map(|ns| sys::mount_namespace_id(ns.as_fd()).unwrap_or(u64::MAX))
    };
    if ours()? > host_id {
        return Ok(());
    }
    sys::stay_on_this_cpu()?;
    // A batch is 4096 ids (linux/cookie.h): 32 rounds of 256 pass two.
    for _ in 0..32 {
        sys::draw_namespace_ids(256)?;
        sys::unshare_mount_namespace()?;
        if ours()? > host_id {
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "the kernel numbers new mount namespaces below the host's ({host_id})"
    )))
}

/// Opens the cache folder (making it, and /run/ferry, when `create`), refusing one that
/// is not root's alone. Making it, it also makes it a private mount (`own_private_mount`).
fn open_cache_dir(create: bool) -> io::Result<OwnedFd> {
    let run = sys::open_path(Path::new("/run"), libc::O_PATH | libc::O_DIRECTORY)?;
    let ferry = open_root_dir(run.as_fd(), "ferry", create)?;
    let dir = open_root_dir(ferry.as_fd(), "image-cache", create)?;
    if !create {
        return Ok(dir);
    }
    own_private_mount(ferry.as_fd())?;
    // Opened again: the descriptor from before the bind names the folder beneath it.
    open_root_dir(ferry.as_fd(), "image-cache", false)
}

/// Opens (and when `create`, makes) `name` in `parent`: /run/ferry (0755) or a folder
/// of ours in it (0700), each refused unless root's and closed to others.
pub(crate) fn open_root_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    create: bool,
) -> io::Result<OwnedFd> {
    let cache = name != "ferry";
    if create {
        match sys::mkdirat(parent, OsStr::new(name), if cache { 0o700 } else { 0o755 }) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
            _ => {}
        }
    }
    let dir = sys::openat(
        Some(parent),
        OsStr::new(name),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    let st = sys::fstat(dir.as_fd())?;
    let writable_by_others = st.st_mode & 0o022 != 0;
    let readable_by_others = cache && st.st_mode & 0o077 != 0;
    if st.st_uid != 0 || writable_by_others || readable_by_others {
        return Err(io::Error::other(format!(
            "/run/{} must be root's and closed to others",
            if cache {
                format!("ferry/{name}")
            } else {
                "ferry".into()
            }
        )));
    }
    Ok(dir)
}

/// Makes the cache folder a mount of its own (bound onto itself, once) with private
/// propagation. The kernel refuses (EINVAL) to bind a mount namespace's file below a
/// mount that propagates to other namespaces, lest namespaces hold each other alive;
/// on a systemd node / is shared, and every step's namespace receives from it.
fn own_private_mount(ferry: BorrowedFd<'_>) -> io::Result<()> {
    let dir = sys::openat(
        Some(ferry),
        OsStr::new("image-cache"),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )?;
    // One helper at a time, or two could each bind the folder and stack two mounts.
    sys::lock_exclusive(dir.as_fd())?;
    // Looked at again under the lock: another helper may have bound it meanwhile.
    let now = open_root_dir(ferry, "image-cache", false)?;
    let path = Path::new(CACHE_DIR);
    if sys::mount_id(now.as_fd())? == sys::mount_id(ferry)? {
        // Entries kept before the folder had a mount of its own (a version before this
        // one) would be hidden beneath it, never to be dropped: drop them first.
        for entry in std::fs::read_dir(path)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = sys::unmount_detached(&entry.path().join(NS_FILE));
                let _ = remove_entry_files(&entry.path());
            }
        }
        sys::mount_bind(path, path, false)?;
    }
    sys::make_private(path)
}

// ---------------------------------------------------------------------------
// slurmstepd's part, in the host's namespace.

/// What slurmstepd keeps while its step uses a cached entry: the shared lock. When the
/// step ends, the lock file's mtime says so.
#[derive(Debug)]
pub struct InUse {
    lock: File,
}

impl InUse {
    /// Takes the shared lock on `key`'s entry (the helper still holds its own, so the
    /// entry cannot be dropped in between).
    pub fn hold(key: &Key) -> Option<InUse> {
        let lock = File::open(Path::new(CACHE_DIR).join(key.as_str()).join(LOCK_FILE)).ok()?;
        let held = sys::try_lock(lock.as_fd(), false)
            .ok()?
            .then_some(InUse { lock })?;
        // A caller that never gets to `release` (ferry run execs) counts from here.
        held.touch();
        Some(held)
    }

    /// The step ends: its entry's idle time starts now.
    pub fn release(self) {
        self.touch();
    }

    fn touch(&self) {
        let _ = self
            .lock
            .set_times(std::fs::FileTimes::new().set_modified(SystemTime::now()));
    }
}

/// The process serving a kept squashfuse mount, as recorded when it was kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub pid: u32,
    pub start_time: u64,
}

impl Server {
    pub fn of(pid: u32) -> Option<Server> {
        Some(Server {
            pid,
            start_time: sys::process_start_time(pid)?,
        })
    }

    fn alive(&self) -> bool {
        sys::process_start_time(self.pid) == Some(self.start_time)
    }
}

/// What `ferry cache list` shows of an entry, written when it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub image: PathBuf,
    pub user: String,
    pub uid: u32,
    /// `kernel` or `fuse`.
    pub mount: String,
    pub size: u64,
    pub version: FileVersion,
    pub kept_unix: u64,
    pub server: Option<Server>,
}

/// Writes `key`'s record (slurmstepd, right after the helper kept the mount).
pub fn write_record(key: &Key, record: &Record) -> io::Result<()> {
    let dir = Path::new(CACHE_DIR).join(key.as_str());
    let text = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let partial = dir.join(".entry.json.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, dir.join(RECORD_FILE))
}

/// A kept mount as found on the node.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: Key,
    pub record: Option<Record>,
    /// Its namespace is in place (else: being made, or left half-made).
    pub complete: bool,
    /// A step uses it now.
    pub in_use: bool,
    /// When the last step using it ended (or it was kept).
    pub idle_since: SystemTime,
}

impl Entry {
    fn path(&self) -> PathBuf {
        Path::new(CACHE_DIR).join(self.key.as_str())
    }

    pub fn size(&self) -> u64 {
        self.record.as_ref().map_or(0, |r| r.size)
    }

    /// A kept squashfuse mount whose server is gone serves nothing.
    pub fn broken(&self) -> bool {
        self.record
            .as_ref()
            .and_then(|r| r.server.as_ref())
            .is_some_and(|s| !s.alive())
    }

    fn idle(&self, now: SystemTime) -> Duration {
        now.duration_since(self.idle_since).unwrap_or_default()
    }
}

/// Every entry of the node's cache (none when there is no cache folder).
pub fn list() -> io::Result<Vec<Entry>> {
    let dir = match std::fs::read_dir(CACHE_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for item in dir.flatten() {
        let Some(key) = item.file_name().to_str().and_then(Key::parse) else {
            continue;
        };
        let path = item.path();
        let complete = File::open(path.join(NS_FILE)).is_ok_and(|f| sys::is_nsfs(f.as_fd()));
        let lock = File::open(path.join(LOCK_FILE)).ok();
        let in_use = lock
            .as_ref()
            .is_some_and(|l| matches!(sys::try_lock(l.as_fd(), true), Ok(false)));
        drop(lock); // closing it ends the test lock
        let idle_since = std::fs::metadata(path.join(LOCK_FILE))
            .or_else(|_| std::fs::metadata(&path))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let record = std::fs::read(path.join(RECORD_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        entries.push(Entry {
            key,
            record,
            complete,
            in_use,
            idle_since,
        });
    }
    entries.sort_by_key(|e| e.idle_since);
    Ok(entries)
}

/// How a drop went.
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Gone: its mount, loop device and server with it.
    Gone,
    /// Gone from the cache; a running step still uses the mount, which goes with it.
    StillInUse,
}

/// Drops an entry: unmounts its namespace file (freeing the namespace, the mount and
/// the loop device), and, when no step uses it, makes sure its squashfuse has ended.
pub fn drop_entry(entry: &Entry) -> io::Result<Dropped> {
    let path = entry.path();
    let lock = File::open(path.join(LOCK_FILE)).ok();
    let unused = match &lock {
        Some(l) => sys::try_lock(l.as_fd(), true)?,
        None => true,
    };
    let ns = path.join(NS_FILE);
    if File::open(&ns).is_ok_and(|f| sys::is_nsfs(f.as_fd())) {
        sys::unmount_detached(&ns)?;
    }
    if let (true, Some(server)) = (unused, entry.record.as_ref().and_then(|r| r.server.clone())) {
        // Its FUSE connection ends with the last mount; a server the user stopped would
        // stay, unaccounted for, so it is killed after a moment.
        let start = std::time::Instant::now();
        while server.alive() && start.elapsed() < SERVER_EXIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        if server.alive() {
            sys::kill_if_started_at(server.pid, server.start_time);
        }
    }
    remove_entry_files(&path)?;
    drop(lock);
    Ok(if unused {
        Dropped::Gone
    } else {
        Dropped::StillInUse
    })
}

/// Drops the entry named `key`, whatever its state (slurmstepd, for a broken one).
pub fn drop_key(key: &Key) -> io::Result<()> {
    if let Some(entry) = list()?.into_iter().find(|e| e.key == *key) {
        drop_entry(&entry)?;
    }
    Ok(())
}

fn remove_entry_files(path: &Path) -> io::Result<()> {
    for name in [
        NS_FILE,
        LOCK_FILE,
        RECORD_FILE,
        OWNER_FILE,
        ".entry.json.partial",
    ] {
        match std::fs::remove_file(path.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether a half-made entry's maker is gone (then nothing will finish it).
fn abandoned(entry: &Entry) -> bool {
    let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE)).unwrap_or_default();
    let mut fields = owner.split_whitespace().map(|n| n.parse::<u64>().ok());
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(pid), Some(start)) => sys::process_start_time(pid as u32) != Some(start),
        // No owner written (yet, or ever): give its maker a while.
        _ => entry.idle(SystemTime::now()) > Duration::from_secs(60),
    }
}

/// The entries to drop now under `policy`, oldest first: expired or broken ones, half-made
/// ones whose maker is gone, then unused ones beyond the limits. Pure, for tests.
pub fn to_drop(entries: &[Entry], policy: &CachePolicy, now: SystemTime) -> Vec<usize> {
    let mut drop = Vec::new();
    let mut kept = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let expired = !e.in_use && (!policy.enabled() || e.idle(now) >= policy.ttl);
        if !e.complete {
            if abandoned(e) {
                drop.push(i);
            }
        } else if expired || e.broken() {
            drop.push(i);
        } else {
            kept.push(i);
        }
    }
    // Over the limits: the longest idle of those no step uses go first.
    let mut count = kept.len();
    let mut bytes: u64 = kept.iter().map(|i| entries[*i].size()).sum();
    let mut by_age: Vec<usize> = kept
        .iter()
        .copied()
        .filter(|i| !entries[*i].in_use)
        .collect();
    by_age.sort_by_key(|i| entries[*i].idle_since);
    for i in by_age {
        if count <= policy.max_images && bytes <= policy.max_bytes {
            break;
        }
        drop.push(i);
        count -= 1;
        bytes -= entries[i].size();
    }
    drop
}

/// Drops what `policy` says is due and tells when to look again (None: nothing left).
pub fn sweep(policy: &CachePolicy) -> io::Result<Option<Duration>> {
    let entries = list()?;
    let now = SystemTime::now();
    let due = to_drop(&entries, policy, now);
    for i in &due {
        let _ = drop_entry(&entries[*i]);
    }
    let next = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !due.contains(i))
        .map(|(_, e)| {
            if e.in_use || !e.complete {
                // Its expiry starts when its steps end, which nobody announces.
                RECHECK.min(policy.ttl)
            } else {
                policy.ttl.saturating_sub(e.idle(now))
            }
        })
        .min();
    end_strays();
    Ok(next)
}

/// `ferry cache janitor`: brings the cache within `policy` at once (a step just kept a
/// mount), then expires entries on time until none is left, and exits. One stays on
/// duty at a time (the others exit after their first sweep). Out of the job's cgroups,
/// so the step that started it ending does not end it.
pub fn run_janitor(policy: &CachePolicy) -> io::Result<()> {
    leave_job_cgroups(std::process::id());
    let dir = open_cache_dir(false)?;
    sweep(policy)?;
    let lock = sys::openat(
        Some(dir.as_fd()),
        OsStr::new(JANITOR_LOCK),
        libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW,
        0o600,
    )?;
    if !sys::try_lock(lock.as_fd(), true)? {
        return Ok(()); // another janitor is on duty
    }
    // Who is on duty, for `ferry cache drop --all`, which ends it too.
    let me = std::process::id();
    let mut file = File::from(lock);
    file.set_len(0)?;
    io::Write::write_all(
        &mut file,
        format!("{me} {}\n", sys::process_start_time(me).unwrap_or(0)).as_bytes(),
    )?;
    loop {
        match sweep(policy)? {
            None => return Ok(()),
            Some(wait) => std::thread::sleep(wait.clamp(Duration::from_secs(1), RECHECK)),
        }
    }
}

/// Ends the janitor on duty, if any (`ferry cache drop --all`: nothing of the cache
/// left running).
pub fn stop_janitor() {
    let path = Path::new(CACHE_DIR).join(JANITOR_LOCK);
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut fields = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    if let (Some(Some(pid)), Some(Some(start))) = (fields.next(), fields.next()) {
        sys::kill_if_started_at(pid as u32, start);
    }
}

/// Whether a janitor is on duty now.
pub fn janitor_running() -> bool {
    File::open(Path::new(CACHE_DIR).join(JANITOR_LOCK))
        .is_ok_and(|l| matches!(sys::try_lock(l.as_fd(), true), Ok(false)))
}

/// Starts `ferry cache janitor` with `policy` (slurmstepd, after its step kept a mount).
pub fn start_janitor(ferry: &Path, policy: &CachePolicy) -> io::Result<()> {
    let argv: Vec<CString> = [
        ferry.as_os_str().to_string_lossy().into_owned(),
        "cache".into(),
        "janitor".into(),
        "--ttl".into(),
        policy.ttl.as_secs().to_string(),
        "--max-images".into(),
        policy.max_images.to_string(),
        "--max-bytes".into(),
        policy.max_bytes.to_string(),
    ]
    .into_iter()
    .map(|a| CString::new(a).map_err(io::Error::other))
    .collect::<io::Result<_>>()?;
    sys::spawn_detached(&argv)
}

/// The cgroup hierarchies mounted here: each one's mount point, and whether it is
/// cgroup v1's cpuset.
fn cgroup_hierarchies() -> Vec<(PathBuf, bool)> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let cpuset = right.nth(1)?.split(',').any(|o| o == "cpuset");
            Some((PathBuf::from(left.split_whitespace().nth(4)?), cpuset))
        })
        .collect()
}

/// Moves `pid` into `CACHE_CGROUP` of every cgroup hierarchy mounted here (made when
/// missing; its root where that fails), out of the job's: Slurm's process tracking
/// kills a step's cgroup at its end, and its accounting would bill the job.
pub fn leave_job_cgroups(pid: u32) {
    move_to_cgroup(pid, CACHE_CGROUP)
}

/// Moves `pid` into the cgroup `group` (at the root of every hierarchy), out of the job's.
pub(crate) fn move_to_cgroup(pid: u32, group: &str) {
    for (root, cpuset) in cgroup_hierarchies() {
        let ours = root.join(group);
        let _ = std::fs::create_dir(&ours);
        if cpuset {
            // A new cpuset cgroup takes no process until it has CPUs and memory nodes.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let empty =
                    std::fs::read_to_string(ours.join(file)).is_ok_and(|t| t.trim().is_empty());
                if empty {
                    if let Ok(all) = std::fs::read_to_string(root.join(file)) {
                        let _ = std::fs::write(ours.join(file), all.trim());
                    }
                }
            }
        }
        let pid = pid.to_string();
        if std::fs::write(ours.join("cgroup.procs"), &pid).is_err() {
            let _ = std::fs::write(root.join("cgroup.procs"), &pid);
        }
    }
}

/// Ends every process in the cache's cgroup that is neither root's (the janitors) nor
/// the kept squashfuse of an entry that exists now. Only those belong there: a user
/// who took over their own kept server (it runs as them: ptrace, or a crafted image)
/// and forked would otherwise keep a process on the node that no job accounts for and
/// that would outlive every entry. Children stay in their parent's cgroup, so they are
/// all found there. Returns how many were killed.
pub fn end_strays() -> usize {
    let mut killed = 0;
    for _ in 0..5 {
        // Who is in the cgroup first, then the records: a server is recorded before it
        // is moved in, so one found there is in a list read afterwards.
        let mut present = Vec::new();
        for (root, _) in cgroup_hierarchies() {
            let procs = std::fs::read_to_string(root.join(CACHE_CGROUP).join("cgroup.procs"))
                .unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                if let Some(start_time) = sys::process_start_time(pid) {
                    present.push(Server { pid, start_time });
                }
            }
        }
        let servers: Vec<Server> = list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| e.record?.server)
            .collect();
        let mut strays: Vec<Server> = present
            .into_iter()
            .filter(|p| !servers.contains(p) && process_uid(p.pid).is_some_and(|u| u != 0))
            .collect();
        strays.sort_by_key(|s| s.pid);
        strays.dedup();
        if strays.is_empty() {
            break;
        }
        for stray in strays {
            if sys::kill_if_started_at(stray.pid, stray.start_time) {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    killed
}

/// The real uid of process `pid`.
fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The node's memory (MemTotal), which sizes the cache by default.
pub fn node_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(ino: u64) -> FileVersion {
        FileVersion {
            dev: 2049,
            ino,
            size: 4096,
            mtime_ns: 1,
            ctime_ns: 2,
        }
    }

    fn kind(uid: Option<u32>) -> MountKind<'static> {
        MountKind {
            driver: if uid.is_some() { "fuse" } else { "squashfs" },
            options: None,
            offset: 0,
            size: 0,
            uid,
        }
    }

    #[test]
    fn the_key_changes_with_every_part_of_the_version_and_the_user_of_a_fuse_mount() {
        let base = Key::new(&version(7), &kind(None));
        assert_eq!(base, Key::new(&version(7), &kind(None)));
        assert_eq!(Key::parse(base.as_str()), Some(base.clone()));
        let mut changed = vec![Key::new(&version(8), &kind(None))];
        for edit in [
            |v: &mut FileVersion| v.dev += 1,
            |v: &mut FileVersion| v.size += 1,
            |v: &mut FileVersion| v.mtime_ns += 1,
            |v: &mut FileVersion| v.ctime_ns += 1,
        ] {
            let mut v = version(7);
            edit(&mut v);
            changed.push(Key::new(&v, &kind(None)));
        }
        changed.push(Key::new(&version(7), &kind(Some(1001))));
        changed.push(Key::new(
            &version(7),
            &MountKind {
                offset: 4096,
                ..kind(None)
            },
        ));
        for other in &changed {
            assert_ne!(*other, base);
        }
        assert_ne!(
            Key::new(&version(7), &kind(Some(1001))),
            Key::new(&version(7), &kind(Some(1002)))
        );
        for bad in ["", "../etc", &"A".repeat(32), &"0".repeat(31)] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }

    fn entry(n: u64, idle: u64, size: u64, in_use: bool, now: SystemTime) -> Entry {
        Entry {
            key: Key(format!("{n:032x}")),
            record: Some(Record {
                image: format!("/images/{n}.sqfs").into(),
                user: "alice".into(),
                uid: 1001,
                mount: "kernel".into(),
                size,
                version: version(n),
                kept_unix: 0,
                server: None,
            }),
            complete: true,
            in_use,
            idle_since: now - Duration::from_secs(idle),
        }
    }

    #[test]
    fn expired_entries_go_and_limits_evict_the_longest_idle_unused_first() {
        let now = SystemTime::now();
        let policy = CachePolicy {
            ttl: Duration::from_secs(600),
            max_images: 2,
            max_bytes: 1000,
        };
        let entries = vec![
            entry(1, 900, 10, false, now), // expired
            entry(2, 900, 10, true, now),  // in use: stays however old
            entry(3, 300, 10, false, now),
            entry(4, 100, 10, false, now),
        ];
        // 3 left for 2 places: the longest idle unused (3) goes.
        assert_eq!(to_drop(&entries, &policy, now), vec![0, 2]);
        let big = vec![entry(1, 10, 600, false, now), entry(2, 5, 600, false, now)];
        assert_eq!(to_drop(&big, &policy, now), vec![0]);
        // Turned off: everything unused goes.
        assert_eq!(to_drop(&entries, &CachePolicy::OFF, now), vec![0, 2, 3]);
    }

    #[test]
    fn a_half_made_entry_goes_only_once_its_maker_is_gone() {
        let now = SystemTime::now();
        let policy = CachePolicy {
            ttl: Duration::from_secs(600),
            max_images: 8,
            max_bytes: 1 << 30,
        };
        let mut fresh = entry(1, 0, 10, false, now);
        fresh.complete = false;
        let mut stale = entry(2, 120, 10, false, now);
        stale.complete = false;
        // Neither has an owner file to read (no such folder here): judged by age.
        assert_eq!(to_drop(&[fresh, stale], &policy, now), vec![1]);
    }
}
