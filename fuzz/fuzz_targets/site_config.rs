//! The site file: written by admins, but a parser that panics or accepts nonsense
//! would stop every step on the node.
#![no_main]
use ferry_runtime::site::Site;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    if let Ok(site) = Site::parse(data) {
        let _ = site.describe();
        let _ = site.images.where_trusted();
        let normal = |p: &Path| {
            p.is_absolute()
                && !p
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        };
        assert!(site.images.trusted_dirs.iter().all(|p| normal(p)));
        assert!(site.images.fuse_helper.is_absolute());
        for m in &site.site_mounts {
            assert!(normal(&m.source) && normal(&m.dest) && m.dest != Path::new("/"));
        }
        assert!(site.writable_layer_size >= 1 << 20);
    }
});
