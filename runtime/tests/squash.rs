//! Reproducible packing (`ferry_runtime::squash`): the same tree gives the same
//! SquashFS bytes, whatever the times on disk, the order the files were created in, or
//! the number of processors mksquashfs uses. Needs mksquashfs only:
//!
//!     cargo test -p ferry-runtime --test squash -- --include-ignored

mod common;

use common::*;
use ferry_runtime::squash::{self, Compression};
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The files of the test tree, in the order `make_tree` creates them.
const FILES: &[(&str, &str, u32)] = &[
    ("etc/os-release", "NAME=test\n", 0o644),
    ("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755),
    ("usr/lib/big", "", 0o644),
    ("usr/share/doc/a", "a\n", 0o600),
    ("usr/share/doc/b", "b\n", 0o644),
    ("usr/share/doc/c", "a\n", 0o644), // the same content as a: a duplicate
    ("empty", "", 0o644),
];

/// Builds the tree under `root`, its files created in `order` (forward or reverse), every
/// file and folder given the time `time`.
fn make_tree(root: &Path, reverse: bool, time: SystemTime) {
    let mut files: Vec<_> = FILES.to_vec();
    if reverse {
        files.reverse();
    }
    for (name, content, mode) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        if name == "usr/lib/big" {
            // Larger than a block, so that mksquashfs's reader and compressor threads
            // have several blocks to share out.
            let block: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
            fs::write(&path, block).unwrap();
        } else {
            write_mode(&path, content, mode);
        }
    }
    symlink("tool", root.join("usr/bin/alias")).unwrap();
    fs::hard_link(
        root.join("etc/os-release"),
        root.join("etc/os-release.hard"),
    )
    .unwrap();
    mkdir_mode(&root.join("var/empty"), 0o711);
    set_times(root, time);
}

/// Gives every file and folder under `path` (symlinks left alone) the time `time`.
fn set_times(path: &Path, time: SystemTime) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        return;
    }
    if meta.is_dir() {
        for child in fs::read_dir(path).unwrap() {
            set_times(&child.unwrap().path(), time);
        }
    }
    let file = File::open(path).unwrap();
    file.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

fn require_mksquashfs() {
    require(&missing_tools(&["mksquashfs"]));
}

#[test]
#[ignore = "needs mksquashfs: run tests/run, or cargo test -- --include-ignored"]
fn the_same_tree_gives_the_same_bytes() {
    require_mksquashfs();
    let dir = TempDir::new("squash");
    let first = dir.join("first");
    let copy = dir.join("copy");
    make_tree(
        &first,
        false,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    );
    // The same content created in the other order (other readdir order, other inode
    // numbers) at other times.
    make_tree(&copy, true, SystemTime::now());
    for compression in [Compression::Gzip, Compression::Zstd] {
        let a = dir.join("a.sqfs");
        let b = dir.join("b.sqfs");
        let c = dir.join("c.sqfs");
        squash::squash(&first, &a, true, true, compression).unwrap();
        squash::squash(&first, &b, true, true, compression).unwrap();
        squash::squash(&copy, &c, true, true, compression).unwrap();
        let bytes = fs::read(&a).unwrap();
        assert!(bytes.starts_with(b"hsqs"), "not a SquashFS image");
        assert_eq!(
            bytes,
            fs::read(&b).unwrap(),
            "{compression:?}: packed twice"
        );
        assert_eq!(
            bytes,
            fs::read(&c).unwrap(),
            "{compression:?}: the same tree made in another order at another time"
        );
    }
}

#[test]
#[ignore = "needs mksquashfs: run tests/run, or cargo test -- --include-ignored"]
fn the_number_of_processors_does_not_change_the_bytes() {
    require_mksquashfs();
    let dir = TempDir::new("squash-cpus");
    let root = dir.join("root");
    make_tree(&root, false, SystemTime::now());
    let ours = dir.join("ours.sqfs");
    squash::squash(&root, &ours, true, true, Compression::Gzip).unwrap();
    let time = squash::timestamp().to_string();
    for processors in ["1", "3"] {
        let theirs = dir.join(format!("p{processors}.sqfs"));
        mksquashfs(
            &root,
            &theirs,
            &[
                "-all-time",
                &time,
                "-mkfs-time",
                &time,
                "-all-root",
                "-comp",
                "gzip",
                "-processors",
                processors,
            ],
        );
        assert_eq!(
            fs::read(&ours).unwrap(),
            fs::read(&theirs).unwrap(),
            "-processors {processors} packed other bytes"
        );
    }
}

#[test]
#[ignore = "needs mksquashfs: run tests/run, or cargo test -- --include-ignored"]
fn a_different_tree_gives_different_bytes_and_a_failure_leaves_nothing() {
    require_mksquashfs();
    let dir = TempDir::new("squash-diff");
    let root = dir.join("root");
    make_tree(&root, false, SystemTime::now());
    let a = dir.join("a.sqfs");
    squash::squash(&root, &a, false, true, Compression::Gzip).unwrap();
    fs::set_permissions(
        root.join("empty"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let b = dir.join("b.sqfs");
    squash::squash(&root, &b, false, true, Compression::Gzip).unwrap();
    assert_ne!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "a mode change"
    );

    let err = squash::squash(&root, &a, false, true, Compression::Gzip).unwrap_err();
    assert!(
        err.to_string().contains("already exists; use --force"),
        "{err}"
    );
    let err = squash::squash(
        &dir.join("absent"),
        &dir.join("c.sqfs"),
        false,
        true,
        Compression::Gzip,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("mksquashfs failed on"), "{err}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "root" && n != "a.sqfs" && n != "b.sqfs")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
