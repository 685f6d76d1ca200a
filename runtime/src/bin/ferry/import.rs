//! `ferry import ARCHIVE OUT.sqfs`: a `docker save`/`podman save` archive or an OCI
//! image layout (folder or tar) into a SquashFS image.
//!
//! The layers are applied in order onto a private staging folder next to OUT (the
//! library's `oci` module reads the archive and applies them, each checked against the
//! digests the archive names), the image's configuration is kept as
//! `/.ferry/image.json`, then the library's `squash` packs the result.
//! The staging folder goes away in every case: success, error, or Ctrl-C.

use crate::build;
use crate::cli::Compression;
use ferry_runtime::image_config::CONFIG_PATH;
use ferry_runtime::oci::{self, Archive, ArchiveError, Unpacker};
use ferry_runtime::squash;
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

pub fn import_command(
    archive: &Path,
    out: &Path,
    force: bool,
    compression: Compression,
) -> Result<(), String> {
    squash::check_output(out, force).map_err(|e| e.to_string())?;
    ferry_runtime::interrupt::catch_interrupts()
        .map_err(|e| format!("cannot set up interrupt handling: {e}"))?;
    // Whatever failed after an interrupt failed because of it; by now all is removed.
    import(archive, out, force, compression).map_err(|e| {
        if ferry_runtime::interrupt::interrupted() {
            format!("interrupted; {} was not written", out.display())
        } else {
            e
        }
    })
}

fn import(archive: &Path, out: &Path, force: bool, compression: Compression) -> Result<(), String> {
    let what = |e: ArchiveError| format!("archive {}: {e}", archive.display());
    let source = Archive::open(archive).map_err(what)?;
    let image = source.image().map_err(what)?;

    let staging_folder = squash::StagingFolder::next_to(out, "import")?;
    let staging = staging_folder.path();
    let rootfs = staging.join("rootfs");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&rootfs)
        .map_err(|e| format!("cannot create {} ({e})", rootfs.display()))?;
    let keep_owners = ferry_runtime::is_root();
    let mut unpacker = Unpacker::new(rootfs.clone(), keep_owners);
    let progress = std::io::stderr().is_terminal();
    let count = image.layers.len();
    for (i, layer) in image.layers.iter().enumerate() {
        if progress {
            eprint!("\rferry import: layer {}/{count}  ", i + 1);
            let _ = io::stderr().flush();
        }
        source.apply_layer(layer, &mut unpacker).map_err(|e| {
            if progress {
                eprintln!(); // the error goes on a line of its own
            }
            format!(
                "archive {}: layer {} of {count} ({}): {e}",
                archive.display(),
                i + 1,
                layer.name
            )
        })?;
    }
    if progress {
        eprintln!(
            "\rferry import: {count} layers applied, packing {}",
            out.display()
        );
    }
    oci::store_config(&rootfs, &image.config).map_err(|e| format!("writing {CONFIG_PATH}: {e}"))?;
    unpacker
        .finish()
        .map_err(|e| format!("setting folder modes in the staging folder: {e}"))?;
    if progress && unpacker.skipped_devices > 0 {
        eprintln!(
            "ferry import: note: {} device files skipped (a container gets the host's /dev)",
            unpacker.skipped_devices
        );
    }
    // Without root the files are ours, not the image's owners: store them as root's.
    squash::squash(
        &rootfs,
        out,
        force,
        !keep_owners,
        build::compression(compression),
    )
    .map_err(|e| e.to_string())
}
