//! A content-addressed store of SquashFS images, kept without root: the user's own
//! (`Store::user_default`, or a folder the site names) and read-only site stores that
//! admins fill. Pulls put images here; `ferry images` lists and tidies it; a job finds
//! an image by its manifest digest (a reference resolved at submission) or by the
//! SquashFS file's own SHA-256 (`--container=sha256:HEX`).
//!
//! Layout under ROOT (every folder 0755: the owner writes, everyone reads):
//!
//! ```text
//! ROOT/images/sha256-HEX.sqfs       an image, named by the SHA-256 of its bytes (0444)
//! ROOT/entries/sha256-HEX.json      one per manifest digest: its references, the
//!                                   manifest digests, the image's digest and size,
//!                                   when it was stored and last used (unix seconds)
//! ROOT/staging/NAME/                a pull's work in progress (the same file system as
//!                                   images/, so the finished file is renamed in)
//! ROOT/locks/sha256-HEX.lock        flock per manifest digest: one pull at a time
//! ```
//!
//! Readers never see half an entry: an entry is written to a hidden temporary name in
//! `entries/` and renamed over the old one, and its image is in place before. Files in
//! the store are opened with `O_NOFOLLOW` and the store's folders must not be symlinks,
//! so a link planted in the store never leads a reader out of it; an entry's image path
//! is derived from its digest, never read from the entry. A read-only store
//! (`open_read_only`) is never written, not even `last_used`.

use crate::digest::{self, Digest};
use crate::oci::remove_any;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A staging folder or an unnamed image older than this is left over from a pull that
/// was killed: `prune` removes it. Younger ones may belong to a pull still running.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// An entry is a few hundred bytes; a bigger file is not one of ours.
const MAX_ENTRY_BYTES: u64 = 1 << 20;

const IMAGES: &str = "images";
const ENTRIES: &str = "entries";
const STAGING: &str = "staging";
const LOCKS: &str = "locks";

/// What went wrong in a store; each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image store {}: cannot create it ({source}); name another folder with --store", root.display())]
    Create { root: PathBuf, source: io::Error },
    #[error("image store {}: not found", root.display())]
    NotFound { root: PathBuf },
    #[error("image store {}: a symlink or not a folder; the store's folders must be real folders (move it away)", path.display())]
    NotAFolder { path: PathBuf },
    #[error("image store {}: read-only (a site store); it cannot be changed from here", root.display())]
    ReadOnly { root: PathBuf },
    #[error("{}: {what} ({source})", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image store entry {}: {reason}; delete that file (or ferry images rm the manifest digest)", path.display())]
    BrokenEntry { path: PathBuf, reason: String },
    #[error("image store image {}: {reason}; the store was changed behind ferry's back: remove the entry (ferry images rm {image}) and pull again", path.display())]
    BrokenImage {
        path: PathBuf,
        image: Digest,
        reason: String,
    },
    #[error("{}: not a regular file; give the SquashFS file to store", path.display())]
    NotAFile { path: PathBuf },
    /// A caller's mistake: `insert` under the lock of another manifest.
    #[error("the lock held is for {held}, not for {wanted}")]
    WrongLock { held: Digest, wanted: Digest },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// One stored image and what it was pulled as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The references it was pulled as (`docker://python:3.12`), each once.
    pub reference: Vec<String>,
    /// What the reference resolved to: the manifest, or the index for a multi-platform image.
    pub manifest_digest: Digest,
    /// The platform's manifest when `manifest_digest` names an index.
    pub platform_manifest_digest: Option<Digest>,
    /// SHA-256 of the SquashFS file.
    pub image_digest: Digest,
    /// `ROOT/images/sha256-HEX.sqfs`, derived from `image_digest`.
    pub path: PathBuf,
    pub size: u64,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds.
    pub last_used: u64,
}

/// An entry as its JSON file holds it (the path is not stored: it follows from the digest).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    reference: Vec<String>,
    manifest_digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform_manifest_digest: Option<Digest>,
    image_digest: Digest,
    size: u64,
    created: u64,
    last_used: u64,
}

