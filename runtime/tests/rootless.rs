//! `ferry run` without root: the test user runs each image format through a user
//! namespace of their own, with binds, the image's Env and WorkingDir, their own ids,
//! no privilege from a setuid file, `--fakeroot` installs into a `--writable` root,
//! nothing (squashfuse, mounts) outlives the command or a killed ferry, and where user
//! namespaces are off one line says which setting stops them.
//!
//! Root sets up (images, the test user's folders); ferry itself runs as the test user.
//! SquashFS and SIF images need /dev/fuse open to users, as distributions ship it
//! (mode 0666): the tests set that mode when the host has it closer.
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test rootless -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use test_support::sif_builder as sb;

struct Images {
    squashfs: PathBuf,
    sif: PathBuf,
    ext4: PathBuf,
    folder: PathBuf,
}

/// The fixture's root (with its setuid-root /bin/show-euid) plus a stored configuration
/// (Env, WorkingDir /srv) and a /usr folder; as SquashFS, SIF, ext4 and a root folder.
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        open_fuse_to_users();
        let dir = TempDir::new_in(Path::new("/var/tmp"), "rootless").keep_until_exit();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = copy_of_fixture_rootfs(&dir);
        for sub in ["srv", "usr", ".ferry"] {
            mkdir_mode(&rootfs.join(sub), 0o755);
        }
        write_mode(
            &rootfs.join(".ferry/image.json"),
            r#"{"Env": ["FROM_IMAGE=yes"], "WorkingDir": "/srv"}"#,
            0o644,
        );
        let squashfs = dir.join("image.sqfs");
        mksquashfs(&rootfs, &squashfs, &[]);
        let sif = dir.join("image.sif");
        fs::write(
            &sif,
            sb::build(&[
                sb::deffile("Bootstrap: scratch\n"),
                sb::partition(
                    sb::FS_SQUASHFS,
                    sb::PART_PRIMARY_SYSTEM,
                    fs::read(&squashfs).unwrap(),
                ),
            ]),
        )
        .unwrap();
        fs::set_permissions(&sif, fs::Permissions::from_mode(0o644)).unwrap();
        let ext4 = dir.join("image.ext4");
        let made = Command::new(find_tool("mkfs.ext4").expect("mkfs.ext4 (e2fsprogs)"))
            .args(["-q", "-F", "-d"])
            .arg(&rootfs)
            .arg(&ext4)
            .arg("24M")
            .status()
            .unwrap();
        assert!(made.success(), "mkfs.ext4 failed");
        fs::set_permissions(&ext4, fs::Permissions::from_mode(0o644)).unwrap();
        Images {
            squashfs,
            sif,
            ext4,
            folder: rootfs,
        }
    })
}

/// Distributions open the FUSE device to everyone (udev: MODE="0666"); some minimal
/// hosts (containers) leave it 0600, where no user can run squashfuse at all.
fn open_fuse_to_users() {
    let device = Path::new("/dev/fuse");
    let mode = fs::metadata(device)
        .expect("/dev/fuse")
        .permissions()
        .mode();
    if mode & 0o006 != 0o006 {
        fs::set_permissions(device, fs::Permissions::from_mode(0o666)).unwrap();
    }
}

