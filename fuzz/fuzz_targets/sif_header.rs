//! The SIF header and descriptor table: parsed as root from a user's file before any
//! mount. Whatever the bytes, parsing returns (no panic) and everything it accepts lies
//! inside the file.
#![no_main]
use ferry_runtime::sif::{self, Root};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes choose the claimed file size (a file may be longer than what
    // was read); the rest is the file's start. Fuzzing the magic away is wasted time.
    let (size, bytes) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => return,
    };
    let mut file = bytes.to_vec();
    if file.len() >= 42 {
        file[32..42].copy_from_slice(b"SIF_MAGIC\0");
    }
    let file_size = size.max(file.len() as u64);
    let end = match sif::table_end(&file, file_size) {
        Ok(end) => end,
        Err(_) => return,
    };
    assert!(end <= file_size);
    let Ok(parsed) = sif::parse(&file, file_size) else {
        return;
    };
    assert!(end <= file.len() as u64, "parse accepted a table past the bytes given");
    for d in &parsed.descriptors {
        assert!(d.offset.checked_add(d.size).is_some_and(|e| e <= file_size));
    }
    if let Root::Squashfs { offset, size } = parsed.root() {
        assert!(offset + size <= file_size);
    }
    let _ = parsed.is_signed();
});
