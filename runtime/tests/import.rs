//! `ferry build` and `ferry import` on images made by a tool ferry did not write
//! (Debian's podman), then run with `ferry run` as the test user: layers, whiteouts,
//! opaque folders, links, replaced entries, the stored Env and WorkingDir, reproducible
//! builds, and clean failures on corrupt archives.
//!
//! Needs what `tests/prepare-host` installs (podman included): the tests are ignored
//! unless asked for, and fail, naming what is missing, when run without it.
//!
//!     cargo test -p ferry-runtime --test import -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Builds the podman images: a base imported from a root tarball, then a second layer
/// made by editing a mounted container and committing it. Saved in both formats.
const PODMAN_RECIPE: &str = r#"
set -euo pipefail
P="podman --root $WORK/store --runroot $WORK/run --storage-driver overlay"
base=$WORK/base
cp -a "$ROOTFS" "$base"
mkdir -p "$base/data" "$base/opq" "$base/swap/was-dir" "$base/opt/app/bin"
echo keep > "$base/data/keep"
echo gone > "$base/data/gone"
echo lower > "$base/opq/lower-a"
echo lower > "$base/opq/lower-b"
echo file > "$base/swap/was-file"
echo inner > "$base/swap/was-dir/inner"
echo linked > "$base/data/hl-a"
ln "$base/data/hl-a" "$base/data/hl-b"
ln -s keep "$base/data/link"
printf '#!/bin/sh\necho "greeting=$APP_GREETING slurm=${SLURM_JOB_NAME-unset} pwd=$(pwd) path=$PATH"\n' > "$base/opt/app/bin/greet"
chmod 755 "$base/opt/app/bin/greet"
tar -C "$base" -cf "$WORK/base.tar" .
$P import -q \
  --change 'ENV APP_GREETING=hello' \
  --change 'ENV SLURM_JOB_NAME=from-image' \
  --change 'ENV PATH=/opt/app/bin:/usr/bin:/bin' \
  --change 'WORKDIR /opt/app' \
  --change 'CMD ["greet"]' \
  --change 'LABEL org.example.test=yes' \
  "$WORK/base.tar" ferry-test/base >/dev/null
c=$($P create ferry-test/base /bin/sh)
m=$($P mount "$c")
rm "$m/data/gone"
rm -rf "$m/opq"; mkdir "$m/opq"; echo upper > "$m/opq/new"
rm "$m/swap/was-file"; mkdir "$m/swap/was-file"; echo inside > "$m/swap/was-file/inside"
rm -rf "$m/swap/was-dir"; echo now-a-file > "$m/swap/was-dir"
echo second > "$m/data/layer2"
ln "$m/data/layer2" "$m/data/layer2-hl"
$P umount "$c" >/dev/null
$P commit -q --change 'CMD ["greet"]' "$c" ferry-test/layers >/dev/null
$P rm -f "$c" >/dev/null
$P save -q --format docker-archive -o "$WORK/docker.tar" ferry-test/layers
$P save -q --format oci-archive -o "$WORK/oci.tar" ferry-test/layers
$P push -q --compression-format zstd ferry-test/layers "oci-archive:$WORK/oci-zstd.tar"
$P rmi -a -f >/dev/null
rm -rf "$WORK/store" "$WORK/run" "$base" "$WORK/base.tar"
mkdir "$WORK/oci-layout"
tar -C "$WORK/oci-layout" -xf "$WORK/oci.tar"
"#;

struct Archives {
    docker: PathBuf,
    oci: PathBuf,
    /// The same image with zstd-compressed layers.
    oci_zstd: PathBuf,
    oci_layout: PathBuf,
}

static ARCHIVES: OnceLock<Archives> = OnceLock::new();

/// Root, the tools of tests/prepare-host and podman (which it installs).
#[track_caller]
fn require_podman() {
    require_root_and_tools(&["podman"]);
}

fn archives() -> &'static Archives {
    ARCHIVES.get_or_init(|| {
        let dir = TempDir::new_in(Path::new("/var/tmp"), "podman");
        let mut cmd = Command::new("bash");
        cmd.args(["-c", PODMAN_RECIPE])
            .env("WORK", dir.path())
            .env("ROOTFS", &fixture().rootfs);
        let out = run_with_timeout(cmd, Duration::from_secs(300));
        assert_eq!(out.code, Some(0), "making the podman images: {out:#?}");
        let path = dir.keep_until_exit();
        Archives {
            docker: path.join("docker.tar"),
            oci: path.join("oci.tar"),
            oci_zstd: path.join("oci-zstd.tar"),
            oci_layout: path.join("oci-layout"),
        }
    })
}

