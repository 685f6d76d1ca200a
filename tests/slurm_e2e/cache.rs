//! The node image cache, end to end: a second job takes the first one's kept mount, a
//! changed file is never served from an old mount, a kept mount reaches only users who
//! may read the image (and a squashfuse mount only its own user), expiry and
//! `ferry cache drop --all` leave nothing behind, a cancelled job leaves the cache
//! usable. What is counted: the loop devices over an image, the squashfuse servers of
//! a user, the kept namespaces named under the cache folder, `ferry cache --json`.
//! Exclusive: every test counts host-wide and some change the site file.

use super::adversarial::TrustedDir;
use super::audit::{as_victim, SiteFile, VICTIM_HOME};
use super::*;

const FERRY: &str = "/usr/bin/ferry";
const CACHE_DIR: &str = "/run/ferry/image-cache";

/// `ferry cache --json`, as root.
fn cache_entries() -> Vec<serde_json::Value> {
    let out = Command::new(FERRY)
        .args(["cache", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ferry cache --json: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entries of `image`, as `ferry cache --json` lists them.
fn entries_of(image: &Path) -> Vec<serde_json::Value> {
    cache_entries()
        .into_iter()
        .filter(|e| e["image"].as_str() == Some(&image.display().to_string()))
        .collect()
}

/// Loop devices bound to `image`.
fn loop_devices_of(image: &Path) -> usize {
    fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim()) == image)
        })
        .count()
}

/// Live squashfuse servers of user `uid`.
fn fuse_servers_of(uid: u32) -> Vec<u32> {
    live_fuse_servers_of(uid)
}

/// Kept namespaces named in the host's mount table.
fn kept_namespaces() -> usize {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(CACHE_DIR) && l.contains(" nsfs "))
        .count()
}

fn janitors() -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with(b"/usr/bin/ferry\0cache\0janitor\0"))
        })
        .count()
}

/// What the cache did for each step of the provenance file, in its order.
fn cache_outcomes(provenance: &Path) -> Vec<String> {
    provenance_lines(provenance)
        .iter()
        .map(|r| r["image_cache"].as_str().unwrap_or("none").to_string())
        .collect()
}

