//! Reading a `docker save`/`podman save` archive or an OCI image layout (a folder or a
//! tar read in place by offset): which layers to apply, in order, with the digests that
//! check them, and the image's configuration. Everything in the archive is untrusted:
//! names are kept inside it, JSON documents are bounded, digests are checked.

use super::layers::{LayerError, Unpacker};
use crate::image_config::ImageConfig;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

/// What is wrong with an archive; `Display` is the reason, the caller names the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not found; check the path")]
    NotFound,
    #[error("cannot read it ({0})")]
    Unreadable(io::Error),
    #[error("is gzip-compressed; decompress it first (gunzip), then import the .tar")]
    Gzip,
    #[error("is zstd-compressed; decompress it first (zstd -d), then import the .tar")]
    Zstd,
    #[error("not an image archive; ferry imports docker-archive/podman save tars and OCI image layouts (folder or tar)")]
    NotAnArchive,
    /// Seeking in or duplicating the opened tar file.
    #[error("{0}")]
    Io(io::Error),
    #[error("the archive is corrupt or truncated ({0})")]
    Corrupt(io::Error),
    #[error("the archive is truncated ({name} ends past the end of the file)")]
    EntryPastEnd { name: String },
    #[error("the archive is empty or corrupt")]
    Empty,
    #[error("{name}: cannot read it ({reason})")]
    FileUnreadable { name: String, reason: io::Error },
    #[error("{name}: missing from the archive; the archive is truncated or incomplete")]
    Missing { name: String },
    #[error("{name}: digest mismatch (expected sha256:{expected}, found sha256:{found}); the archive is corrupt")]
    DocumentMismatch {
        name: String,
        expected: String,
        found: String,
    },
    #[error("{name}: not valid JSON ({reason})")]
    NotJson {
        name: String,
        reason: serde_json::Error,
    },
    #[error("neither index.json (OCI layout) nor manifest.json (docker archive) found (a truncated or incomplete archive?); ferry imports docker-archive/podman save tars and OCI image layouts")]
    NoManifest,
    #[error("manifest.json lists {0} images; save one image per archive")]
    ManyDockerImages(usize),
    #[error("image indexes nested too deep")]
    NestedTooDeep,
    #[error("layer {digest}: media type {media_type} is not a filesystem layer")]
    NotFilesystemLayer { digest: String, media_type: String },
    #[error("cannot start zstd decompression ({0})")]
    ZstdStart(io::Error),
    #[error("the layer is corrupt or truncated ({0})")]
    LayerCorrupt(io::Error),
    #[error("blob digest mismatch (expected sha256:{expected}, found sha256:{found}); the archive is corrupt")]
    BlobMismatch { expected: String, found: String },
    #[error("content digest mismatch (expected sha256:{expected}, found sha256:{found}); the archive is corrupt")]
    ContentMismatch { expected: String, found: String },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("digest {0:?}: only sha256 digests are supported")]
    UnsupportedDigest(String),
    #[error("manifest.json names {0:?}, outside the archive; the archive is unsafe")]
    UnsafeName(String),
    #[error("index.json lists no image")]
    NoImage,
    #[error("none of the {count} images in index.json is for linux/{arch}")]
    NoImageForArch { count: usize, arch: &'static str },
    #[error("index.json lists {count} images for linux/{arch}; save one image per archive")]
    ManyImagesForArch { count: usize, arch: &'static str },
    #[error("the image configuration has no rootfs.diff_ids")]
    NoDiffIds,
    #[error("{manifest} has {blobs} layers but the configuration lists {diff_ids}; the archive is corrupt")]
    LayerCount {
        manifest: &'static str,
        blobs: usize,
        diff_ids: usize,
    },
}

/// One layer to apply, as the archive names and checks it.
pub struct Layer {
    /// The blob's name in the archive.
    pub name: String,
    /// Expected SHA-256 (hex) of the blob as stored, when the archive says (OCI).
    blob_digest: Option<String>,
    /// Expected SHA-256 (hex) of the uncompressed tar (the config's diff_ids).
    diff_id: Option<String>,
}

/// The image an archive holds: its layers, lowest first, and its configuration.
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: ImageConfig,
}

/// An opened archive.
pub struct Archive(Source);

impl Archive {
    /// Opens an archive (a folder or a tar file); errors say what is wrong with it.
    pub fn open(path: &Path) -> Result<Archive, ArchiveError> {
        Source::open(path).map(Archive)
    }

    /// Finds the image: an OCI layout (index.json) or a docker archive (manifest.json).
    pub fn image(&self) -> Result<Image, ArchiveError> {
        self.0.image()
    }

