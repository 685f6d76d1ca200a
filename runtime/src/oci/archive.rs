//! Reading a `docker save`/`podman save` archive or an OCI image layout (a folder or a
//! tar read in place by offset): which layers to apply, in order, with the digests that
//! check them, and the image's configuration. Everything in the archive is untrusted:
//! names are kept inside it, JSON documents are bounded, digests are checked.

use super::layers::Unpacker;
use crate::image_config::ImageConfig;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

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
    pub fn open(path: &Path) -> Result<Archive, String> {
        Source::open(path).map(Archive)
    }

    /// Finds the image: an OCI layout (index.json) or a docker archive (manifest.json).
    pub fn image(&self) -> Result<Image, String> {
        self.0.image()
    }

    /// Streams one layer of `image()` into `unpacker`, checking its digests.
    pub fn apply_layer(&self, layer: &Layer, unpacker: &mut Unpacker) -> Result<(), String> {
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
    fn open(path: &Path) -> Result<Source, String> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "not found; check the path".to_string(),
            _ => format!("cannot read it ({e})"),
        })?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let mut file = File::open(path).map_err(|e| format!("cannot read it ({e})"))?;
        let head =
            crate::image::read_head(&file, 512).map_err(|e| format!("cannot read it ({e})"))?;
        match &head[..head.len().min(4)] {
            [0x1f, 0x8b, ..] => {
                return Err(
                    "is gzip-compressed; decompress it first (gunzip), then import the .tar".into(),
                )
            }
            [0x28, 0xb5, 0x2f, 0xfd] => {
                return Err(
                    "is zstd-compressed; decompress it first (zstd -d), then import the .tar"
                        .into(),
                )
            }
            _ => {}
        }
        if head.len() < 512 || &head[257..262] != b"ustar" {
            return Err("not an image archive; ferry imports docker-archive/podman save tars and OCI image layouts (folder or tar)".into());
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let size = meta.len();
        let mut entries = HashMap::new();
        let mut archive = tar::Archive::new(&mut file);
        let bad = |e: io::Error| format!("the archive is corrupt or truncated ({e})");
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
                        return Err(format!(
                            "the archive is truncated ({name} ends past the end of the file)"
                        ));
                    }
                    TarItem::File { offset, size: len }
                }
                _ => continue,
            };
            entries.insert(name, item);
        }
        if entries.is_empty() {
            return Err("the archive is empty or corrupt".into());
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
    fn open_file(&self, name: &str) -> Result<Box<dyn Read + '_>, String> {
        match self {
            Source::Dir(dir) => File::open(dir.join(name))
                .map(|f| Box::new(f) as Box<dyn Read>)
                .map_err(|e| format!("{name}: cannot read it ({e})")),
            Source::Tar { file, entries } => {
                let mut name = name.to_string();
                for _ in 0..8 {
                    match entries.get(&name) {
                        Some(TarItem::File { offset, size }) => {
                            let mut f = file.try_clone().map_err(|e| e.to_string())?;
                            f.seek(SeekFrom::Start(*offset))
                                .map_err(|e| e.to_string())?;
                            return Ok(Box::new(f.take(*size)));
                        }
                        Some(TarItem::Link(target)) => name = target.clone(),
                        None => break,
                    }
                }
                Err(format!(
                    "{name}: missing from the archive; the archive is truncated or incomplete"
                ))
            }
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        digest: Option<&str>,
    ) -> Result<T, String> {
        let mut bytes = Vec::new();
        self.open_file(name)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{name}: cannot read it ({e})"))?;
        if let Some(expected) = digest {
            let found = format!("{:x}", Sha256::digest(&bytes));
            if found != expected {
                return Err(format!("{name}: digest mismatch (expected sha256:{expected}, found sha256:{found}); the archive is corrupt"));
            }
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not valid JSON ({e})"))
    }

    /// Finds the image: an OCI layout (index.json) or a docker archive (manifest.json).
    fn image(&self) -> Result<Image, String> {
        if self.exists("index.json") {
            self.oci_image()
        } else if self.exists("manifest.json") {
            self.docker_image()
        } else {
            Err("neither index.json (OCI layout) nor manifest.json (docker archive) found (a truncated or incomplete archive?); ferry imports docker-archive/podman save tars and OCI image layouts".into())
        }
    }

    fn docker_image(&self) -> Result<Image, String> {
        let manifests: Vec<DockerManifest> = self.read_json("manifest.json", None)?;
        let [manifest] = manifests.as_slice() else {
            return Err(format!(
                "manifest.json lists {} images; save one image per archive",
                manifests.len()
            ));
        };
        let config_name = safe_name(&manifest.config)?;
        let config: ConfigBlob = self.read_json(&config_name, None)?;
        let blobs = manifest
            .layers
            .iter()
            .map(|name| Ok((safe_name(name)?, None)))
            .collect::<Result<_, String>>()?;
        config.image("manifest.json", blobs)
    }

    fn oci_image(&self) -> Result<Image, String> {
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
                return Err("image indexes nested too deep".into());
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
                    return Err(format!(
                        "layer {}: media type {} is not a filesystem layer",
                        layer.digest, layer.media_type
                    ));
                }
                let hex = sha256_hex(&layer.digest)?;
                Ok((blob_name(&hex), Some(hex)))
            })
            .collect::<Result<_, String>>()?;
        config.image("the manifest", blobs)
    }

    /// Streams one layer blob through the digests and the decompressor (gzip or zstd, told
    /// by the first bytes) into `unpacker`,
    /// then checks the digests. A mismatch is reported before any unpacking error, as
    /// the likelier cause (a corrupt blob makes a broken stream).
    fn apply_layer(&self, layer: &Layer, unpacker: &mut Unpacker) -> Result<(), String> {
        let mut blob = Hashing::new(self.open_file(&layer.name)?, layer.blob_digest.is_some());
        let (unpacked, diff_found) = {
            let mut buffered = BufReader::with_capacity(1 << 20, &mut blob);
            let head = buffered
                .fill_buf()
                .map_err(|e| format!("cannot read it ({e})"))?;
            let tar_stream: Box<dyn Read> = match head {
                [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
                [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .map_err(|e| format!("cannot start zstd decompression ({e})"))?,
                ),
                _ => Box::new(buffered),
            };
            let mut diff = Hashing::new(tar_stream, layer.diff_id.is_some());
            let unpacked = unpacker.apply_layer(&mut diff).and_then(|()| {
                io::copy(&mut diff, &mut io::sink())
                    .map(|_| ())
                    .map_err(|e| format!("the layer is corrupt or truncated ({e})"))
            });
            (unpacked, diff.finish())
        };
        let drained = io::copy(&mut blob, &mut io::sink());
        let blob_found = blob.finish();
        if let Some(expected) = &layer.blob_digest {
            if drained.is_ok() && *expected != blob_found {
                return Err(format!("blob digest mismatch (expected sha256:{expected}, found sha256:{blob_found}); the archive is corrupt"));
            }
        }
        unpacked?;
        drained.map_err(|e| format!("the layer is corrupt or truncated ({e})"))?;
        if let Some(expected) = &layer.diff_id {
            if *expected != diff_found {
                return Err(format!("content digest mismatch (expected sha256:{expected}, found sha256:{diff_found}); the archive is corrupt"));
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
fn sha256_hex(digest: &str) -> Result<String, String> {
    crate::digest::Digest::parse(digest)
        .map(|d| d.hex().to_string())
        .ok_or_else(|| format!("digest {digest:?}: only sha256 digests are supported"))
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
fn safe_name(raw: &str) -> Result<String, String> {
    if raw.starts_with('/')
        || Path::new(raw)
            .components()
            .any(|c| c == Component::ParentDir)
    {
        return Err(format!(
            "manifest.json names {raw:?}, outside the archive; the archive is unsafe"
        ));
    }
    Ok(clean_name(raw))
}

fn choose_manifest(manifests: &[OciDescriptor]) -> Result<&OciDescriptor, String> {
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
        [] if manifests.is_empty() => Err("index.json lists no image".into()),
        [] => Err(format!(
            "none of the {} images in index.json is for linux/{arch}",
            manifests.len()
        )),
        more => Err(format!(
            "index.json lists {} images for linux/{arch}; save one image per archive",
            more.len()
        )),
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

#[derive(serde::Deserialize)]
struct ConfigBlob {
    config: Option<ImageConfig>,
    rootfs: Option<RootFs>,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

impl ConfigBlob {
    fn diff_ids(&self) -> Result<Vec<String>, String> {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.iter().map(|d| sha256_hex(d)).collect())
            .unwrap_or_else(|| Err("the image configuration has no rootfs.diff_ids".into()))
    }

    /// The image `manifest` describes: its layer blobs (name, and digest when the archive
    /// names one) paired in order with the configuration's diff_ids, which must be as
    /// many.
    fn image(&self, manifest: &str, blobs: Vec<(String, Option<String>)>) -> Result<Image, String> {
        let diff_ids = self.diff_ids()?;
        if blobs.len() != diff_ids.len() {
            return Err(format!(
                "{manifest} has {} layers but the configuration lists {}; the archive is corrupt",
                blobs.len(),
                diff_ids.len()
            ));
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
    fn image_config(&self) -> ImageConfig {
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
