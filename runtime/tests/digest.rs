//! Image digests as a user of `ferry` sees them: `ferry run IMAGE@sha256:HEX` runs only
//! the pinned bytes, a mismatch or a malformed pin is one clear line and nothing runs,
//! a root folder cannot be pinned, a changed file is always hashed again (the node's
//! digest cache never answers for an older version of the file), and `ferry digest`
//! prints what `sha256sum` prints, for root (who keeps the cache) and for a user. A
//! pinned sparse file is refused at once, and a setup helper whose parent is killed
//! while it hashes dies with it.
//!
//! The cache fast path is observable through `ferry digest --check`, which says
//! `OK (cached)` or `OK (hashed)`.
//!
//! Needs root and the tools of `tests/prepare-host`: the tests are ignored unless asked
//! for, and fail, naming what is missing, when run without them.
//!
//!     cargo test -p ferry-runtime --test digest -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The node's digest cache (`ferry_runtime::digest::DEFAULT_CACHE_DIR`).
const CACHE_DIR: &str = "/var/cache/ferry/digests";

// ---------------------------------------------------------------------------------
// Helpers.

/// A file of this test in its own folder (its own inode, so the cache has no entry for
/// it yet). When dropped, the cache entries of its inode(s) go with it.
struct TestFile {
    dir: TempDir,
    path: PathBuf,
    inodes: Vec<(u64, u64)>,
}

impl TestFile {
    /// `name` in a fresh folder, with `content`, root's, mode 0644.
    fn new(tag: &str, name: &str, content: &[u8]) -> TestFile {
        let dir = TempDir::new(tag);
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let inodes = vec![dev_ino(&path)];
        TestFile { dir, path, inodes }
    }

    /// A private copy of the test image.
    fn image(tag: &str) -> TestFile {
        TestFile::new(tag, "image.sqfs", &fs::read(&fixture().image).unwrap())
    }

    fn display(&self) -> String {
        self.path.display().to_string()
    }

    /// `PATH@DIGEST`.
    fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.display())
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        if let Ok(m) = fs::metadata(&self.path) {
            self.inodes.push((m.dev(), m.ino()));
        }
        for (dev, ino) in &self.inodes {
            let _ = fs::remove_file(Path::new(CACHE_DIR).join(format!("{dev:x}-{ino:x}.json")));
        }
    }
}

/// A well-formed digest that no test file has.
fn zeros() -> String {
    format!("sha256:{}", "0".repeat(64))
}

/// `ferry ARGS` while holding the shared lock: `refused` (exclusive) checks that no
/// `ferry` process is left, so no other test may run one meanwhile.
fn ferry_shared<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> Outcome {
    let _g = shared();
    ferry(cwd, args)
}

/// `ferry digest --check DIGEST PATH` as root, from the file's folder.
fn check(file: &TestFile, digest: &str) -> Outcome {
    ferry_shared(
        file.dir.path(),
        &["digest", "--check", digest, &file.display()],
    )
}

/// The line `ferry digest --check` printed when the digest matched: `hashed` or `cached`.
#[track_caller]
fn check_ok(file: &TestFile, digest: &str) -> &'static str {
    let out = check(file, digest);
    out.expect_success("ferry digest --check");
    assert_eq!(out.stderr, "", "{out:#?}");
    let prefix = format!("{}: OK (", file.display());
    match out.stdout.strip_prefix(&prefix) {
        Some("hashed)\n") => "hashed",
        Some("cached)\n") => "cached",
        _ => panic!("expected {prefix}hashed) or {prefix}cached), got {out:#?}"),
    }
}

/// `ferry run --user TEST_USER SPEC -- cat /data/only-in-image`.
fn cat_in(cwd: &Path, spec: &str) -> Outcome {
    ferry_shared(
        cwd,
        &[
            "run",
            "--user",
            TEST_USER,
            spec,
            "--",
            "cat",
            "/data/only-in-image",
        ],
    )
}

