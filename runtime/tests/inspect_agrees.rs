//! `ferry inspect` says an image is runnable exactly when `ferry run` would run it, and
//! when not, gives run's own reason: both use the library's probe and its validator of
//! the stored image config. Needs root (for `ferry run`).

mod common;

use common::{ferry, require_root_and_tools};
use std::path::Path;
use test_support::{mkdir_mode, write_mode, TempDir};

/// A root folder (bin/ in it) whose `/.ferry/image.json` holds `config`.
fn folder_image(dir: &TempDir, name: &str, config: &str) -> std::path::PathBuf {
    let root = dir.join(name);
    mkdir_mode(&root.join("bin"), 0o755);
    mkdir_mode(&root.join(".ferry"), 0o755);
    write_mode(&root.join(".ferry/image.json"), config, 0o644);
    root
}

fn inspect(image: &Path) -> serde_json::Value {
    let out = ferry(
        Path::new("/"),
        &["inspect".as_ref(), "--json".as_ref(), image.as_os_str()],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_config_run_refuses_makes_inspect_say_not_runnable_for_runs_reason() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("inspect-agrees");
    for config in [
        r#"{"Env": "PATH=/bin"}"#,
        r#"{"Env": ["=nameless"]}"#,
        "not json",
    ] {
        let image = folder_image(&dir, "bad", config);
        let run = ferry(
            dir.path(),
            &[
                "run".as_ref(),
                image.as_os_str(),
                "--".as_ref(),
                "/bin/true".as_ref(),
            ],
        );
        assert_eq!(run.code, Some(125), "{config}: {run:#?}");
        let refusal = run.stderr.trim().trim_start_matches("ferry: ");
        let report = inspect(&image);
        assert_eq!(report["runnable"], false, "{config}: {report:#}");
        assert_eq!(report["problem"], refusal, "{config}: {report:#}");
        std::fs::remove_dir_all(&image).unwrap();
    }
    let good = folder_image(&dir, "good", r#"{"Env": ["PATH=/bin"]}"#);
    let report = inspect(&good);
    assert_eq!(report["runnable"], true, "{report:#}");
    assert_eq!(report["config"]["Env"][0], "PATH=/bin", "{report:#}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_folder_without_bin_gets_runs_reason() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("inspect-notroot");
    let folder = dir.join("just-a-folder");
    mkdir_mode(&folder.join("etc"), 0o755);
    let run = ferry(
        dir.path(),
        &[
            "run".as_ref(),
            folder.as_os_str(),
            "--".as_ref(),
            "/bin/true".as_ref(),
        ],
    );
    assert_eq!(run.code, Some(125), "{run:#?}");
    let report = inspect(&folder);
    assert_eq!(report["runnable"], false, "{report:#}");
    assert_eq!(
        report["problem"],
        run.stderr.trim().trim_start_matches("ferry: "),
        "{report:#}"
    );
}
