//! Image formats other than SquashFS files and folders: SIF files written here to the
//! published format around a SquashFS made by mksquashfs, ext3/ext4 images made by
//! Debian's mkfs.ext3/mkfs.ext4 -d, and files that are no image. Commands run inside
//! as the test user; broken images give one clear line and leave nothing behind;
//! `ferry inspect` describes each format to an unprivileged user, as text and JSON.
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test formats -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use test_support::sif_builder as sb;

/// The test images of this file, made once per test process from the common fixture.
struct Images {
    dir: PathBuf,
    sif: PathBuf,
    signed_sif: PathBuf,
    /// Made by Debian's siftool (sylabs/sif): definition file, SquashFS primary
    /// system partition, signature descriptor.
    siftool_sif: PathBuf,
    /// Its partition is an unpadded SquashFS whose size is no multiple of 512 or 4096.
    unpadded_sif: PathBuf,
    ext2: PathBuf,
    ext3: PathBuf,
    ext4: PathBuf,
    /// ext4 whose superblock says the journal needs recovery (an unclean unmount).
    dirty_ext4: PathBuf,
    /// Where the SquashFS partition of `sif` lies: (offset, size).
    sif_partition: (u64, u64),
}

static IMAGES: OnceLock<Images> = OnceLock::new();

fn images() -> &'static Images {
    IMAGES.get_or_init(|| {
        let fx = fixture();
        let dir = fx.dir.join("formats");
        fs::create_dir_all(&dir).unwrap();
        let squashfs = fs::read(&fx.image).unwrap();
        let plain = sb::build(&[
            sb::deffile("Bootstrap: scratch\n"),
            sb::partition(sb::FS_SQUASHFS, sb::PART_PRIMARY_SYSTEM, squashfs.clone()),
        ]);
        let sif = write_image(&dir, "plain.sif", &plain);
        let signed = sb::build(&[
            sb::deffile("Bootstrap: scratch\n"),
            sb::partition(sb::FS_SQUASHFS, sb::PART_PRIMARY_SYSTEM, squashfs.clone()),
            sb::signature(2),
        ]);
        let signed_sif = write_image(&dir, "signed.sif", &signed);
        let siftool_sif = dir.join("siftool.sif");
        let def = dir.join("app.def");
        fs::write(&def, "Bootstrap: scratch\n").unwrap();
        let sig = dir.join("sig.bin");
        fs::write(&sig, "-----BEGIN PGP SIGNATURE-----\n").unwrap();
        let siftool = find_tool("siftool").expect("siftool");
        run_tool(Command::new(&siftool).arg("new").arg(&siftool_sif));
        run_tool(
            Command::new(&siftool)
                .arg("add")
                .arg(&siftool_sif)
                .arg(&def)
                .args(["--datatype", "1"]),
        );
        run_tool(
            Command::new(&siftool)
                .arg("add")
                .arg(&siftool_sif)
                .arg(&fx.image)
                .args(["--datatype", "4", "--parttype", "2", "--partfs", "1"])
                .args(["--partarch", "2"]),
        );
        run_tool(
            Command::new(&siftool)
                .arg("add")
                .arg(&siftool_sif)
                .arg(&sig)
                .args(["--datatype", "5", "--signhash", "1", "--link", "2"])
                .args(["--signentity", "433FE984155206BD962725E20E8713472A879943"]),
        );
        fs::set_permissions(
            &siftool_sif,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        // Unpadded SquashFS sizes are arbitrary; a pseudo file of growing length makes
        // sure this one is no multiple of 512 (nor of 4096).
        let nopad = (1..=8)
            .map(|n| {
                let path = dir.join("nopad.sqfs");
                run_tool(
                    Command::new("mksquashfs")
                        .arg(&fx.rootfs)
                        .arg(&path)
                        .args([
                            "-no-xattrs",
                            "-quiet",
                            "-noappend",
                            "-no-progress",
                            "-nopad",
                        ])
                        .arg("-p")
                        .arg(format!("pad f 644 0 0 printf %0{n}d 0")),
                );
                fs::read(&path).unwrap()
            })
            .find(|bytes| bytes.len() % 512 != 0)
            .expect("an unpadded SquashFS whose size is no multiple of 512");
        let unpadded_sif = write_image(
            &dir,
            "unpadded.sif",
            &sb::build(&[
                sb::partition(sb::FS_SQUASHFS, sb::PART_PRIMARY_SYSTEM, nopad.clone()),
                sb::deffile("Bootstrap: scratch\n"),
            ]),
        );
        // Last in the file, the partition's final sector is incomplete: a clear error.
        write_image(
            &dir,
            "unpadded-last.sif",
            &sb::build(&[sb::partition(
                sb::FS_SQUASHFS,
                sb::PART_PRIMARY_SYSTEM,
                nopad,
            )]),
        );
        let offset = i64::from_le_bytes(
            plain[sb::offset_field(1)..sb::offset_field(1) + 8]
                .try_into()
                .unwrap(),
        ) as u64;
        let ext2 = mkfs(
            "mkfs.ext2",
            &fx.rootfs,
            &dir.join("image2.img"),
            "ferry-ext2",
        );
        let ext3 = mkfs(
            "mkfs.ext3",
            &fx.rootfs,
            &dir.join("image3.img"),
            "ferry-ext3",
        );
        let ext4 = mkfs(
            "mkfs.ext4",
            &fx.rootfs,
            &dir.join("image4.img"),
            "ferry-ext4",
        );
        let dirty_ext4 = mkfs("mkfs.ext4", &fx.rootfs, &dir.join("dirty4.img"), "dirty");
        run_tool(
            Command::new(find_tool("debugfs").expect("debugfs"))
                .args(["-w", "-R", "feature needs_recovery"])
                .arg(&dirty_ext4),
        );
        Images {
            dir,
            sif,
            signed_sif,
            siftool_sif,
            unpadded_sif,
            ext2,
            ext3,
            ext4,
            dirty_ext4,
            sif_partition: (offset, squashfs.len() as u64),
        }
    })
}

