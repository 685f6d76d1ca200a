//! `ferry images`, `ferry images rm` and `ferry images prune` on a store filled through
//! the library (`ferry_runtime::store`), as any user, without root or tools: the store
//! keeps whatever bytes it is given, so the "images" here are small files.

mod common;

use common::*;
use ferry_runtime::digest::Digest;
use ferry_runtime::store::{Entry, Store};
use std::fs;
use std::path::Path;
use std::process::Command;

fn digest(hex_digit: char) -> Digest {
    Digest::parse(&format!("sha256:{}", hex_digit.to_string().repeat(64))).unwrap()
}

/// Stores `bytes` in `store` as the image of `manifest`, pulled as `reference`.
fn put(store: &Store, reference: &str, manifest: &Digest, bytes: &[u8]) -> Entry {
    let staging = store.staging().unwrap();
    let file = staging.path().join("image.sqfs");
    fs::write(&file, bytes).unwrap();
    let lock = store.lock(manifest).unwrap();
    store
        .insert(&lock, reference, manifest, None, &file)
        .unwrap()
}

fn images(store: &Path, args: &[&str]) -> Outcome {
    let mut all = vec!["images", "--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    ferry(Path::new("/"), &all)
}

fn short(digest: &Digest) -> String {
    digest.to_string()[..19].to_string()
}

#[test]
fn the_list_shows_each_reference_with_short_digests_size_and_last_use() {
    let dir = TempDir::new("images-list");
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    let python = put(
        &store,
        "docker://python:3.12",
        &digest('a'),
        &[7u8; 3 << 20],
    );
    put(
        &store,
        "docker://python:latest",
        &digest('a'),
        &[7u8; 3 << 20],
    );
    let tiny = put(&store, "docker://busybox", &digest('b'), b"tiny");
    assert_eq!(
        python.image_digest.to_string(),
        sha256sum(&python.path),
        "named by the SHA-256 of its bytes"
    );

    let out = images(&root, &[]);
    out.expect_success("ferry images");
    assert_eq!(out.stderr, "");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    for column in ["REFERENCE", "MANIFEST", "IMAGE", "SIZE", "LAST USED"] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    let row = |reference: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{reference} ")))
            .unwrap_or_else(|| panic!("no row for {reference}: {}", out.stdout))
    };
    for reference in ["docker://python:3.12", "docker://python:latest"] {
        let line = row(reference);
        assert!(line.contains(&short(&python.manifest_digest)), "{line}");
        assert!(line.contains(&short(&python.image_digest)), "{line}");
        assert!(line.contains("3.0 MiB"), "{line}");
        assert!(line.ends_with("just now"), "{line}");
        assert!(
            !line.contains(&python.image_digest.to_string()),
            "short digests: {line}"
        );
    }
    let line = row("docker://busybox");
    assert!(
        line.contains(&short(&tiny.image_digest)) && line.contains("4 B"),
        "{line}"
    );

    let out = images(&root, &["--json"]);
    out.expect_success("ferry images --json");
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let python_json = listed
        .iter()
        .find(|e| e["manifest_digest"] == python.manifest_digest.to_string())
        .unwrap();
    assert_eq!(
        python_json["reference"],
        serde_json::json!(["docker://python:3.12", "docker://python:latest"])
    );
    assert_eq!(python_json["image_digest"], python.image_digest.to_string());
    assert_eq!(python_json["path"], python.path.to_str().unwrap());
    assert_eq!(python_json["size"], 3 << 20);
    for field in ["created", "last_used", "platform_manifest_digest"] {
        assert!(python_json.get(field).is_some(), "{field}: {python_json}");
    }
}

#[test]
fn a_broken_entry_is_reported_and_the_rest_listed() {
    let dir = TempDir::new("images-broken");
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    put(&store, "docker://good", &digest('a'), b"good");
    let broken = root.join(format!("entries/sha256-{}.json", digest('b').hex()));
    fs::write(&broken, "{ not json").unwrap();
    let out = images(&root, &[]);
    out.expect_success("ferry images");
    assert!(out.stdout.contains("docker://good"), "{}", out.stdout);
    out.one_ferry_line(&[
        "warning",
        &broken.display().to_string(),
        "not a valid entry",
    ]);
    // The fix the warning gives.
    images(&root, &["rm", &digest('b').to_string()]);
    assert!(!broken.exists());
}

#[test]
fn rm_removes_by_reference_manifest_or_image_digest_and_says_what_matched_nothing() {
    let dir = TempDir::new("images-rm");
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    let a = put(&store, "docker://a", &digest('a'), b"shared bytes");
    let b = put(&store, "docker://b", &digest('b'), b"shared bytes");
    let c = put(&store, "docker://c", &digest('c'), b"other bytes");
    let d = put(&store, "docker://d", &digest('d'), b"more bytes");

    let out = images(&root, &["rm", "docker://a"]);
    out.expect_success("rm by reference");
    assert!(
        out.stdout.starts_with("removed docker://a ("),
        "{}",
        out.stdout
    );
    assert!(a.path.exists(), "docker://b still names the image");
    assert_eq!(store.by_manifest(&a.manifest_digest).unwrap(), None);

    images(
        &root,
        &[
            "rm",
            &b.image_digest.to_string(),
            &c.manifest_digest.to_string(),
        ],
    )
    .expect_success("rm by digests");
    assert!(!b.path.exists() && !c.path.exists());

    let out = images(&root, &["rm", "docker://nothing", "docker://d"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    out.one_ferry_line(&["docker://nothing", "matches", root.to_str().unwrap()]);
    assert!(!d.path.exists(), "what matched was removed");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn prune_keeps_the_most_recently_used_images_within_the_size() {
    let dir = TempDir::new("images-prune");
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    let old = put(&store, "docker://old", &digest('a'), &[1u8; 2048]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new = put(&store, "docker://new", &digest('b'), &[2u8; 2048]);

    let out = images(&root, &["prune", "--max-size", "lots"]);
    assert_eq!(out.code, Some(1));
    out.one_ferry_line(&["--max-size lots", "not a size"]);

    let out = images(&root, &["prune", "--max-size", "3K"]);
    out.expect_success("prune");
    assert!(
        out.stdout.contains("removed docker://old"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("the store holds 2.0 KiB in 1 images"),
        "{}",
        out.stdout
    );
    assert!(!old.path.exists() && new.path.exists());
    assert_eq!(store.list().unwrap(), [new]);
}

#[test]
fn the_default_store_is_the_users_cache_and_listing_creates_nothing() {
    let dir = TempDir::new("images-default");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(ferry_bin());
        cmd.args(args)
            .env("XDG_CACHE_HOME", dir.path())
            .current_dir("/");
        run_with_timeout(cmd, RUN_TIMEOUT)
    };
    let out = run(&["images"]);
    out.expect_success("ferry images on no store");
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "the header only: {}",
        out.stdout
    );
    assert!(!dir.join("ferry").exists(), "listing wrote nothing");

    let store = Store::open(&dir.join("ferry/images")).unwrap();
    put(&store, "docker://mine", &digest('a'), b"mine");
    let out = run(&["images"]);
    out.expect_success("ferry images");
    assert!(out.stdout.contains("docker://mine"), "{}", out.stdout);

    // A store named on the command line must exist to be listed.
    let out = images(&dir.join("absent"), &[]);
    assert_eq!(out.code, Some(1));
    out.one_ferry_line(&["absent", "not found"]);
}
