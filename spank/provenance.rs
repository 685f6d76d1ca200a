//! The provenance record of a containerized step: which image (path, digest, size,
//! mtime) ran for whom, where, with which binds and versions. One JSON object, sent to
//! syslog for the site and, with `--container-provenance=FILE`, appended as one line to
//! a file the user keeps with their results.

use ferry_runtime::{Container, MountSpec};
use serde_json::{json, Value};

pub struct StepIds {
    pub job: Option<u32>,
    pub step: String,
    pub node: String,
    pub user: String,
    pub uid: u32,
    pub slurm_version: Option<String>,
}

pub fn record(ids: &StepIds, container: &Container, mounts: &[MountSpec]) -> Value {
    let facts = &container.facts;
    json!({
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
        "digest": facts.digest.as_ref().map(|d| d.to_string()),
        "digest_source": facts.digest_source,
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
    })
}
