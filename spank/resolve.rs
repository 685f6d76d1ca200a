//! `--container=docker://REF` and `--container=sha256:HEX` at submission: srun or
//! sbatch (running as the user) asks the `ferry` command to resolve the reference and
//! take the image from a store (pulling it there if needed, with progress on the
//! user's terminal), and the job then carries the stored file pinned by its SHA-256.
//! Every node and step runs exactly those bytes, even if the tag moves during the job.
//! The plugin links no HTTP code: the work is done by a separate process.

use ferry_runtime::store::Resolution;
use std::path::Path;
use std::process::{Command, Stdio};

/// The reference as the user gave it, after resolution (for the provenance record).
pub const REFERENCE_VAR: &str = "FERRY_IMAGE_REFERENCE";
/// The registry manifest digest the reference resolved to.
pub const MANIFEST_VAR: &str = "FERRY_IMAGE_MANIFEST_DIGEST";
/// The pinned image these two describe; a step records them only for that image.
pub const RESOLVED_VAR: &str = "FERRY_IMAGE_RESOLVED";

pub use ferry_runtime::store::names_a_stored_image as needs_resolving;

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
    match Resolution::from_answer(&output.stdout) {
        Some(Ok(answer)) => Ok(Resolved {
            pinned: answer.pinned(),
            reference: answer.reference,
            manifest_digest: answer.manifest_digest,
        }),
        Some(Err(error)) => Err(error),
        None => Err(format!(
            "--container={image}: {} gave no answer this plugin can read (exit status {}); run `ferry resolve {image}` to see why; the plugin and the ferry command must be of the same version",
            ferry.display(),
            output.status
        )),
    }
}
