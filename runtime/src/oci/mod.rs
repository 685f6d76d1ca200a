//! Container images as `docker save`/`podman save` and OCI tools write them: the
//! archive (`archive`), its layers applied onto a folder (`layers`), and the image's
//! configuration stored where `ferry run` reads it (`store_config`). `ferry import` is
//! the CLI glue around these; the fuzz targets call them directly.

pub mod archive;
pub mod layers;

use crate::image_config::ImageConfig;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

pub use archive::{Archive, ArchiveError, Image, Layer};
pub use layers::{remove_any, LayerError, Unpacker};

/// Writes `config` as `/.ferry/image.json` of the root folder `rootfs` (what
/// `image_config` reads back), replacing whatever a layer put there.
pub fn store_config(rootfs: &Path, config: &ImageConfig) -> io::Result<()> {
    let dir = rootfs.join(".ferry");
    if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
        remove_any(&dir)?;
        std::fs::DirBuilder::new().mode(0o755).create(&dir)?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let file = dir.join("image.json");
    remove_any(&file)?;
    let mut text = serde_json::to_string_pretty(config).map_err(io::Error::other)?;
    text.push('\n');
    std::fs::write(&file, text)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
}