/// A working directory the test user owns, outside /tmp and their home.
fn user_workdir(tag: &str) -> TempDir {
    let dir = TempDir::new_in(Path::new("/var/tmp"), tag);
    dir.give_to_test_user();
    dir
}

/// Runs `ferry run --user TEST_USER SPEC -- touch MARKER` and checks the refusal: exit
/// 125, nothing on stdout, exactly one `ferry: ` line on stderr naming every string of
/// `must_name`, the command never ran, nothing left on the host. Returns the line.
#[track_caller]
fn refused(spec: &str, must_name: &[&str]) -> String {
    let _g = exclusive();
    let cwd = user_workdir("digest-refused");
    let marker = cwd.join("command-ran");
    let before = HostState::capture();
    let marker_arg = marker.display().to_string();
    let args = [
        "run",
        "--user",
        TEST_USER,
        spec,
        "--",
        "/bin/touch",
        &marker_arg,
    ];
    let out = ferry(cwd.path(), &args);
    assert_eq!(out.code, Some(125), "ferry's own errors exit 125: {out:#?}");
    assert_eq!(out.stdout, "", "nothing on stdout: {out:#?}");
    let line = out.one_ferry_line(must_name).to_string();
    assert!(!marker.exists(), "the command ran despite the error");
    before.assert_nothing_left(&format!("ferry {}", args.join(" ")));
    line
}

/// A small SquashFS image whose /data/only-in-image says `text` (busybox, cat, sh).
fn small_image_bytes(text: &str) -> Vec<u8> {
    let dir = TempDir::new("digest-small");
    let rootfs = dir.join("rootfs");
    mkdir_mode(&rootfs.join("bin"), 0o755);
    mkdir_mode(&rootfs.join("data"), 0o755);
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["cat", "sh", "touch"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    write_mode(&rootfs.join("data/only-in-image"), text, 0o644);
    let image = dir.join("small.sqfs");
    mksquashfs(&rootfs, &image, &["-all-root"]);
    fs::read(&image).unwrap()
}

/// Rewrites the file in place (same inode) with `content`.
fn rewrite_in_place(path: &Path, content: &[u8]) {
    let ino = dev_ino(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(content).unwrap();
    drop(f);
    assert_eq!(dev_ino(path), ino, "the rewrite kept the inode");
}

// ---------------------------------------------------------------------------------
// Pinned runs.

/// `IMAGE@sha256:HEX` with the image's digest runs; upper-case hex works too, and a `@`
/// that is not followed by `sha256:` is part of the path.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_pinned_image_that_matches_runs() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-match");
    let digest = sha256sum(&img.path);
    for spec in [
        img.pinned(&digest),
        img.pinned(&digest.to_ascii_uppercase().replace("SHA256:", "sha256:")),
    ] {
        let out = cat_in(img.dir.path(), &spec);
        out.expect_success(&spec);
        assert_eq!(out.stdout, ONLY_IN_IMAGE, "{spec}");
        assert_eq!(out.stderr, "", "{spec}");
    }

    // A path with `@` in it, unpinned and pinned.
    let at = TestFile::new(
        "digest-at",
        "alice@cluster.sqfs",
        &fs::read(&fixture().image).unwrap(),
    );
    for spec in [at.display(), at.pinned(&digest)] {
        let out = cat_in(at.dir.path(), &spec);
        out.expect_success(&spec);
        assert_eq!(out.stdout, ONLY_IN_IMAGE, "{spec}");
    }

    // A relative image path keeps its pin.
    let out = cat_in(img.dir.path(), &format!("image.sqfs@{digest}"));
    out.expect_success("relative pinned image");
    assert_eq!(out.stdout, ONLY_IN_IMAGE);
}

/// A pin that is not the file's digest: one line naming the image, the expected and
/// the actual digest; the command never runs.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_pinned_image_that_differs_is_refused_with_both_digests() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-mismatch");
    let actual = sha256sum(&img.path);
    let wrong = zeros();
    let line = refused(
        &img.pinned(&wrong),
        &[
            &img.display(),
            "digest mismatch",
            &format!("expected {wrong}"),
            &format!("found {actual}"),
        ],
    );
    assert!(
        line.starts_with(&format!(
            "ferry: image {}: digest mismatch: expected {wrong}, found {actual}",
            img.display()
        )),
        "{line}"
    );
    // Again, now that the file's digest is cached: the same answer.
    assert_eq!(check_ok(&img, &actual), "cached");
    let again = refused(&img.pinned(&wrong), &[&format!("found {actual}")]);
    assert_eq!(again, line);
}