    /// Streams one layer of `image()` into `unpacker`, checking its digests.
    pub fn apply_layer(&self, layer: &Layer, unpacker: &mut Unpacker) -> Result<(), ArchiveError> {
        self.0.apply_layer(layer, unpacker)
    }
}

/// Where the archive's files are: a folder, or a tar file read in place by offset.
enum Source {
    Dir(PathBuf),
    Tar {
        file: File,
        entries: HashMap<String, TarItem>,
    },
}

enum TarItem {
    File { offset: u64, size: u64 },
    Link(String),
}

const MAX_JSON: u64 = 16 << 20;

impl Source {
    fn open(path: &Path) -> Result<Source, ArchiveError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ArchiveError::NotFound,
            _ => ArchiveError::Unreadable(e),
        })?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(ArchiveError::Unreadable)?;
        let head = crate::image::read_head(&file, 512).map_err(ArchiveError::Unreadable)?;
        match &head[..head.len().min(4)] {
            [0x1f, 0x8b, ..] => return Err(ArchiveError::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd] => return Err(ArchiveError::Zstd),
            _ => {}
        }
        if head.len() < 512 || &head[257..262] != b"ustar" {
            return Err(ArchiveError::NotAnArchive);
        }
        file.seek(SeekFrom::Start(0)).map_err(ArchiveError::Io)?;
        let size = meta.len();
        let mut entries = HashMap::new();
        let mut archive = tar::Archive::new(&mut file);
        let bad = ArchiveError::Corrupt;
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = clean_name(&entry.path().map_err(bad)?.to_string_lossy());
            let item = match entry.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                    let target = target.to_string_lossy();
                    let base = if entry.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&name)
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(&*target)
                    } else {
                        PathBuf::from(&*target)
                    };
                    TarItem::Link(clean_name(&base.to_string_lossy()))
                }
                t if t.is_file() => {
                    let offset = entry.raw_file_position();
                    let len = entry.size();
                    if offset.saturating_add(len) > size {
                        return Err(ArchiveError::EntryPastEnd { name });
                    }
                    TarItem::File { offset, size: len }
                }
                _ => continue,
            };
            entries.insert(name, item);
        }
        if entries.is_empty() {
            return Err(ArchiveError::Empty);
        }
        Ok(Source::Tar { file, entries })
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(dir) => dir.join(name).exists(),
            Source::Tar { entries, .. } => entries.contains_key(name),
        }
    }

    /// Opens the archive's file `name` (already checked to stay inside the archive).
    fn open_file(&self, name: &str) -> Result<Box<dyn Read + '_>, ArchiveError> {
        match self {
            Source::Dir(dir) => File::open(dir.join(name))
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|reason| ArchiveError::FileUnreadable {
                    name: name.to_string(),
                    reason,
                }),
            Source::Tar { file, entries } => {
                let mut name = name.to_string();
                for _ in 0..8 {
                    match entries.get(&name) {
                        Some(TarItem::File { offset, size }) => {
                            let mut f = file.try_clone().map_err(ArchiveError::Io)?;
                            f.seek(SeekFrom::Start(*offset)).map_err(ArchiveError::Io)?;
                            return Ok(Box::new(f.take(*size)));
                        }
                        Some(TarItem::Link(target)) => name = target.clone(),
                        None => break,
                    }
                }
                Err(ArchiveError::Missing { name })
            }
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        digest: Option<&str>,
    ) -> Result<T, ArchiveError> {
        let mut bytes = Vec::new();
        self.open_file(name)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(|reason| ArchiveError::FileUnreadable {
                name: name.to_string(),
                reason,
            })?;
        if let Some(expected) = digest {
            let found = format!("{:x}", Sha256::digest(&bytes));
            if found != expected {
                return Err(ArchiveError::DocumentMismatch {
                    name: name.to_string(),
                    expected: expected.to_string(),
                    found,
                });
            }
        }
        serde_json::from_slice(&bytes).map_err(|reason| ArchiveError::NotJson {
            name: name.to_string(),
            reason,
        })
    }

    /// Finds the image: an OCI layout (index.json) or a docker archive (manifest.json).
    fn image(&self) -> Result<Image, ArchiveError> {
        if self.exists("index.json") {
            self.oci_image()
        } else if self.exists("manifest.json") {
            self.docker_image()
        } else {
            Err(ArchiveError::NoManifest)
        }
    }

    fn docker_image(&self) -> Result<Image, ArchiveError> {
        let manifests: Vec<DockerManifest> = self.read_json("manifest.json", None)?;
        let [manifest] = manifests.as_slice() else {
            return Err(ArchiveError::ManyDockerImages(manifests.len()));
        };
        let config_name = safe_name(&manifest.config)?;
        let config: ConfigBlob = self.read_json(&config_name, None)?;
        let blobs = manifest
            .layers
            .iter()
            .map(|name| Ok((safe_name(name)?, None)))
            .collect::<Result<_, ArchiveError>>()?;
        config.image("manifest.json", blobs)
    }

    fn oci_image(&self) -> Result<Image, ArchiveError> {
        let mut index: OciIndex = self.read_json("index.json", None)?;
        let mut depth = 0;
        let manifest_ref = loop {
            let chosen = choose_manifest(&index.manifests)?;
            if !chosen.media_type.contains("index") && !chosen.media_type.contains("manifest.list")
            {
                break chosen.clone();
            }
            depth += 1;
            if depth > 4 {
                return Err(ArchiveError::NestedTooDeep);
            }
            let hex = sha256_hex(&chosen.digest)?;
            index = self.read_json(&blob_name(&hex), Some(&hex))?;
        };
        let hex = sha256_hex(&manifest_ref.digest)?;
        let manifest: OciManifest = self.read_json(&blob_name(&hex), Some(&hex))?;
        let config_hex = sha256_hex(&manifest.config.digest)?;
        let config: ConfigBlob = self.read_json(&blob_name(&config_hex), Some(&config_hex))?;
        let blobs = manifest
            .layers
            .iter()
            .map(|layer| {
                if !layer.media_type.contains("tar") {
                    return Err(ArchiveError::NotFilesystemLayer {
                        digest: layer.digest.clone(),
                        media_type: layer.media_type.clone(),
                    });
                }
                let hex = sha256_hex(&layer.digest)?;
                Ok((blob_name(&hex), Some(hex)))
            })
            .collect::<Result<_, ArchiveError>>()?;
        config.image("the manifest", blobs)
    }

    /// Streams one layer blob through the digests and the decompressor (gzip or zstd, told
    /// by the first bytes) into `unpacker`,
    /// then checks the digests. A mismatch is reported before any unpacking error, as
    /// the likelier cause (a corrupt blob makes a broken stream).
    fn apply_layer(&self, layer: &Layer, unpacker: &mut Unpacker) -> Result<(), ArchiveError> {
        let mut blob = Hashing::new(self.open_file(&layer.name)?, layer.blob_digest.is_some());
        let (unpacked, diff_found) = {
            let mut buffered = BufReader::with_capacity(1 << 20, &mut blob);
            let head = buffered.fill_buf().map_err(ArchiveError::Unreadable)?;
            let tar_stream: Box<dyn Read> = match head {
                [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
                [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .map_err(ArchiveError::ZstdStart)?,
                ),
                _ => Box::new(buffered),
            };
            let mut diff = Hashing::new(tar_stream, layer.diff_id.is_some());
            let unpacked = unpacker
                .apply_layer(&mut diff)
                .map_err(ArchiveError::Layer)
                .and_then(|()| {
                    io::copy(&mut diff, &mut io::sink())
                        .map(|_| ())
                        .map_err(ArchiveError::LayerCorrupt)
                });
            (unpacked, diff.finish())
        };
        let drained = io::copy(&mut blob, &mut io::sink());
        let blob_found = blob.finish();
        if let Some(expected) = &layer.blob_digest {
            if drained.is_ok() && *expected != blob_found {
                return Err(ArchiveError::BlobMismatch {
                    expected: expected.clone(),
                    found: blob_found,
                });
            }
        }
        unpacked?;
        drained.map_err(ArchiveError::LayerCorrupt)?;
        if let Some(expected) = &layer.diff_id {
            if *expected != diff_found {
                return Err(ArchiveError::ContentMismatch {
                    expected: expected.clone(),
                    found: diff_found,
                });
            }
        }
        Ok(())
    }
}