fn user_workdir(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

fn import(archive: &Path, out: &Path) -> Outcome {
    ferry(
        Path::new("/"),
        &["import".as_ref(), archive.as_os_str(), out.as_os_str()],
    )
}

/// `ferry run --user ferrytest [extra] IMAGE -- CMD` from `cwd`, with `env` added to
/// (and `unset` removed from) the caller's environment.
fn run_as_user(
    cwd: &Path,
    image: &Path,
    extra: &[&str],
    cmd: &[&str],
    env: &[(&str, &str)],
    unset: &[&str],
) -> Outcome {
    let mut c = Command::new(ferry_bin());
    c.current_dir(cwd)
        .args(["run", "--user", TEST_USER])
        .args(extra)
        .arg(image);
    if !cmd.is_empty() {
        c.arg("--").args(cmd);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    for k in unset {
        c.env_remove(k);
    }
    run_with_timeout(c, RUN_TIMEOUT)
}

fn one_error_line(out: &Outcome, must_name: &[&str]) {
    assert_ne!(out.code, Some(0), "must fail: {out:#?}");
    out.one_ferry_line(must_name);
}

/// Files in `dir` whose names say ferry left them (staging folders, partial images).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".ferry-"))
        .collect()
}

#[test]
#[ignore = "needs root, tests/prepare-host and podman: run tests/run, or as root cargo test -- --include-ignored"]
fn layers_whiteouts_opaque_folders_links_and_replacements() {
    require_podman();
    let _g = shared();
    let a = archives();
    let out_dir = TempDir::new_in(Path::new("/var/tmp"), "import");
    let cwd = user_workdir("layers");
    for (tag, archive) in [
        ("docker", &a.docker),
        ("oci", &a.oci),
        ("zstd", &a.oci_zstd),
        ("layout", &a.oci_layout),
    ] {
        let image = out_dir.join(format!("{tag}.sqfs"));
        import(archive, &image).expect_success(tag);
        let script = "cat /data/keep; \
            test -e /data/gone && echo gone-is-present; \
            ls /opq | tr '\\n' ' '; echo; \
            cat /swap/was-file/inside /swap/was-dir; \
            test \"$(stat -c %i /data/hl-a)\" = \"$(stat -c %i /data/hl-b)\" && echo hardlink-lower; \
            test \"$(stat -c %i /data/layer2)\" = \"$(stat -c %i /data/layer2-hl)\" && echo hardlink-upper; \
            readlink /data/link; cat /data/link; \
            test -e /.ferry/image.json && echo config-stored";
        let run = run_as_user(cwd.path(), &image, &[], &["sh", "-c", script], &[], &[]);
        run.expect_success(tag);
        assert_eq!(
            run.stdout,
            "keep\nnew \ninside\nnow-a-file\nhardlink-lower\nhardlink-upper\nkeep\nkeep\nconfig-stored\n",
            "{tag}: {run:#?}"
        );
        assert!(leftovers(out_dir.path()).is_empty(), "{tag}: staging left");
    }
    // The same image in four containers: the same bytes.
    let docker = fs::read(out_dir.join("docker.sqfs")).unwrap();
    for other in ["oci", "zstd", "layout"] {
        assert!(
            docker == fs::read(out_dir.join(format!("{other}.sqfs"))).unwrap(),
            "docker archive vs {other}"
        );
    }
}

#[test]
#[ignore = "needs root, tests/prepare-host and podman: run tests/run, or as root cargo test -- --include-ignored"]
fn stored_config_is_the_images_and_the_env_follows_the_precedence() {
    require_podman();
    let _g = shared();
    let a = archives();
    let out_dir = TempDir::new_in(Path::new("/var/tmp"), "config");
    let image = out_dir.join("img.sqfs");
    import(&a.docker, &image).expect_success("import");
    let unsquash = Command::new("unsquashfs")
        .args(["-cat"])
        .arg(&image)
        .arg(".ferry/image.json")
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&unsquash.stdout).unwrap();
    assert_eq!(config["WorkingDir"], "/opt/app", "{config}");
    assert_eq!(config["Cmd"], serde_json::json!(["greet"]), "{config}");
    assert_eq!(config["Labels"]["org.example.test"], "yes", "{config}");
    assert!(
        config["Env"]
            .as_array()
            .unwrap()
            .contains(&"APP_GREETING=hello".into()),
        "{config}"
    );
    let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
    for key in &keys {
        assert!(
            ["Env", "WorkingDir", "Entrypoint", "Cmd", "User", "Labels"].contains(&key.as_str()),
            "unexpected key {key}"
        );
    }

    let cwd = user_workdir("env");
    let host_path = "/host/only/bin:/usr/bin:/bin";
    // The image fills in what the host does not set; PATH is the image's; SLURM_* never
    // comes from the image; the image's WorkingDir beats the current folder.
    let run = run_as_user(
        cwd.path(),
        &image,
        &[],
        &["greet"],
        &[("PATH", host_path)],
        &["APP_GREETING", "SLURM_JOB_NAME"],
    );
    run.expect_success("greet");
    assert_eq!(
        run.stdout,
        "greeting=hello slurm=unset pwd=/opt/app path=/opt/app/bin:/usr/bin:/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin\n",
        "{run:#?}"
    );
    // The host's value wins; --workdir wins over WorkingDir.
    let run = run_as_user(
        cwd.path(),
        &image,
        &["--workdir", "/data"],
        &["greet"],
        &[("APP_GREETING", "from-host")],
        &[],
    );
    run.expect_success("greet with host env");
    assert!(
        run.stdout
            .starts_with("greeting=from-host slurm=unset pwd=/data "),
        "{run:#?}"
    );
    // No command: the image's Entrypoint and Cmd.
    let run = run_as_user(cwd.path(), &image, &[], &[], &[], &["APP_GREETING"]);
    run.expect_success("default command");
    assert!(run.stdout.starts_with("greeting=hello "), "{run:#?}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn build_gives_the_same_bytes_for_the_same_tree() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let mut images = Vec::new();
    let dirs: Vec<TempDir> = (0..2)
        .map(|i| TempDir::new_in(Path::new("/var/tmp"), &format!("build{i}")))
        .collect();
    for dir in &dirs {
        // A fresh copy (new inodes, new timestamps), some time later.
        let copy = dir.join("rootfs");
        let cp = Command::new("cp")
            .arg("-r")
            .arg(&fx.rootfs)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        let image = dir.join("out.sqfs");
        ferry(dir.path(), &["build", "rootfs", "out.sqfs"]).expect_success("build");
        images.push(fs::read(&image).unwrap());
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(images[0] == images[1], "two builds of the same tree differ");
    // Refuses to overwrite; --force replaces.
    let out = ferry(dirs[0].path(), &["build", "rootfs", "out.sqfs"]);
    one_error_line(&out, &["out.sqfs", "--force"]);
    ferry(dirs[0].path(), &["build", "--force", "rootfs", "out.sqfs"]).expect_success("--force");
    let out = ferry(dirs[0].path(), &["build", "no-such-dir", "x.sqfs"]);
    one_error_line(&out, &["no-such-dir"]);
    assert!(leftovers(dirs[0].path()).is_empty());
}

#[test]
#[ignore = "needs root, tests/prepare-host and podman: run tests/run, or as root cargo test -- --include-ignored"]
fn corrupt_and_truncated_archives_fail_with_one_line_and_leave_nothing() {
    require_podman();
    let _g = shared();
    let a = archives();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "corrupt");
    let good = fs::read(&a.docker).unwrap();
    let oci = fs::read(&a.oci).unwrap();
    // The biggest layer's data starts after its 512-byte header; flip bytes well inside.
    let flip = |bytes: &[u8], at: usize| {
        let mut b = bytes.to_vec();
        for x in &mut b[at..at + 64] {
            *x ^= 0x5a;
        }
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated-docker",
            good[..good.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "truncated-oci",
            oci[..oci.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        (
            "flipped-docker",
            flip(&good, good.len() / 3),
            "corrupt|truncated",
        ),
        (
            "flipped-oci",
            flip(&oci, oci.len() / 2),
            "corrupt|truncated",
        ),
        (
            "garbage",
            b"this is not an archive at all".repeat(40),
            "not an image archive",
        ),
        ("empty", Vec::new(), "not an image archive"),
    ];
    for (name, bytes, says) in cases {
        let archive = dir.join(format!("{name}.tar"));
        fs::write(&archive, &bytes).unwrap();
        let image = dir.join(format!("{name}.sqfs"));
        let out = import(&archive, &image);
        one_error_line(&out, &[name]);
        assert!(
            says.split('|').any(|w| out.stderr.contains(w)),
            "{name}: the line says {says}: {}",
            out.stderr
        );
        assert!(!image.exists(), "{name}: an image was written");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{name}: {:?}",
            leftovers(dir.path())
        );
    }
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_bad_stored_config_is_one_line_naming_the_image() {
    require_root_and_tools(&[]);
    let _g = shared();
    let fx = fixture();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "badcfg");
    let rootfs = dir.join("rootfs");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&fx.rootfs)
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(cp.success());
    mkdir_mode(&rootfs.join(".ferry"), 0o755);
    write_mode(
        &rootfs.join(".ferry/image.json"),
        "{\"Env\": [\"NO_EQUALS\"]}",
        0o644,
    );
    let cwd = user_workdir("badcfg-cwd");
    let out = run_as_user(cwd.path(), &rootfs, &[], &["true"], &[], &[]);
    one_error_line(&out, &[&rootfs.display().to_string(), "/.ferry/image.json"]);
    // ferry build refuses to pack it.
    let out = ferry(dir.path(), &["build", "rootfs", "x.sqfs"]);
    one_error_line(&out, &["/.ferry/image.json"]);
    assert!(!dir.join("x.sqfs").exists());
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn an_image_without_a_shell_runs_a_command() {
    require_root_and_tools(&[]);
    let _g = shared();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "distroless");
    let rootfs = dir.join("rootfs");
    mkdir_mode(&rootfs.join("bin"), 0o755);
    mkdir_mode(&rootfs.join(".ferry"), 0o755);
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    write_mode(
        &rootfs.join(".ferry/image.json"),
        r#"{"Entrypoint":["/bin/busybox","echo"],"Cmd":["no","shell"],"Env":["PATH=/bin"]}"#,
        0o644,
    );
    let image = dir.join("distroless.sqfs");
    ferry(dir.path(), &["build", "rootfs", "distroless.sqfs"]).expect_success("build");
    let cwd = user_workdir("distroless-cwd");
    let run = run_as_user(cwd.path(), &image, &[], &[], &[], &[]);
    run.expect_success("entrypoint");
    assert_eq!(run.stdout, "no shell\n");
    let run = run_as_user(
        cwd.path(),
        &image,
        &[],
        &["busybox", "printf", "%s\\n", "direct"],
        &[],
        &[],
    );
    run.expect_success("command");
    assert_eq!(run.stdout, "direct\n");
}

#[test]
#[ignore = "needs root, tests/prepare-host and podman: run tests/run, or as root cargo test -- --include-ignored"]
fn an_interrupted_import_leaves_nothing() {
    require_podman();
    let _g = shared();
    let a = archives();
    // An OCI layout whose first layer blob is a pipe: the test decides when bytes come.
    let dir = TempDir::new_in(Path::new("/var/tmp"), "interrupt");
    let layout = dir.join("layout");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&a.oci_layout)
        .arg(&layout)
        .status()
        .unwrap();
    assert!(cp.success());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &serde_json::Value| {
        layout
            .join("blobs/sha256")
            .join(digest.as_str().unwrap().trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&index["manifests"][0]["digest"])).unwrap()).unwrap();
    let layer = blob(&manifest["layers"][0]["digest"]);
    let bytes = fs::read(&layer).unwrap();
    fs::remove_file(&layer).unwrap();
    nix::unistd::mkfifo(&layer, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let out = dir.join("out.sqfs");
    let mut child = Command::new(ferry_bin())
        .arg("import")
        .arg(&layout)
        .arg(&out)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the pipe waits for ferry to open the layer: staging has begun by then.
    let mut writer = fs::OpenOptions::new().write(true).open(&layer).unwrap();
    std::io::Write::write_all(&mut writer, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !leftovers(dir.path()).is_empty(),
        "precondition: the staging folder exists while the import runs"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(writer); // the read ferry is blocked in returns
    let waited = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(waited.elapsed() < RUN_TIMEOUT, "ferry import did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ferry: interrupted; "), "{stderr}");
    assert!(!out.exists(), "an image was written");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}