/// A pinned image that is a 4 TiB sparse file (a real image followed by holes) with a
/// wrong digest: refused at once as sparse, never read through its holes (hours).
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_pinned_sparse_image_of_4_tib_is_refused_at_once() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-sparse");
    fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap()
        .set_len(4 << 40)
        .unwrap();
    let started = Instant::now();
    refused(&img.pinned(&zeros()), &[&img.display(), "sparse"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing took {:?}",
        started.elapsed()
    );
}

/// Anything after `@sha256:` that is not 64 hex digits: one line that says what a pin
/// must look like, before anything is opened or mounted.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_malformed_pin_is_refused() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-malformed");
    let real = sha256sum(&img.path);
    let hex = real.strip_prefix("sha256:").unwrap();
    let cases = [
        "sha256:".to_string(),
        "sha256:abc".to_string(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{} ", &hex),
        format!("sha256: {}", &hex[..63]),
    ];
    for pin in &cases {
        let spec = img.pinned(pin);
        let line = refused(&spec, &["64 hex digits", &img.display()]);
        assert!(line.contains(&spec), "names what was given: {line}");
    }
    // Another algorithm is not a pin: the whole string is the path, which does not exist.
    let spec = img.pinned(&format!("sha512:{hex}"));
    refused(&spec, &["not found"]);
}

/// A root folder has no single digest: pinning one is refused (whatever the digest).
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_pinned_root_folder_is_refused() {
    require_root_and_tools(&[]);
    let fx = fixture();
    let rootfs = fx.rootfs.display().to_string();
    for digest in [zeros(), sha256sum(&fx.image)] {
        refused(
            &format!("{rootfs}@{digest}"),
            &[&rootfs, "root folder", "pin"],
        );
    }
    // Unpinned, the folder runs.
    let out = cat_in(Path::new("/"), &rootfs);
    out.expect_success("unpinned root folder");
    assert_eq!(out.stdout, ONLY_IN_IMAGE);
}

/// The cache never answers for another version of the file: after an appended byte, a
/// same-size change with the old mtime put back, and a rewrite with another image, the
/// old pin is refused with the file's new digest, and the new pin runs the new bytes.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_changed_file_is_hashed_again_and_a_stale_pin_is_refused() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-changed");
    let cwd = img.dir.path();
    let d1 = sha256sum(&img.path);
    {
        cat_in(cwd, &img.pinned(&d1)).expect_success("first pinned run");
        // The run remembered the digest of this version of the file.
        assert_eq!(check_ok(&img, &d1), "cached");
        cat_in(cwd, &img.pinned(&d1)).expect_success("second pinned run");
    }

    // 1. One byte appended (SquashFS ignores what follows its data).
    fs::OpenOptions::new()
        .append(true)
        .open(&img.path)
        .unwrap()
        .write_all(b"\0")
        .unwrap();
    let d2 = sha256sum(&img.path);
    assert_ne!(d1, d2);
    refused(
        &img.pinned(&d1),
        &[
            "digest mismatch",
            &format!("expected {d1}"),
            &format!("found {d2}"),
        ],
    );
    {
        let out = cat_in(cwd, &img.pinned(&d2));
        out.expect_success("re-pinned after the append");
        assert_eq!(out.stdout, ONLY_IN_IMAGE);
    }

    // 2. Same size, one byte flipped, and the old mtime put back (as cp -p or rsync -t
    //    would): only the ctime tells, and it is enough.
    let before = fs::metadata(&img.path).unwrap();
    let mtime = before.modified().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img.path)
        .unwrap();
    let last = before.size() - 1;
    let mut byte = [0u8];
    f.read_at(&mut byte, last).unwrap();
    f.write_at(&[byte[0] ^ 0xff], last).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(mtime))
        .unwrap();
    drop(f);
    let after = fs::metadata(&img.path).unwrap();
    assert_eq!(
        (after.size(), after.mtime(), after.mtime_nsec()),
        (before.size(), before.mtime(), before.mtime_nsec()),
        "precondition: same size and mtime"
    );
    let d3 = sha256sum(&img.path);
    assert_ne!(d2, d3);
    refused(
        &img.pinned(&d2),
        &[&format!("expected {d2}"), &format!("found {d3}")],
    );
    let out = check(&img, &d2);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "{}: MISMATCH: expected {d2}, found {d3} (cached)\n",
            img.display()
        ),
        "the refused run hashed (and cached) this version"
    );

    // 3. Rewritten in place with another image, then pinned anew.
    rewrite_in_place(&img.path, &small_image_bytes("second image\n"));
    let d4 = sha256sum(&img.path);
    refused(
        &img.pinned(&d3),
        &[&format!("expected {d3}"), &format!("found {d4}")],
    );
    let out = cat_in(cwd, &img.pinned(&d4));
    out.expect_success("pinned to the rewritten image");
    assert_eq!(out.stdout, "second image\n", "the new bytes ran");
    assert_eq!(check_ok(&img, &d4), "cached");
}