/// A folder the test user owns to run from (bound as the default working folder).
fn user_folder(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

/// `ferry ARGS` run by the test user from `cwd`, with a clean environment.
fn ferry_as_user(cwd: &Path, args: &[&str]) -> Outcome {
    run_with_timeout(user_command(cwd, args), RUN_TIMEOUT)
}

fn user_command(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(find_tool("runuser").expect("runuser"));
    cmd.args(["-u", TEST_USER, "--"])
        .arg(ferry_bin())
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

/// Processes that hold `image` open (squashfuse serving it), by pid.
fn holding(image: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l == image))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (a few seconds at most) until no process holds `image`: squashfuse exits once
/// its mount, and so the container's namespace, is gone.
#[track_caller]
fn assert_nothing_serves(image: &Path, what: &str) {
    let start = Instant::now();
    while !holding(image).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: processes still hold {}: {:?}",
            image.display(),
            holding(image)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn image_path(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn each_format_runs_as_the_user_with_the_images_env_and_workdir() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let user = test_user();
    let cwd = user_folder("rootless-formats");
    for (image, mounted_by) in [
        (&images.squashfs, "squashfs"),
        (&images.sif, "sif"),
        (&images.folder, "folder"),
    ] {
        let out = ferry_as_user(
            cwd.path(),
            &[
                "run",
                image_path(image),
                "--",
                "sh",
                "-c",
                "echo $(id -u) $(id -g) $FROM_IMAGE $(pwd); cat /data/only-in-image; grep ^ferrytest: /etc/passwd",
            ],
        );
        out.expect_success(mounted_by);
        let mut lines = out.stdout.lines();
        assert_eq!(
            lines.next(),
            Some(format!("{} {} yes /srv", user.uid, user.gid).as_str()),
            "{mounted_by}: {out:#?}"
        );
        assert_eq!(lines.next(), Some(ONLY_IN_IMAGE.trim_end()), "{mounted_by}");
        assert!(
            lines.next().is_some_and(
                |l| l.starts_with(&format!("{TEST_USER}:x:{}:{}:", user.uid, user.gid))
            ),
            "{mounted_by}: {out:#?}"
        );
        assert_nothing_serves(image, mounted_by);
    }
}

/// The account files keep the image's own entries whether they are written straight
/// into the writable layer (a plain /etc/group) or through the root (an /etc/passwd
/// that is a symlink inside the image), for SquashFS and a root folder.
#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn account_files_keep_the_images_entries_plain_or_through_a_symlink() {
    require_root_and_tools(&["runuser"]);
    let _host = shared();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "rootless-accounts").keep_until_exit();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let rootfs = copy_of_fixture_rootfs(&dir);
    mkdir_mode(&rootfs.join("usr/lib"), 0o755);
    write_mode(
        &rootfs.join("usr/lib/passwd.image"),
        "root:x:0:0:root:/root:/bin/sh\nimageuser:x:4242:4242::/:/bin/sh\n",
        0o644,
    );
    let _ = fs::remove_file(rootfs.join("etc/passwd"));
    std::os::unix::fs::symlink("/usr/lib/passwd.image", rootfs.join("etc/passwd")).unwrap();
    write_mode(
        &rootfs.join("etc/group"),
        "root:x:0:\nimagegroup:x:4343:\n",
        0o644,
    );
    let squashfs = dir.join("accounts.sqfs");
    mksquashfs(&rootfs, &squashfs, &[]);
    let cwd = user_folder("rootless-accounts");
    for image in [&squashfs, &rootfs] {
        let out = ferry_as_user(
            cwd.path(),
            &[
                "run",
                image_path(image),
                "--",
                "sh",
                "-c",
                "grep -c ^imageuser: /etc/passwd; grep -c ^ferrytest: /etc/passwd; grep -c ^imagegroup: /etc/group; grep -c ^root: /etc/group",
            ],
        );
        out.expect_success("accounts");
        assert_eq!(out.stdout, "1\n1\n1\n1\n", "{}: {out:#?}", image.display());
        assert_nothing_serves(image, "accounts");
    }
}

