//! `ferry run` as a user sees it: what runs, who it runs as, what it can write, what it
//! cannot, how bad input is refused, and that nothing stays on the host afterwards.
//!
//! Needs root and the tools of `tests/prepare-host`: the tests are ignored unless asked
//! for, and fail, naming what is missing, when run without them.
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test run -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A working directory the test user owns, outside /tmp and outside their home, so that
/// ferry has to bind it by itself.
fn user_workdir(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

fn as_user(image: &Path, cmd: &[&str]) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--user".into(),
        TEST_USER.into(),
        image.display().to_string(),
        "--".into(),
    ];
    args.extend(cmd.iter().map(|s| s.to_string()));
    args
}

// ---------------------------------------------------------------------------------
// What runs.

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn file_and_command_that_exist_only_in_the_image() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    assert!(
        !Path::new("/data/only-in-image").exists(),
        "precondition: the host has no /data/only-in-image"
    );
    assert!(
        !Path::new("/bin/image-only").exists(),
        "precondition: the host has no /bin/image-only"
    );
    let cwd = user_workdir("only");
    for image in [&fx.image, &fx.rootfs] {
        let out = ferry(cwd.path(), &as_user(image, &["cat", "/data/only-in-image"]));
        out.expect_success("cat /data/only-in-image");
        assert_eq!(out.stdout, ONLY_IN_IMAGE, "image {}", image.display());
        assert_eq!(out.stderr, "");

        let out = ferry(cwd.path(), &as_user(image, &["image-only", "a", "b c"]));
        out.expect_success("image-only");
        assert_eq!(
            out.stdout,
            format!("image-only command ran as {TEST_USER} with args: a b c\n"),
            "image {}",
            image.display()
        );
    }
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn exit_status_is_the_commands() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let cwd = user_workdir("status");
    let out = ferry(
        cwd.path(),
        &as_user(&fx.image, &["sh", "-c", "echo out; echo err >&2; exit 7"]),
    );
    assert_eq!(out.code, Some(7), "{out:#?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    // A command the image lacks is ferry's error: 125 and one line naming it and the image.
    let out = ferry(cwd.path(), &as_user(&fx.image, &["no-such-command"]));
    assert_eq!(out.code, Some(125), "{out:#?}");
    assert_one_error_line(&out, &["no-such-command", &fx.image.display().to_string()]);
}

// ---------------------------------------------------------------------------------
// Who it runs as.

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn id_inside_matches_the_user_with_supplementary_groups() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let user = test_user();
    let cwd = user_workdir("id");
    let out = ferry(
        cwd.path(),
        &as_user(
            &fx.image,
            &["sh", "-c", "id -u; id -g; id -G; id -un; id -Gn; id"],
        ),
    );
    out.expect_success("id");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{out:#?}");
    assert_eq!(lines[0], user.uid.to_string(), "uid");
    assert_eq!(lines[1], user.gid.to_string(), "gid");
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.split_whitespace().map(str::to_string).collect();
        v.sort();
        v
    };
    let mut host_gids: Vec<String> = user.groups.iter().map(|(g, _)| g.to_string()).collect();
    host_gids.sort();
    let mut host_names: Vec<String> = user.groups.iter().map(|(_, n)| n.clone()).collect();
    host_names.sort();
    assert_eq!(
        sorted(lines[2]),
        host_gids,
        "groups (numeric) inside vs. on the host"
    );
    assert_eq!(lines[3], TEST_USER, "user name inside");
    assert_eq!(
        sorted(lines[4]),
        host_names,
        "group names inside vs. on the host"
    );
    assert!(
        host_names.iter().any(|n| n == TEST_GROUP),
        "precondition: {TEST_USER} is in {TEST_GROUP}"
    );
    let lab_gid = user.groups.iter().find(|(_, n)| n == TEST_GROUP).unwrap().0;
    assert!(
        lines[5].starts_with(&format!("uid={}({TEST_USER}) gid={}(", user.uid, user.gid)),
        "id: {}",
        lines[5]
    );
    assert!(
        lines[5].contains(&format!("{lab_gid}({TEST_GROUP})")),
        "id lacks the supplementary group: {}",
        lines[5]
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn setuid_root_binary_in_the_image_does_not_raise_privilege() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let user = test_user();
    let show_euid = fx.rootfs.join("bin/show-euid");
    let meta = fs::metadata(&show_euid).unwrap();
    assert!(
        meta.uid() == 0 && meta.mode() & 0o4000 != 0,
        "precondition: show-euid is setuid root"
    );
    // Control: on the host (where the fixture's folder allows setuid), it does raise.
    let mut control = Command::new(&show_euid);
    control.uid(user.uid).gid(user.gid).current_dir("/");
    let host = run_with_timeout(control, RUN_TIMEOUT);
    if host.stdout.trim() != "0" {
        eprintln!(
            "note: the control run of show-euid on the host printed {:?} (a nosuid /tmp?)",
            host.stdout
        );
    }
    let cwd = user_workdir("suid");
    for image in [&fx.image, &fx.rootfs] {
        let out = ferry(cwd.path(), &as_user(image, &["/bin/show-euid"]));
        out.expect_success("show-euid");
        assert_eq!(
            out.stdout.trim(),
            user.uid.to_string(),
            "setuid-root show-euid in {} ran with euid {}",
            image.display(),
            out.stdout.trim()
        );
        // The process ferry started cannot gain privileges at all.
        let out = ferry(
            cwd.path(),
            &as_user(image, &["grep", "NoNewPrivs", "/proc/self/status"]),
        );
        out.expect_success("NoNewPrivs");
        assert_eq!(
            out.stdout.split_whitespace().collect::<Vec<_>>(),
            ["NoNewPrivs:", "1"]
        );
    }
}

