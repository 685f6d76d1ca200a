//! `--container=IMAGE[@sha256:HEX]`: split into path and pinned digest.
#![no_main]
use ferry_runtime::digest::{split_pinned, Digest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok((path, pin)) = split_pinned(&text) {
        assert!(text.starts_with(path));
        if let Some(pin) = pin {
            // A parsed digest prints back to a form that parses to itself.
            assert_eq!(Digest::parse(&pin.to_string()), Some(pin));
        }
    }
    let _ = Digest::parse(&text);
});