/// Without root a pinned image is hashed once per version of its file: the user's own
/// digest cache (`$XDG_CACHE_HOME/ferry/digests`, the submit check's) answers after that,
/// and a changed file is hashed again.
#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn a_pinned_image_is_hashed_once_into_the_users_own_cache() {
    require_root_and_tools(&["runuser", "sha256sum"]);
    let _host = shared();
    let work = user_folder("rootless-pinned");
    let image = work.path().join("pinned.sqfs");
    fs::copy(&images().squashfs, &image).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    let user = test_user();
    std::os::unix::fs::chown(&image, Some(user.uid), Some(user.gid)).unwrap();
    let digest = sha256sum(&image);
    let hex = digest.trim_start_matches("sha256:").to_string();
    let pinned = format!("{}@{digest}", image.display());
    let cache = work.path().join("cache");
    let run = || {
        let mut cmd = user_command(work.path(), &["run", &pinned, "--", "true"]);
        cmd.env("XDG_CACHE_HOME", &cache);
        run_with_timeout(cmd, RUN_TIMEOUT)
    };
    let entries = || -> Vec<PathBuf> {
        fs::read_dir(cache.join("ferry/digests"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    run().expect_success("first run");
    let stored = entries();
    assert_eq!(stored.len(), 1, "one entry after the first run: {stored:?}");
    let entry = fs::read_to_string(&stored[0]).unwrap();
    assert!(entry.contains(&hex), "{entry}");
    // The next run believes the entry (the user's own, for the user's own runs only):
    // one that says another digest makes it refuse the pin without hashing.
    fs::write(&stored[0], entry.replace(&hex, &"0".repeat(64))).unwrap();
    let out = run();
    assert_eq!(out.code, Some(125), "{out:#?}");
    assert!(out.stderr.contains(&"0".repeat(64)), "{out:#?}");
    // A new version of the file (same bytes, rewritten) is hashed again and succeeds.
    let bytes = fs::read(&image).unwrap();
    fs::remove_file(&image).unwrap();
    fs::write(&image, bytes).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    run().expect_success("a rewritten file");
    assert_nothing_serves(&image, "pinned");
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn an_ext_image_is_refused_with_the_fuse_policys_line() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-ext");
    let out = ferry_as_user(cwd.path(), &["run", image_path(&images.ext4), "--", "true"]);
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&[
        image_path(&images.ext4),
        "ext images run only from this site's trusted image folders",
        "ferry build",
    ]);
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn binds_read_only_binds_and_the_working_folder() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-binds");
    write_mode(&cwd.join("mine.txt"), "mine\n", 0o644);
    let data = user_folder("rootless-data");
    write_mode(&data.join("in-data"), "data\n", 0o644);
    let rw = format!("{}:/data-rw", data.path().display());
    let ro = format!("{}:/data-ro:ro", data.path().display());
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--workdir",
            cwd.path().to_str().unwrap(),
            "-m",
            &rw,
            "-m",
            &ro,
            image_path(&images.squashfs),
            "--",
            "sh",
            "-c",
            "cat mine.txt /data-ro/in-data; echo new > /data-rw/made; touch /data-ro/no 2>/dev/null && echo WROTE-RO; echo done",
        ],
    );
    out.expect_success("binds");
    assert_eq!(out.stdout, "mine\ndata\ndone\n", "{out:#?}");
    assert_eq!(fs::read_to_string(data.join("made")).unwrap(), "new\n");
    assert!(!data.join("no").exists());
    // Sources are opened with the user's rights only, not the namespace's capabilities:
    // their own folder with mode 000 is refused, as it is outside.
    let closed = data.join("closed");
    fs::create_dir(&closed).unwrap();
    std::os::unix::fs::chown(&closed, Some(test_user().uid), Some(test_user().gid)).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    let spec = format!("{}:/closed", closed.display());
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "-m",
            &spec,
            image_path(&images.squashfs),
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&[closed.to_str().unwrap(), "Permission denied"]);
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn a_setuid_file_grants_nothing_and_user_must_be_the_caller() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let user = test_user();
    let cwd = user_folder("rootless-suid");
    for image in [&images.squashfs, &images.folder] {
        let out = ferry_as_user(
            cwd.path(),
            &["run", image_path(image), "--", "/bin/show-euid"],
        );
        out.expect_success("setuid");
        assert_eq!(out.stdout.trim(), user.uid.to_string(), "{out:#?}");
    }
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--user",
            "root",
            image_path(&images.squashfs),
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["--user root", "without root", TEST_USER]);
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn fakeroot_installs_into_usr_of_a_writable_root() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-fakeroot");
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--fakeroot",
            "--writable",
            image_path(&images.squashfs),
            "--",
            "sh",
            "-c",
            "echo $(id -u) $(id -g); mkdir -p /usr/local/bin && echo tool > /usr/local/bin/tool && cat /usr/local/bin/tool",
        ],
    );
    out.expect_success("fakeroot");
    assert_eq!(out.stdout, "0 0\ntool\n", "{out:#?}");
    // Without --fakeroot the image's /usr stays root's.
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--writable",
            image_path(&images.squashfs),
            "--",
            "sh",
            "-c",
            "touch /usr/x 2>/dev/null && echo WROTE; echo done",
        ],
    );
    out.expect_success("writable");
    assert_eq!(out.stdout, "done\n", "{out:#?}");
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn fakeroot_saves_a_writable_root_and_save_needs_it() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-save");
    let saved = cwd.join("saved.sqfs");
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--writable",
            "--save",
            saved.to_str().unwrap(),
            image_path(&images.squashfs),
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["--save without root needs --fakeroot"]);
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--fakeroot",
            "--writable",
            "--save",
            saved.to_str().unwrap(),
            image_path(&images.squashfs),
            "--",
            "sh",
            "-c",
            "echo installed > /usr/installed",
        ],
    );
    out.expect_success("save");
    let meta = fs::metadata(&saved).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        test_user().uid,
        "written as the user"
    );
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            saved.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "cat /usr/installed /data/only-in-image",
        ],
    );
    out.expect_success("run the saved image");
    assert_eq!(
        out.stdout,
        format!("installed\n{ONLY_IN_IMAGE}"),
        "the install and the image are saved: {out:#?}"
    );
    // ferry's own account files (bound over the image's without root) are not saved.
    let listing = Command::new(find_tool("unsquashfs").expect("unsquashfs"))
        .arg("-l")
        .arg(&saved)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("squashfs-root/usr/installed"), "{listing}");
    assert!(!listing.contains(".ferry/files"), "{listing}");
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn doctor_run_by_a_user_checks_running_without_root() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    images(); // opens /dev/fuse to users
    let out = ferry_as_user(Path::new("/"), &["doctor"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    for line in [
        "ok    user namespaces: you can make one",
        "ok    /dev/fuse: you can open it",
        "ferry doctor: you can run images without root here",
    ] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
}

/// A site file gives a run without root its mounts, but its trust does not bind it:
/// under `untrusted_images: deny` an image outside the trusted folders still runs,
/// through squashfuse as the user (the policy weighs kernel mounts, which a user's
/// namespace cannot make).
#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn a_site_file_gives_its_mounts_but_not_its_trust() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-site");
    let shared_data = TempDir::new_in(Path::new("/var/tmp"), "rootless-site-data");
    fs::set_permissions(shared_data.path(), fs::Permissions::from_mode(0o755)).unwrap();
    write_mode(&shared_data.join("note"), "from the site\n", 0o644);
    let sites = TempDir::new("rootless-sites");
    fs::set_permissions(sites.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let site = sites.join("deny.json");
    write_mode(
        &site,
        &format!(
            r#"{{"untrusted_images": "deny", "trusted_image_dirs": ["/nonexistent-trusted"], "site_mounts": [{{"source": "{}", "dest": "/site", "readonly": true}}]}}"#,
            shared_data.path().display()
        ),
        0o644,
    );
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            "--site-config",
            site.to_str().unwrap(),
            image_path(&images.squashfs),
            "--",
            "cat",
            "/site/note",
        ],
    );
    out.expect_success("site file without root");
    assert_eq!(out.stdout, "from the site\n", "{out:#?}");
}

