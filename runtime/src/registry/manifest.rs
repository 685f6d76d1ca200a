//! Manifests as registries serve them: an image manifest (OCI or Docker v2 schema 2)
//! or an index (OCI image index, Docker manifest list) from which this machine's
//! platform is picked. Only the fields ferry uses are read; the rest is ignored.

use crate::digest::Digest;
use std::fmt;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header of a manifest request: every kind ferry reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A manifest document, told apart by its media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Image(ImageManifest),
    Index(Vec<Descriptor>),
}

/// What an image is made of: its configuration and its layers, lowest first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ImageManifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A reference to a blob or manifest: its type, digest and size.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An image's platform as indexes name it (Go's GOOS/GOARCH names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// This machine: Linux and the architecture ferry was built for, in Go's names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: variant.map(String::from),
        }
    }

    /// `OS/ARCH[/VARIANT]`, as `--platform` takes it.
    pub fn parse(text: &str) -> Option<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return None;
        }
        Some(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// Whether an index entry for `offered` serves `self`: the same OS and
    /// architecture, and the variant when `self` names one (`linux/arm64` takes
    /// `linux/arm64/v8`).
    fn served_by(&self, offered: &Platform) -> bool {
        self.os == offered.os
            && self.architecture == offered.architecture
            && (self.variant.is_none() || self.variant == offered.variant)
    }
}

/// Why a manifest cannot be used; the caller names the reference.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON or lacks a field ferry needs ({0})")]
    Malformed(String),
    #[error("the registry sent a Docker schema 1 manifest, which ferry does not read; push the image again with a current docker or podman")]
    SchemaOne,
    #[error("the manifest has media type {0:?}, not a container image")]
    NotAnImage(String),
    #[error(
        "the index lists no image for {wanted}; available: {available}; choose one with --platform"
    )]
    NoPlatform { wanted: Platform, available: String },
    #[error("layer {digest}: media type {media_type:?} is not a filesystem layer ferry can apply")]
    NotALayer { digest: Digest, media_type: String },
}

#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "schemaVersion", default)]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct IndexDocument {
    manifests: Vec<Descriptor>,
}

/// Reads a manifest. Its kind is the document's own `mediaType`, else the response's
/// `Content-Type`, else (neither says) whether it lists `manifests`.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let malformed = |e: serde_json::Error| ManifestError::Malformed(e.to_string());
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(malformed)?;
    if envelope.schema_version == 1 {
        return Err(ManifestError::SchemaOne);
    }
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let kind = envelope
        .media_type
        .as_deref()
        .or(content_type)
        .filter(|k| !k.is_empty() && *k != "application/json");
    match kind {
        Some(OCI_INDEX | DOCKER_LIST) => {}
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => {}
        Some(other) if other.contains("schema1") || other.ends_with("manifest.v1+json") => {
            return Err(ManifestError::SchemaOne)
        }
        Some(other) => return Err(ManifestError::NotAnImage(other.to_string())),
        None => {}
    }
    let is_index = match kind {
        Some(k) => k == OCI_INDEX || k == DOCKER_LIST,
        None => envelope.manifests.is_some(),
    };
    if is_index {
        let index: IndexDocument = serde_json::from_slice(bytes).map_err(malformed)?;
        Ok(Document::Index(index.manifests))
    } else {
        let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(malformed)?;
        for layer in &manifest.layers {
            check_layer_type(layer)?;
        }
        Ok(Document::Image(manifest))
    }
}

/// Layers ferry applies: tar streams, uncompressed, gzip or zstd.
fn check_layer_type(layer: &Descriptor) -> Result<(), ManifestError> {
    const LAYERS: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        "",
    ];
    if LAYERS.contains(&layer.media_type.as_str()) {
        Ok(())
    } else {
        Err(ManifestError::NotALayer {
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        })
    }
}

