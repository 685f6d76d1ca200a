//! `ferry run --writable[=SIZE]` and `--save FILE`: a root that takes writes into a
//! layer in memory which vanishes with the container, within its size, never into the
//! image, never out of the root through a symlink, never raising privilege; and saving
//! that root as a new image, reproducibly, as the user, with its parent recorded.
//!
//! Needs root and the tools of `tests/prepare-host`:
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test writable -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The host folder an image's symlink points at (`/etc/escape` -> `ESCAPE/target`):
/// outside every bind ferry makes, so only an escape could reach it.
fn escape_dir() -> PathBuf {
    PathBuf::from(format!("/srv/{}escape", pid_tag()))
}

const HOST_CONTENT: &str = "the host's own file\n";

/// The test image plus a folder every user may write (`/work`, mode 1777), an absolute
/// symlink `/etc/escape` to a host path (whose folder the image has too) and a stored
/// configuration. Built once per test process.
fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = TempDir::new("writable").keep_until_exit();
        let rootfs = copy_of_fixture_rootfs(&dir);
        mkdir_mode(&rootfs.join("work"), 0o1777);
        // The test user in the image's own accounts, for `su` as root inside.
        let user = test_user();
        let passwd = rootfs.join("etc/passwd");
        let mut accounts = fs::read_to_string(&passwd).unwrap();
        accounts.push_str(&format!(
            "{TEST_USER}:x:{}:{}::/:/bin/sh\n",
            user.uid, user.gid
        ));
        write_mode(&passwd, &accounts, 0o644);
        let escape = escape_dir();
        mkdir_mode(&rootfs.join(escape.strip_prefix("/").unwrap()), 0o755);
        std::os::unix::fs::symlink(escape.join("target"), rootfs.join("etc/escape")).unwrap();
        mkdir_mode(&rootfs.join(".ferry"), 0o755);
        write_mode(
            &rootfs.join(".ferry/image.json"),
            r#"{"Env": ["FROM_IMAGE=yes"]}"#,
            0o644,
        );
        let image = dir.join("writable.sqfs");
        mksquashfs(&rootfs, &image, &[]);
        // The host side of the symlink: a file no container may change.
        mkdir_mode(&escape, 0o755);
        write_mode(&escape.join("target"), HOST_CONTENT, 0o644);
        test_support::at_exit::remove_at_exit(escape);
        image
    })
}