/// Without a FUSE device open to users, an image file gets one line saying so (and
/// what an admin can change); a root folder still runs. The device's mode is restored
/// even when an assertion fails.
#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn a_closed_fuse_device_is_one_line_and_folders_still_run() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = exclusive();
    let images = images();
    let cwd = user_folder("rootless-nofuse");
    struct Reopen;
    impl Drop for Reopen {
        fn drop(&mut self) {
            open_fuse_to_users();
        }
    }
    let _reopen = Reopen;
    fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o600)).unwrap();
    let out = ferry_as_user(
        cwd.path(),
        &["run", image_path(&images.squashfs), "--", "true"],
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&[
        image_path(&images.squashfs),
        "/dev/fuse, which you cannot open here",
        "chmod 0666 /dev/fuse",
    ]);
    ferry_as_user(
        cwd.path(),
        &["run", image_path(&images.folder), "--", "true"],
    )
    .expect_success("a root folder without FUSE");
}

#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn a_killed_command_or_ferry_leaves_no_squashfuse_and_no_mount() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = shared();
    let images = images();
    let cwd = user_folder("rootless-kill");
    let out = ferry_as_user(
        cwd.path(),
        &[
            "run",
            image_path(&images.sif),
            "--",
            "sh",
            "-c",
            "kill -KILL $$",
        ],
    );
    assert_eq!(
        out.code,
        Some(128 + 9),
        "killed by its signal (runuser says 137): {out:#?}"
    );
    assert_nothing_serves(&images.sif, "the command killed");

    // ferry itself killed, once its command runs (ferry's process is the command's).
    let child = started(user_command(
        cwd.path(),
        &[
            "run",
            image_path(&images.sif),
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 60",
        ],
    ));
    assert!(!holding(&images.sif).is_empty(), "squashfuse serves it");
    kill_ferry(child);
    assert_nothing_serves(&images.sif, "ferry killed");

    // ferry killed while it waits to save (--save): the command dies with it.
    let saved = cwd.join("saved.sqfs");
    let child = started(user_command(
        cwd.path(),
        &[
            "run",
            "--fakeroot",
            "--writable",
            "--save",
            saved.to_str().unwrap(),
            image_path(&images.squashfs),
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 60",
        ],
    ));
    kill_ferry(child);
    assert_nothing_serves(&images.squashfs, "ferry killed during --save");
    assert!(!saved.exists());
}

