//! A pull in two steps, so that a caller holding a store downloads nothing for an image
//! it already has: `resolve` turns a reference into manifest digests (manifests only),
//! `fetch_and_unpack` downloads the configuration and the layers (each checked as it
//! streams, a few at a time) and applies the layers in order with the same `Unpacker`
//! as `ferry import` (whiteouts, paths kept inside the root), then stores the image's
//! configuration as import does.
//!
//! Reproducible: the tree depends only on the manifest (the layers' entries, modes and,
//! as root, owners). File times are not kept: the SquashFS packer sets every time to a
//! fixed value, so the same manifest gives the same image bytes.

use super::auth::Credentials;
use super::blob::{self, BlobError};
use super::client::Client;
use super::manifest::{self, Descriptor, Document, ImageManifest, Platform};
use super::reference::Reference;
use super::{Problem, RegistryError};
use crate::digest::Digest;
use crate::oci::archive::ConfigBlob;
use crate::oci::{self, LayerError, Unpacker};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Largest manifest or configuration read into memory.
const MAX_DOCUMENT: u64 = 16 << 20;
/// Layers downloaded at once: enough to fill a link, few enough to be polite.
const DOWNLOADS: usize = 3;
/// The environment variable with more insecure registries (comma-separated).
pub const INSECURE_ENV: &str = "FERRY_INSECURE_REGISTRIES";

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The platform to pick from an index (default: this machine's).
    pub platform: Option<Platform>,
    /// Registries (`HOST` or `HOST:PORT`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Show progress on stderr (only when it is a terminal).
    pub progress: bool,
}

impl PullOptions {
    /// The insecure registries from `--insecure-registry` values and from
    /// `FERRY_INSECURE_REGISTRIES` (`env`), checked.
    pub fn insecure_registries(
        given: &[String],
        env: Option<&str>,
    ) -> Result<Vec<String>, RegistryError> {
        let from_env = env.unwrap_or("").split(',').map(str::trim);
        let mut all = Vec::new();
        for host in given.iter().map(String::as_str).chain(from_env) {
            if host.is_empty() {
                continue;
            }
            // A host is valid when it makes a reference's registry.
            let probe = Reference::parse(&format!("{host}/x"))
                .ok()
                .filter(|r| r.registry == host || host == "docker.io");
            if probe.is_none() {
                return Err(RegistryError::BadInsecureRegistry(host.to_string()));
            }
            all.push(host.to_string());
        }
        Ok(all)
    }

    /// `--platform OS/ARCH[/VARIANT]`.
    pub fn parse_platform(text: &str) -> Result<Platform, RegistryError> {
        Platform::parse(text).ok_or_else(|| RegistryError::BadPlatform(text.to_string()))
    }
}

/// A reference resolved to its manifests.
pub struct Resolved {
    /// The normalised reference (`docker.io/library/python:3.12`).
    pub reference: String,
    /// The digest of the manifest the reference names (an index's, for a
    /// multi-platform image): what a tag is pinned to.
    pub manifest_digest: Digest,
    /// The digest of this platform's image manifest (the same as `manifest_digest`
    /// when the reference names an image manifest).
    pub platform_manifest_digest: Digest,
    /// The platform picked from the index; None when the reference names one image.
    pub platform: Option<Platform>,
    pub manifest: ImageManifest,
    /// The reference as the user gave it, for messages.
    input: String,
    client: Client,
    progress: bool,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("reference", &self.reference)
            .field("manifest_digest", &self.manifest_digest)
            .field("platform_manifest_digest", &self.platform_manifest_digest)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// The sum of the layers' sizes (compressed, as downloaded).
    pub fn download_size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }

    fn fail(&self, problem: Problem) -> RegistryError {
        RegistryError::Pull {
            reference: self.input.clone(),
            problem,
        }
    }
}

