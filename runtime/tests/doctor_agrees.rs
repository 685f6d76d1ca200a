//! `ferry doctor` reads the plugin's plugstack.conf line with the plugin's own parser:
//! what the plugin refuses, doctor fails; what the plugin reads as "no", doctor reads as
//! "no". Needs no root and no tools: the node root is a folder with one plugstack file
//! (its other checks fail, and are not looked at here).

use ferry_runtime::plugin_config::Config;
use std::path::PathBuf;
use std::process::Command;

struct NodeRoot(PathBuf);

impl NodeRoot {
    /// A node root whose plugstack.conf loads ferry with `args` and has no launcher.
    fn with_line(tag: &str, args: &str) -> NodeRoot {
        let dir = std::env::temp_dir().join(format!("ferry-agrees-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc/slurm")).unwrap();
        std::fs::write(
            dir.join("etc/slurm/plugstack.conf"),
            format!("required /usr/lib/slurm/ferry.so {args}\n"),
        )
        .unwrap();
        NodeRoot(dir)
    }

    /// doctor's report and exit code.
    fn doctor(&self) -> (String, Option<i32>) {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("doctor")
            .arg("--root")
            .arg(&self.0)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plugin(args: &str) -> Result<Config, String> {
    Config::parse(
        &args
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )
}

fn line<'a>(report: &'a str, area: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter(|l| l[6.min(l.len())..].starts_with(area))
        .collect()
}

#[test]
fn an_argument_the_plugin_refuses_fails_doctor() {
    let refused = plugin("colour=blue").unwrap_err();
    let node = NodeRoot::with_line("colour", "colour=blue");
    let (report, code) = node.doctor();
    let plugstack = line(&report, "plugstack:");
    assert_eq!(plugstack.len(), 1, "{report}");
    assert!(
        plugstack[0].starts_with("FAIL  plugstack: /etc/slurm/plugstack.conf:"),
        "{report}"
    );
    // The very words of the plugin's refusal.
    assert!(
        plugstack[0].contains(refused.trim_start_matches("ferry: ")),
        "{report}"
    );
    assert_eq!(code, Some(1), "{report}");
}

#[test]
fn slurm_clients_false_is_no_for_doctor_as_for_the_plugin() {
    assert!(!plugin("slurm_clients=false").unwrap().slurm_clients);
    let node = NodeRoot::with_line("clients-false", "slurm_clients=false");
    let (report, _) = node.doctor();
    assert!(
        line(&report, "plugstack:")[0]
            .starts_with("ok    plugstack: /etc/slurm/plugstack.conf loads"),
        "{report}"
    );
    assert!(
        line(&report, "launcher:").is_empty(),
        "the launcher is not used:\n{report}"
    );

    // With clients on, the missing launcher is a failure.
    let node = NodeRoot::with_line("clients-true", "slurm_clients=true");
    let (report, _) = node.doctor();
    let launcher = line(&report, "launcher:");
    assert!(
        launcher.len() == 1
            && launcher[0].starts_with("FAIL  launcher: /usr/libexec/ferry/ferry-host-exec"),
        "{report}"
    );
}

#[test]
fn an_obsolete_argument_loads_for_the_plugin_and_is_a_warning_for_doctor() {
    let config = plugin("hash_unpinned_max=1G slurm_clients=no").unwrap();
    assert!(!config.slurm_clients, "the rest of the line still counts");
    assert_eq!(config.obsolete.len(), 1, "{config:?}");
    let node = NodeRoot::with_line("obsolete", "hash_unpinned_max=1G slurm_clients=no");
    let (report, _) = node.doctor();
    let plugstack = line(&report, "plugstack:");
    assert_eq!(plugstack.len(), 2, "{report}");
    assert!(
        plugstack[0].starts_with("ok    plugstack: /etc/slurm/plugstack.conf loads"),
        "{report}"
    );
    assert!(
        plugstack[1].starts_with("warn  plugstack: /etc/slurm/plugstack.conf: hash_unpinned_max=1G is obsolete and has no effect"),
        "{report}"
    );
    assert!(
        line(&report, "launcher:").is_empty(),
        "slurm_clients=no was read:\n{report}"
    );
}
