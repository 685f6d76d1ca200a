//! `ferry doctor`: checks that a node can run ferry jobs and says how to fix what is
//! wrong, one line per finding (the checks are the library's `node_checks`). Every file
//! it reads is taken under `--root`, so it can check a chroot or a node image.

use ferry_runtime::node_checks::{self, Level};
use std::path::Path;
use std::process::ExitCode;

pub fn doctor(root: &Path, plugstack: &Path) -> ExitCode {
    let findings = node_checks::check_node(root, plugstack, crate::version::SLURM);
    let failed = report(&findings);
    if failed == 0 {
        println!("ferry doctor: this node is ready for ferry jobs");
        ExitCode::SUCCESS
    } else {
        println!("ferry doctor: this node is NOT ready: {failed} problem(s) to fix (FAIL lines)");
        ExitCode::from(1)
    }
}

/// `ferry doctor --user` (and doctor run by a user): can this machine run images
/// without root?
pub fn doctor_user() -> ExitCode {
    let failed = report(&node_checks::check_user());
    if failed == 0 {
        println!("ferry doctor: you can run images without root here (ferry run IMAGE -- CMD)");
        ExitCode::SUCCESS
    } else {
        println!("ferry doctor: images cannot all run without root here: {failed} problem(s) (FAIL lines); the Slurm plugin needs none of this");
        ExitCode::from(1)
    }
}

/// Prints one line per finding; returns how many failed.
fn report(findings: &[node_checks::Finding]) -> usize {
    for f in findings {
        match f.level {
            Level::Ok => println!("ok    {}", f.what),
            Level::Warn => println!("warn  {}; fix: {}", f.what, f.fix),
            Level::Fail => println!("FAIL  {}; fix: {}", f.what, f.fix),
        }
    }
    findings.iter().filter(|f| f.level == Level::Fail).count()
}