// ---------------------------------------------------------------------------------
// What it can write, and what it cannot.

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn home_and_working_directory_are_writable() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let user = test_user();
    let cwd = user_workdir("writable");
    let home_file = user.home.join(format!(".{}home-marker", pid_tag()));
    let _ = fs::remove_file(&home_file);
    let script = format!(
        "pwd; echo \"$HOME\"; echo in-cwd > written-in-cwd && echo in-home > \"$HOME/{}\"",
        home_file.file_name().unwrap().to_str().unwrap()
    );
    let out = ferry(cwd.path(), &as_user(&fx.image, &["sh", "-c", &script]));
    let in_home = fs::read_to_string(&home_file);
    let home_owner = fs::metadata(&home_file).map(|m| m.uid());
    let _ = fs::remove_file(&home_file);
    out.expect_success("writing in cwd and home");
    assert_eq!(
        out.stdout,
        format!("{}\n{}\n", cwd.path().display(), user.home.display()),
        "pwd and HOME inside"
    );
    let in_cwd = cwd.join("written-in-cwd");
    assert_eq!(
        fs::read_to_string(&in_cwd).unwrap(),
        "in-cwd\n",
        "the file written in the working directory, on the host"
    );
    assert_eq!(
        fs::metadata(&in_cwd).unwrap().uid(),
        user.uid,
        "owner of the file written in the working directory"
    );
    assert_eq!(
        in_home.expect("the file written in the home folder, on the host"),
        "in-home\n"
    );
    assert_eq!(
        home_owner.unwrap(),
        user.uid,
        "owner of the file written in the home folder"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn workdir_option_starts_the_command_there() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let cwd = user_workdir("wdopt");
    let mut args = vec!["run", "--user", TEST_USER, "--workdir", "/data"];
    let image = fx.image.display().to_string();
    args.extend([image.as_str(), "--", "sh", "-c", "pwd; cat only-in-image"]);
    let out = ferry(cwd.path(), &args);
    out.expect_success("--workdir /data");
    assert_eq!(out.stdout, format!("/data\n{ONLY_IN_IMAGE}"));
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn read_only_mounts_refuse_writes() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let user = test_user();
    let cwd = user_workdir("romount");
    // The user owns the source: only the :ro flag stands between them and a write.
    let src = TempDir::new("rosrc");
    write_mode(&src.join("existing"), "original\n", 0o644);
    for p in [src.path().to_path_buf(), src.join("existing")] {
        std::os::unix::fs::chown(&p, Some(user.uid), Some(user.gid)).unwrap();
    }
    let spec = format!("{}:/in:ro", src.path().display());
    let image = fx.image.display().to_string();
    let script = "cat /in/existing; \
        echo changed > /in/existing && echo WROTE-EXISTING; \
        touch /in/new && echo CREATED-NEW; \
        rm -f /in/existing && echo REMOVED; \
        exit 0";
    let out = ferry(
        cwd.path(),
        &[
            "run", "--user", TEST_USER, "--mount", &spec, &image, "--", "sh", "-c", script,
        ],
    );
    out.expect_success("the :ro script");
    assert_eq!(
        out.stdout, "original\n",
        "reads work, writes do not: {out:#?}"
    );
    assert_eq!(
        out.stderr.matches("Read-only file system").count(),
        3,
        "each write is refused as read-only: {}",
        out.stderr
    );
    assert_eq!(
        fs::read_to_string(src.join("existing")).unwrap(),
        "original\n"
    );
    assert!(!src.join("new").exists());

    // The same bind without :ro is writable: the refusal above is the flag's doing.
    let spec = format!("{}:/in", src.path().display());
    let out = ferry(
        cwd.path(),
        &[
            "run",
            "--user",
            TEST_USER,
            "-m",
            &spec,
            &image,
            "--",
            "sh",
            "-c",
            "echo changed > /in/existing && touch /in/new",
        ],
    );
    out.expect_success("the rw bind");
    assert_eq!(
        fs::read_to_string(src.join("existing")).unwrap(),
        "changed\n"
    );
    assert!(src.join("new").exists());
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_image_itself_is_read_only() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let cwd = user_workdir("roimage");
    let before = fs::read_to_string(fx.rootfs.join("data/only-in-image")).unwrap();
    for image in [&fx.image, &fx.rootfs] {
        // As root inside, too: the root is mounted read-only.
        let image = image.display().to_string();
        let out = ferry(
            cwd.path(),
            &[
                "run",
                &image,
                "--",
                "sh",
                "-c",
                "echo x > /data/only-in-image || exit 3",
            ],
        );
        assert_eq!(
            out.code,
            Some(3),
            "writing into the image must fail: {out:#?}"
        );
    }
    assert_eq!(
        fs::read_to_string(fx.rootfs.join("data/only-in-image")).unwrap(),
        before
    );
}