/// Starts `cmd` (a user's `ferry run` whose command prints "started" first) and
/// returns once the command runs.
fn started(mut cmd: Command) -> std::process::Child {
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "started\n");
    child
}

/// SIGKILL to the ferry process of `child` (runuser's child: ferry, or by now the
/// command it became), then waits for runuser.
fn kill_ferry(mut child: std::process::Child) {
    let runuser = child.id();
    let ferry = fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ferry),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
}

/// User namespaces switched off (`user.max_user_namespaces = 0`). A container host may
/// forbid changing the host's sysctl; the limit is per user namespace, so ferry then
/// runs as the test user inside an outer namespace (root and the test user mapped to
/// themselves) whose own limit is 0: the same refusal, through the same setting.
#[test]
#[ignore = "needs root and tests/prepare-host (run with --include-ignored)"]
fn user_namespaces_off_give_one_line_naming_the_setting() {
    require_root_and_tools(&["mkfs.ext4", "runuser"]);
    let _host = exclusive();
    let images = images();
    let cwd = user_folder("rootless-off");
    let limit = Path::new("/proc/sys/user/max_user_namespaces");
    let before = fs::read_to_string(limit).unwrap();
    let restored = before.clone();
    let out = if fs::write(limit, "0").is_ok() {
        // Restored even when an assertion below fails.
        struct Restore<'a>(&'a Path, String);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                fs::write(self.0, self.1.trim()).expect("restoring max_user_namespaces");
            }
        }
        let _restore = Restore(limit, before);
        ferry_as_user(
            cwd.path(),
            &["run", image_path(&images.squashfs), "--", "true"],
        )
    } else {
        ferry_in_namespace_without_namespaces(
            cwd.path(),
            &["run", image_path(&images.squashfs), "--", "true"],
        )
    };
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&[
        "ferry run without root",
        "user.max_user_namespaces = 0",
        "sysctl -w user.max_user_namespaces=",
        "the Slurm plugin needs none of this",
    ]);
    assert_eq!(
        fs::read_to_string(limit).unwrap(),
        restored,
        "the host's limit is back"
    );
    // ferry doctor, run by a user there, names the same setting.
    let doctor = ferry_in_namespace_without_namespaces(cwd.path(), &["doctor"]);
    assert_eq!(doctor.code, Some(1), "{doctor:#?}");
    assert!(
        doctor.stdout.lines().any(|l| l.starts_with(
            "FAIL  ferry run without root: user namespaces are switched off on this machine (sysctl user.max_user_namespaces = 0)"
        )),
        "{doctor:#?}"
    );
}