// ---------------------------------------------------------------------------------
// `ferry digest`.

/// `--check` hashes a file the first time, answers from the cache after, and hashes
/// again after any change of the file, even one of its metadata only (touch, chmod).
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn check_hashes_then_uses_the_cache_until_the_file_changes() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-check");
    let d = sha256sum(&img.path);
    assert_eq!(check_ok(&img, &d), "hashed", "a new file is hashed");
    assert_eq!(check_ok(&img, &d), "cached", "then it is known");
    assert_eq!(check_ok(&img, &d), "cached");

    let (dev, ino) = dev_ino(&img.path);
    let entry = Path::new(CACHE_DIR).join(format!("{dev:x}-{ino:x}.json"));
    let m = fs::metadata(&entry)
        .unwrap_or_else(|e| panic!("the cache has no entry {}: {e}", entry.display()));
    assert_eq!((m.uid(), m.mode() & 0o077), (0, 0), "root's alone");
    let dir = fs::metadata(CACHE_DIR).unwrap();
    assert_eq!((dir.uid(), dir.mode() & 0o777), (0, 0o700), "{CACHE_DIR}");

    std::thread::sleep(Duration::from_millis(20));
    let touched = Command::new("touch").arg(&img.path).status().unwrap();
    assert!(touched.success());
    assert_eq!(
        check_ok(&img, &d),
        "hashed",
        "touch changed the file's ctime"
    );
    assert_eq!(check_ok(&img, &d), "cached");

    fs::set_permissions(&img.path, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        check_ok(&img, &d),
        "hashed",
        "chmod changed the file's ctime"
    );
    assert_eq!(check_ok(&img, &d), "cached");

    // A mismatch says where the digest came from and exits 1.
    let out = check(&img, &zeros());
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "{}: MISMATCH: expected {}, found {d} (cached)\n",
            img.display(),
            zeros()
        )
    );
    assert_eq!(out.stderr, "");
}

