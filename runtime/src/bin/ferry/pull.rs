//! `ferry pull REF OUT.sqfs`: an image from an OCI registry into a SquashFS image, with
//! no root and no daemon. The library resolves the reference to its manifests, then
//! downloads and applies the layers onto a private staging folder next to OUT;
//! `build::squash` packs the result. The staging folder goes away in every case.

use crate::build;
use crate::cli::Compression;
use ferry_runtime::oci::remove_any;
use ferry_runtime::registry::{self, pull::INSECURE_ENV, PullOptions};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub fn pull_command(
    reference: &str,
    out: &Path,
    force: bool,
    compression: Compression,
    platform: Option<&str>,
    insecure_registries: &[String],
) -> Result<(), String> {
    let env = std::env::var(INSECURE_ENV).ok();
    let options = PullOptions {
        platform: platform
            .map(PullOptions::parse_platform)
            .transpose()
            .map_err(|e| e.to_string())?,
        insecure_registries: PullOptions::insecure_registries(insecure_registries, env.as_deref())
            .map_err(|e| e.to_string())?,
        progress: true,
    };
    build::check_output(out, force)?;
    ferry_runtime::interrupt::catch_interrupts()
        .map_err(|e| format!("cannot set up interrupt handling: {e}"))?;
    pull(reference, out, force, compression, &options).map_err(|e| {
        if ferry_runtime::interrupt::interrupted() {
            format!("interrupted; {} was not written", out.display())
        } else {
            e
        }
    })?;
    println!("{}", out.display());
    Ok(())
}

fn pull(
    reference: &str,
    out: &Path,
    force: bool,
    compression: Compression,
    options: &PullOptions,
) -> Result<(), String> {
    let resolved = registry::resolve(reference, options).map_err(|e| e.to_string())?;
    let staging = build::sibling(out, "pull");
    let _ = remove_any(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| {
            format!(
                "cannot create the staging folder {} ({e})",
                staging.display()
            )
        })?;
    let _cleanup = RemoveTreeOnDrop(staging.clone());
    let rootfs = registry::fetch_and_unpack(&resolved, &staging).map_err(|e| e.to_string())?;
    // Without root the files are ours, not the image's owners: store them as root's.
    build::squash(&rootfs, out, force, !ferry_runtime::is_root(), compression)
}

struct RemoveTreeOnDrop(PathBuf);

impl Drop for RemoveTreeOnDrop {
    fn drop(&mut self) {
        let _ = remove_any(&self.0);
    }
}