/// The index entry for `wanted`: the first that serves it (registries list the
/// preferred variant first). Entries without a platform, or `unknown/unknown`
/// (attestations that buildx adds), are never picked.
pub fn choose<'i>(
    entries: &'i [Descriptor],
    wanted: &Platform,
) -> Result<&'i Descriptor, ManifestError> {
    let images = || {
        entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(|p| (e, p)))
            .filter(|(_, p)| p.os != "unknown")
    };
    if let Some((entry, _)) = images().find(|(_, p)| wanted.served_by(p)) {
        return Ok(entry);
    }
    let mut available: Vec<String> = images().map(|(_, p)| p.to_string()).collect();
    available.dedup();
    Err(ManifestError::NoPlatform {
        wanted: wanted.clone(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn index_json() -> String {
        format!(
            r#"{{"schemaVersion": 2, "mediaType": "{DOCKER_LIST}", "manifests": [
              {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{}", "size": 10,
                "platform": {{"architecture": "amd64", "os": "linux"}}}},
              {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{}", "size": 11,
                "platform": {{"architecture": "arm", "os": "linux", "variant": "v6"}}}},
              {{"mediaType": "{DOCKER_MANIFEST}", "digest": "{}", "size": 12,
                "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}}},
              {{"mediaType": "{OCI_MANIFEST}", "digest": "{}", "size": 13,
                "platform": {{"architecture": "unknown", "os": "unknown"}}}}
            ]}}"#,
            digest(1),
            digest(2),
            digest(3),
            digest(4)
        )
    }

    #[test]
    fn image_manifests_of_both_kinds() {
        for media_type in [OCI_MANIFEST, DOCKER_MANIFEST] {
            let text = format!(
                r#"{{"schemaVersion": 2, "mediaType": "{media_type}",
                  "config": {{"mediaType": "x", "digest": "{}", "size": 5}},
                  "layers": [
                    {{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "{}", "size": 6}},
                    {{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "{}", "size": 7}}
                  ]}}"#,
                digest(9),
                digest(1),
                digest(2)
            );
            let Document::Image(m) = parse(text.as_bytes(), None).unwrap() else {
                panic!("not an image manifest");
            };
            assert_eq!(m.config.size, 5);
            assert_eq!(m.layers.len(), 2);
            assert_eq!(m.layers[1].digest.to_string(), digest(2));
        }
        // No mediaType field: the Content-Type says, or the shape does.
        let bare = format!(
            r#"{{"schemaVersion": 2, "config": {{"digest": "{}", "size": 1}}, "layers": []}}"#,
            digest(1)
        );
        let ct = format!("{OCI_MANIFEST}; charset=utf-8");
        assert!(matches!(
            parse(bare.as_bytes(), Some(&ct)),
            Ok(Document::Image(_))
        ));
        assert!(matches!(
            parse(bare.as_bytes(), None),
            Ok(Document::Image(_))
        ));
    }

    #[test]
    fn indexes_and_platform_choice() {
        let Document::Index(entries) = parse(index_json().as_bytes(), None).unwrap() else {
            panic!("not an index");
        };
        let pick =
            |p: &str| choose(&entries, &Platform::parse(p).unwrap()).map(|d| d.digest.to_string());
        assert_eq!(pick("linux/amd64"), Ok(digest(1)));
        assert_eq!(pick("linux/arm64"), Ok(digest(3)));
        assert_eq!(pick("linux/arm64/v8"), Ok(digest(3)));
        assert_eq!(pick("linux/arm/v6"), Ok(digest(2)));
        let e = pick("linux/arm/v7").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the index lists no image for linux/arm/v7; available: linux/amd64, linux/arm/v6, \
             linux/arm64/v8; choose one with --platform"
        );
        assert!(pick("linux/s390x").is_err());
        let none = choose(&[], &Platform::host()).unwrap_err();
        assert!(none.to_string().contains("available: none"), "{none}");
        // The host's own platform is in Go's names.
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64");
        }
    }

    #[test]
    fn platform_option_syntax() {
        assert_eq!(
            Platform::parse("linux/arm64/v8")
                .map(|p| p.to_string())
                .as_deref(),
            Some("linux/arm64/v8")
        );
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
            "",
        ] {
            assert_eq!(Platform::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals() {
        let v1 = br#"{"schemaVersion": 1, "name": "x", "fsLayers": []}"#;
        assert_eq!(parse(v1, None), Err(ManifestError::SchemaOne));
        let helm = format!(
            r#"{{"schemaVersion": 2, "mediaType": "application/vnd.cncf.helm.chart.v1+json",
               "config": {{"digest": "{}", "size": 1}}}}"#,
            digest(1)
        );
        assert!(matches!(
            parse(helm.as_bytes(), None),
            Err(ManifestError::NotAnImage(_))
        ));
        let artifact = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
               "config": {{"digest": "{}", "size": 1}},
               "layers": [{{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": "{}", "size": 1}}]}}"#,
            digest(1),
            digest(2)
        );
        assert!(matches!(
            parse(artifact.as_bytes(), None),
            Err(ManifestError::NotALayer { .. })
        ));
        assert!(matches!(
            parse(b"{", None),
            Err(ManifestError::Malformed(_))
        ));
        let bad_digest = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
               "config": {{"digest": "md5:abc", "size": 1}}, "layers": []}}"#
        );
        assert!(matches!(
            parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Malformed(_))
        ));
    }
}
