//! `--container=docker://REF` and `--container=sha256:HEX` at submission: srun or
//! sbatch (running as the user) asks the `ferry` command to resolve the reference and
//! take the image from a store (pulling it there if needed, with progress on the
//! user's terminal), and the job then carries the stored file pinned by its SHA-256.
//! Every node and step runs exactly those bytes, even if the tag moves during the job.
//! The plugin links no HTTP code: the work is done by a separate process.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

/// The reference as the user gave it, after resolution (for the provenance record).
pub const REFERENCE_VAR: &str = "FERRY_IMAGE_REFERENCE";
/// The registry manifest digest the reference resolved to.
pub const MANIFEST_VAR: &str = "FERRY_IMAGE_MANIFEST_DIGEST";
/// The pinned image these two describe; a step records them only for that image.
pub const RESOLVED_VAR: &str = "FERRY_IMAGE_RESOLVED";

/// An image that names no file: a registry reference or a bare SquashFS digest.
pub fn needs_resolving(image: &str) -> bool {
    image.starts_with("docker://") || is_bare_digest(image)
}

fn is_bare_digest(image: &str) -> bool {
    image
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What `ferry resolve --json` answered.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    /// `PATH@sha256:HEX`: the stored file pinned by its SHA-256.
    pub pinned: String,
    pub reference: Option<String>,
    pub manifest_digest: Option<String>,
}

/// Runs `ferry resolve` for `image`; its progress goes to the user's terminal, its
/// answer (or its one-line error) comes back as JSON on stdout.
pub fn resolve(ferry: &Path, site_config: Option<&Path>, image: &str) -> Result<Resolved, String> {
    let mut command = Command::new(ferry);
    command.arg("resolve").arg("--json");
    if let Some(file) = site_config {
        command.arg("--site-config").arg(file);
    }
    let output = command
        .arg("--")
        .arg(image)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| {
            format!(
                "--container={image}: cannot run {} to resolve it ({e}); ask the administrators whether ferry is installed on this host",
                ferry.display()
            )
        })?;
    let answer: Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        format!(
            "--container={image}: {} gave no answer (exit status {}); run `ferry resolve {image}` to see why",
            ferry.display(),
            output.status
        )
    })?;
    if let Some(error) = answer["error"].as_str() {
        return Err(error.to_string());
    }
    parse_answer(&answer).ok_or_else(|| {
        format!(
            "--container={image}: {} answered in a form this plugin does not know; the plugin and the ferry command must be of the same version",
            ferry.display()
        )
    })
}

fn parse_answer(answer: &Value) -> Option<Resolved> {
    let path = answer["path"].as_str()?;
    let digest = answer["image_digest"].as_str()?;
    if !Path::new(path).is_absolute() || !is_bare_digest(digest) {
        return None;
    }
    Some(Resolved {
        pinned: format!("{path}@{digest}"),
        reference: answer["reference"].as_str().map(str::to_string),
        manifest_digest: answer["manifest_digest"].as_str().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn which_images_are_resolved() {
        let hex = "ab".repeat(32);
        assert!(needs_resolving("docker://python:3.12"));
        assert!(needs_resolving(&format!("sha256:{hex}")));
        assert!(!needs_resolving("sha256:abc"));
        assert!(!needs_resolving(&format!("/images/x.sqfs@sha256:{hex}")));
        assert!(!needs_resolving("docker.sqfs"));
        assert!(!needs_resolving("none"));
    }

    #[test]
    fn the_answer_becomes_a_pinned_path() {
        let digest = format!("sha256:{}", "cd".repeat(32));
        let answer = json!({
            "path": "/home/a/.cache/ferry/images/images/x.sqfs",
            "image_digest": digest,
            "reference": "docker.io/library/python:3.12",
            "manifest_digest": format!("sha256:{}", "ef".repeat(32)),
        });
        let r = parse_answer(&answer).unwrap();
        assert_eq!(
            r.pinned,
            format!("/home/a/.cache/ferry/images/images/x.sqfs@{digest}")
        );
        assert_eq!(
            r.reference.as_deref(),
            Some("docker.io/library/python:3.12")
        );
        for bad in [
            json!({"path": "relative.sqfs", "image_digest": digest}),
            json!({"path": "/x.sqfs", "image_digest": "sha256:short"}),
            json!({"path": "/x.sqfs"}),
        ] {
            assert_eq!(parse_answer(&bad), None, "{bad}");
        }
    }
}
