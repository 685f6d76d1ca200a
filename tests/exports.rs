//! The plugin's dynamic symbol table holds only what Slurm's loader looks up: the three
//! plugin_* data symbols and the slurm_spank_* hooks we implement. Exporting more would
//! make Slurm run extra hooks (job_prolog/epilog spawn processes) or call our init/fini.

use std::path::PathBuf;
use std::process::Command;
use test_support::missing_prerequisite;

/// The release build that deploy/build makes and the test command installs (cargo does
/// not build a cdylib for integration tests).
#[track_caller]
fn plugin() -> PathBuf {
    // target/debug/deps/exports-HASH -> target/release/libferry_spank.so
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    let so = target.join("release/libferry_spank.so");
    if !so.exists() {
        missing_prerequisite(&format!(
            "{} (build it first with deploy/build; the test command does)",
            so.display()
        ));
    }
    so
}

#[test]
#[ignore = "needs the release plugin that deploy/build makes: run tests/run, or after deploy/build cargo test -- --include-ignored"]
fn only_plugin_symbols_and_our_hooks_are_exported() {
    let so = plugin();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("nm (binutils) is needed");
    assert!(out.status.success());
    let mut names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "plugin_name",
            "plugin_type",
            "plugin_version",
            "slurm_spank_exit",
            "slurm_spank_init",
            "slurm_spank_init_post_opt",
            "slurm_spank_task_exit",
            "slurm_spank_task_init",
            "slurm_spank_task_init_privileged",
        ]
    );
}

#[test]
#[ignore = "needs the release plugin that deploy/build makes: run tests/run, or after deploy/build cargo test -- --include-ignored"]
fn plugin_version_is_the_slurm_it_was_built_for() {
    let so = plugin();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin_version"));
    let version_header = "/usr/include/slurm/slurm_version.h";
    let header = std::fs::read_to_string(version_header).unwrap_or_else(|e| {
        missing_prerequisite(&format!(
            "{version_header} to compare with: {e} (Slurm's headers, libslurm-dev)"
        ))
    });
    // objdump the 4 bytes of plugin_version and compare with SLURM_VERSION_NUMBER.
    let want = header
        .lines()
        .find_map(|l| l.strip_prefix("#define SLURM_VERSION_NUMBER"))
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .expect("SLURM_VERSION_NUMBER in slurm_version.h");
    let bytes = std::fs::read(&so).unwrap();
    let sym = Command::new("nm")
        .args(["-D", "--defined-only", "-S"])
        .arg(&so)
        .output()
        .unwrap();
    let line = String::from_utf8(sym.stdout)
        .unwrap()
        .lines()
        .find(|l| l.ends_with(" plugin_version"))
        .unwrap()
        .to_string();
    let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
    let offset = file_offset(&so, addr);
    let got = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
    assert_eq!(
        got, want,
        "plugin_version {got:#x} != SLURM_VERSION_NUMBER {want:#x}"
    );
}

/// Maps a virtual address to a file offset through the section headers (readelf -S).
/// slurmstepd loads the plugin into every step: the registry client (an HTTP and TLS
/// stack) lives in the `ferry` command alone, which srun and sbatch run for
/// `--container=docker://` (deploy/build builds the plugin apart from the CLI so cargo
/// does not unify the runtime's features).
#[test]
#[ignore = "needs the release plugin that deploy/build makes: run tests/run, or after deploy/build cargo test -- --include-ignored"]
fn the_plugin_links_no_http_or_tls_code() {
    let so = std::fs::read(plugin()).unwrap();
    for name in ["ureq", "rustls", "webpki"] {
        assert!(
            !so.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} is linked into the plugin"
        );
    }
}

fn file_offset(so: &PathBuf, addr: u64) -> usize {
    let out = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(so)
        .output()
        .unwrap();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // [Nr] Name Type Address Off Size ...
        let Some(pos) = f.iter().position(|x| *x == "PROGBITS") else {
            continue;
        };
        let (Some(a), Some(o), Some(s)) = (f.get(pos + 1), f.get(pos + 2), f.get(pos + 3)) else {
            continue;
        };
        let (a, o, s) = (
            u64::from_str_radix(a, 16).unwrap_or(0),
            u64::from_str_radix(o, 16).unwrap_or(0),
            u64::from_str_radix(s, 16).unwrap_or(0),
        );
        if addr >= a && addr < a + s {
            return (addr - a + o) as usize;
        }
    }
    panic!("plugin_version at {addr:#x} is in no PROGBITS section");
}
