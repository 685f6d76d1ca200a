//! What a test needs from the host, and the rule when something is missing: the test
//! fails, naming it. Tests that need more than a build are `#[ignore]`d with a reason,
//! so a plain `cargo test` shows them as ignored; a test that runs is never passed
//! without having checked anything.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Fails the calling test when `missing` names anything, with each item and how to
/// prepare the host.
#[track_caller]
pub fn require(missing: &[String]) {
    if !missing.is_empty() {
        missing_prerequisite(&missing.join("; "));
    }
}

/// Fails the calling test: `what` (a tool, a file, a service) is missing here.
#[track_caller]
pub fn missing_prerequisite(what: &str) -> ! {
    panic!(
        "missing prerequisite: {what}\n\
         (this test needs a prepared host: run the whole suite as root with tests/run, or run \
         tests/prepare-host, deploy/build && deploy/install and deploy/slurm-cluster as it \
         needs, then cargo test -- --include-ignored)"
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Finds `name` on PATH or in the standard folders (a non-login root shell may lack sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let standard = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let found = path
        .split(':')
        .chain(standard)
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
}

/// "TOOL not found on PATH" for each of `tools` that is not there.
pub fn missing_tools(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|tool| find_tool(tool).is_none())
        .map(|tool| format!("{tool} not found on PATH"))
        .collect()
}

/// Why `busybox` cannot go into a test image, if it cannot: the images have no libc.
pub fn static_busybox_problem(busybox: &Path) -> Option<String> {
    let shown = busybox.display();
    match fs::read(busybox) {
        Err(e) => Some(format!("{shown}: {e} (install busybox-static)")),
        Ok(elf) if !is_static_elf(&elf) => Some(format!(
            "{shown} is not statically linked (install busybox-static)"
        )),
        Ok(_) => None,
    }
}

/// A 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
fn is_static_elf(elf: &[u8]) -> bool {
    let uint = |at: usize, len: usize| -> Option<usize> {
        let bytes = elf.get(at..at + len)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize),
        )
    };
    if elf.get(0..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (uint(0x20, 8), uint(0x36, 2), uint(0x38, 2))
    else {
        return false;
    };
    const PT_INTERP: usize = 3;
    (0..phnum).all(|i| uint(phoff + i * phentsize, 4).is_some_and(|t| t != PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ELF header fields is_static_elf reads, with one program header of `kind`.
    fn elf_with_program_header(kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&kind.to_le_bytes());
        elf
    }

    #[test]
    fn an_elf_with_an_interpreter_is_not_static() {
        assert!(is_static_elf(&elf_with_program_header(1)));
        assert!(!is_static_elf(&elf_with_program_header(3)));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    #[should_panic(expected = "missing prerequisite: root; mksquashfs not found on PATH")]
    fn a_missing_prerequisite_fails_the_test() {
        require(&[
            "root".to_string(),
            "mksquashfs not found on PATH".to_string(),
        ]);
    }

    #[test]
    fn nothing_missing_lets_the_test_run() {
        require(&[]);
    }
}
