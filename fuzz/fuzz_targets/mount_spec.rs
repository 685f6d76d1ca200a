//! `--container-mounts` and `ferry run --mount` values: user input parsed on the node.
#![no_main]
use ferry_runtime::MountSpec;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(mounts) = MountSpec::parse_list(&text, Path::new("/home/u/run")) {
        for m in mounts {
            // What the parser promises the rest of the runtime.
            assert!(m.dest.is_absolute(), "{m:?}");
            assert!(m.dest != Path::new("/"), "{m:?}");
            assert!(!m.dest.components().any(|c| c == Component::ParentDir), "{m:?}");
            assert!(m.source.is_absolute(), "{m:?}");
        }
    }
});
