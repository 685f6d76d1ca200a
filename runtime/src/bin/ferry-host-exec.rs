//! `ferry-host-exec`: runs one of the host's Slurm commands from inside a container.
//!
//! Linked as `/.ferry/bin/srun` (and sbatch, squeue, ...) in every container a Slurm
//! step gets. The image may have another C library or none at all, so this program is
//! static and runs the host's binary through the host's own dynamic loader, with the
//! host's library folders, all under the read-only host root at /.ferry/host.
//! Built static by deploy/build (`-C target-feature=+crt-static`).

use ferry_runtime::exec::execv;
use ferry_runtime::request::HOST_ROOT;
use ferry_runtime::resolve::in_tree;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

const SEARCH: &[&str] = &["/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"];
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let name = Path::new(&args[0])
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let host = Path::new(HOST_ROOT);
    let Some(program) = SEARCH
        .iter()
        .filter_map(|d| in_tree(host, &Path::new(d).join(&name)).ok())
        .find(|p| p.is_file())
    else {
        fail(&format!(
            "{}: not installed on this host",
            name.to_string_lossy()
        ));
    };
    let loader = match interpreter(&program) {
        Some(interp) => in_tree(host, &interp).unwrap_or_else(|e| {
            fail(&format!(
                "{}: cannot find its ELF interpreter {}: {e}",
                program.display(),
                interp.display()
            ))
        }),
        None => fail(&format!(
            "{}: cannot read its ELF interpreter",
            program.display()
        )),
    };
    let libs: Vec<String> = LIB_DIRS
        .iter()
        .filter_map(|d| in_tree(host, Path::new(d)).ok())
        .filter(|p| p.is_dir())
        .map(|p| p.display().to_string())
        .collect();
    let mut argv = vec![
        cstr(loader.as_os_str().as_bytes()),
        cstr(b"--library-path"),
        cstr(libs.join(":").as_bytes()),
    ];
    argv.push(cstr(program.as_os_str().as_bytes()));
    argv.extend(args[1..].iter().map(|a| cstr(a.as_bytes())));
    let err = execv(&argv[0], &argv);
    fail(&format!("cannot run {}: {err}", program.display()));
}

/// The PT_INTERP path of a 64-bit little-endian ELF executable.
fn interpreter(program: &Path) -> Option<PathBuf> {
    let data = std::fs::read(program).ok()?;
    if data.get(0..4)? != b"\x7fELF" || data.get(4)? != &2 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?) as usize);
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(data.get(ph..ph + 4)?.try_into().ok()?) == 3 {
            let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
            let raw = data.get(offset..offset + size)?;
            let raw = raw.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(OsString::from_vec(raw.to_vec())));
        }
    }
    None
}

fn cstr(b: &[u8]) -> CString {
    CString::new(b).unwrap_or_else(|_| fail("an argument contains a NUL byte"))
}

fn fail(message: &str) -> ! {
    eprintln!("ferry-host-exec: {message}");
    std::process::exit(127);
}