/// A root-owned folder and a site file (in plugstack.conf while kept) that trusts it.
fn trusting_site(name: &str) -> (TrustedDir, SiteFile) {
    let trusted = TrustedDir::new(name);
    let site = SiteFile::new(
        &format!("{name}-site"),
        &format!(r#"{{"trusted_image_dirs": ["{}"]}}"#, trusted.dir.display()),
    );
    (trusted, site)
}

/// `(mounted_by, image_cache)` of each record of a provenance file, in its order.
fn mounts_and_outcomes(provenance: &Path) -> Vec<(String, String)> {
    provenance_lines(provenance)
        .iter()
        .map(|r| {
            (
                r["mounted_by"].as_str().unwrap_or_default().to_string(),
                r["image_cache"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
}

/// A trusted (root-owned, kernel-mounted) copy of the lab's image `rel`, mode `mode`.
fn trusted_copy(lab: &Lab, rel: &str, trusted: &TrustedDir, mode: u32) -> PathBuf {
    let path = trusted.dir.join(rel);
    fs::copy(lab.path(rel), &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A second job on the same node takes the kept mount of the first: no new loop device
/// for a trusted image, no new squashfuse for the user's own, and every step of a batch
/// job shares it too.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_second_job_takes_the_kept_mount_of_the_first() {
    let lab = Lab::exclusive("cache-reuse");
    let (trusted, _site) = trusting_site("cache-reuse");
    lab.image("t.sqfs", "TRUSTED");
    let t = trusted_copy(&lab, "t.sqfs", &trusted, 0o644);
    let u = lab.path(&lab.image("u.sqfs", "USER"));
    let uid = test_user().uid;
    let prov = lab.path("reuse.jsonl");
    let prov_opt = format!("--container-provenance={}", prov.display());
    for round in 0..2 {
        for image in [&t, &u] {
            let out = lab.srun(&[
                &format!("--container={}", image.display()),
                &prov_opt,
                "cat",
                ONLY_FILE,
            ]);
            out.expect_ok();
        }
        assert_eq!(loop_devices_of(&t), 1, "round {round}: one loop device");
        assert_eq!(fuse_servers_of(uid).len(), 1, "round {round}: one server");
    }
    let seen = mounts_and_outcomes(&prov);
    let expected = [
        ("kernel", "kept"),
        ("fuse", "kept"),
        ("kernel", "hit"),
        ("fuse", "hit"),
    ]
    .map(|(m, c)| (m.to_string(), c.to_string()));
    assert_eq!(seen, expected);
    for image in [&t, &u] {
        let entries = entries_of(image);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["user"], TEST_USER);
        assert_eq!(entries[0]["in_use"], false);
    }
    // A batch job and its steps on the kept mount: no server or loop device more.
    let job = lab.sbatch(
        &[&format!("--container={}", u.display()), &prov_opt],
        &format!("cat {ONLY_FILE}\nsrun -n1 cat {ONLY_FILE}\nsrun -n1 cat {ONLY_FILE}"),
    );
    job.expect_ok();
    assert_eq!(job.log.matches("only-in-image USER").count(), 3, "{job}");
    assert_eq!(fuse_servers_of(uid).len(), 1);
    let outcomes = cache_outcomes(&prov);
    assert_eq!(outcomes[4..], ["hit", "hit", "hit"], "{outcomes:?}");
    drop_image_cache();
}

/// A file rewritten in place (same inode) after its mount was kept: the next job runs
/// the new content, never the old mount, for the user's image and a trusted one.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_changed_file_is_never_served_from_the_old_mount() {
    let lab = Lab::exclusive("cache-changed");
    let (trusted, _site) = trusting_site("cache-changed");
    let u = lab.path(&lab.image("u.sqfs", "OLD"));
    let newer = lab.path(&lab.image("new.sqfs", "NEW"));
    lab.image("t.sqfs", "OLD");
    let t = trusted_copy(&lab, "t.sqfs", &trusted, 0o644);
    let read = |image: &Path| -> String {
        let out = lab.srun(&[
            &format!("--container={}", image.display()),
            "cat",
            ONLY_FILE,
        ]);
        out.expect_ok();
        out.stdout.trim().to_string()
    };
    assert_eq!(read(&u), "only-in-image OLD");
    assert_eq!(read(&t), "only-in-image OLD");
    let inode = fs::metadata(&u).unwrap().ino();
    // The user rewrites their image in place; root rewrites the trusted one.
    lab.run(&["cp", &newer.display().to_string(), &u.display().to_string()])
        .expect_ok();
    assert_eq!(fs::metadata(&u).unwrap().ino(), inode, "rewritten in place");
    fs::write(&t, fs::read(&newer).unwrap()).unwrap();
    assert_eq!(read(&u), "only-in-image NEW");
    assert_eq!(read(&t), "only-in-image NEW");
    drop_image_cache();
}

/// Another user: without read rights on the file, no kept mount of it; with them, the
/// kernel mount of a trusted image, but never the squashfuse of another user (each
/// user's image mount through FUSE is served by a process of their own).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn kept_mounts_reach_only_users_who_may_read_the_image() {
    let lab = Lab::exclusive("cache-users");
    let (trusted, _site) = trusting_site("cache-users");
    // A folder the victim can traverse, with the test user's images: one anyone may
    // read, one only its owner may.
    let shared = Path::new("/tmp").join(format!("ferry-e2e-cache-users-{}", std::process::id()));
    let _ = fs::remove_dir_all(&shared);
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    lab.image("open.sqfs", "OPEN");
    lab.image("private.sqfs", "PRIVATE");
    let open = shared.join("open.sqfs");
    let private = shared.join("private.sqfs");
    fs::copy(lab.path("open.sqfs"), &open).unwrap();
    fs::copy(lab.path("private.sqfs"), &private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    lab.give(&open);
    lab.give(&private);
    lab.image("t.sqfs", "TRUSTED");
    let t = trusted_copy(&lab, "t.sqfs", &trusted, 0o644);
    // Readable by root and the test user's group only.
    lab.image("t-group.sqfs", "GROUP");
    let t_group = trusted_copy(&lab, "t-group.sqfs", &trusted, 0o640);
    std::os::unix::fs::chown(&t_group, Some(0), Some(test_user().gid)).unwrap();

    for image in [&open, &private, &t, &t_group] {
        lab.srun(&[&format!("--container={}", image.display()), "true"])
            .expect_ok();
        assert_eq!(entries_of(image).len(), 1, "{} kept", image.display());
    }
    let owner = test_user().uid;
    let servers_before = fuse_servers_of(owner);
    let victim_uid = Command::new("id")
        .args(["-u", "ferryvictim"])
        .output()
        .unwrap();
    let victim_uid: u32 = String::from_utf8_lossy(&victim_uid.stdout)
        .trim()
        .parse()
        .unwrap();
    let victim_prov = format!("/tmp/ferry-e2e-cache-victim-{}.jsonl", std::process::id());
    let _ = fs::remove_file(&victim_prov);
    let victim_run = |image: &Path| {
        as_victim(
            Path::new(VICTIM_HOME),
            &[
                "srun",
                &format!("--container={}", image.display()),
                &format!("--container-provenance={victim_prov}"),
                "cat",
                ONLY_FILE,
            ],
            SRUN_SECS,
        )
    };
    // No read right: refused at the open, before any kept mount is looked at.
    for image in [&private, &t_group] {
        let out = victim_run(image);
        assert_ne!(out.code, Some(0), "{out}");
        assert!(!out.stdout.contains("only-in-image"), "{out}");
        assert_eq!(entries_of(image).len(), 1, "still only the owner's entry");
    }
    // Read rights: the trusted image's kernel mount is shared...
    let out = victim_run(&t);
    assert_eq!(out.stdout.trim(), "only-in-image TRUSTED", "{out}");
    // ...the user image's squashfuse is not: the victim's own server serves it.
    let out = victim_run(&open);
    assert_eq!(out.stdout.trim(), "only-in-image OPEN", "{out}");
    let seen = mounts_and_outcomes(Path::new(&victim_prov));
    assert_eq!(
        seen,
        [("kernel", "hit"), ("fuse", "kept")].map(|(m, c)| (m.to_string(), c.to_string()))
    );
    assert_eq!(
        fuse_servers_of(owner),
        servers_before,
        "the owner's servers"
    );
    assert_eq!(
        fuse_servers_of(victim_uid).len(),
        1,
        "the victim's own server"
    );
    let users: BTreeSet<String> = entries_of(&open)
        .iter()
        .map(|e| e["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        users,
        BTreeSet::from([TEST_USER.to_string(), "ferryvictim".to_string()])
    );
    drop_image_cache();
    let _ = fs::remove_file(&victim_prov);
    let _ = fs::remove_dir_all(&shared);
}

/// Kept mounts expire on their own (no step needed), and `ferry cache drop --all`
/// leaves no kept namespace, loop device, squashfuse or janitor.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn kept_mounts_expire_and_drop_all_leaves_nothing() {
    let lab = Lab::exclusive("cache-expiry");
    let trusted = TrustedDir::new("cache-expiry");
    let site_keys = format!(r#""trusted_image_dirs": ["{}"]"#, trusted.dir.display());
    lab.image("t.sqfs", "TRUSTED");
    let t = trusted_copy(&lab, "t.sqfs", &trusted, 0o644);
    let u = lab.path(&lab.image("u.sqfs", "USER"));
    let uid = test_user().uid;
    let nothing_left = || {
        kept_namespaces() == 0
            && loop_devices_of(&t) == 0
            && fuse_servers_of(uid).is_empty()
            && cache_entries().is_empty()
            && janitors() == 0
    };
    let state = || {
        format!(
            "namespaces {}, loop devices {}, servers {:?}, janitors {}, entries {:#?}",
            kept_namespaces(),
            loop_devices_of(&t),
            fuse_servers_of(uid),
            janitors(),
            cache_entries()
        )
    };
    for (ttl, how) in [("3s", "expiry"), ("10m", "drop --all")] {
        let _site = SiteFile::new(
            "cache-expiry-site",
            &format!(r#"{{{site_keys}, "image_cache_ttl": "{ttl}"}}"#),
        );
        for image in [&t, &u] {
            lab.srun(&[&format!("--container={}", image.display()), "true"])
                .expect_ok();
        }
        assert_eq!(cache_entries().len(), 2, "{}", state());
        assert_eq!(kept_namespaces(), 2, "{}", state());
        assert_eq!(janitors(), 1, "{}", state());
        // What a user who took over their kept squashfuse (it runs as them) could leave:
        // a process of theirs in the cache's cgroup that no entry names. It must not
        // outlive the cache.
        let mut stray = plant_stray();
        let stray_gone = |stray: &mut std::process::Child| stray.try_wait().unwrap().is_some();
        if how == "drop --all" {
            let out = Command::new(FERRY)
                .args(["cache", "drop", "--all"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(nothing_left(), "right after drop --all: {}", state());
            assert!(
                wait_until(Duration::from_secs(2), Duration::from_millis(50), || {
                    stray_gone(&mut stray)
                }),
                "drop --all left a stray process in the cache's cgroup"
            );
        } else {
            assert!(
                wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
                    nothing_left() && stray_gone(&mut stray)
                }),
                "after {ttl} of idleness: {}; stray ended: {}",
                state(),
                stray_gone(&mut stray)
            );
        }
    }
}

/// A `sleep` of the test user placed in the cache's cgroup of every hierarchy, as a
/// process forked by a kept squashfuse would be.
fn plant_stray() -> std::process::Child {
    let child = Command::new("runuser")
        .args(["-u", TEST_USER, "--", "sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // runuser forks the command: the sleep is runuser's child (or runuser itself).
    let runuser = child.id();
    let mut sleep_pid = None;
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        sleep_pid = fs::read_to_string(format!("/proc/{runuser}/task/{runuser}/children"))
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
            });
        sleep_pid.is_some()
    });
    let pid = sleep_pid.unwrap_or(runuser);
    for line in fs::read_to_string("/proc/self/mountinfo").unwrap().lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        let mountpoint = left.split_whitespace().nth(4).unwrap();
        let procs = Path::new(mountpoint).join("ferry-image-cache/cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("placing the stray in {}: {e}", procs.display()));
    }
    child
}

/// A job cancelled while its first step runs on a just-kept mount: the entry stays
/// whole (its server outlives the job's cgroup), no step holds it, and the next job
/// takes it.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_cancelled_job_leaves_the_cache_usable() {
    let lab = Lab::exclusive("cache-cancel");
    let u = lab.path(&lab.image("u.sqfs", "USER"));
    let (id, _) = lab.submit(&[&format!("--container={}", u.display())], "srun sleep 300");
    let in_use = || entries_of(&u).first().is_some_and(|e| e["in_use"] == true);
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(250), in_use),
        "the job's steps never used a kept mount: {:#?}",
        cache_entries()
    );
    Command::new("scancel")
        .arg(id.to_string())
        .status()
        .unwrap();
    assert!(
        job_gone(id, Duration::from_secs(60)),
        "job {id} still there"
    );
    let idle = || {
        entries_of(&u)
            .first()
            .is_some_and(|e| e["in_use"] == false && e["complete"] == true)
    };
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(250), idle),
        "{:#?}",
        cache_entries()
    );
    let entry = &entries_of(&u)[0];
    assert_eq!(entry["broken"], false, "{entry:#}");
    let prov = lab.path("after.jsonl");
    let out = lab.srun(&[
        &format!("--container={}", u.display()),
        &format!("--container-provenance={}", prov.display()),
        "cat",
        ONLY_FILE,
    ]);
    assert_eq!(out.stdout.trim(), "only-in-image USER", "{out}");
    assert_eq!(cache_outcomes(&prov), ["hit"]);
    drop_image_cache();
}