// ---------------------------------------------------------------------------------
// Joining one prepared container from several processes (the Slurm tasks' way).

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn two_processes_joining_one_prepared_container_see_the_same_root() {
    require_root_and_tools(&[]);
    let _g = exclusive();
    let fx = fixture();
    let user = test_user();
    let cwd = TempDir::new("join");
    let before = HostState::capture();
    let mut request = ferry_runtime::Request::new(
        fx.image.clone(),
        ferry_runtime::User::by_name(TEST_USER).expect("User::by_name"),
    );
    request.cwd = Some(cwd.path().to_path_buf());
    let container = Arc::new(ferry_runtime::prepare(&request).expect("prepare"));
    assert_eq!(
        loop_devices_for(&fx.image).len(),
        1,
        "the prepared container holds one loop device: {:?}",
        loop_devices()
    );

    let host_ns = fs::read_link("/proc/self/ns/mnt")
        .unwrap()
        .display()
        .to_string();
    let (host_dev, host_ino) = dev_ino(Path::new("/"));
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = Command::new("/bin/sh");
            cmd.args([
                "-c",
                "readlink /proc/self/ns/mnt; stat -c %d:%i /; id -u; cat /data/only-in-image",
            ]);
            let c = Arc::clone(&container);
            #[allow(unsafe_code)] // what the plugin's task hook does, from a test
            // SAFETY: the closure runs in the forked child before exec and only makes
            // system calls (setns, prctl, setgroups, setresgid, setresuid).
            unsafe {
                cmd.pre_exec(move || {
                    let to_io = |e: ferry_runtime::Error| std::io::Error::other(e.to_string());
                    c.join().map_err(to_io)?;
                    c.become_user().map_err(to_io)
                });
            }
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawning a joining process")
        })
        .collect();
    let reports: Vec<Vec<String>> = children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "joining process failed: {out:?}");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .collect();
    for r in &reports {
        assert_eq!(r.len(), 4, "report: {r:?}");
        assert_ne!(
            r[0], host_ns,
            "the joining process is in the host's mount namespace"
        );
        assert_ne!(
            r[1],
            format!("{host_dev}:{host_ino}"),
            "the joining process sees the host's root"
        );
        assert_eq!(
            r[2],
            user.uid.to_string(),
            "the joining process runs as {TEST_USER}"
        );
        assert_eq!(format!("{}\n", r[3]), ONLY_IN_IMAGE, "the image's file");
    }
    assert_eq!(
        reports[0][0], reports[1][0],
        "both processes are in one mount namespace"
    );
    assert_eq!(reports[0][1], reports[1][1], "both processes see one root");

    // The namespace, and with it the loop device, lives exactly as long as the handle.
    drop(container);
    before.assert_nothing_left("after dropping the prepared container");
}

