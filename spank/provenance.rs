//! The provenance record of a containerized step: which image (path, digest, size,
//! mtime) ran for whom, where, with which binds and versions. One JSON object, sent to
//! syslog for the site and, with `--container-provenance=FILE`, appended as one line to
//! a file the user keeps with their results.

use ferry_runtime::{Container, ImageFacts, MountSpec};
use serde_json::{json, Value};

pub struct StepIds {
    pub job: Option<u32>,
    pub step: String,
    pub node: String,
    pub user: String,
    pub uid: u32,
    pub slurm_version: Option<String>,
}

/// Where a pulled image came from, as srun/sbatch resolved it at submission. The
/// job's environment carries it, so it is the user's word: the image itself is what
/// the pinned digest verifies.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    pub reference: String,
    pub manifest_digest: String,
}

/// Longest reference recorded (a registry reference is a host, a path and a tag).
const MAX_REFERENCE: usize = 512;

impl Origin {
    /// The origin the job's environment gives, if it belongs to `container` (the
    /// step's image as submitted) and reads as a reference and a digest.
    pub fn from_job(
        container: Option<&str>,
        resolved: Option<&str>,
        reference: Option<String>,
        manifest_digest: Option<String>,
    ) -> Option<Origin> {
        if container.is_none() || container != resolved {
            return None;
        }
        let reference = reference.filter(|r| {
            !r.is_empty() && r.len() <= MAX_REFERENCE && r.chars().all(|c| c.is_ascii_graphic())
        })?;
        let manifest_digest = manifest_digest
            .and_then(|d| ferry_runtime::digest::Digest::parse(&d))?
            .to_string();
        Some(Origin {
            reference,
            manifest_digest,
        })
    }
}

pub fn record(
    ids: &StepIds,
    container: &Container,
    mounts: &[MountSpec],
    origin: Option<&Origin>,
) -> Value {
    let facts = &container.facts;
    let mut record = json!({
        "type": "ferry-provenance",
        "version": 1,
        "time_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "job": ids.job,
        "step": ids.step,
        "node": ids.node,
        "user": ids.user,
        "uid": ids.uid,
        "image": container.image.display().to_string(),
        "format": facts.format,
        "mounted_by": facts.mounted_by,
        "image_cache": facts.cache.as_ref().map(|c| c.outcome.name()),
        "pinned": container.pinned,
        "size": facts.size,
        "mtime_unix": facts.mtime_unix,
        "mounts": mounts
            .iter()
            .map(|m| json!({
                "source": m.source.display().to_string(),
                "destination": m.dest.display().to_string(),
                "readonly": m.readonly,
            }))
            .collect::<Vec<_>>(),
        "workdir": container.workdir.display().to_string(),
        "ferry_version": env!("CARGO_PKG_VERSION"),
        "slurm_version": ids.slurm_version,
        "slurm_built_for": env!("FERRY_SLURM_VERSION"),
    });
    if let (Some(fields), Value::Object(digest)) = (record.as_object_mut(), digest_fields(facts)) {
        fields.extend(digest);
    }
    if let Some(named) = &container.named {
        // A joined container was built by the step that made it, from the same image.
        record["container_name"] = json!(named.name);
        record["container_name_use"] = json!(if named.joined { "joined" } else { "created" });
    }
    if let Some(origin) = origin {
        record["reference"] = json!(origin.reference);
        record["manifest_digest"] = json!(origin.manifest_digest);
    }
    record
}

/// The image's digest as the record gives it: `digest` and `digest_source` (`cache` or
/// `computed`) are null when it is unknown, and `digest_status` says which case it is
/// (`verified`, `cached`, `unknown_unpinned`, `folder`: see `digest::Status`).
fn digest_fields(facts: &ImageFacts) -> Value {
    json!({
        "digest": facts.digest.as_ref().map(|d| d.to_string()),
        "digest_source": facts.digest_source,
        "digest_status": facts.digest_status,
    })
}

#[cfg(test)]
mod tests {
    use super::{digest_fields, Origin};
    use ferry_runtime::digest::{Digest, Source, Status};
    use ferry_runtime::ImageFacts;
    use serde_json::json;

    #[test]
    fn the_record_says_how_the_digest_is_known_or_why_it_is_not() {
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        let facts = |digest: Option<Digest>, source, status| ImageFacts {
            digest,
            digest_source: source,
            digest_status: status,
            ..ImageFacts::default()
        };
        let hex = digest.to_string();
        for (facts, expected) in [
            (
                facts(
                    Some(digest.clone()),
                    Some(Source::Computed),
                    Status::Verified,
                ),
                json!({"digest": hex, "digest_source": "computed", "digest_status": "verified"}),
            ),
            (
                facts(Some(digest.clone()), Some(Source::Cache), Status::Cached),
                json!({"digest": hex, "digest_source": "cache", "digest_status": "cached"}),
            ),
            (
                facts(None, None, Status::UnknownUnpinned),
                json!({"digest": null, "digest_source": null, "digest_status": "unknown_unpinned"}),
            ),
            (
                facts(None, None, Status::Folder),
                json!({"digest": null, "digest_source": null, "digest_status": "folder"}),
            ),
        ] {
            assert_eq!(digest_fields(&facts), expected);
        }
        // Facts that say nothing say the digest is unknown, never that it was verified.
        assert_eq!(
            digest_fields(&ImageFacts::default())["digest_status"],
            "unknown_unpinned"
        );
    }

    #[test]
    fn an_origin_is_recorded_only_for_the_image_it_was_resolved_to() {
        let pinned = format!("/store/images/x.sqfs@sha256:{}", "ab".repeat(32));
        let manifest = format!("sha256:{}", "cd".repeat(32));
        let origin = |container: &str, reference: &str, digest: &str| {
            Origin::from_job(
                Some(container),
                Some(&pinned),
                Some(reference.to_string()),
                Some(digest.to_string()),
            )
        };
        assert_eq!(
            origin(&pinned, "127.0.0.1:5000/app:1", &manifest),
            Some(Origin {
                reference: "127.0.0.1:5000/app:1".into(),
                manifest_digest: manifest.clone(),
            })
        );
        // Another image (an srun in the job with its own --container), a forged
        // digest, a reference with spaces or control characters: nothing recorded.
        assert_eq!(
            origin("/other.sqfs", "127.0.0.1:5000/app:1", &manifest),
            None
        );
        assert_eq!(origin(&pinned, "127.0.0.1:5000/app:1", "sha256:zz"), None);
        assert_eq!(origin(&pinned, "app 1\n", &manifest), None);
        assert_eq!(Origin::from_job(None, None, None, None), None);
    }
}