/// Resolves `reference` (`docker://HOST/NAME:TAG`, `...@sha256:HEX`) to its manifest
/// digests and this platform's image manifest, fetching manifests only. A pinned
/// reference must resolve to exactly its digest.
pub fn resolve(reference: &str, options: &PullOptions) -> Result<Resolved, RegistryError> {
    let parsed = Reference::parse(reference)?;
    let fail = |problem: Problem| RegistryError::Pull {
        reference: reference.to_string(),
        problem,
    };
    let insecure = options
        .insecure_registries
        .iter()
        .any(|h| *h == parsed.registry || h == parsed.api_host());
    let credentials = Credentials::find(&parsed.registry, &|name| std::env::var_os(name));
    let client = Client::new(&parsed, insecure, credentials);

    let (bytes, content_type) =
        fetch_manifest(&client, &parsed.manifest_key(), "the manifest").map_err(fail)?;
    let manifest_digest = blob::digest_of(&bytes);
    if let Some(pinned) = &parsed.digest {
        if *pinned != manifest_digest {
            return Err(fail(Problem::PinnedMismatch {
                pinned: pinned.clone(),
                found: manifest_digest,
            }));
        }
    }
    let top = manifest::parse(&bytes, content_type.as_deref()).map_err(|e| fail(e.into()))?;
    let (manifest, platform_manifest_digest, platform) = match top {
        Document::Image(manifest) => (manifest, manifest_digest.clone(), None),
        Document::Index(entries) => {
            let wanted = options.platform.clone().unwrap_or_else(Platform::host);
            let entry = manifest::choose(&entries, &wanted).map_err(|e| fail(e.into()))?;
            let what = format!(
                "the manifest for {}",
                entry.platform.as_ref().unwrap_or(&wanted)
            );
            let (bytes, content_type) =
                fetch_manifest(&client, &entry.digest.to_string(), &what).map_err(fail)?;
            let found = blob::digest_of(&bytes);
            if found != entry.digest {
                return Err(fail(Problem::Blob {
                    what,
                    source: BlobError::Mismatch {
                        expected: entry.digest.clone(),
                        found: found.to_string(),
                    },
                }));
            }
            match manifest::parse(&bytes, content_type.as_deref()).map_err(|e| fail(e.into()))? {
                Document::Image(manifest) => (manifest, found, entry.platform.clone()),
                Document::Index(_) => return Err(fail(Problem::NestedIndex(found))),
            }
        }
    };
    Ok(Resolved {
        reference: parsed.to_string(),
        manifest_digest,
        platform_manifest_digest,
        platform,
        manifest,
        input: reference.to_string(),
        client,
        progress: options.progress && io::stderr().is_terminal(),
    })
}

/// One manifest's bytes (bounded) and the response's Content-Type.
fn fetch_manifest(
    client: &Client,
    key: &str,
    what: &str,
) -> Result<(Vec<u8>, Option<String>), Problem> {
    let response = client.get(&format!("manifests/{key}"), Some(manifest::ACCEPT), what)?;
    let content_type = response.header("content-type").map(String::from);
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Problem::Blob {
            what: what.into(),
            source: BlobError::Read(e),
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(Problem::TooLarge {
            what: what.into(),
            limit: MAX_DOCUMENT,
        });
    }
    Ok((bytes, content_type))
}

/// Downloads the configuration and layers of `resolved` into `staging` (an existing
/// folder private to the caller, mode 0700), applies the layers in order onto
/// `staging/rootfs` and stores the image's configuration there. Returns the root
/// folder. Downloaded blobs are removed once applied; on an error what was written
/// stays in `staging` for the caller to remove with it.
pub fn fetch_and_unpack(resolved: &Resolved, staging: &Path) -> Result<PathBuf, RegistryError> {
    let make_dir = |path: PathBuf| {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map(|()| path.clone())
            .map_err(|source| resolved.fail(Problem::Staging { path, source }))
    };
    let blobs = make_dir(staging.join("blobs"))?;
    let rootfs = make_dir(staging.join("rootfs"))?;

    let config = fetch_config(resolved).map_err(|p| resolved.fail(p))?;
    let diff_ids = config.diff_ids().map_err(|e| {
        resolved.fail(Problem::Config {
            digest: resolved.manifest.config.digest.clone(),
            reason: e.to_string(),
        })
    })?;
    let layers = &resolved.manifest.layers;
    if diff_ids.len() != layers.len() {
        return Err(resolved.fail(Problem::LayerCount {
            diff_ids: diff_ids.len(),
            layers: layers.len(),
        }));
    }
    let mut unpacker = Unpacker::new(rootfs.clone(), crate::is_root());
    download_and_apply(resolved, &blobs, &diff_ids, &mut unpacker).map_err(|p| resolved.fail(p))?;
    oci::store_config(&rootfs, &config.image_config())
        .map_err(|e| resolved.fail(Problem::StoreConfig(e)))?;
    unpacker.finish().map_err(|source| {
        resolved.fail(Problem::Staging {
            path: rootfs.clone(),
            source,
        })
    })?;
    let _ = fs::remove_dir(&blobs);
    Ok(rootfs)
}

/// The configuration blob, checked, parsed.
fn fetch_config(resolved: &Resolved) -> Result<ConfigBlob, Problem> {
    let descriptor = &resolved.manifest.config;
    let what = format!("the image configuration {}", descriptor.digest);
    if descriptor.size > MAX_DOCUMENT {
        return Err(Problem::TooLarge {
            what,
            limit: MAX_DOCUMENT,
        });
    }
    let response = resolved
        .client
        .get(&format!("blobs/{}", descriptor.digest), None, &what)?;
    let mut bytes = Vec::new();
    blob::copy_verified(
        response.into_reader(),
        &mut bytes,
        &descriptor.digest,
        descriptor.size,
        |_| {},
    )
    .map_err(|source| Problem::Blob { what, source })?;
    serde_json::from_slice(&bytes).map_err(|e| Problem::Config {
        digest: descriptor.digest.clone(),
        reason: format!("not valid JSON ({e})"),
    })
}

