//! `docker save`/`podman save` archives and OCI layouts as tar files (`ferry import`):
//! the tar index, manifest.json, index.json (nested indexes included), the manifests and
//! the configuration blob, all untrusted. Any bytes: no panic, and an image found names
//! only layers inside the archive; its layers are applied (with their digests checked)
//! onto a scratch folder that nothing leaves.
#![no_main]
use ferry_runtime::oci::{remove_any, Archive, Unpacker};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let scratch = std::env::temp_dir().join(format!("ferry-fuzz-archive-{}", std::process::id()));
    let _ = remove_any(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let file = scratch.join("archive.tar");
    std::fs::write(&file, data).unwrap();
    if let Ok(archive) = Archive::open(&file) {
        if let Ok(image) = archive.image() {
            let rootfs = scratch.join("rootfs");
            std::fs::create_dir(&rootfs).unwrap();
            let mut unpacker = Unpacker::new(rootfs, false);
            for layer in &image.layers {
                assert!(!layer.name.starts_with('/') && !layer.name.split('/').any(|p| p == ".."));
                if archive.apply_layer(layer, &mut unpacker).is_err() {
                    break;
                }
            }
            let _ = unpacker.finish();
        }
    }
    let mut left: Vec<PathBuf> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert!(left.len() <= 2, "{left:?}");
    remove_any(&scratch).unwrap();
});
