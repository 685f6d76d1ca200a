//! `ferry check-config [FILE]`: validate a site file and print the policy it makes.

use ferry_runtime::node_checks::{site_needs, Level};
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
        Err(message) => return crate::say::fail(&message, 1),
    };
    println!("{}: valid; effective policy:", path.display());
    print!("{}", site.describe());
    // Facts of this host that make the policy work, or not, right now (the checks
    // `ferry doctor` makes of a node's site file).
    let problems: Vec<_> = site_needs(Path::new("/"), &site)
        .into_iter()
        .filter(|f| f.level != Level::Ok)
        .collect();
    for f in &problems {
        crate::say::warning(&format!("{}; fix: {}", f.what, f.fix));
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