// ---------------------------------------------------------------------------------
// Bad input: one clear line naming the path, a non-zero exit, nothing left behind.

/// The one-line `ferry: ...` error that every refusal must be.
fn assert_one_error_line(out: &Outcome, must_name: &[&str]) {
    assert_ne!(out.code, Some(0), "must fail: {out:#?}");
    assert_eq!(out.stdout, "", "no output on stdout: {out:#?}");
    out.one_ferry_line(must_name);
    assert!(out.stderr.ends_with('\n'));
}

/// Runs `ferry run [extra] IMAGE -- sh -c 'touch MARKER'` from a user-owned folder and
/// checks the refusal: exit 125, one line naming `must_name`, the command never ran,
/// and the host unchanged.
fn refused(image: &Path, extra: &[&str], user: Option<&str>, must_name: &[&str]) -> String {
    let _g = exclusive();
    let cwd = user_workdir("refused");
    let marker = cwd.join("command-ran");
    let before = HostState::capture();
    let mut args: Vec<String> = vec!["run".into()];
    if let Some(u) = user {
        args.extend(["--user".into(), u.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        image.display().to_string(),
        "--".into(),
        "/bin/touch".into(),
        marker.display().to_string(),
    ]);
    let out = ferry(cwd.path(), &args);
    assert_eq!(out.code, Some(125), "ferry's own errors exit 125: {out:#?}");
    assert_one_error_line(&out, must_name);
    assert!(!marker.exists(), "the command ran despite the error");
    before.assert_nothing_left(&format!("ferry {}", args.join(" ")));
    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "the working directory stays empty"
    );
    out.stderr
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn missing_image_is_refused() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("missing");
    let image = dir.join("no-such-image.sqfs");
    let path = image.display().to_string();
    let line = refused(&image, &[], Some(TEST_USER), &[&path]);
    assert!(line.contains("not found"), "{line}");
    // As root, too.
    refused(&image, &[], None, &[&path]);
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn unreadable_image_is_refused() {
    require_root_and_tools(&[]);
    let fx = fixture();
    let dir = TempDir::new("secret");
    let image = dir.join("secret.sqfs");
    fs::copy(&fx.image, &image).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&image, Some(0), Some(0)).unwrap();
    let path = image.display().to_string();
    let line = refused(&image, &[], Some(TEST_USER), &[&path, TEST_USER]);
    assert!(line.contains("cannot read"), "{line}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_file_that_is_not_an_image_is_refused() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("notimg");
    let file = dir.join("notes.txt");
    write_mode(&file, "just some text, not a SquashFS image\n", 0o644);
    let path = file.display().to_string();
    let line = refused(&file, &[], Some(TEST_USER), &[&path]);
    assert!(line.contains("not a container image"), "{line}");
    // An empty file, and a device, are not images either.
    let empty = dir.join("empty.sqfs");
    write_mode(&empty, "", 0o644);
    refused(
        &empty,
        &[],
        Some(TEST_USER),
        &[&empty.display().to_string()],
    );
    refused(Path::new("/dev/null"), &[], Some(TEST_USER), &["/dev/null"]);
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_corrupt_squashfs_is_refused_and_frees_its_loop_device() {
    require_root_and_tools(&[]);
    // Right magic, wrong content: the refusal comes after a loop device was attached.
    let fx = fixture();
    let dir = TempDir::new("corrupt");
    let garbage = dir.join("garbage.sqfs");
    let mut bytes = b"hsqs".to_vec();
    bytes.extend((0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    fs::write(&garbage, bytes).unwrap();
    let truncated = dir.join("truncated.sqfs");
    fs::write(&truncated, &fs::read(&fx.image).unwrap()[..4096]).unwrap();
    for image in [&garbage, &truncated] {
        fs::set_permissions(image, fs::Permissions::from_mode(0o644)).unwrap();
        let path = image.display().to_string();
        refused(image, &[], Some(TEST_USER), &[&path]);
    }
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_folder_that_is_not_a_root_filesystem_is_refused() {
    require_root_and_tools(&[]);
    let dir = TempDir::new("notroot");
    let folder = dir.join("just-a-folder");
    mkdir_mode(&folder, 0o755);
    write_mode(&folder.join("README"), "no bin, no usr\n", 0o644);
    mkdir_mode(&folder.join("etc"), 0o755);
    let path = folder.display().to_string();
    let line = refused(&folder, &[], Some(TEST_USER), &[&path]);
    assert!(line.contains("not a root filesystem"), "{line}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_mount_source_the_user_cannot_read_is_refused() {
    require_root_and_tools(&[]);
    let fx = fixture();
    let dir = TempDir::new("private");
    let private = dir.join("root-only");
    mkdir_mode(&private, 0o700);
    write_mode(&private.join("secret"), "root's\n", 0o600);
    let path = private.display().to_string();
    let spec = format!("{path}:/private");
    let line = refused(
        &fx.image,
        &["--mount", &spec],
        Some(TEST_USER),
        &[&path, TEST_USER],
    );
    assert!(line.contains("cannot use it"), "{line}");
    // A file the user cannot read, and a source that does not exist.
    let file = private.join("secret");
    let file_path = file.display().to_string();
    let open_dir = TempDir::new("private-file");
    let secret_file = open_dir.join("secret");
    write_mode(&secret_file, "root's\n", 0o600);
    let secret_path = secret_file.display().to_string();
    refused(
        &fx.image,
        &["--mount", &format!("{secret_path}:/secret:ro")],
        Some(TEST_USER),
        &[&secret_path],
    );
    refused(
        &fx.image,
        &["--mount", &format!("{file_path}:/secret")],
        Some(TEST_USER),
        &[&file_path],
    );
    let missing = dir.join("does-not-exist").display().to_string();
    refused(
        &fx.image,
        &["--mount", &format!("{missing}:/x")],
        Some(TEST_USER),
        &[&missing],
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn malformed_mount_options_are_refused() {
    require_root_and_tools(&[]);
    let fx = fixture();
    let dir = TempDir::new("badspec");
    let src = dir.path().display().to_string();
    for spec in [
        format!("{src}:/in:rx"),        // unknown flag
        format!("{src}:relative/dest"), // destination not absolute
        ":/in".to_string(),             // empty source
        format!("{src}:/in:ro:extra"),  // too many fields
        format!("{src}:/in/../etc"),    // '..' in the destination
        format!("{src}:/"),             // over the root
    ] {
        refused(&fx.image, &["--mount", &spec], Some(TEST_USER), &[&spec]);
    }
}

// ---------------------------------------------------------------------------------
// Nothing stays behind.

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn concurrent_runs_each_get_their_own_container() {
    require_root_and_tools(&[]);
    let _g = exclusive();
    let fx = fixture();
    let cwd = user_workdir("concurrent");
    let before = HostState::capture();
    let image = fx.image.display().to_string();
    // Eight runs at once (as several steps on one node): each gets its own loop device
    // and mount namespace, all succeed, and nothing remains.
    let script = "sleep 0.2; readlink /proc/self/ns/mnt; cat /data/only-in-image";
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let cwd = cwd.path().to_path_buf();
            let image = image.clone();
            std::thread::spawn(move || {
                ferry(
                    &cwd,
                    &["run", "--user", TEST_USER, &image, "--", "sh", "-c", script],
                )
            })
        })
        .collect();
    let mut namespaces = std::collections::BTreeSet::new();
    for run in runs {
        let out = run.join().unwrap();
        out.expect_success("a concurrent run");
        let mut lines = out.stdout.lines();
        namespaces.insert(lines.next().unwrap_or_default().to_string());
        assert_eq!(
            format!("{}\n", lines.next().unwrap_or_default()),
            ONLY_IN_IMAGE
        );
    }
    assert_eq!(
        namespaces.len(),
        8,
        "each run has its own mount namespace: {namespaces:?}"
    );
    before.assert_nothing_left("after 8 concurrent runs");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_hundred_mixed_runs_leave_no_loop_device_mount_or_process() {
    require_root_and_tools(&[]);
    let _g = exclusive();
    let fx = fixture();
    let cwd = user_workdir("hundred");
    let scratch = TempDir::new("hundred-src");
    let not_image = scratch.join("not-an-image");
    write_mode(&not_image, "text\n", 0o644);
    let private = scratch.join("private");
    mkdir_mode(&private, 0o700);
    let before = HostState::capture();
    let sqfs = fx.image.display().to_string();
    let folder = fx.rootfs.display().to_string();
    let missing = scratch.join("missing.sqfs").display().to_string();
    let not_image = not_image.display().to_string();
    let bind = format!("{}:/in:ro", scratch.path().display());
    let private_bind = format!("{}:/p", private.display());
    let corrupt = scratch.join("corrupt.sqfs");
    fs::write(&corrupt, b"hsqs and then nothing a SquashFS would have").unwrap();
    fs::set_permissions(&corrupt, fs::Permissions::from_mode(0o644)).unwrap();
    let corrupt = corrupt.display().to_string();
    // A folder bound onto a file of the image: refused after the image is mounted.
    let dest_clash = format!("{}:/data/only-in-image", scratch.path().display());
    let u = TEST_USER;
    // (arguments, expected exit status). The failures cover every stage: before the
    // image is opened, at the image, at a mount source, after a loop device is attached
    // (a corrupt SquashFS) and after the image is mounted (a clashing destination, a
    // missing workdir, a missing command), where a leak would show.
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["run", "--user", u, &sqfs, "--", "true"], 0),
        (
            vec![
                "run",
                "--user",
                u,
                "-m",
                &bind,
                &folder,
                "--",
                "test",
                "-e",
                "/in/not-an-image",
            ],
            0,
        ),
        (vec!["run", "--user", u, &missing, "--", "true"], 125),
        (
            vec!["run", "--user", u, &sqfs, "--", "sh", "-c", "exit 3"],
            3,
        ),
        (vec!["run", "--user", u, &not_image, "--", "true"], 125),
        (vec!["run", &sqfs, "--", "cat", "/data/only-in-image"], 0),
        (
            vec!["run", "--user", u, "-m", &private_bind, &sqfs, "--", "true"],
            125,
        ),
        (
            vec![
                "run",
                "--user",
                u,
                "--workdir",
                "/no/such/dir",
                &sqfs,
                "--",
                "true",
            ],
            125,
        ),
        (
            vec!["run", "--user", u, &sqfs, "--", "no-such-command"],
            125,
        ),
        (
            vec!["run", "--user", u, "-m", "/x:/y:bad", &sqfs, "--", "true"],
            125,
        ),
        (vec!["run", "--user", u, &corrupt, "--", "true"], 125),
        (
            vec!["run", "--user", u, "-m", &dest_clash, &sqfs, "--", "true"],
            125,
        ),
    ];
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100 {
        let (args, expected) = &cases[i % cases.len()];
        let out = ferry(cwd.path(), args);
        assert_eq!(
            out.code,
            Some(*expected),
            "run {i}: ferry {}: {out:#?}",
            args.join(" ")
        );
        if *expected == 125 {
            assert_one_error_line(&out, &[]);
        }
        slowest = slowest.max(out.elapsed);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "100 runs in {elapsed:?} ({:?} per run, slowest {slowest:?})",
        elapsed / 100
    );
    before.assert_nothing_left("after 100 mixed runs");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn run_by_an_ordinary_user_runs_without_root() {
    // Before issue 17 an ordinary user read that ferry run needs root; now it runs in a
    // user namespace of their own (tests/rootless.rs covers that path in full).
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", TEST_USER, "--"])
        .arg(ferry_bin())
        .arg("run")
        .arg(&fx.rootfs)
        .args(["--", "/bin/cat", "/data/only-in-image"])
        .current_dir("/");
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, ONLY_IN_IMAGE, "{out:#?}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn read_only_applies_to_mounts_below_the_source_too() {
    require_root_and_tools(&[]);
    let _g = exclusive(); // mounts a tmpfs on the host for a moment
    let fx = fixture();
    let user = test_user();
    let cwd = user_workdir("rosub");
    let src = TempDir::new("rosubsrc");
    let sub = src.join("sub");
    fs::create_dir(&sub).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0777", "ferry-test-sub"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success());
    std::os::unix::fs::chown(src.path(), Some(user.uid), Some(user.gid)).unwrap();
    let spec = format!("{}:/in:ro", src.path().display());
    let image = fx.image.display().to_string();
    let script = "touch /in/sub/new && echo WROTE-BELOW; exit 0";
    let out = ferry(
        cwd.path(),
        &[
            "run", "--user", TEST_USER, "--mount", &spec, &image, "--", "sh", "-c", script,
        ],
    );
    let unmounted = Command::new("umount").arg(&sub).status().unwrap();
    assert!(unmounted.success());
    out.expect_success("the :ro script");
    assert!(
        !out.stdout.contains("WROTE-BELOW"),
        "a write went through a submount of a :ro bind: {out:#?}"
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:#?}");
}