/// A reader that hashes what passes through it, when asked to.
struct Hashing<R> {
    inner: R,
    /// None when nothing is to be checked (a docker archive names no blob digests).
    hasher: Option<Sha256>,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R, wanted: bool) -> Self {
        Hashing {
            inner,
            hasher: wanted.then(Sha256::new),
        }
    }

    /// The hex digest of what was read (empty when not hashed).
    fn finish(&mut self) -> String {
        self.hasher
            .take()
            .map(|h| format!("{:x}", h.finalize()))
            .unwrap_or_default()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// `sha256:HEX` as the lowercase hex, refusing anything else (it becomes a file name).
fn sha256_hex(digest: &str) -> Result<String, ArchiveError> {
    crate::digest::Digest::parse(digest)
        .map(|d| d.hex().to_string())
        .ok_or_else(|| ArchiveError::UnsupportedDigest(digest.to_string()))
}

fn blob_name(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// A path inside the archive as a clean relative name.
fn clean_name(raw: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or("")),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

/// A name from manifest.json: relative and without `..`.
fn safe_name(raw: &str) -> Result<String, ArchiveError> {
    if raw.starts_with('/')
        || Path::new(raw)
            .components()
            .any(|c| c == Component::ParentDir)
    {
        return Err(ArchiveError::UnsafeName(raw.to_string()));
    }
    Ok(clean_name(raw))
}

fn choose_manifest(manifests: &[OciDescriptor]) -> Result<&OciDescriptor, ArchiveError> {
    if let [only] = manifests {
        return Ok(only);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let matching: Vec<&OciDescriptor> = manifests
        .iter()
        .filter(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] if manifests.is_empty() => Err(ArchiveError::NoImage),
        [] => Err(ArchiveError::NoImageForArch {
            count: manifests.len(),
            arch,
        }),
        more => Err(ArchiveError::ManyImagesForArch {
            count: more.len(),
            arch,
        }),
    }
}

// ---------------------------------------------------------------------------------
// The JSON documents (only the fields ferry uses; the rest is ignored).

#[derive(serde::Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(serde::Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Clone, serde::Deserialize)]
struct OciDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    platform: Option<Platform>,
}

#[derive(Clone, serde::Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(serde::Deserialize)]
struct OciManifest {
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
}

/// An image configuration blob (shared with the registry pull, which reads the same).
#[derive(serde::Deserialize)]
pub(crate) struct ConfigBlob {
    config: Option<ImageConfig>,
    rootfs: Option<RootFs>,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigBlob {
    pub(crate) fn diff_ids(&self) -> Result<Vec<String>, ArchiveError> {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.iter().map(|d| sha256_hex(d)).collect())
            .unwrap_or(Err(ArchiveError::NoDiffIds))
    }

    /// The image `manifest` describes: its layer blobs (name, and digest when the archive
    /// names one) paired in order with the configuration's diff_ids, which must be as
    /// many.
    fn image(
        &self,
        manifest: &'static str,
        blobs: Vec<(String, Option<String>)>,
    ) -> Result<Image, ArchiveError> {
        let diff_ids = self.diff_ids()?;
        if blobs.len() != diff_ids.len() {
            return Err(ArchiveError::LayerCount {
                manifest,
                blobs: blobs.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let layers = blobs
            .into_iter()
            .zip(diff_ids)
            .map(|((name, blob_digest), diff_id)| Layer {
                name,
                blob_digest,
                diff_id: Some(diff_id),
            })
            .collect();
        Ok(Image {
            layers,
            config: self.image_config(),
        })
    }

    /// The configuration ferry keeps, without empty values.
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            env: c.env.filter(|v| !v.is_empty()),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            entrypoint: c.entrypoint.filter(|v| !v.is_empty()),
            cmd: c.cmd.filter(|v| !v.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            labels: c.labels.filter(|l| !l.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    /// The typed errors read exactly as the text `ferry import` printed before them.
    #[test]
    fn refusals_are_typed_and_read_as_before() {
        let scratch = Scratch::new("archive");
        let open = |name: &str, bytes: &[u8]| {
            let path = scratch.join(name);
            std::fs::write(&path, bytes).unwrap();
            Archive::open(&path).err().unwrap()
        };
        let e = open("a.tar.gz", &[0x1f, 0x8b, 8, 0]);
        assert!(matches!(e, ArchiveError::Gzip));
        assert_eq!(
            e.to_string(),
            "is gzip-compressed; decompress it first (gunzip), then import the .tar"
        );
        let e = open("a.txt", &[b'x'; 600]);
        assert!(matches!(e, ArchiveError::NotAnArchive));
        assert_eq!(e.to_string(), "not an image archive; ferry imports docker-archive/podman save tars and OCI image layouts (folder or tar)");
        let e = Archive::open(&scratch.join("missing")).err().unwrap();
        assert_eq!(e.to_string(), "not found; check the path");

        assert_eq!(
            safe_name("../etc/passwd").unwrap_err().to_string(),
            r#"manifest.json names "../etc/passwd", outside the archive; the archive is unsafe"#
        );
        assert_eq!(
            sha256_hex("md5:00").unwrap_err().to_string(),
            r#"digest "md5:00": only sha256 digests are supported"#
        );
        let e = ArchiveError::from(LayerError::Interrupted);
        assert_eq!(e.to_string(), "interrupted");
        assert_eq!(
            ArchiveError::LayerCount {
                manifest: "manifest.json",
                blobs: 2,
                diff_ids: 3
            }
            .to_string(),
            "manifest.json has 2 layers but the configuration lists 3; the archive is corrupt"
        );
    }
}