/// Downloads the layers a few at a time while the calling thread applies them in
/// order as they arrive. The first failure stops the others.
fn download_and_apply(
    resolved: &Resolved,
    blobs: &Path,
    diff_ids: &[String],
    unpacker: &mut Unpacker,
) -> Result<(), Problem> {
    let layers = &resolved.manifest.layers;
    let count = layers.len();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let downloaded = AtomicU64::new(0);
    let mut progress = Progress::new(resolved.progress, count, resolved.download_size());
    let outcome = std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<(usize, Result<PathBuf, Problem>)>();
        for _ in 0..DOWNLOADS.min(count) {
            let done_tx = done_tx.clone();
            let (next, stop, downloaded) = (&next, &stop, &downloaded);
            scope.spawn(move || loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= count || stop.load(Ordering::SeqCst) {
                    break;
                }
                let result = download_layer(resolved, blobs, index, stop, downloaded);
                let failed = result.is_err();
                if done_tx.send((index, result)).is_err() || failed {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut ready: BTreeMap<usize, PathBuf> = BTreeMap::new();
        let mut applied = 0;
        let result = loop {
            if applied == count {
                break Ok(());
            }
            if crate::interrupt::interrupted() {
                break Err(Problem::Interrupted);
            }
            match done_rx.recv_timeout(Duration::from_millis(200)) {
                Ok((index, Ok(path))) => {
                    ready.insert(index, path);
                }
                Ok((_, Err(problem))) => break Err(problem),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if !ready.contains_key(&applied) {
                        break Err(Problem::Interrupted);
                    }
                }
            }
            progress.show(applied, downloaded.load(Ordering::Relaxed));
            while let Some(path) = ready.remove(&applied) {
                let step = apply_layer(
                    &path,
                    applied,
                    count,
                    &layers[applied],
                    &diff_ids[applied],
                    unpacker,
                );
                let _ = fs::remove_file(&path);
                if let Err(problem) = step {
                    stop.store(true, Ordering::SeqCst);
                    return Err(problem);
                }
                applied += 1;
                progress.show(applied, downloaded.load(Ordering::Relaxed));
            }
        };
        stop.store(true, Ordering::SeqCst);
        result
    });
    progress.finish(outcome.is_ok());
    outcome
}

/// Downloads layer `index` to `blobs/HEX`, checked; a failed download leaves no file.
fn download_layer(
    resolved: &Resolved,
    blobs: &Path,
    index: usize,
    stop: &AtomicBool,
    downloaded: &AtomicU64,
) -> Result<PathBuf, Problem> {
    let layer = &resolved.manifest.layers[index];
    let count = resolved.manifest.layers.len();
    let what = format!("layer {} of {count} ({})", index + 1, layer.digest);
    let path = blobs.join(layer.digest.hex());
    let response = resolved
        .client
        .get(&format!("blobs/{}", layer.digest), None, &what)?;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| Problem::Staging {
            path: path.clone(),
            source,
        })?;
    let reader = Stoppable {
        inner: response.into_reader(),
        stop,
    };
    let mut counted = 0;
    let copied = blob::copy_verified(
        reader,
        BufWriter::with_capacity(1 << 20, file),
        &layer.digest,
        layer.size,
        |total| {
            downloaded.fetch_add(total - counted, Ordering::Relaxed);
            counted = total;
        },
    );
    match copied {
        Ok(()) => Ok(path),
        Err(source) => {
            let _ = fs::remove_file(&path);
            Err(match source {
                BlobError::Interrupted => Problem::Interrupted,
                source => Problem::Blob { what, source },
            })
        }
    }
}

/// A download that ends early when another one failed.
struct Stoppable<'s, R> {
    inner: R,
    stop: &'s AtomicBool,
}

impl<R: Read> Read for Stoppable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("stopped: another download failed"));
        }
        self.inner.read(buf)
    }
}