/// A folder the test user owns, outside /tmp and their home.
fn user_folder(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

/// `ferry run [--user ferrytest] OPTIONS IMAGE -- sh -c SCRIPT` from `cwd`.
fn run(cwd: &Path, as_user: bool, options: &[&str], image: &Path, script: &str) -> Outcome {
    let mut args: Vec<String> = vec!["run".into()];
    if as_user {
        args.extend(["--user".into(), TEST_USER.into()]);
    }
    args.extend(options.iter().map(|s| s.to_string()));
    args.extend([
        image.display().to_string(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    ferry(cwd, &args)
}

// ---------------------------------------------------------------------------------
// The writable layer.

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_writable_root_takes_writes_that_are_gone_on_the_next_run() {
    require_root_and_tools(&[]);
    let _g = shared();
    let image = image();
    let before = sha256sum(image);
    let cwd = user_folder("wr");
    // The user writes where the image lets them; root inside writes anywhere.
    let out = run(
        cwd.path(),
        true,
        &["--writable"],
        image,
        "echo mine > /work/f && cat /work/f",
    );
    out.expect_success("writing /work/f");
    assert_eq!(out.stdout, "mine\n");
    let out = run(
        cwd.path(),
        false,
        &["--writable"],
        image,
        "echo root > /etc/new && echo changed > /data/only-in-image && cat /etc/new /data/only-in-image",
    );
    out.expect_success("writing /etc as root");
    assert_eq!(out.stdout, "root\nchanged\n");
    // Gone with the container; the image is as it was.
    let out = run(
        cwd.path(),
        false,
        &["--writable"],
        image,
        "ls /work; test ! -e /etc/new && cat /data/only-in-image",
    );
    out.expect_success("the next run");
    assert_eq!(out.stdout, ONLY_IN_IMAGE);
    assert_eq!(sha256sum(image), before, "the image file was written");
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_root_is_read_only_by_default_and_with_readonly() {
    require_root_and_tools(&[]);
    let _g = shared();
    let cwd = user_folder("ro");
    for options in [&[][..], &["--readonly"][..]] {
        let out = run(cwd.path(), false, options, image(), "echo x > /etc/new");
        assert_ne!(out.code, Some(0), "{options:?}: {out:#?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{options:?}: EROFS expected: {out:#?}"
        );
    }
    let out = ferry(
        cwd.path(),
        &[
            "run",
            "--readonly",
            "--writable",
            &image().display().to_string(),
            "--",
            "true",
        ],
    );
    assert_ne!(out.code, Some(0), "--readonly with --writable: {out:#?}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_root_stays_nosuid_and_nodev_when_writable() {
    require_root_and_tools(&[]);
    let _g = shared();
    let cwd = user_folder("flags");
    let out = run(
        cwd.path(),
        false,
        &["--writable"],
        image(),
        "grep ' / / ' /proc/self/mountinfo",
    );
    out.expect_success("mountinfo");
    let options: Vec<&str> = out
        .stdout
        .split_whitespace()
        .nth(5)
        .unwrap()
        .split(',')
        .collect();
    for wanted in ["rw", "nosuid", "nodev"] {
        assert!(options.contains(&wanted), "{wanted}: {}", out.stdout);
    }
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn writes_past_the_layers_size_fail_with_enospc() {
    require_root_and_tools(&[]);
    let _g = shared();
    let cwd = user_folder("size");
    let out = run(
        cwd.path(),
        true,
        &["--writable=4M"],
        image(),
        "dd if=/dev/zero of=/work/big bs=1M count=8",
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("No space left on device"), "{out:#?}");
    // Within the size it fits.
    let out = run(
        cwd.path(),
        true,
        &["--writable=16M"],
        image(),
        "dd if=/dev/zero of=/work/big bs=1M count=8 2>/dev/null && wc -c < /work/big",
    );
    out.expect_success("8M in 16M");
    assert_eq!(out.stdout.trim(), "8388608");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_size_above_the_sites_maximum_is_one_line() {
    require_root_and_tools(&[]);
    let _g = shared();
    let cwd = user_folder("max");
    let marker = cwd.join("ran");
    let script = format!("touch {}", marker.display());
    // Without a site file: the built-in maximum.
    let out = run(cwd.path(), true, &["--writable=5G"], image(), &script);
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["5G", "1024M", "writable_layer_max"]);
    // A site's own maximum.
    let site_dir = TempDir::new("site");
    let site = site_dir.join("site.json");
    write_mode(
        &site,
        r#"{"writable_layer_size": "4M", "writable_layer_max": "8M"}"#,
        0o644,
    );
    let site_arg = format!("--site-config={}", site.display());
    let out = run(
        cwd.path(),
        true,
        &[&site_arg, "--writable=16M"],
        image(),
        &script,
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["16M", "8M", "writable_layer_max"]);
    let out = run(cwd.path(), true, &["--writable=lots"], image(), &script);
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["\"lots\""]);
    assert!(!marker.exists(), "the command ran");
    let out = run(
        cwd.path(),
        true,
        &[&site_arg, "--writable=8M"],
        image(),
        "true",
    );
    out.expect_success("at the maximum");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_setuid_file_written_into_the_writable_root_does_not_raise_privilege() {
    require_root_and_tools(&[]);
    let _g = shared();
    let user = test_user();
    let cwd = user_folder("suid");
    // Root inside makes a setuid-root copy in the writable layer, then runs it as the
    // user (`su` from root asks for no password).
    let script = format!(
        "cp -p /bin/show-euid /work/suid && chmod 4755 /work/suid && stat -c '%u %a' /work/suid && su -s /work/suid {TEST_USER}"
    );
    let out = run(cwd.path(), false, &["--writable"], image(), &script);
    out.expect_success("setuid copy");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0], "0 4755",
        "precondition: a setuid-root file: {out:#?}"
    );
    assert_eq!(
        lines[1],
        user.uid.to_string(),
        "it ran with euid {}",
        lines[1]
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_write_through_an_absolute_symlink_stays_inside_the_root() {
    require_root_and_tools(&[]);
    let _g = shared();
    let image = image();
    let host_file = escape_dir().join("target");
    let cwd = user_folder("escape");
    let out = run(
        cwd.path(),
        false,
        &["--writable"],
        image,
        "echo inside > /etc/escape && cat /etc/escape",
    );
    out.expect_success("writing through /etc/escape");
    assert_eq!(out.stdout, "inside\n");
    assert_eq!(fs::read_to_string(&host_file).unwrap(), HOST_CONTENT);
    assert_eq!(fs::read_dir(escape_dir()).unwrap().count(), 1);
}

// ---------------------------------------------------------------------------------
// Saving.

/// `ferry run --user ferrytest --writable --save OUT IMAGE -- sh -c SCRIPT`.
fn save(cwd: &Path, image: &str, out: &Path, script: &str) -> Outcome {
    let save = format!("--save={}", out.display());
    let mut args: Vec<String> = ["run", "--user", TEST_USER, "--writable", &save]
        .map(String::from)
        .to_vec();
    args.extend([
        image.to_string(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    ferry(cwd, &args)
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_saved_image_runs_holds_the_writes_and_is_the_same_bytes_when_saved_twice() {
    require_root_and_tools(&[]);
    let _g = shared();
    let image = image();
    let before = sha256sum(image);
    let user = test_user();
    let cwd = user_folder("save");
    let (first, second) = (cwd.join("first.sqfs"), cwd.join("second.sqfs"));
    // Pinned: the parent's digest is then known to both saves (an unpinned image's is
    // recorded only once the node's digest cache knows it).
    let spec = format!("{}@{before}", image.display());
    for out in [&first, &second] {
        save(cwd.path(), &spec, out, "echo saved > /work/f").expect_success("save");
    }
    assert_eq!(
        sha256sum(&first),
        sha256sum(&second),
        "two saves of the same state differ"
    );
    let meta = fs::metadata(&first).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (user.uid, user.gid),
        "written as the user"
    );
    assert_eq!(sha256sum(image), before, "the image file was written");
    // It runs, with the write, the image's own files and its configuration.
    let out = run(
        cwd.path(),
        true,
        &[],
        &first,
        "cat /work/f /data/only-in-image; echo $FROM_IMAGE; ls /.ferry",
    );
    out.expect_success("running the saved image");
    assert_eq!(
        out.stdout,
        format!("saved\n{ONLY_IN_IMAGE}yes\nimage.json\nparent.json\n")
    );
    // Only the root: nothing of the binds on top of it.
    let listing = Command::new("unsquashfs")
        .args(["-lls"])
        .arg(&first)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for absent in [
        "squashfs-root/proc/",
        "squashfs-root/home/ferrytest/",
        "squashfs-root/dev/null",
    ] {
        assert!(
            !listing.contains(absent),
            "{absent} in the saved image:\n{listing}"
        );
    }
    // The parent, as inspect shows it.
    let out = ferry(cwd.path(), &["inspect", &first.display().to_string()]);
    out.expect_success("inspect");
    assert!(
        out.stdout
            .contains(&format!("saved from:   {} ({before})", image.display())),
        "{}",
        out.stdout
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_parent_is_recorded_and_a_saved_image_can_be_saved_again() {
    require_root_and_tools(&[]);
    let _g = shared();
    let image = image();
    let digest = sha256sum(image);
    let cwd = user_folder("parent");
    let (child, grandchild) = (cwd.join("child.sqfs"), cwd.join("grandchild.sqfs"));
    let spec = format!("{}@{digest}", image.display());
    save(cwd.path(), &spec, &child, "echo 1 > /work/one").expect_success("save");
    let parent_of = |saved: &Path| {
        let out = ferry(
            cwd.path(),
            &["inspect", "--json", &saved.display().to_string()],
        );
        out.expect_success("inspect");
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        report["parent"].clone()
    };
    let parent = parent_of(&child);
    assert_eq!(parent["image"], image.display().to_string());
    assert_eq!(parent["digest"], digest);
    // The saved image's own record is replaced by the new one; the writes add up.
    let spec = format!("{}@{}", child.display(), sha256sum(&child));
    save(cwd.path(), &spec, &grandchild, "echo 2 > /work/two").expect_success("save again");
    assert_eq!(parent_of(&grandchild)["image"], child.display().to_string());
    let out = run(
        cwd.path(),
        true,
        &[],
        &grandchild,
        "cat /work/one /work/two",
    );
    out.expect_success("running the grandchild");
    assert_eq!(out.stdout, "1\n2\n");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn nothing_is_saved_when_the_command_fails_or_where_the_user_cannot_write() {
    require_root_and_tools(&[]);
    let _g = shared();
    let spec = image().display().to_string();
    let cwd = user_folder("nosave");
    let out_file = cwd.join("never.sqfs");
    let out = save(cwd.path(), &spec, &out_file, "echo x > /work/f; exit 7");
    assert_eq!(out.code, Some(7), "the command's status: {out:#?}");
    assert!(!out_file.exists());
    // A root-owned folder: the user's mksquashfs cannot create the file; root never does.
    let roots = TempDir::new_in(Path::new("/var/tmp"), "roots");
    let refused = roots.join("refused.sqfs");
    let out = save(cwd.path(), &spec, &refused, "true");
    assert_eq!(out.code, Some(1), "{out:#?}");
    out.one_ferry_line(&[&refused.display().to_string(), TEST_USER]);
    assert_eq!(
        fs::read_dir(roots.path()).unwrap().count(),
        0,
        "nothing left"
    );
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing left");
    // --save needs --writable.
    let out = ferry(
        cwd.path(),
        &[
            "run",
            "--save",
            &out_file.display().to_string(),
            &spec,
            "--",
            "true",
        ],
    );
    assert_ne!(out.code, Some(0), "{out:#?}");
    assert!(!out_file.exists());
}