/// An exclusive lock on one manifest digest's entry, released on drop.
pub struct EntryLock {
    manifest: Digest,
    _lock: Flock<File>,
}

impl EntryLock {
    pub fn manifest(&self) -> &Digest {
        &self.manifest
    }
}

/// A fresh folder under `ROOT/staging`, removed with everything in it on drop.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = remove_any(&self.path);
    }
}

pub struct Store {
    root: PathBuf,
    writable: bool,
}

impl Store {
    /// The user's store: `$XDG_CACHE_HOME/ferry/images`, else `~/.cache/ferry/images`.
    pub fn user_default() -> Option<PathBuf> {
        let absolute = |v: std::ffi::OsString| {
            let p = PathBuf::from(v);
            p.is_absolute().then_some(p)
        };
        if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
            return Some(cache.join("ferry/images"));
        }
        let home = std::env::var_os("HOME").and_then(absolute).or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
                .filter(|d| d.is_absolute())
        })?;
        Some(home.join(".cache/ferry/images"))
    }

    /// Opens a store to read and write, creating its folders (0755) as needed.
    pub fn open(root: &Path) -> Result<Store> {
        let create = |path: &Path| -> Result<()> {
            match fs::DirBuilder::new().mode(0o755).create(path) {
                Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("cannot set its mode", path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(source) => Err(StoreError::Create {
                    root: path.to_path_buf(),
                    source,
                }),
            }
        };
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| StoreError::Create {
                    root: root.to_path_buf(),
                    source,
                })?;
        }
        create(root)?;
        // The root itself may be a link (a cache folder moved to a bigger disk); what
        // the store makes inside must be its own.
        if !root.is_dir() {
            return Err(StoreError::NotAFolder {
                path: root.to_path_buf(),
            });
        }
        for sub in [IMAGES, ENTRIES, STAGING, LOCKS] {
            let path = root.join(sub);
            create(&path)?;
            check_folder(&path)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            writable: true,
        })
    }

    /// Opens a site store: nothing is ever written to it.
    pub fn open_read_only(root: &Path) -> Result<Store> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::NotAFolder {
                    path: root.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    root: root.to_path_buf(),
                })
            }
            Err(e) => return Err(io_error("cannot read it", root)(e)),
        }
        for sub in [IMAGES, ENTRIES] {
            let path = root.join(sub);
            if path.symlink_metadata().is_ok() {
                check_folder(&path)?;
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            writable: false,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_read_only(&self) -> bool {
        !self.writable
    }

    /// The entry of this manifest digest whose image is in place, if any.
    pub fn by_manifest(&self, manifest: &Digest) -> Result<Option<Entry>> {
        let Some(entry) = self.load(&self.entry_path(manifest))? else {
            return Ok(None);
        };
        Ok(self.check_image(&entry)?.then_some(entry))
    }

    /// An entry whose SquashFS file has this SHA-256, with the file in place: a regular
    /// file of the size the entry records.
    pub fn by_image(&self, image: &Digest) -> Result<Option<Entry>> {
        let (entries, _) = self.scan()?;
        for entry in entries {
            if entry.image_digest == *image && self.check_image(&entry)? {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Waits for, then holds, the lock of one manifest digest's entry: two pulls of the
    /// same image run one after the other, and the second finds the first's entry.
    pub fn lock(&self, manifest: &Digest) -> Result<EntryLock> {
        self.lock_with(manifest, FlockArg::LockExclusive)
            .map(|l| l.expect("a blocking lock is taken or fails"))
    }

    fn lock_with(&self, manifest: &Digest, how: FlockArg) -> Result<Option<EntryLock>> {
        self.require_writable()?;
        let path = self
            .root
            .join(LOCKS)
            .join(format!("sha256-{}.lock", manifest.hex()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error("cannot open the lock file", &path))?;
        match Flock::lock(file, how) {
            Ok(lock) => Ok(Some(EntryLock {
                manifest: manifest.clone(),
                _lock: lock,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io_error("cannot lock it", &path)(errno.into())),
        }
    }

    /// A fresh folder for a pull's work, removed when the `Staging` is dropped.
    pub fn staging(&self) -> Result<Staging> {
        self.require_writable()?;
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = self.root.join(STAGING).join(format!(
            "{}-{}-{nanos:08x}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_error("cannot create the staging folder", &path))?;
        Ok(Staging { path })
    }

    /// Stores the SquashFS file `sqfs` (moved into the store, or removed when the store
    /// holds those bytes already) as the image of `manifest`, pulled as `reference`.
    /// An existing entry of the manifest gains the reference and the new image.
    pub fn insert(
        &self,
        lock: &EntryLock,
        reference: &str,
        manifest: &Digest,
        platform_manifest: Option<&Digest>,
        sqfs: &Path,
    ) -> Result<Entry> {
        self.require_writable()?;
        if lock.manifest != *manifest {
            return Err(StoreError::WrongLock {
                held: lock.manifest.clone(),
                wanted: manifest.clone(),
            });
        }
        let file = open_regular(sqfs)?;
        let size = file
            .metadata()
            .map_err(io_error("cannot read its size", sqfs))?
            .len();
        let image =
            digest::hash_file(&file, &mut |_| {}).map_err(io_error("cannot read it", sqfs))?;
        drop(file);
        let target = self.image_path(&image);
        let reuse = match fs::symlink_metadata(&target) {
            Ok(m) => m.is_file() && m.len() == size,
            Err(_) => false,
        };
        if reuse {
            let _ = fs::remove_file(sqfs);
        } else {
            fs::set_permissions(sqfs, fs::Permissions::from_mode(0o444))
                .map_err(io_error("cannot set its mode", sqfs))?;
            fs::rename(sqfs, &target)
                .map_err(io_error("cannot move it into the store", &target))?;
        }

        let now = now();
        let entry_path = self.entry_path(manifest);
        // A broken entry of this manifest is replaced by the new one.
        let old = self.load(&entry_path).ok().flatten();
        let mut references = old
            .as_ref()
            .map(|e| e.reference.clone())
            .unwrap_or_default();
        if !references.iter().any(|r| r == reference) {
            references.push(reference.to_string());
        }
        let record = Record {
            reference: references,
            manifest_digest: manifest.clone(),
            platform_manifest_digest: platform_manifest.cloned().or_else(|| {
                old.as_ref()
                    .and_then(|e| e.platform_manifest_digest.clone())
            }),
            image_digest: image,
            size,
            created: old.as_ref().map_or(now, |e| e.created),
            last_used: now,
        };
        self.write_record(&record)?;
        Ok(self.entry_of(record))
    }

    /// Notes that the entry was used now; best effort, and nothing on a read-only store
    /// or while a pull of the same manifest holds its lock.
    pub fn touch(&self, entry: &Entry) {
        if !self.writable {
            return;
        }
        let Ok(Some(_lock)) =
            self.lock_with(&entry.manifest_digest, FlockArg::LockExclusiveNonblock)
        else {
            return;
        };
        let path = self.entry_path(&entry.manifest_digest);
        let Ok(Some(current)) = self.load(&path) else {
            return;
        };
        let mut record = record_of(current);
        record.last_used = now().max(record.last_used);
        let _ = self.write_record(&record);
    }

    /// Every readable entry, sorted by reference; broken ones are left out.
    pub fn list(&self) -> Result<Vec<Entry>> {
        Ok(self.scan()?.0)
    }

    /// Every readable entry, sorted by reference, and what is wrong with each broken
    /// one (unreadable JSON, a missing or changed image), for the caller to report.
    pub fn scan(&self) -> Result<(Vec<Entry>, Vec<StoreError>)> {
        let dir = self.root.join(ENTRIES);
        let children = match fs::read_dir(&dir) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.writable => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(io_error("cannot list the store's entries", &dir)(e)),
        };
        let mut entries = Vec::new();
        let mut broken = Vec::new();
        for child in children {
            let child = child.map_err(io_error("cannot list the store's entries", &dir))?;
            let name = child.file_name();
            let name = name.to_string_lossy();
            // Hidden names are entries being written.
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let loaded = self.load(&child.path()).and_then(|e| match e {
                Some(e) => self.check_image(&e).map(|ok| (e, ok)).map(Some),
                None => Ok(None),
            });
            match loaded {
                Ok(Some((entry, true))) => entries.push(entry),
                Ok(Some((entry, false))) => broken.push(StoreError::BrokenImage {
                    path: entry.path.clone(),
                    image: entry.image_digest.clone(),
                    reason: "missing".into(),
                }),
                Ok(None) => {} // removed meanwhile
                Err(e) => broken.push(e),
            }
        }
        entries.sort_by(|a, b| {
            (&a.reference, a.manifest_digest.hex()).cmp(&(&b.reference, b.manifest_digest.hex()))
        });
        Ok((entries, broken))
    }

    /// Removes the entries that `what` names: a reference as stored, a manifest digest or
    /// an image digest (`sha256:HEX`). An image file goes with its last entry.
    pub fn remove(&self, what: &str) -> Result<Vec<Entry>> {
        self.require_writable()?;
        let digest = Digest::parse(what);
        let (entries, _) = self.scan()?;
        let chosen: Vec<Entry> = entries
            .into_iter()
            .filter(|e| match &digest {
                Some(d) => e.manifest_digest == *d || e.image_digest == *d,
                None => e.reference.iter().any(|r| r == what),
            })
            .collect();
        let mut removed = Vec::new();
        for entry in chosen {
            if self.remove_entry(&entry)? {
                removed.push(entry);
            }
        }
        Ok(removed)
    }

    /// Removes least recently used entries until the images take at most `max_bytes`,
    /// plus image files no entry names and staging folders left by killed pulls (both
    /// once older than `STALE_AFTER`). Returns the entries removed.
    pub fn prune(&self, max_bytes: u64) -> Result<Vec<Entry>> {
        self.require_writable()?;
        self.remove_stale()?;
        let (mut entries, _) = self.scan()?;
        entries.sort_by_key(|e| (e.last_used, e.created));
        let mut removed = Vec::new();
        let mut total = distinct_image_bytes(&entries);
        while total > max_bytes && !entries.is_empty() {
            let oldest = entries.remove(0);
            if self.remove_entry(&oldest)? {
                removed.push(oldest);
            }
            total = distinct_image_bytes(&entries);
        }
        Ok(removed)
    }

    /// Removes one entry under its lock, then its image unless another entry names it.
    /// False when the entry had gone meanwhile.
    fn remove_entry(&self, entry: &Entry) -> Result<bool> {
        let _lock = self.lock(&entry.manifest_digest)?;
        let path = self.entry_path(&entry.manifest_digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("cannot remove it", &path)(e)),
        }
        let (others, _) = self.scan()?;
        if !others.iter().any(|e| e.image_digest == entry.image_digest) {
            match fs::remove_file(&entry.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error("cannot remove it", &entry.path)(e))
                }
                _ => {}
            }
        }
        Ok(true)
    }

    /// Image files no entry names and staging folders, once older than `STALE_AFTER`.
    fn remove_stale(&self) -> Result<()> {
        let (entries, _) = self.scan()?;
        let named: std::collections::HashSet<PathBuf> =
            entries.iter().map(|e| e.path.clone()).collect();
        let images = self.root.join(IMAGES);
        for path in old_children(&images)? {
            if !named.contains(&path) {
                let _ = remove_any(&path);
            }
        }
        for path in old_children(&self.root.join(STAGING))? {
            let _ = remove_any(&path);
        }
        Ok(())
    }

    fn require_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(StoreError::ReadOnly {
                root: self.root.clone(),
            })
        }
    }

    fn entry_path(&self, manifest: &Digest) -> PathBuf {
        self.root
            .join(ENTRIES)
            .join(format!("sha256-{}.json", manifest.hex()))
    }

    fn image_path(&self, image: &Digest) -> PathBuf {
        self.root
            .join(IMAGES)
            .join(format!("sha256-{}.sqfs", image.hex()))
    }

    fn entry_of(&self, record: Record) -> Entry {
        Entry {
            path: self.image_path(&record.image_digest),
            reference: record.reference,
            manifest_digest: record.manifest_digest,
            platform_manifest_digest: record.platform_manifest_digest,
            image_digest: record.image_digest,
            size: record.size,
            created: record.created,
            last_used: record.last_used,
        }
    }

    /// Reads one entry file; None when there is none.
    fn load(&self, path: &Path) -> Result<Option<Entry>> {
        let broken = |reason: String| StoreError::BrokenEntry {
            path: path.to_path_buf(),
            reason,
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(broken("a symlink, not an entry".into()))
            }
            Err(e) => return Err(broken(format!("cannot read it ({e})"))),
        };
        let meta = file
            .metadata()
            .map_err(|e| broken(format!("cannot read it ({e})")))?;
        if !meta.is_file() {
            return Err(broken("not a regular file".into()));
        }
        let mut text = Vec::new();
        file.take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| broken(format!("cannot read it ({e})")))?;
        if text.len() as u64 > MAX_ENTRY_BYTES {
            return Err(broken(format!("larger than {MAX_ENTRY_BYTES} bytes")));
        }
        let record: Record = serde_json::from_slice(&text)
            .map_err(|e| broken(format!("not a valid entry ({e})")))?;
        let expected = format!("sha256-{}.json", record.manifest_digest.hex());
        if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
            return Err(broken(format!(
                "it describes manifest {}, not the one its name says",
                record.manifest_digest
            )));
        }
        Ok(Some(self.entry_of(record)))
    }

    /// True when the entry's image is in place; an error when the file there is not the
    /// one the entry describes (a link, a folder, another size).
    fn check_image(&self, entry: &Entry) -> Result<bool> {
        let broken = |reason: String| StoreError::BrokenImage {
            path: entry.path.clone(),
            image: entry.image_digest.clone(),
            reason,
        };
        let meta = match fs::symlink_metadata(&entry.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(broken(format!("cannot read it ({e})"))),
        };
        if !meta.is_file() {
            return Err(broken("not a regular file".into()));
        }
        if meta.len() != entry.size {
            return Err(broken(format!(
                "{} bytes where the entry records {}",
                meta.len(),
                entry.size
            )));
        }
        Ok(true)
    }

    /// Writes an entry to a hidden temporary name, then renames it over the old one.
    fn write_record(&self, record: &Record) -> Result<()> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let path = self.entry_path(&record.manifest_digest);
        let tmp = self.root.join(ENTRIES).join(format!(
            ".sha256-{}.json.{}-{}.tmp",
            record.manifest_digest.hex(),
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let text = serde_json::to_vec_pretty(record).expect("an entry serializes");
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        written.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error("cannot write the entry", &path)(e)
        })
    }
}