/// `ferry digest FILE` prints `sha256:HEX  FILE` with the HEX of sha256sum, for an image,
/// an empty file and a file that does not end on a read-chunk boundary; as root it also
/// refreshes the cache.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn digest_prints_what_sha256sum_prints() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-print");
    let empty = TestFile::new("digest-empty", "empty", b"");
    let odd: Vec<u8> = (0..(4u32 << 20) + 4097)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let odd = TestFile::new("digest-odd", "odd.bin", &odd);
    for file in [&img, &empty, &odd] {
        let out = ferry_shared(Path::new("/"), &["digest", &file.display()]);
        out.expect_success("ferry digest");
        assert_eq!(
            out.stdout,
            format!("{}  {}\n", sha256sum(&file.path), file.display())
        );
        assert_eq!(out.stderr, "");
    }
    assert_eq!(
        ferry_shared(Path::new("/"), &["digest", &empty.display()]).stdout,
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  ".to_string()
            + &empty.display()
            + "\n"
    );
    // The path is printed as given.
    let out = ferry_shared(img.dir.path(), &["digest", "image.sqfs"]);
    assert_eq!(
        out.stdout,
        format!("{}  image.sqfs\n", sha256sum(&img.path))
    );
    // As root it filled the cache.
    assert_eq!(check_ok(&img, &sha256sum(&img.path)), "cached");
}

/// A user without root rights hashes too, without the node's cache: never `cached`,
/// and nothing of theirs ends up in it.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_user_can_digest_without_the_cache() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-user");
    let d = sha256sum(&img.path);
    let as_user = |args: &[&str]| {
        let _g = shared();
        let mut cmd = Command::new(find_tool("runuser").expect("runuser"));
        cmd.args(["-u", TEST_USER, "--"])
            .arg(ferry_bin())
            .args(args)
            .current_dir("/");
        run_with_timeout(cmd, RUN_TIMEOUT)
    };
    let out = as_user(&["digest", &img.display()]);
    out.expect_success("ferry digest as the user");
    assert_eq!(out.stdout, format!("{d}  {}\n", img.display()));
    assert_eq!(out.stderr, "");
    for _ in 0..2 {
        let out = as_user(&["digest", "--check", &d, &img.display()]);
        out.expect_success("ferry digest --check as the user");
        assert_eq!(out.stdout, format!("{}: OK (hashed)\n", img.display()));
    }
    let out = as_user(&["digest", "--check", &zeros(), &img.display()]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert_eq!(
        out.stdout,
        format!(
            "{}: MISMATCH: expected {}, found {d} (hashed)\n",
            img.display(),
            zeros()
        )
    );
    // The user's runs left no entry: root's first check hashes.
    assert_eq!(check_ok(&img, &d), "hashed");
    assert_eq!(check_ok(&img, &d), "cached");
    // And the user does not read root's entry either.
    let out = as_user(&["digest", "--check", &d, &img.display()]);
    assert_eq!(out.stdout, format!("{}: OK (hashed)\n", img.display()));
}

/// Bad input to `ferry digest`: exit 2 and one line naming what is wrong.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn digest_refuses_bad_input_with_one_line() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-bad");
    let rootfs = fixture().rootfs.display().to_string();
    let image = img.display();
    let missing = img.dir.join("missing.sqfs").display().to_string();
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["digest", "--check", "sha256:xyz", &image],
            vec!["sha256:xyz", "64 hex digits"],
        ),
        (
            vec!["digest", "--check", "deadbeef", &image],
            vec!["deadbeef"],
        ),
        (vec!["digest", &missing], vec![&missing]),
        (vec!["digest", &rootfs], vec![&rootfs]),
    ];
    for (args, names) in cases {
        let out = ferry_shared(Path::new("/"), &args);
        assert_eq!(out.code, Some(2), "ferry {args:?}: {out:#?}");
        assert_eq!(out.stdout, "", "ferry {args:?}");
        out.one_ferry_line(&names);
    }
}

