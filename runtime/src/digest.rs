//! Image digests: pinning an image to its SHA-256 (`IMAGE@sha256:HEX`), hashing the
//! opened file (the bytes verified are the bytes mounted), and a root-owned cache so a
//! big image is hashed once per change of the file, not once per step.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

/// Where slurmstepd and `ferry` (as root) keep known digests on each node.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/ferry/digests";

const PREFIX: &str = "sha256:";
const CHUNK: usize = 4 << 20;

/// Why a pinned (or hashed) image is not the one to run.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("image {path}: digest mismatch: expected {expected}, found {actual}; the file is not the pinned image (check the path, or pin the new digest)")]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image {path}: a root folder has no digest to pin; pin an image file instead (ferry digest IMAGE)")]
    PinnedFolder { path: PathBuf },
    #[error("image {path}: a sparse file ({holes} of its {size} bytes are holes); a pinned image is verified byte by byte and this one would take far longer than its data; copy it without holes (cp --sparse=never IMAGE NEW) and pin the copy")]
    Sparse {
        path: PathBuf,
        holes: u64,
        size: u64,
    },
    #[error("image {path}: the file changed while it was being verified; try again once nothing writes to it")]
    Changed { path: PathBuf },
    /// The opened image's size and times, which decide whether and how it is hashed.
    #[error("stat of {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
}

/// `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix(PREFIX)?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Digest(format!("{PREFIX}{}", hex.to_ascii_lowercase())))
    }

    /// The 64 lowercase hex digits, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Digest::parse(&s).ok_or_else(|| format!("not a sha256 digest: {s:?}"))
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `PATH@sha256:HEX` into the path and the pinned digest. A `@` not followed by
/// `sha256:` belongs to the path; a malformed digest after `@sha256:` is an error.
pub fn split_pinned(image: &str) -> Result<(&str, Option<Digest>), String> {
    match image.rsplit_once('@') {
        Some((path, pin)) if pin.starts_with(PREFIX) => match Digest::parse(pin) {
            Some(d) => Ok((path, Some(d))),
            None => Err(format!(
                "{image}: the pinned digest must be sha256: followed by 64 hex digits (get it with: ferry digest {path})"
            )),
        },
        _ => Ok((image, None)),
    }
}

/// Hashes the whole file through the open descriptor. `progress` gets the bytes done.
pub fn hash_file(file: &File, progress: &mut dyn FnMut(u64)) -> io::Result<Digest> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        offset += n as u64;
        progress(offset);
    }
    Ok(Digest(format!("{PREFIX}{:x}", hasher.finalize())))
}

/// How a digest was obtained, for the provenance record and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Cache,
    Computed,
}

/// What the provenance record says of the image's digest (`digest_status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Pinned, and the file's bytes are the pinned ones (hashed now, or known from the
    /// cache for this very version of the file).
    Verified,
    /// Not pinned; the cache knew this very version of the file (a pinned step or root's
    /// `ferry digest` hashed it before). Nothing was hashed for this step.
    Cached,
    /// Not pinned, and the cache did not know this version: the digest is unknown. An
    /// unpinned image is never hashed before its tasks start (nobody asked to wait for
    /// it); pinning it (`IMAGE@sha256:...`) records its digest.
    #[default]
    UnknownUnpinned,
    /// A root folder, which has no digest.
    Folder,
}