fn record_of(entry: Entry) -> Record {
    Record {
        reference: entry.reference,
        manifest_digest: entry.manifest_digest,
        platform_manifest_digest: entry.platform_manifest_digest,
        image_digest: entry.image_digest,
        size: entry.size,
        created: entry.created,
        last_used: entry.last_used,
    }
}

/// Bytes of the image files the entries name, each file counted once.
fn distinct_image_bytes(entries: &[Entry]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter(|e| seen.insert(e.image_digest.hex().to_string()))
        .map(|e| e.size)
        .sum()
}

/// A store folder must be a real folder, not a link that leads elsewhere.
fn check_folder(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::NotAFolder {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error("cannot read it", path)(e)),
    }
}

/// Opens a file to store, refusing a link or anything but a regular file.
fn open_regular(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => StoreError::NotAFile {
                path: path.to_path_buf(),
            },
            _ => io_error("cannot open it", path)(e),
        })?;
    let meta = file.metadata().map_err(io_error("cannot read it", path))?;
    if !meta.is_file() {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// The children of `dir` last changed longer than `STALE_AFTER` ago.
fn old_children(dir: &Path) -> Result<Vec<PathBuf>> {
    let children = match fs::read_dir(dir) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot list it", dir)(e)),
    };
    let now = SystemTime::now();
    Ok(children
        .flatten()
        .filter(|c| {
            c.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > STALE_AFTER))
        })
        .map(|c| c.path())
        .collect())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