fn write_image(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    path
}

fn run_tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext image of `rootfs` made by e2fsprogs (`-d` copies a folder in, as root).
fn mkfs(tool: &str, rootfs: &Path, out: &Path, label: &str) -> PathBuf {
    run_tool(
        Command::new(find_tool(tool).unwrap_or_else(|| panic!("{tool} (install e2fsprogs)")))
            .args(["-q", "-F", "-L", label, "-d"])
            .arg(rootfs)
            .arg(out)
            .arg("24M"),
    );
    fs::set_permissions(out, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    out.to_path_buf()
}

/// Root and the tools of tests/prepare-host, plus e2fsprogs, unsquashfs and siftool
/// (install e2fsprogs, squashfs-tools and siftool).
#[track_caller]
fn ready() {
    require_root_and_tools(&[
        "mkfs.ext2",
        "mkfs.ext3",
        "mkfs.ext4",
        "debugfs",
        "unsquashfs",
        "siftool",
    ]);
}

fn user_workdir(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

fn run_as_user(image: &str, cmd: &[&str]) -> Outcome {
    let cwd = user_workdir("fmt");
    let mut args = vec!["run", "--user", TEST_USER, image, "--"];
    args.extend(cmd);
    ferry(cwd.path(), &args)
}

/// Runs an image-only file, an image-only command and a setuid-root program as the
/// test user: the image's files, the user's identity, nosuid.
fn assert_runs(image: &str) {
    let out = run_as_user(image, &["cat", "/data/only-in-image"]);
    out.expect_success(image);
    assert_eq!(out.stdout, ONLY_IN_IMAGE, "{image}");
    let out = run_as_user(image, &["image-only", "x"]);
    out.expect_success(image);
    assert_eq!(
        out.stdout,
        format!("image-only command ran as {TEST_USER} with args: x\n")
    );
    let out = run_as_user(image, &["show-euid"]);
    out.expect_success(image);
    assert_eq!(
        out.stdout.trim(),
        test_user().uid.to_string(),
        "a setuid-root file in {image} must not raise privilege"
    );
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn sif_files_run_commands_as_the_user() {
    ready();
    let _g = shared();
    let im = images();
    for sif in [&im.sif, &im.signed_sif, &im.siftool_sif, &im.unpadded_sif] {
        assert_runs(&sif.display().to_string());
    }
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn ext2_ext3_and_ext4_images_run_commands_as_the_user() {
    ready();
    let _g = shared();
    let im = images();
    for img in [&im.ext2, &im.ext3, &im.ext4, &im.dirty_ext4] {
        assert_runs(&img.display().to_string());
    }
    // The dirty image stays as it was: nothing replayed or written into it.
    let out = run_tool(
        Command::new(find_tool("dumpe2fs").unwrap())
            .arg("-h")
            .arg(&im.dirty_ext4),
    );
    assert!(out.contains("needs_recovery"), "{out}");
}

/// The loop device of a SIF shows only its SquashFS partition (offset and size limit),
/// a second container of the same SIF reuses it, and it goes with the last container.
#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn sif_partition_is_mounted_through_one_shared_ranged_loop_device() {
    ready();
    let _g = exclusive();
    let im = images();
    let before = HostState::capture();
    let cwd = TempDir::new("sifloop");
    let prepare = || {
        let mut request = ferry_runtime::Request::new(
            im.sif.clone(),
            ferry_runtime::User::by_name(TEST_USER).expect("User::by_name"),
        );
        request.cwd = Some(cwd.path().to_path_buf());
        ferry_runtime::prepare(&request).expect("prepare")
    };
    let first = prepare();
    let second = prepare();
    let loops = loop_devices_for(&im.sif);
    assert_eq!(loops.len(), 1, "one shared loop device: {loops:?}");
    let (offset, size) = im.sif_partition;
    assert!(
        loops[0].contains(&format!("offset {offset}"))
            && loops[0].contains(&format!("sizelimit {size}")),
        "the loop device covers only the partition at {offset}+{size}: {}",
        loops[0]
    );
    // A SquashFS file of the same bytes is another file: no sharing across files.
    drop(first);
    drop(second);
    before.assert_nothing_left("after dropping both SIF containers");
}

/// Pinned digests cover the whole file, whatever the format.
#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn pinned_digests_cover_the_whole_sif_and_ext_file() {
    ready();
    let _g = shared();
    let im = images();
    let cwd = TempDir::new("pin");
    for img in [&im.signed_sif, &im.ext3] {
        let out = ferry(cwd.path(), &["digest", &img.display().to_string()]);
        out.expect_success("ferry digest");
        let digest = out.stdout.split_whitespace().next().unwrap().to_string();
        let expected = run_tool(Command::new("sha256sum").arg(img));
        assert_eq!(
            digest,
            format!("sha256:{}", expected.split_whitespace().next().unwrap())
        );
        let pinned = format!("{}@{digest}", img.display());
        let out = run_as_user(&pinned, &["cat", "/data/only-in-image"]);
        out.expect_success(&pinned);
        assert_eq!(out.stdout, ONLY_IN_IMAGE);
        let wrong = format!("{}@sha256:{}", img.display(), "0".repeat(64));
        let out = run_as_user(&wrong, &["true"]);
        assert_eq!(out.code, Some(125), "{out:#?}");
        assert!(out.stderr.contains("digest mismatch"), "{out:#?}");
    }
}

/// A refused image: exit 125, one `ferry:` line naming the image and each of `words`,
/// the command did not run, and no loop device or mount is left.
fn assert_refused(image: &Path, words: &[&str]) {
    let cwd = user_workdir("refused");
    let marker = cwd.join("ran");
    let before = HostState::capture();
    let shown = image.display().to_string();
    let out = ferry(
        cwd.path(),
        &[
            "run",
            "--user",
            TEST_USER,
            &shown,
            "--",
            "/bin/touch",
            &marker.display().to_string(),
        ],
    );
    assert_eq!(out.code, Some(125), "{shown}: {out:#?}");
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{shown}: one line: {:?}", out.stderr);
    assert!(lines[0].starts_with("ferry: image "), "{}", lines[0]);
    for w in std::iter::once(shown.as_str()).chain(words.iter().copied()) {
        assert!(lines[0].contains(w), "the line names {w:?}: {}", lines[0]);
    }
    assert!(!marker.exists(), "{shown}: the command ran");
    before.assert_nothing_left(&format!("refusing {shown}"));
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn unusable_and_broken_sifs_are_refused_with_one_clear_line() {
    ready();
    let _g = exclusive();
    let im = images();
    let squashfs = fs::read(fixture().image.as_path()).unwrap();
    let dir = &im.dir;
    let make = |name: &str, objects: &[sb::Object]| write_image(dir, name, &sb::build(objects));

    let encrypted = make(
        "encrypted.sif",
        &[sb::partition(
            sb::FS_ENCRYPTED_SQUASHFS,
            sb::PART_PRIMARY_SYSTEM,
            squashfs.clone(),
        )],
    );
    assert_refused(&encrypted, &["encrypted", "without --encrypt"]);

    let ext3 = fs::read(&im.ext3).unwrap();
    let ext3_sif = make(
        "ext3root.sif",
        &[sb::partition(sb::FS_EXT3, sb::PART_PRIMARY_SYSTEM, ext3)],
    );
    assert_refused(&ext3_sif, &["ext3", "SquashFS"]);

    let no_partition = make("nopart.sif", &[sb::deffile("Bootstrap: scratch\n")]);
    assert_refused(&no_partition, &["no primary system partition"]);
    // A SquashFS partition that is not the primary system one is no root either.
    let data_only = make(
        "dataonly.sif",
        &[sb::partition(
            sb::FS_SQUASHFS,
            sb::PART_DATA,
            squashfs.clone(),
        )],
    );
    assert_refused(&data_only, &["no primary system partition"]);

    let good = sb::build(&[sb::partition(
        sb::FS_SQUASHFS,
        sb::PART_PRIMARY_SYSTEM,
        squashfs.clone(),
    )]);
    // Cut in the middle of the partition.
    let truncated = write_image(dir, "truncated.sif", &good[..good.len() - 1000]);
    assert_refused(&truncated, &["broken SIF", "past the end of the file"]);
    // Cut inside the descriptor table.
    let cut_table = write_image(dir, "cuttable.sif", &good[..6000]);
    assert_refused(&cut_table, &["broken SIF", "past the end of the file"]);
    // Only the header's first bytes.
    let header_only = write_image(dir, "header.sif", &good[..60]);
    assert_refused(&header_only, &["broken SIF", "truncated"]);
    // A partition offset far past the end of the file, and one that overflows.
    for (name, offset) in [
        ("pasteof.sif", 1u64 << 40),
        ("overflow.sif", i64::MAX as u64),
    ] {
        let mut bad = good.clone();
        let at = sb::offset_field(0);
        bad[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let path = write_image(dir, name, &bad);
        assert_refused(&path, &["broken SIF"]);
    }
    // An unpadded partition that ends the file mid-sector.
    assert_refused(
        &dir.join("unpadded-last.sif"),
        &["padding to 4096 bytes", "truncate -s %4096"],
    );
    // and the advice works.
    let padded = dir.join("padded.sif");
    fs::copy(dir.join("unpadded-last.sif"), &padded).unwrap();
    run_tool(Command::new("truncate").args(["-s", "%4096"]).arg(&padded));
    assert_runs(&padded.display().to_string());
    // An empty root partition.
    let empty = make(
        "emptyroot.sif",
        &[sb::partition(
            sb::FS_SQUASHFS,
            sb::PART_PRIMARY_SYSTEM,
            vec![],
        )],
    );
    assert_refused(&empty, &["broken SIF", "holds no SquashFS"]);
    // The partition points at bytes that are no SquashFS.
    let mut bad = good.clone();
    let at = sb::offset_field(0);
    bad[at..at + 8].copy_from_slice(&0i64.to_le_bytes());
    let path = write_image(dir, "notsquashfs.sif", &bad);
    assert_refused(&path, &["broken SIF", "holds no SquashFS"]);
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn a_file_of_no_known_format_names_the_accepted_formats() {
    ready();
    let _g = exclusive();
    let dir = TempDir::new("unknown");
    let tarball = dir.join("rootfs.tar");
    // A tar archive: a real file format, but not an image ferry runs.
    run_tool(
        Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&fixture().rootfs)
            .arg("etc"),
    );
    fs::set_permissions(
        &tarball,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    assert_refused(
        &tarball,
        &[
            "not a container image",
            "SquashFS",
            "SIF",
            "ext2/3/4",
            "root-filesystem folders",
        ],
    );
}

// ---------------------------------------------------------------------------------
// ferry inspect, as the unprivileged test user.

/// Small images holding a stored config, one per format.
struct InspectImages {
    rootfs: PathBuf,
    squashfs: PathBuf,
    sif: PathBuf,
    ext3: PathBuf,
    ext4: PathBuf,
}

const CONFIG: &str = r#"{"Env":["PATH=/opt/app/bin:/bin","GREETING=hello world"],"WorkingDir":"/opt/app","Cmd":["app","--serve"],"Labels":{"org.example.team":"hpc"}}"#;

static INSPECT: OnceLock<InspectImages> = OnceLock::new();

fn inspect_images() -> &'static InspectImages {
    INSPECT.get_or_init(|| {
        let dir = fixture().dir.join("inspect");
        let rootfs = dir.join("rootfs");
        mkdir_mode(&rootfs.join("bin"), 0o755);
        mkdir_mode(&rootfs.join("opt/app"), 0o755);
        mkdir_mode(&rootfs.join(".ferry"), 0o755);
        write_mode(&rootfs.join(".ferry/image.json"), CONFIG, 0o644);
        let squashfs = dir.join("app.sqfs");
        run_tool(
            Command::new("mksquashfs")
                .arg(&rootfs)
                .arg(&squashfs)
                .args([
                    "-quiet",
                    "-noappend",
                    "-no-progress",
                    "-comp",
                    "xz",
                    "-b",
                    "65536",
                ]),
        );
        fs::set_permissions(
            &squashfs,
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let sif = write_image(
            &dir,
            "app.sif",
            &sb::build(&[
                sb::deffile("Bootstrap: scratch\n"),
                sb::partition(
                    sb::FS_SQUASHFS,
                    sb::PART_PRIMARY_SYSTEM,
                    fs::read(&squashfs).unwrap(),
                ),
                sb::signature(2),
            ]),
        );
        let ext3 = mkfs("mkfs.ext3", &rootfs, &dir.join("app3.img"), "app-ext3");
        let ext4 = mkfs("mkfs.ext4", &rootfs, &dir.join("app4.img"), "app-ext4");
        InspectImages {
            rootfs,
            squashfs,
            sif,
            ext3,
            ext4,
        }
    })
}

/// `ferry inspect ARGS` as the test user (no root; runuser sets their groups), with a
/// plain user's PATH (no sbin folders).
fn inspect_as_user(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(find_tool("runuser").expect("runuser (util-linux)"));
    cmd.args(["-u", TEST_USER, "--"])
        .arg(ferry_bin())
        .arg("inspect")
        .args(args)
        .current_dir("/")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    run_with_timeout(cmd, RUN_TIMEOUT)
}

fn inspect_json(image: &Path) -> serde_json::Value {
    let out = inspect_as_user(&["--json", &image.display().to_string()]);
    out.expect_success("ferry inspect --json");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn assert_config(report: &serde_json::Value) {
    let want: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    assert_eq!(report["config"], want, "{report:#}");
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn inspect_describes_each_format_to_an_unprivileged_user() {
    ready();
    let _g = shared();
    let im = inspect_images();

    let r = inspect_json(&im.squashfs);
    assert_eq!(r["format"], "squashfs");
    assert_eq!(r["runnable"], true);
    assert_eq!(r["size"], fs::metadata(&im.squashfs).unwrap().len());
    assert_eq!(r["squashfs"]["compression"], "xz");
    assert_eq!(r["squashfs"]["block_size"], 65536);
    assert_config(&r);

    let r = inspect_json(&im.sif);
    assert_eq!(r["format"], "sif");
    assert_eq!(r["runnable"], true);
    assert_eq!(
        r["sif"]["signature"],
        "signed (signature not verified by ferry)"
    );
    assert_eq!(r["sif"]["header"]["version"], "01");
    assert_eq!(r["sif"]["root_partition"], 2);
    let d = r["sif"]["descriptors"].as_array().unwrap();
    assert_eq!(d.len(), 3, "{r:#}");
    assert_eq!(d[0]["type_name"], "definition file");
    assert_eq!(d[1]["type_name"], "partition");
    assert_eq!(d[1]["fs"], "squashfs");
    assert_eq!(d[1]["partition"], "primary system");
    assert_eq!(d[1]["size"], fs::metadata(&im.squashfs).unwrap().len());
    assert_eq!(d[2]["type_name"], "signature");
    assert_eq!(d[2]["signs"], 2);
    assert_eq!(
        r["squashfs"]["compression"], "xz",
        "the partition's SquashFS"
    );
    assert_config(&r);

    for (img, kind, label) in [
        (&im.ext3, "ext3", "app-ext3"),
        (&im.ext4, "ext4", "app-ext4"),
    ] {
        let r = inspect_json(img);
        assert_eq!(r["format"], "ext");
        assert_eq!(r["ext"]["kind"], kind);
        assert_eq!(r["ext"]["label"], label);
        assert_eq!(
            r["ext"]["blocks"].as_u64().unwrap() * r["ext"]["block_size"].as_u64().unwrap(),
            24 << 20
        );
        assert_config(&r);
    }

    let r = inspect_json(&im.rootfs);
    assert_eq!(r["format"], "directory");
    assert_eq!(r["folder"]["root_filesystem"], true);
    assert_eq!(
        r["folder"]["entries"],
        serde_json::json!([".ferry", "bin", "opt"])
    );
    assert_config(&r);

    // A SIF made by siftool: its table at 4096, data objects where siftool put them.
    let r = inspect_json(&images().siftool_sif);
    assert_eq!(r["format"], "sif");
    assert_eq!(r["runnable"], true);
    assert_eq!(r["sif"]["header"]["descriptors_offset"], 4096);
    assert_eq!(
        r["sif"]["signature"],
        "signed (signature not verified by ferry)"
    );
    let d = r["sif"]["descriptors"].as_array().unwrap();
    let kinds: Vec<&str> = d.iter().map(|d| d["type_name"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["definition file", "partition", "signature"],
        "{r:#}"
    );
    assert_eq!(d[1]["size"], fs::metadata(&fixture().image).unwrap().len());
    assert_eq!(d[1]["arch"], "02");
    assert_eq!(r["squashfs"]["compression"], "gzip");

    // No stored config: null in JSON, "none" in text.
    let r = inspect_json(&fixture().image);
    assert_eq!(r["config"], serde_json::Value::Null);
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn inspect_text_shows_format_partitions_signature_and_config() {
    ready();
    let _g = shared();
    let im = inspect_images();
    let out = inspect_as_user(&[&im.sif.display().to_string()]);
    out.expect_success("ferry inspect");
    let text = &out.stdout;
    for want in [
        "format:       SIF (Apptainer/Singularity)",
        "runnable:     yes",
        "signature:    signed (signature not verified by ferry)",
        "fs squashfs, primary system partition, amd64 (root filesystem)",
        "sha256, signs id 2",
        "compression xz, block size 65536",
        "  Env: [\"PATH=/opt/app/bin:/bin\",\"GREETING=hello world\"]",
        "  WorkingDir: /opt/app",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let out = inspect_as_user(&[&im.ext3.display().to_string()]);
    out.expect_success("ferry inspect ext3");
    assert!(
        out.stdout.contains("format:       ext3 filesystem image"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("label \"app-ext3\""), "{}", out.stdout);
    let out = inspect_as_user(&[&fixture().image.display().to_string()]);
    out.expect_success("ferry inspect squashfs");
    assert!(out.stdout.contains("config:       none"), "{}", out.stdout);
}

/// A reader that is gone before `ferry inspect` writes (`ferry inspect IMG | head -1`
/// on a long report): the command ends quietly, by SIGPIPE as other Unix tools do, with
/// no panic and no backtrace.
#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn inspect_into_a_closed_pipe_ends_quietly() {
    ready();
    let _g = shared();
    let script = format!(
        "{{ sleep 0.3; '{}' inspect '{}'; echo \"status $?\" >&2; }} | true",
        ferry_bin().display(),
        fixture().image.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("status 141"),
        "not ended by SIGPIPE: {stderr}"
    );
}

#[test]
#[ignore = "needs root, tests/prepare-host, e2fsprogs and siftool: run tests/run, or as root cargo test -- --include-ignored"]
fn inspect_reports_unrunnable_and_broken_images() {
    ready();
    let _g = shared();
    let dir = TempDir::new("inspectbad");
    let encrypted = write_image(
        dir.path(),
        "enc.sif",
        &sb::build(&[sb::partition(
            sb::FS_ENCRYPTED_SQUASHFS,
            sb::PART_PRIMARY_SYSTEM,
            vec![0; 8192],
        )]),
    );
    let r = inspect_json(&encrypted);
    assert_eq!(r["runnable"], false);
    assert!(
        r["problem"].as_str().unwrap().contains("encrypted"),
        "{r:#}"
    );
    assert_eq!(r["sif"]["descriptors"][0]["fs"], "encrypted squashfs");

    let good = sb::build(&[sb::partition(
        sb::FS_SQUASHFS,
        sb::PART_PRIMARY_SYSTEM,
        fs::read(&fixture().image).unwrap(),
    )]);
    let truncated = write_image(dir.path(), "cut.sif", &good[..good.len() / 2]);
    let notes = dir.join("notes.txt");
    write_mode(&notes, "hello\n", 0o644);
    for (img, words) in [
        (&truncated, vec!["broken SIF", "past the end of the file"]),
        (&notes, vec!["not a container image", "SIF", "ext2/3/4"]),
    ] {
        let shown = img.display().to_string();
        let out = inspect_as_user(&[&shown]);
        assert_eq!(out.code, Some(2), "{out:#?}");
        assert_eq!(out.stdout, "");
        assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
        for w in std::iter::once(shown.as_str()).chain(words) {
            assert!(out.stderr.contains(w), "{w:?} in {:?}", out.stderr);
        }
    }
}
