//! SquashFS and ext superblocks: read from a user's file to tell its format (as root,
//! before mounting) and by `ferry inspect`. Any bytes: no panic.
#![no_main]
use ferry_runtime::superblock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if superblock::is_squashfs(data) {
        let _ = superblock::squashfs(data);
    }
    let _ = superblock::squashfs(data);
    if superblock::is_ext(data) {
        let _ = superblock::ext(data);
    }
    let _ = superblock::ext(data);
});
