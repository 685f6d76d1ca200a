//! The site policy through the CLI, as root (no Slurm): `ferry check-config`, and
//! `ferry run --site-config` choosing kernel, FUSE or refusal per image, with the FUSE
//! server running as the user and gone when the command ends.
//!
//!     sudo cargo test -p ferry-runtime --test site -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// A folder of site files, one per policy (`kernel.json`, `fuse.json`, `deny.json`),
/// each trusting the second folder returned: under /var/lib, because every folder
/// above a trusted one must be root's and not writable by others (/tmp is).
fn sites_and_trusted_folder(tag: &str) -> (TempDir, TempDir) {
    let sites = TempDir::new(&format!("sites-{tag}"));
    let trusted = TempDir::new_in(Path::new("/var/lib"), &format!("trusted-{tag}"));
    open_to_all(&trusted);
    site_files(sites.path(), trusted.path());
    (sites, trusted)
}

/// Mode 0755: readable by the test user, writable by root only.
fn open_to_all(dir: &TempDir) {
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

/// One site file per policy. The node image cache is off in them: these tests count
/// the squashfuse servers each policy starts, which a kept mount would outlive (the
/// cache has its own tests, end to end).
fn site_files(dir: &Path, trusted: &Path) {
    for policy in ["kernel", "fuse", "deny"] {
        let text = format!(
            r#"{{"untrusted_images": "{policy}", "trusted_image_dirs": ["{}"], "image_cache_ttl": "0"}}"#,
            trusted.display()
        );
        write_mode(&dir.join(format!("{policy}.json")), &text, 0o644);
    }
}

fn run_as_user(cwd: &Path, site: &Path, image: &Path, cmd: &[&str]) -> Outcome {
    let mut args = vec![
        "run".to_string(),
        "--site-config".into(),
        site.display().to_string(),
        "--user".into(),
        TEST_USER.into(),
        "--workdir".into(),
        "/".into(),
        image.display().to_string(),
        "--".into(),
    ];
    args.extend(cmd.iter().map(|s| s.to_string()));
    ferry(cwd, &args)
}

/// Lines `server UID` for each live squashfuse_ll process on the host (exited ones
/// can linger as zombies where init does not reap), then the image-only file.
/// One read of each status file: a server that exits meanwhile is skipped, not half-read.
const FIND_SERVERS: &str = "for p in /proc/[0-9]*; do awk '/^Name:/ {n=$2} /^State:/ {s=$2} /^Uid:/ {u=$3} END {if (n == \"squashfuse_ll\" && s != \"Z\" && u != \"\") print \"server \" u}' $p/status 2>/dev/null; done; cat /data/only-in-image";

/// Waits (up to 10 s) until no squashfuse is left: the server of a container that just
/// ended exits a moment after its command, and must not be counted by the next check.
fn wait_for_no_servers() {
    let start = Instant::now();
    while !squashfuse_pids().is_empty() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn squashfuse_pids() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "squashfuse_ll")
                && fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                    !s.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn policies_choose_kernel_fuse_or_refusal_per_image() {
    require_root_and_tools(&[]);
    if find_tool("squashfuse_ll").is_none() {
        panic!("squashfuse_ll missing (apt install squashfuse; tests/prepare-host installs it)");
    }
    // Counts squashfuse servers: no other test of this binary may run one meanwhile.
    let _only_us = exclusive();
    let fx = fixture();
    let (sites, trusted) = sites_and_trusted_folder("policies");
    let vetted = trusted.join("vetted.sqfs");
    fs::copy(&fx.image, &vetted).unwrap();
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "site-cwd");
    cwd.give_to_test_user();
    let user = test_user();

    // fuse: the fixture (outside the trusted folder) is served by squashfuse as the user.
    let out = run_as_user(
        cwd.path(),
        &sites.join("fuse.json"),
        &fx.image,
        &["sh", "-c", FIND_SERVERS],
    );
    out.expect_success("fuse policy");
    assert!(
        out.stdout.contains(&format!("server {}", user.uid)),
        "{out:#?}"
    );
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with("server ") && l != format!("server {}", user.uid)),
        "{out:#?}"
    );
    // The trusted image is mounted by the kernel: no server.
    wait_for_no_servers();
    let out = run_as_user(
        cwd.path(),
        &sites.join("fuse.json"),
        &vetted,
        &["sh", "-c", FIND_SERVERS],
    );
    out.expect_success("trusted image under fuse");
    assert!(!out.stdout.contains("server "), "{out:#?}");

    // deny: one line naming the trusted folder; the trusted image still runs.
    let out = run_as_user(cwd.path(), &sites.join("deny.json"), &fx.image, &["true"]);
    assert_eq!(out.code, Some(125), "{out:#?}");
    assert!(
        out.stderr.contains("not in a trusted image folder")
            && out.stderr.contains(&trusted.path().display().to_string()),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    run_as_user(cwd.path(), &sites.join("deny.json"), &vetted, &["true"])
        .expect_success("trusted image under deny");

    // kernel: no server either.
    wait_for_no_servers();
    let out = run_as_user(
        cwd.path(),
        &sites.join("kernel.json"),
        &fx.image,
        &["sh", "-c", FIND_SERVERS],
    );
    out.expect_success("kernel policy");
    assert!(!out.stdout.contains("server "), "{out:#?}");

    // No squashfuse outlives its container.
    wait_for_no_servers();
    assert!(
        squashfuse_pids().is_empty(),
        "squashfuse still running: {:?}",
        squashfuse_pids()
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn check_config_prints_the_policy_or_names_the_bad_key() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("check-config");
    let good = dir.join("good.json");
    write_mode(
        &good,
        r#"{"untrusted_images": "deny", "log_level": "warning"}"#,
        0o644,
    );
    let out = ferry(dir.path(), &["check-config", good.to_str().unwrap()]);
    out.expect_success("check-config good");
    assert!(
        out.stdout.contains("untrusted_images         deny"),
        "{out:#?}"
    );
    let bad = dir.join("bad.json");
    write_mode(
        &bad,
        r#"{"site_mounts": [{"source": "/x", "readonly": "yes"}]}"#,
        0o644,
    );
    let out = ferry(dir.path(), &["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("site_mounts[0].readonly"), "{out:#?}");
    // Writable by others: not believed.
    write_mode(&good, r#"{}"#, 0o666);
    let out = ferry(dir.path(), &["check-config", good.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("must be owned by root"), "{out:#?}");
}

fn tool(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every compression `ferry build --compression` offers, and a SIF (served from its
/// partition's offset), run under both `kernel` and `fuse`; an ext image runs only
/// where the kernel may mount it (policy `kernel`, or a trusted folder), and under
/// `fuse` the user reads how to convert it.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn compressions_sif_and_ext_under_kernel_and_fuse() {
    require_root_and_tools(&[]);
    for t in ["squashfuse_ll", "siftool", "mkfs.ext3"] {
        if find_tool(t).is_none() {
            panic!("{t} missing (tests/prepare-host installs it)");
        }
    }
    // Counts squashfuse servers: no other test of this binary may run one meanwhile.
    let _only_us = exclusive();
    let fx = fixture();
    let (sites, trusted) = sites_and_trusted_folder("formats");
    let images = TempDir::new_in(Path::new("/var/tmp"), "formats-images");
    open_to_all(&images);
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "formats-cwd");
    cwd.give_to_test_user();
    let user = test_user();
    let read_it = ["sh", "-c", FIND_SERVERS];

    let mut runnable = Vec::new();
    for compression in ["gzip", "lzo", "lz4", "zstd", "xz"] {
        let image = images.join(format!("{compression}.sqfs"));
        ferry(
            images.path(),
            &[
                "build".as_ref(),
                "--all-root".as_ref(),
                "--compression".as_ref(),
                compression.as_ref(),
                fx.rootfs.as_os_str(),
                image.as_os_str(),
            ],
        )
        .expect_success("ferry build --compression");
        let inspect = ferry(
            images.path(),
            &["inspect".as_ref(), "--json".as_ref(), image.as_os_str()],
        );
        inspect.expect_success("inspect");
        let facts: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
        assert_eq!(
            facts["squashfs"]["compression"], compression,
            "{inspect:#?}"
        );
        runnable.push(image);
    }
    let sif = images.join("image.sif");
    let siftool = find_tool("siftool").unwrap();
    tool(std::process::Command::new(&siftool).arg("new").arg(&sif));
    tool(
        std::process::Command::new(&siftool)
            .arg("add")
            .arg(&sif)
            .arg(&fx.image)
            .args(["--datatype", "4", "--parttype", "2", "--partfs", "1"])
            .args(["--partarch", "2"]),
    );
    fs::set_permissions(&sif, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    runnable.push(sif);

    for image in &runnable {
        let out = run_as_user(cwd.path(), &sites.join("fuse.json"), image, &read_it);
        out.expect_success(&format!("{} under fuse", image.display()));
        assert!(
            out.stdout.contains(&format!("server {}", user.uid))
                && out.stdout.ends_with(ONLY_IN_IMAGE),
            "{}: {out:#?}",
            image.display()
        );
        wait_for_no_servers();
        let out = run_as_user(cwd.path(), &sites.join("kernel.json"), image, &read_it);
        out.expect_success(&format!("{} under kernel", image.display()));
        assert!(
            !out.stdout.contains("server ") && out.stdout.ends_with(ONLY_IN_IMAGE),
            "{}: {out:#?}",
            image.display()
        );
    }

    let ext = images.join("image.img");
    tool(
        std::process::Command::new(find_tool("mkfs.ext3").unwrap())
            .args(["-q", "-F", "-d"])
            .arg(&fx.rootfs)
            .arg(&ext)
            .arg("8M"),
    );
    fs::set_permissions(&ext, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run_as_user(cwd.path(), &sites.join("fuse.json"), &ext, &["true"]);
    assert_eq!(out.code, Some(125), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(
        out.stderr
            .contains("ext images run only from this site's trusted image folders")
            && out.stderr.contains("ferry build DIR OUT.sqfs"),
        "{out:#?}"
    );
    wait_for_no_servers();
    let out = run_as_user(cwd.path(), &sites.join("kernel.json"), &ext, &read_it);
    out.expect_success("ext under kernel");
    assert!(out.stdout.ends_with(ONLY_IN_IMAGE), "{out:#?}");
    let vetted_ext = trusted.join("vetted.img");
    fs::copy(&ext, &vetted_ext).unwrap();
    wait_for_no_servers();
    let out = run_as_user(cwd.path(), &sites.join("fuse.json"), &vetted_ext, &read_it);
    out.expect_success("trusted ext under fuse");
    assert!(
        !out.stdout.contains("server ") && out.stdout.ends_with(ONLY_IN_IMAGE),
        "{out:#?}"
    );
}
