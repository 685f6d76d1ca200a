//! `ferry check-config [FILE]`: validate a site file and print the policy it makes.

use ferry_runtime::site::{Site, DEFAULT_SITE_CONFIG};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn check_config(file: Option<PathBuf>) -> ExitCode {
    let named = file.is_some();
    let path = file.unwrap_or_else(|| PathBuf::from(DEFAULT_SITE_CONFIG));
    if !named && !path.exists() {
        // What the plugin does without a site file (and no site_config argument).
        println!("{}: none; the defaults apply:", path.display());
        print!("{}", Site::default().describe());
        return ExitCode::SUCCESS;
    }
    let site = match Site::load(&path) {
        Ok(site) => site,
        Err(message) => {
            eprintln!("ferry: {message}");
            return ExitCode::from(1);
        }
    };
    println!("{}: valid; effective policy:", path.display());
    print!("{}", site.describe());
    // Facts of this host that make the policy work, or not, right now.
    let mut problems = 0;
    for dir in &site.images.trusted_dirs {
        if let Err(why) = root_only_chain(dir) {
            eprintln!(
                "ferry: warning: trusted folder {}: {why}; images there are treated as untrusted",
                dir.display()
            );
            problems += 1;
        }
    }
    let helper = &site.images.fuse_helper;
    if site.images.untrusted == ferry_runtime::site::Untrusted::Fuse && !helper.is_file() {
        eprintln!(
            "ferry: warning: fuse_helper {} is not installed; untrusted images will fail (apt install squashfuse)",
            helper.display()
        );
        problems += 1;
    }
    for m in site.site_mounts.iter().filter(|m| !m.optional) {
        if !m.source.exists() {
            eprintln!(
                "ferry: warning: site mount {} is missing here and not optional: every step on this node will fail",
                m.source.display()
            );
            problems += 1;
        }
    }
    if problems > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The folder and all above it must be root's and writable by root only.
fn root_only_chain(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    for d in real.ancestors() {
        let m = std::fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        if m.uid() != 0 || m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is not owned by root or is writable by group or others",
                d.display()
            ));
        }
    }
    Ok(())
}