/// Applies one downloaded (already verified) layer: decompressed as its first bytes
/// say (gzip, zstd, or a plain tar), its content checked against the diff_id.
fn apply_layer(
    path: &Path,
    index: usize,
    count: usize,
    layer: &Descriptor,
    diff_id: &str,
    unpacker: &mut Unpacker,
) -> Result<(), Problem> {
    let digest = layer.digest.clone();
    let corrupt = |source: io::Error| Problem::LayerCorrupt {
        index: index + 1,
        count,
        digest: digest.clone(),
        source,
    };
    let file = File::open(path).map_err(|source| Problem::Staging {
        path: path.to_path_buf(),
        source,
    })?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let head = buffered.fill_buf().map_err(corrupt)?;
    let tar: Box<dyn Read> = match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(corrupt)?)
        }
        _ => Box::new(buffered),
    };
    let mut content = HashingReader {
        inner: tar,
        hasher: Sha256::new(),
    };
    unpacker
        .apply_layer(&mut content)
        .map_err(|source| match source {
            LayerError::Interrupted => Problem::Interrupted,
            source => Problem::Layer {
                index: index + 1,
                count,
                digest: digest.clone(),
                source,
            },
        })?;
    io::copy(&mut content, &mut io::sink()).map_err(corrupt)?;
    let found = format!("{:x}", content.hasher.finalize());
    if found != diff_id {
        return Err(Problem::ContentMismatch {
            index: index + 1,
            count,
            digest,
            expected: format!("sha256:{diff_id}"),
        });
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// One line on a terminal: layers applied, bytes downloaded.
struct Progress {
    enabled: bool,
    count: usize,
    total: u64,
    shown: Option<(usize, u64)>,
}

impl Progress {
    fn new(enabled: bool, count: usize, total: u64) -> Progress {
        Progress {
            enabled,
            count,
            total,
            shown: None,
        }
    }

    fn show(&mut self, applied: usize, downloaded: u64) {
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        // Redraw per layer or per MiB, not per read.
        let key = (applied, downloaded >> 20);
        if !self.enabled || self.shown == Some(key) {
            return;
        }
        self.shown = Some(key);
        eprint!(
            "\rferry pull: {applied}/{} layers applied, {:.1} of {:.1} MiB downloaded  ",
            self.count,
            mib(downloaded),
            mib(self.total)
        );
        let _ = io::stderr().flush();
    }

    fn finish(&self, _ok: bool) {
        if self.enabled && self.shown.is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    #[test]
    fn insecure_registries_from_option_and_environment() {
        let given = vec!["localhost:5000".to_string()];
        assert_eq!(
            PullOptions::insecure_registries(&given, Some(" 127.0.0.1:5001, reg.local ,")).unwrap(),
            vec!["localhost:5000", "127.0.0.1:5001", "reg.local"]
        );
        assert!(PullOptions::insecure_registries(&[], None)
            .unwrap()
            .is_empty());
        for bad in ["http://x", "a/b", "host:port", "a_b.example"] {
            let e = PullOptions::insecure_registries(&[bad.to_string()], None).unwrap_err();
            assert!(matches!(e, RegistryError::BadInsecureRegistry(_)), "{bad}");
        }
        assert!(matches!(
            PullOptions::parse_platform("amd64"),
            Err(RegistryError::BadPlatform(_))
        ));
    }

    fn tar_layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_path(name).unwrap();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn descriptor(bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: blob::digest_of(bytes),
            size: bytes.len() as u64,
            platform: None,
        }
    }

    #[test]
    fn layers_of_each_compression_apply_and_are_checked() {
        let scratch = Scratch::new("pull-layers");
        let rootfs = scratch.join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let plain = tar_layer(&[("a", "plain")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_layer(&[("b", "gzip")])).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(tar_layer(&[("c", "zstd")]).as_slice(), 1).unwrap();
        let mut unpacker = Unpacker::new(rootfs.clone(), false);
        for (i, (blob, content)) in [
            (plain.clone(), plain.clone()),
            (gz, tar_layer(&[("b", "gzip")])),
            (zst, tar_layer(&[("c", "zstd")])),
        ]
        .into_iter()
        .enumerate()
        {
            let path = scratch.join(format!("blob{i}"));
            fs::write(&path, &blob).unwrap();
            let diff_id = blob::digest_of(&content).hex().to_string();
            apply_layer(&path, i, 3, &descriptor(&blob), &diff_id, &mut unpacker).unwrap();
        }
        unpacker.finish().unwrap();
        for (name, text) in [("a", "plain"), ("b", "gzip"), ("c", "zstd")] {
            assert_eq!(fs::read_to_string(rootfs.join(name)).unwrap(), text);
        }
        // Content that does not match the configuration's diff_id is refused.
        let path = scratch.join("blob0");
        let wrong = "0".repeat(64);
        let e = apply_layer(&path, 0, 3, &descriptor(&plain), &wrong, &mut unpacker).unwrap_err();
        assert!(
            matches!(
                e,
                Problem::ContentMismatch {
                    index: 1,
                    count: 3,
                    ..
                }
            ),
            "{e}"
        );
    }
}