/// Many first jobs at once, each on an image of its own: each keeps its mount while the
/// janitors that the others start sweep the cache, and every job runs (a sweep that
/// read the records before the cgroup's members once took a server just being kept
/// for a stray and killed it: 7 of 16 such jobs failed).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn concurrent_first_jobs_each_keep_their_image() {
    let lab = Lab::exclusive("cache-concurrent");
    let images: Vec<String> = (0..12)
        .map(|i| lab.image(&format!("c{i}.sqfs"), &format!("C{i}")))
        .collect();
    let jobs: Vec<(u64, PathBuf)> = images
        .iter()
        .map(|image| {
            lab.submit(
                &[&format!("--container={image}")],
                &format!("cat {ONLY_FILE}"),
            )
        })
        .collect();
    for (i, (id, output)) in jobs.iter().enumerate() {
        assert!(
            job_gone(*id, Duration::from_secs(120)),
            "job {id} still there"
        );
        let log = fs::read_to_string(output).unwrap_or_default();
        assert_eq!(log.trim(), format!("only-in-image C{i}"), "job {id}: {log}");
    }
    drop_image_cache();
}

/// The cache folder's mode, put back when dropped (also when the test fails).
struct FolderMode(u32);

impl Drop for FolderMode {
    fn drop(&mut self) {
        let _ = fs::set_permissions(CACHE_DIR, fs::Permissions::from_mode(self.0));
    }
}