/// `ferry digest FILE` as root refreshes the cache. If the file changes while it is
/// being hashed, what was hashed is not the file's current version: that must not be
/// remembered as the digest of the current version, or later checks and pinned runs
/// would compare against bytes the file no longer has.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_file_changed_while_ferry_digest_hashes_it_is_not_cached_with_a_stale_digest() {
    require_root_and_tools(&[]);
    // Sparse, so cheap to make; hashing it still reads every byte (about 2 s here).
    let big = TestFile::new("digest-race", "big.img", b"");
    fs::OpenOptions::new()
        .write(true)
        .open(&big.path)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let guard = shared();
    let mut child = Command::new(ferry_bin())
        .args(["digest", &big.display()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until ferry is well into the file, then change its first bytes.
    let io = format!("/proc/{}/io", child.id());
    let started = Instant::now();
    loop {
        let read: u64 = fs::read_to_string(&io)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("rchar: ").map(|v| v.trim().parse().ok()))
                    .flatten()
            })
            .unwrap_or(0);
        if read > 16 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "inconclusive: ferry digest finished before the file could be changed"
        );
        assert!(started.elapsed() < RUN_TIMEOUT, "ferry digest never read");
        std::thread::sleep(Duration::from_millis(1));
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&big.path)
        .unwrap()
        .write_at(b"changed", 0)
        .unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "inconclusive: ferry digest finished before the file was changed"
    );
    let out = child.wait_with_output().unwrap();
    drop(guard);
    assert!(out.status.success(), "{out:?}");
    let now = sha256sum(&big.path);
    let out = check(&big, &now);
    assert_eq!(
        out.code,
        Some(0),
        "the file is unchanged since the write, yet `ferry digest --check` with its \
         sha256sum fails: the cache kept the digest of the bytes read during the write \
         under the file's new version: {out:#?}"
    );
}

// ---------------------------------------------------------------------------------
// The setup helper's life.

/// A process's parent and its state letter (`Z` for a zombie), from /proc/PID/stat;
/// None once it is gone.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

/// Bytes a process has read (rchar of /proc/PID/io); None once it is gone.
fn bytes_read(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("rchar: ")?.trim().parse().ok())
}

fn children_of(parent: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_and_state(pid).is_some_and(|(ppid, _)| ppid == parent))
        .collect()
}

/// Slurm cannot cancel a step in setup, but slurmstepd can be killed: the root setup
/// helper it forked must then die at once, not live on as an orphan hashing a pinned
/// image. Here `ferry run` stands for slurmstepd: it is killed while its helper hashes
/// a 1 GiB pinned image, and the helper (and the user's process it started) must be
/// gone well before it could have read the whole file.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_killed_parent_takes_its_hashing_setup_helper_along() {
    require_root_and_tools(&[]);
    let img = TestFile::image("digest-orphan");
    // Real data (not holes, which the sparse check refuses) after the SquashFS, which
    // ignores what follows it.
    let mut f = fs::OpenOptions::new().append(true).open(&img.path).unwrap();
    let chunk = vec![0x5au8; 4 << 20];
    for _ in 0..256 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let size = fs::metadata(&img.path).unwrap().len();
    let _g = shared();
    let mut parent = Command::new(ferry_bin())
        .args([
            "run",
            "--user",
            TEST_USER,
            &img.pinned(&zeros()),
            "--",
            "true",
        ])
        .current_dir(img.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let parent_pid = parent.id();
    // The helper is the parent's child that reads the image.
    let started = Instant::now();
    let (helper, read) = loop {
        let hashing = children_of(parent_pid)
            .into_iter()
            .find_map(|pid| Some((pid, bytes_read(pid)?)).filter(|(_, n)| *n > 64 << 20));
        if let Some(found) = hashing {
            break found;
        }
        if let Some(status) = parent.try_wait().unwrap() {
            let out = parent.wait_with_output().unwrap();
            panic!(
                "inconclusive: ferry run ended ({status}) before its helper was seen hashing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "no helper ever hashed the image"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        read < size / 2,
        "inconclusive: the helper had read {read} of {size} bytes before it could be seen"
    );
    let users_process = children_of(helper);
    parent.kill().unwrap();
    parent.wait().unwrap();
    let killed = Instant::now();
    let mut last_read = read;
    let alive = |pid: u32| parent_and_state(pid).is_some_and(|(_, state)| state != 'Z');
    while alive(helper) {
        last_read = bytes_read(helper).unwrap_or(last_read);
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the setup helper {helper} outlived its killed parent by 2 s, still hashing \
             ({last_read} of {size} bytes read)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        last_read < size,
        "the helper read the whole image after its parent was killed"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while users_process.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "the user's process {users_process:?} of the killed helper lives on"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