/// What identifies one version of a file: any write changes ctime, which users cannot set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileVersion {
    pub fn of(file: &File) -> io::Result<FileVersion> {
        let m = file.metadata()?;
        Ok(FileVersion {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    version: FileVersion,
    digest: Digest,
}

/// A folder of known digests, one small JSON file per (device, inode). Only root
/// writes it; an entry counts only when every field of the file's version matches.
pub struct Cache {
    dir: PathBuf,
    /// Whose folder is believed: root's (unit tests, which may run as a user, use their
    /// own).
    owner: u32,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: dir.into(),
            owner: 0,
        }
    }

    /// A cache in a folder of the user running the unit tests.
    #[cfg(test)]
    pub(crate) fn of_this_user(dir: impl Into<PathBuf>) -> Cache {
        Cache::of_user(dir, nix::unistd::geteuid().as_raw())
    }

    /// A cache that `uid` owns: only for a check the user makes for themselves (srun
    /// and sbatch at submission); a node believes root's alone.
    pub fn of_user(dir: impl Into<PathBuf>, uid: u32) -> Cache {
        Cache {
            dir: dir.into(),
            owner: uid,
        }
    }

    fn entry_path(&self, v: &FileVersion) -> PathBuf {
        self.dir.join(format!("{:x}-{:x}.json", v.dev, v.ino))
    }

    pub fn lookup(&self, v: &FileVersion) -> Option<Digest> {
        if !self.trusted() {
            return None;
        }
        let text = std::fs::read_to_string(self.entry_path(v)).ok()?;
        let entry: CacheEntry = serde_json::from_str(&text).ok()?;
        (entry.version == *v).then_some(entry.digest)
    }

    pub fn store(&self, v: &FileVersion, digest: &Digest) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        if !self.trusted() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "cache folder is not root's own",
            ));
        }
        let entry = serde_json::to_string(&CacheEntry {
            version: v.clone(),
            digest: digest.clone(),
        })?;
        let final_path = self.entry_path(v);
        let tmp = final_path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(entry.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, &final_path)
    }

    /// Only a folder that root owns and nobody else can write is believed.
    fn trusted(&self) -> bool {
        std::fs::symlink_metadata(&self.dir)
            .map(|m| m.is_dir() && m.uid() == self.owner && m.mode() & 0o022 == 0)
            .unwrap_or(false)
    }
}

/// The digest cache of the user running this process: `$XDG_CACHE_HOME/ferry/digests`,
/// else `~/.cache/ferry/digests` (for the submit check and `ferry run` without root).
pub fn user_cache_dir() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| {
        let p = PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return Some(cache.join("ferry/digests"));
    }
    std::env::var_os("HOME")
        .and_then(absolute)
        .map(|home| home.join(".cache/ferry/digests"))
}

/// The digest of an open image: from the cache when the file has not changed since it
/// was hashed, else hashed now (and remembered).
pub fn digest_of(file: &File, cache: Option<&Cache>) -> io::Result<(Digest, Source, FileVersion)> {
    let version = FileVersion::of(file)?;
    if let Some(d) = cache.and_then(|c| c.lookup(&version)) {
        return Ok((d, Source::Cache, version));
    }
    let digest = hash_file(file, &mut |_| {})?;
    remember(cache, file, &version, &digest);
    Ok((digest, Source::Computed, version))
}

/// The digest the cache holds for this very version of the open file, if any: a lookup
/// that never reads the file's bytes (an unpinned image is not hashed before its tasks).
pub fn cached_digest(
    file: &File,
    cache: Option<&Cache>,
) -> io::Result<Option<(Digest, FileVersion)>> {
    let version = FileVersion::of(file)?;
    Ok(cache
        .and_then(|c| c.lookup(&version))
        .map(|digest| (digest, version)))
}

/// Stores a digest computed from `file` as it was at `before`, unless the file changed
/// while it was read (then the digest may mix two versions and must not be believed).
pub fn remember(cache: Option<&Cache>, file: &File, before: &FileVersion, digest: &Digest) {
    if let Some(cache) = cache {
        if FileVersion::of(file).ok().as_ref() == Some(before) {
            let _ = cache.store(before, digest); // a cache we cannot write only costs time
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_split_only_at_a_sha256_suffix() {
        let hex = "ab".repeat(32);
        let spec = format!("/x/img.sqfs@sha256:{hex}");
        let (p, d) = split_pinned(&spec).unwrap();
        assert_eq!(p, "/x/img.sqfs");
        assert_eq!(d.unwrap().to_string(), format!("sha256:{hex}"));
        assert_eq!(
            split_pinned("/x/user@host/img.sqfs").unwrap(),
            ("/x/user@host/img.sqfs", None)
        );
        assert!(split_pinned("/x/img.sqfs@sha256:abc")
            .unwrap_err()
            .contains("64 hex digits"));
    }

    #[test]
    fn hash_matches_a_known_value() {
        let path = std::env::temp_dir().join(format!("ferry-digest-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let d = hash_file(&File::open(&path).unwrap(), &mut |_| {}).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            d.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
