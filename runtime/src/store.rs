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
        let (entries, _) = self.records()?;
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
    /// An existing entry of the manifest gains the reference and the new image. `sqfs`
    /// must lie on the store's file system (make it in a `staging()` folder): it is
    /// renamed, never copied. The caller holds `lock`, taken before it looked for the
    /// entry, so that a second pull of the manifest waits and then finds this one's.
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
        let (records, mut broken) = self.records()?;
        let mut entries = Vec::new();
        for entry in records {
            match self.check_image(&entry) {
                Ok(true) => entries.push(entry),
                Ok(false) => broken.push(StoreError::BrokenImage {
                    path: entry.path.clone(),
                    image: entry.image_digest.clone(),
                    reason: "missing".into(),
                }),
                Err(e) => broken.push(e),
            }
        }
        Ok((entries, broken))
    }

    /// Every entry whose JSON reads, sorted by reference, whatever the state of its
    /// image, and the errors of those that do not read.
    fn records(&self) -> Result<(Vec<Entry>, Vec<StoreError>)> {
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
            match self.load(&child.path()) {
                Ok(Some(entry)) => entries.push(entry),
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
    /// an image digest (`sha256:HEX`), whatever the state of their images; an entry file
    /// that does not read goes when its manifest digest is named. An image file goes with
    /// its last entry. Never call it while holding an `EntryLock` of this store.
    pub fn remove(&self, what: &str) -> Result<Vec<Entry>> {
        self.require_writable()?;
        let digest = Digest::parse(what);
        if let Some(manifest) = &digest {
            self.remove_unreadable_entry(manifest)?;
        }
        let (entries, _) = self.records()?;
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
    /// plus entries whose image is missing, image files no entry names and staging
    /// folders left by killed pulls (both once older than `STALE_AFTER`). Returns the
    /// entries removed. Never call it while holding an `EntryLock` of this store.
    pub fn prune(&self, max_bytes: u64) -> Result<Vec<Entry>> {
        self.require_writable()?;
        self.remove_stale()?;
        let (records, _) = self.records()?;
        let mut removed = Vec::new();
        let mut entries = Vec::new();
        for entry in records {
            // An entry without its image is of no use (a removal cut short).
            if self.check_image(&entry).is_ok_and(|present| !present) {
                if self.remove_entry(&entry)? {
                    removed.push(entry);
                }
            } else {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|e| (e.last_used, e.created));
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

    /// Deletes the entry file of `manifest` if it does not read as an entry (the fix
    /// `StoreError::BrokenEntry` suggests).
    fn remove_unreadable_entry(&self, manifest: &Digest) -> Result<()> {
        let _lock = self.lock(manifest)?;
        let path = self.entry_path(manifest);
        if matches!(self.load(&path), Err(StoreError::BrokenEntry { .. })) {
            fs::remove_file(&path).map_err(io_error("cannot remove it", &path))?;
        }
        Ok(())
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
        let (others, _) = self.records()?;
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
        let (entries, _) = self.records()?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::os::unix::fs::symlink;

    fn digest_of(text: &str) -> Digest {
        use sha2::{Digest as _, Sha256};
        Digest::parse(&format!("sha256:{:x}", Sha256::digest(text.as_bytes()))).unwrap()
    }

    /// Writes `bytes` as a file in a staging folder of `store` and stores it.
    fn put(store: &Store, reference: &str, manifest: &Digest, bytes: &str) -> Entry {
        let staging = store.staging().unwrap();
        let file = staging.path().join("image.sqfs");
        fs::write(&file, bytes).unwrap();
        let lock = store.lock(manifest).unwrap();
        store
            .insert(&lock, reference, manifest, None, &file)
            .unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn set_last_used(store: &Store, manifest: &Digest, last_used: u64) {
        let entry = store.by_manifest(manifest).unwrap().unwrap();
        let mut record = record_of(entry);
        record.last_used = last_used;
        store.write_record(&record).unwrap();
    }

    fn age(path: &Path, by: Duration) {
        let then = SystemTime::now() - by;
        File::open(path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(then))
            .unwrap();
    }

    #[test]
    fn open_makes_the_layout_with_folders_only_the_owner_writes() {
        let dir = Scratch::new("store-open");
        let root = dir.join("a/b/store");
        Store::open(&root).unwrap();
        assert_eq!(names(&root), ["entries", "images", "locks", "staging"]);
        for sub in ["", "entries", "images", "locks", "staging"] {
            let mode = fs::metadata(root.join(sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{sub}");
        }
        // Opening again changes nothing.
        Store::open(&root).unwrap();
    }

    #[test]
    fn an_inserted_image_is_found_by_manifest_and_by_image() {
        let dir = Scratch::new("store-insert");
        let store = Store::open(&dir).unwrap();
        let manifest = digest_of("manifest");
        let platform = digest_of("platform");
        let staging = store.staging().unwrap();
        let file = staging.path().join("image.sqfs");
        fs::write(&file, "image bytes").unwrap();
        let lock = store.lock(&manifest).unwrap();
        let entry = store
            .insert(
                &lock,
                "docker://python:3.12",
                &manifest,
                Some(&platform),
                &file,
            )
            .unwrap();
        drop(lock);
        assert!(!file.exists(), "the file moves into the store");
        assert_eq!(entry.image_digest, digest_of("image bytes"));
        assert_eq!(
            entry.path,
            dir.join(format!("images/sha256-{}.sqfs", entry.image_digest.hex()))
        );
        assert_eq!(fs::read_to_string(&entry.path).unwrap(), "image bytes");
        assert_eq!(
            fs::metadata(&entry.path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(entry.size, 11);
        assert_eq!(entry.reference, ["docker://python:3.12"]);
        assert_eq!(entry.platform_manifest_digest, Some(platform));
        assert!(entry.created > 0 && entry.last_used >= entry.created);
        assert_eq!(store.by_manifest(&manifest).unwrap(), Some(entry.clone()));
        assert_eq!(
            store.by_image(&entry.image_digest).unwrap(),
            Some(entry.clone())
        );
        assert_eq!(store.by_manifest(&digest_of("other")).unwrap(), None);
        assert_eq!(store.by_image(&digest_of("other")).unwrap(), None);
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&entry));
        // Nothing else is left in entries/: the temporary name was renamed.
        assert_eq!(
            names(&dir.join("entries")),
            [format!("sha256-{}.json", manifest.hex())]
        );
        let json: serde_json::Value = serde_json::from_slice(
            &fs::read(
                dir.join("entries")
                    .join(format!("sha256-{}.json", manifest.hex())),
            )
            .unwrap(),
        )
        .unwrap();
        for field in [
            "reference",
            "manifest_digest",
            "platform_manifest_digest",
            "image_digest",
            "size",
            "created",
            "last_used",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
    }

    #[test]
    fn a_reference_is_listed_once_and_the_same_bytes_are_stored_once() {
        let dir = Scratch::new("store-refs");
        let store = Store::open(&dir).unwrap();
        let manifest = digest_of("m1");
        let first = put(&store, "docker://a:1", &manifest, "same bytes");
        put(&store, "docker://a:1", &manifest, "same bytes");
        let again = put(&store, "docker://a:latest", &manifest, "same bytes");
        assert_eq!(again.reference, ["docker://a:1", "docker://a:latest"]);
        assert_eq!(again.created, first.created);
        let other = put(&store, "docker://b:1", &digest_of("m2"), "same bytes");
        assert_eq!(other.path, first.path);
        assert_eq!(names(&dir.join("images")).len(), 1);
        assert_eq!(store.list().unwrap().len(), 2);

        // Removing one entry keeps the image the other still names.
        let removed = store.remove("docker://a:latest").unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].manifest_digest, manifest);
        assert!(first.path.exists());
        assert_eq!(store.by_manifest(&manifest).unwrap(), None);
        let removed = store.remove(&other.manifest_digest.to_string()).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!first.path.exists(), "the last entry takes its image along");
        assert!(store.list().unwrap().is_empty());
        assert!(store.remove("docker://a:1").unwrap().is_empty());
    }

    #[test]
    fn remove_by_image_digest_removes_every_entry_of_the_image() {
        let dir = Scratch::new("store-rm-image");
        let store = Store::open(&dir).unwrap();
        let a = put(&store, "docker://a", &digest_of("m1"), "shared");
        put(&store, "docker://b", &digest_of("m2"), "shared");
        let kept = put(&store, "docker://c", &digest_of("m3"), "other");
        let removed = store.remove(&a.image_digest.to_string()).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(!a.path.exists());
        assert_eq!(store.list().unwrap(), [kept]);
    }

    #[test]
    fn prune_removes_least_recently_used_entries_until_the_images_fit() {
        let dir = Scratch::new("store-prune");
        let store = Store::open(&dir).unwrap();
        let (m1, m2, m3) = (digest_of("m1"), digest_of("m2"), digest_of("m3"));
        put(&store, "docker://old", &m1, "0123456789");
        put(&store, "docker://new", &m2, "abcdefghij");
        put(&store, "docker://mid", &m3, "ABCDEFGHIJ");
        set_last_used(&store, &m1, 100);
        set_last_used(&store, &m2, 300);
        set_last_used(&store, &m3, 200);
        assert!(store.prune(30).unwrap().is_empty());
        let removed = store.prune(25).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].manifest_digest, m1);
        let removed = store.prune(10).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].manifest_digest, m3);
        assert_eq!(names(&dir.join("images")).len(), 1);
        assert_eq!(store.prune(0).unwrap().len(), 1);
        assert!(names(&dir.join("images")).is_empty());
        assert!(names(&dir.join("entries")).is_empty());
    }

    #[test]
    fn prune_removes_stale_staging_and_unnamed_images_but_not_fresh_ones() {
        let dir = Scratch::new("store-stale");
        let store = Store::open(&dir).unwrap();
        let stale = store.staging().unwrap();
        let stale_path = stale.path().to_path_buf();
        std::mem::forget(stale); // as a killed pull leaves it
        age(&stale_path, Duration::from_secs(2 * 24 * 3600));
        let fresh = store.staging().unwrap();
        let orphan = dir.join("images/sha256-orphan.sqfs");
        fs::write(&orphan, "x").unwrap();
        age(&orphan, Duration::from_secs(2 * 24 * 3600));
        let young = dir.join("images/sha256-young.sqfs");
        fs::write(&young, "x").unwrap();
        let kept = put(&store, "docker://kept", &digest_of("m"), "kept");
        age(&kept.path, Duration::from_secs(2 * 24 * 3600));
        store.prune(u64::MAX).unwrap();
        assert!(!stale_path.exists());
        assert!(fresh.path().exists());
        assert!(!orphan.exists());
        assert!(young.exists(), "a pull may be about to name it");
        assert!(kept.path.exists());
    }

    #[test]
    fn touch_updates_last_used_and_a_read_only_store_is_never_written() {
        let dir = Scratch::new("store-touch");
        let store = Store::open(&dir).unwrap();
        let manifest = digest_of("m");
        put(&store, "docker://a", &manifest, "bytes");
        set_last_used(&store, &manifest, 5);
        let entry = store.by_manifest(&manifest).unwrap().unwrap();
        assert_eq!(entry.last_used, 5);
        store.touch(&entry);
        let touched = store.by_manifest(&manifest).unwrap().unwrap();
        assert!(touched.last_used >= entry.created);
        assert_eq!(touched.reference, entry.reference);

        set_last_used(&store, &manifest, 5);
        let site = Store::open_read_only(&dir).unwrap();
        assert!(site.is_read_only());
        let entry = site.by_manifest(&manifest).unwrap().unwrap();
        let before: Vec<_> = ["entries", "images", "locks", "staging"]
            .iter()
            .map(|d| names(&dir.join(d)))
            .collect();
        site.touch(&entry);
        assert_eq!(site.by_manifest(&manifest).unwrap().unwrap().last_used, 5);
        for refused in [
            site.lock(&manifest).map(|_| ()),
            site.staging().map(|_| ()),
            site.remove("docker://a").map(|_| ()),
            site.prune(0).map(|_| ()),
        ] {
            let err = refused.unwrap_err();
            assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
        }
        let after: Vec<_> = ["entries", "images", "locks", "staging"]
            .iter()
            .map(|d| names(&dir.join(d)))
            .collect();
        assert_eq!(before, after);
        let err = Store::open_read_only(&dir.join("absent")).err().unwrap();
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn a_corrupt_entry_is_skipped_by_list_and_refused_by_by_manifest() {
        let dir = Scratch::new("store-corrupt");
        let store = Store::open(&dir).unwrap();
        let good = put(&store, "docker://good", &digest_of("good"), "good");
        let bad = digest_of("bad");
        put(&store, "docker://bad", &bad, "bad");
        let path = dir.join(format!("entries/sha256-{}.json", bad.hex()));
        fs::write(&path, "{\"reference\": [\"docker://bad\"], \"manifest_").unwrap();
        // A writer's temporary file, half written, is not an entry.
        fs::write(dir.join("entries/.sha256-x.json.1-1.tmp"), "{").unwrap();
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&good));
        let (_, broken) = store.scan().unwrap();
        assert_eq!(broken.len(), 1);
        let err = store.by_manifest(&bad).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("not a valid entry"), "{text}");
        assert!(text.contains("delete that file"), "{text}");

        // An entry renamed to another manifest's name is not believed either.
        fs::copy(
            dir.join(format!(
                "entries/sha256-{}.json",
                good.manifest_digest.hex()
            )),
            &path,
        )
        .unwrap();
        let err = store.by_manifest(&bad).unwrap_err();
        assert!(
            err.to_string().contains("not the one its name says"),
            "{err}"
        );
    }

    #[test]
    fn by_image_refuses_an_image_of_another_size_and_ignores_a_missing_one() {
        let dir = Scratch::new("store-size");
        let store = Store::open(&dir).unwrap();
        let entry = put(&store, "docker://a", &digest_of("m"), "bytes");
        fs::set_permissions(&entry.path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&entry.path, "bytes and more").unwrap();
        let err = store.by_image(&entry.image_digest).unwrap_err();
        assert!(
            err.to_string()
                .contains("14 bytes where the entry records 5"),
            "{err}"
        );
        assert!(store.by_manifest(&entry.manifest_digest).is_err());
        fs::remove_file(&entry.path).unwrap();
        assert_eq!(store.by_image(&entry.image_digest).unwrap(), None);
        assert_eq!(store.by_manifest(&entry.manifest_digest).unwrap(), None);
        assert!(store.list().unwrap().is_empty());
        // An entry without its image is still removed by name, and by prune.
        assert_eq!(store.remove("docker://a").unwrap().len(), 1);
        let other = put(&store, "docker://b", &digest_of("n"), "other");
        fs::remove_file(&other.path).unwrap();
        assert_eq!(store.prune(u64::MAX).unwrap(), [other]);
        assert!(names(&dir.join("entries")).is_empty());
    }

    #[test]
    fn links_never_lead_out_of_the_store() {
        let dir = Scratch::new("store-links");
        let outside = Scratch::new("store-links-outside");
        let store = Store::open(&dir.join("store")).unwrap();
        let entry = put(&store, "docker://a", &digest_of("m"), "bytes");
        let entry_file = dir.join(format!(
            "store/entries/sha256-{}.json",
            entry.manifest_digest.hex()
        ));

        // An entry that is a link to a valid entry elsewhere.
        fs::rename(&entry_file, outside.join("entry.json")).unwrap();
        symlink(outside.join("entry.json"), &entry_file).unwrap();
        let err = store.by_manifest(&entry.manifest_digest).unwrap_err();
        assert!(err.to_string().contains("a symlink"), "{err}");
        fs::remove_file(&entry_file).unwrap();
        fs::rename(outside.join("entry.json"), &entry_file).unwrap();

        // An image that is a link to a file of the same size elsewhere.
        fs::write(outside.join("other"), "BYTES").unwrap();
        fs::remove_file(&entry.path).unwrap();
        symlink(outside.join("other"), &entry.path).unwrap();
        let err = store.by_image(&entry.image_digest).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");

        // A store folder replaced by a link.
        let images = dir.join("store/images");
        fs::rename(&images, outside.join("images")).unwrap();
        symlink(outside.join("images"), &images).unwrap();
        assert!(matches!(
            Store::open(&dir.join("store")).err().unwrap(),
            StoreError::NotAFolder { .. }
        ));
        assert!(matches!(
            Store::open_read_only(&dir.join("store")).err().unwrap(),
            StoreError::NotAFolder { .. }
        ));

        // A link given to insert is not followed.
        let store = Store::open(&dir.join("second")).unwrap();
        let link = dir.join("link.sqfs");
        symlink(outside.join("other"), &link).unwrap();
        let lock = store.lock(&digest_of("m")).unwrap();
        let err = store
            .insert(&lock, "docker://a", &digest_of("m"), None, &link)
            .unwrap_err();
        assert!(matches!(err, StoreError::NotAFile { .. }), "{err}");
        let err = store
            .insert(&lock, "docker://a", &digest_of("n"), None, &link)
            .unwrap_err();
        assert!(matches!(err, StoreError::WrongLock { .. }), "{err}");
    }

    #[test]
    fn staging_is_removed_on_drop_even_with_read_only_contents() {
        let dir = Scratch::new("store-staging");
        let store = Store::open(&dir).unwrap();
        let staging = store.staging().unwrap();
        let path = staging.path().to_path_buf();
        assert!(path.starts_with(dir.join("staging")));
        fs::create_dir(path.join("ro")).unwrap();
        fs::write(path.join("ro/file"), "x").unwrap();
        fs::set_permissions(path.join("ro/file"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(path.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let second = store.staging().unwrap();
        assert_ne!(second.path(), path);
        drop(staging);
        assert!(!path.exists());
        assert_eq!(names(&dir.join("staging")).len(), 1);
    }

    #[test]
    fn the_lock_is_held_until_dropped() {
        let dir = Scratch::new("store-lock");
        let store = Store::open(&dir).unwrap();
        let manifest = digest_of("m");
        let held = store.lock(&manifest).unwrap();
        assert_eq!(held.manifest(), &manifest);
        let try_lock = || {
            store
                .lock_with(&manifest, FlockArg::LockExclusiveNonblock)
                .unwrap()
                .is_some()
        };
        assert!(!try_lock(), "a second lock of the same manifest waits");
        assert!(store
            .lock_with(&digest_of("other"), FlockArg::LockExclusiveNonblock)
            .unwrap()
            .is_some());
        drop(held);
        assert!(try_lock());
    }

    #[test]
    fn concurrent_pulls_of_one_manifest_store_one_entry() {
        let dir = Scratch::new("store-race");
        let manifest = digest_of("m");
        let pulled = std::sync::atomic::AtomicUsize::new(0);
        let entries: Vec<Entry> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|i| {
                    let dir = &dir;
                    let manifest = &manifest;
                    let pulled = &pulled;
                    s.spawn(move || {
                        let store = Store::open(dir).unwrap();
                        let lock = store.lock(manifest).unwrap();
                        if let Some(entry) = store.by_manifest(manifest).unwrap() {
                            return entry;
                        }
                        pulled.fetch_add(1, Ordering::SeqCst);
                        let staging = store.staging().unwrap();
                        let file = staging.path().join("image.sqfs");
                        fs::write(&file, "the image").unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                        store
                            .insert(&lock, &format!("docker://a:{i}"), manifest, None, &file)
                            .unwrap()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(
            pulled.load(Ordering::SeqCst),
            1,
            "the others found the entry"
        );
        assert!(entries
            .iter()
            .all(|e| e.image_digest == entries[0].image_digest));
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(names(&dir.join("entries")).len(), 1);
        assert_eq!(names(&dir.join("images")).len(), 1);
        assert!(names(&dir.join("staging")).is_empty());
    }

    #[test]
    fn the_user_store_lies_in_the_cache_folder() {
        // Read-only use of the environment: the test compares with what it finds.
        let found = Store::user_default().unwrap();
        match std::env::var_os("XDG_CACHE_HOME").filter(|v| Path::new(v).is_absolute()) {
            Some(cache) => assert_eq!(found, Path::new(&cache).join("ferry/images")),
            None => assert!(
                found.ends_with(".cache/ferry/images"),
                "{}",
                found.display()
            ),
        }
    }
}

/// The file system under `path`, by name, and whether other nodes can share it (a
/// network or cluster file system). Images resolved at submission must be where the
/// compute nodes see them.
pub fn file_system_of(path: &Path) -> std::io::Result<FileSystem> {
    let magic = nix::sys::statfs::statfs(path)
        .map_err(std::io::Error::from)?
        .filesystem_type()
        .0 as u64;
    Ok(FileSystem::from_magic(magic))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSystem {
    pub name: &'static str,
    pub shared: bool,
}

impl FileSystem {
    fn from_magic(magic: u64) -> FileSystem {
        let (name, shared) = match magic {
            0x6969 => ("nfs", true),
            0xFF53_4D42 => ("cifs", true),
            0xFE53_4D42 => ("smb2", true),
            0x0BD0_0BD0 => ("lustre", true),
            0x4750_4653 => ("gpfs", true),
            0x1983_0326 => ("beegfs", true),
            0x00C3_6400 => ("cephfs", true),
            0x5346_414F | 0x6B41_4653 => ("afs", true),
            0xAAD7_AAEA => ("panfs", true),
            0x2003_0528 => ("orangefs", true),
            0x0102_1997 => ("9p", true),
            // GlusterFS, CVMFS, WekaFS clients and the like are FUSE file systems.
            0x6573_5546 => ("fuse", true),
            0xEF53 => ("ext4", false),
            0x5846_5342 => ("xfs", false),
            0x9123_683E => ("btrfs", false),
            0x2FC1_2FC1 => ("zfs", false),
            0x0102_1994 => ("tmpfs", false),
            0x794C_7630 => ("overlay", false),
            0xF2F5_2010 => ("f2fs", false),
            _ => ("an unknown file system", false),
        };
        FileSystem { name, shared }
    }
}

#[cfg(test)]
mod file_system_tests {
    use super::*;

    #[test]
    fn network_file_systems_are_shared_local_ones_are_not() {
        assert_eq!(
            FileSystem::from_magic(0x6969),
            FileSystem {
                name: "nfs",
                shared: true
            }
        );
        assert!(FileSystem::from_magic(0x0BD0_0BD0).shared);
        assert!(!FileSystem::from_magic(0xEF53).shared);
        assert!(!FileSystem::from_magic(0x0102_1994).shared);
        assert!(!FileSystem::from_magic(0x1234).shared);
        // This machine's /proc is neither: procfs is not in the list.
        assert!(!file_system_of(Path::new("/proc")).unwrap().shared);
    }
}

/// An image named by no file: a registry reference (`docker://...`) or the SHA-256 of
/// a stored SquashFS image (`sha256:HEX`). `ferry resolve` turns it into a stored file.
pub fn names_a_stored_image(image: &str) -> bool {
    image.starts_with("docker://") || is_bare_digest(image)
}

fn is_bare_digest(image: &str) -> bool {
    image
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What `ferry resolve --json` answers: a stored image file, its SHA-256, and the
/// registry reference and manifest it came from; or the one line saying why not.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub path: PathBuf,
    pub image_digest: String,
    pub reference: Option<String>,
    pub manifest_digest: Option<String>,
}

impl Resolution {
    /// `PATH@sha256:HEX`: the image pinned by its SHA-256, as a job carries it.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.path.display(), self.image_digest)
    }

    /// Reads an answer: Ok with the resolution, Err with the error line it carries,
    /// or None when the text is no answer at all (another version of ferry, a crash).
    pub fn from_answer(text: &[u8]) -> Option<std::result::Result<Resolution, String>> {
        let value: serde_json::Value = serde_json::from_slice(text).ok()?;
        if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
            return Some(Err(error.to_string()));
        }
        let answer: Resolution = serde_json::from_value(value).ok()?;
        (answer.path.is_absolute() && is_bare_digest(&answer.image_digest)).then_some(Ok(answer))
    }
}

#[cfg(test)]
mod resolution_tests {
    use super::*;

    #[test]
    fn which_images_name_a_stored_image() {
        let hex = "ab".repeat(32);
        assert!(names_a_stored_image("docker://python:3.12"));
        assert!(names_a_stored_image(&format!("sha256:{hex}")));
        assert!(!names_a_stored_image("sha256:abc"));
        assert!(!names_a_stored_image(&format!(
            "/images/x.sqfs@sha256:{hex}"
        )));
        assert!(!names_a_stored_image("docker.sqfs"));
        assert!(!names_a_stored_image("none"));
    }

    #[test]
    fn answers_read_back() {
        let digest = format!("sha256:{}", "cd".repeat(32));
        let good = Resolution {
            path: "/s/images/x.sqfs".into(),
            image_digest: digest.clone(),
            reference: Some("docker.io/library/python:3.12".into()),
            manifest_digest: Some(format!("sha256:{}", "ef".repeat(32))),
        };
        let text = serde_json::to_vec(&good).unwrap();
        let back = Resolution::from_answer(&text).unwrap().unwrap();
        assert_eq!(back.pinned(), format!("/s/images/x.sqfs@{digest}"));
        assert_eq!(back, good);
        assert_eq!(
            Resolution::from_answer(br#"{"error": "no such tag"}"#),
            Some(Err("no such tag".into()))
        );
        for bad in [
            &br#"{"path": "rel.sqfs", "image_digest": "sha256:00"}"#[..],
            &br#"{"path": "/x.sqfs"}"#[..],
            b"not json",
        ] {
            assert_eq!(Resolution::from_answer(bad), None);
        }
    }
}