/// Runs ferry as the test user in a user namespace of root's making whose own
/// `max_user_namespaces` is 0.
#[allow(unsafe_code)] // fork, as the plugin's task hook does, from a test
fn ferry_in_namespace_without_namespaces(cwd: &Path, args: &[&str]) -> Outcome {
    use nix::unistd::{fork, ForkResult};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let user = test_user();
    let (go_read, go_write) = nix::unistd::pipe().unwrap();
    let (ready_read, ready_write) = nix::unistd::pipe().unwrap();
    let (out_read, out_write) = nix::unistd::pipe().unwrap();
    let (err_read, err_write) = nix::unistd::pipe().unwrap();
    let ferry = std::ffi::CString::new(ferry_bin().to_str().unwrap()).unwrap();
    let mut argv = vec![ferry.clone()];
    argv.extend(args.iter().map(|a| std::ffi::CString::new(*a).unwrap()));
    let env = [std::ffi::CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").unwrap()];
    // SAFETY: the child only makes system calls and execs or _exits; what it uses
    // was made before the fork.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            // SAFETY: _exit ends the child without running the parent's destructors.
            let fail = |code: i32| -> ! { unsafe { libc::_exit(code) } };
            if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_err() {
                fail(90);
            }
            let _ = nix::unistd::write(&ready_write, b"x");
            let mut byte = [0u8; 1];
            if nix::unistd::read(go_read.as_raw_fd(), &mut byte) != Ok(1) {
                fail(91);
            }
            if fs::write("/proc/sys/user/max_user_namespaces", "0").is_err() {
                fail(92);
            }
            let _ = nix::unistd::dup2(out_write.as_raw_fd(), 1);
            let _ = nix::unistd::dup2(err_write.as_raw_fd(), 2);
            let gid = nix::unistd::Gid::from_raw(user.gid);
            let uid = nix::unistd::Uid::from_raw(user.uid);
            if nix::unistd::setgroups(&[gid]).is_err()
                || nix::unistd::setresgid(gid, gid, gid).is_err()
                || nix::unistd::setresuid(uid, uid, uid).is_err()
                || nix::unistd::chdir(cwd).is_err()
            {
                fail(93);
            }
            let _ = nix::unistd::execve(&ferry, &argv, &env);
            fail(94)
        }
        ForkResult::Parent { child } => {
            drop((go_read, ready_write, out_write, err_write));
            let mut byte = [0u8; 1];
            let mut ready = fs::File::from(ready_read);
            ready.read_exact(&mut byte).unwrap();
            fs::write(
                format!("/proc/{child}/uid_map"),
                format!("0 0 1\n{0} {0} 1\n", user.uid),
            )
            .unwrap();
            fs::write(
                format!("/proc/{child}/gid_map"),
                format!("0 0 1\n{0} {0} 1\n", user.gid),
            )
            .unwrap();
            fs::File::from(go_write).write_all(b"x").unwrap();
            let mut stdout = String::new();
            let mut stderr = String::new();
            fs::File::from(out_read)
                .read_to_string(&mut stdout)
                .unwrap();
            fs::File::from(err_read)
                .read_to_string(&mut stderr)
                .unwrap();
            let code = match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, code) => Some(code),
                _ => None,
            };
            Outcome {
                code,
                stdout,
                stderr,
                elapsed: Duration::ZERO,
            }
        }
    }
}