/// A node whose cache cannot be used (here: its folder is open to others, which the
/// runtime refuses) runs every step from a mount of its own: the job succeeds, the user
/// sees nothing of it, provenance says `not kept`, and the site's syslog says why.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_cache_that_cannot_keep_never_fails_a_step() {
    let lab = Lab::exclusive("cache-unusable");
    let syslog = syslog_file();
    let image = lab.path(&lab.image("n.sqfs", "NOTKEPT"));
    let prov = lab.path("notkept.jsonl");
    fs::create_dir_all(CACHE_DIR).unwrap();
    let _mode = FolderMode(fs::metadata(CACHE_DIR).unwrap().permissions().mode() & 0o7777);
    fs::set_permissions(CACHE_DIR, fs::Permissions::from_mode(0o755)).unwrap();
    for _ in 0..2 {
        let out = lab.srun(&[
            &format!("--container={}", image.display()),
            &format!("--container-provenance={}", prov.display()),
            "cat",
            ONLY_FILE,
        ]);
        out.expect_ok();
        assert_eq!(out.stdout.trim(), "only-in-image NOTKEPT", "{out}");
        assert!(!out.stderr.contains("ferry"), "nothing for the user: {out}");
    }
    assert_eq!(cache_outcomes(&prov), ["not kept", "not kept"]);
    let expected = format!(
        "image {}: not kept warm on this node (opening {CACHE_DIR}: {CACHE_DIR} must be \
         root's and closed to others)",
        image.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&fs::read(syslog).unwrap()).contains(&expected) {
        assert!(Instant::now() < deadline, "syslog has no line {expected:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
