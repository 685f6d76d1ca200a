//! An image layer (a tar stream) applied by `ferry import` onto its staging folder: names
//! with `..`, symlinked parents pointing out, hard links, whiteouts and opaque markers are
//! all untrusted. Any bytes: no panic, and nothing is written outside the root (the
//! folder beside it stays empty).
#![no_main]
use ferry_runtime::oci::{remove_any, Unpacker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = std::env::temp_dir().join(format!("ferry-fuzz-layer-{}", std::process::id()));
    let _ = remove_any(&scratch);
    let root = scratch.join("root");
    let beside = scratch.join("beside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&beside).unwrap();
    let mut unpacker = Unpacker::new(root.clone(), false);
    // The same bytes twice: the second layer lands on what the first made.
    if unpacker.apply_layer(data).is_ok() {
        let _ = unpacker.apply_layer(data);
    }
    let _ = unpacker.finish();
    let outside: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "root" && n != "beside")
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    assert_eq!(std::fs::read_dir(&beside).unwrap().count(), 0);
    remove_any(&scratch).unwrap();
});
