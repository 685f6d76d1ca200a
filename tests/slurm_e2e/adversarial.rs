//! The adversarial suite: images and options built to escape, and the site policy.
//! Every case runs real jobs as `ferrytest` and checks what that user gets.

use super::*;

/// A busybox image with extra entries made by `extra(rootfs)`; xattrs are kept (file
/// capabilities) unless the caller strips them. Returns the image's path relative to
/// the lab.
pub(super) fn crafted_image(lab: &Lab, rel: &str, extra: impl FnOnce(&Path)) -> String {
    let base = lab.image(&format!("{rel}.base"), "CRAFTED");
    let root = lab.path(&format!("{rel}.rootfs"));
    let _ = fs::remove_dir_all(&root);
    let out = Command::new(find_tool("unsquashfs").unwrap())
        .args(["-no-progress", "-quiet", "-d"])
        .arg(&root)
        .arg(lab.path(&base))
        .output()
        .unwrap();
    assert!(out.status.success(), "unsquashfs: {out:?}");
    extra(&root);
    let image = lab.path(rel);
    let out = Command::new(find_tool("mksquashfs").unwrap())
        .arg(&root)
        .arg(&image)
        .args(["-quiet", "-noappend", "-no-progress", "-all-root"])
        .output()
        .unwrap();
    assert!(out.status.success(), "mksquashfs: {out:?}");
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    lab.give(&image);
    fs::remove_dir_all(&root).unwrap();
    rel.to_string()
}

fn run_root(program: &str, args: &[&str]) {
    let out = Command::new(find_tool(program).unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

/// A setuid-root binary, a binary with file capabilities and device nodes in the image
/// grant nothing: the user stays the user with no capabilities, and the device nodes
/// cannot be opened. Under the default policy the image is served by squashfuse as the
/// user; the squashfuse process is the user's, and nothing of it outlives the step.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn setuid_capabilities_and_devices_in_an_image_grant_nothing() {
    let lab = Lab::new("privs");
    let image = crafted_image(&lab, "privs.sqfs", |root| {
        // Named busybox (it picks its applet by argv[0]), in folders of their own.
        fs::create_dir_all(root.join("suid")).unwrap();
        fs::create_dir_all(root.join("cap")).unwrap();
        let suid = root.join("suid/busybox");
        fs::copy(root.join("bin/busybox"), &suid).unwrap();
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
        let capped = root.join("cap/busybox");
        fs::copy(root.join("bin/busybox"), &capped).unwrap();
        run_root(
            "setcap",
            &[
                "cap_setuid,cap_dac_override,cap_sys_admin+ep",
                capped.to_str().unwrap(),
            ],
        );
        for (name, major, minor) in [("mem", "1", "1"), ("disk", "253", "0"), ("kmsg", "1", "11")] {
            let node = root.join("e2e").join(name);
            run_root(
                "mknod",
                &["-m", "0666", node.to_str().unwrap(), "c", major, minor],
            );
        }
    });
    let uid = test_user().uid;
    let out = lab.srun(&[
        &format!("--container={image}"),
        "--container-provenance=p.jsonl",
        "sh",
        "-c",
        "echo \"suid: $(/suid/busybox id -u) $(/suid/busybox cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)' | tr -s '\\t\\n' '  ')\"
echo \"cap: $(/cap/busybox id -u) $(/cap/busybox cat /proc/self/status | grep -E '^(CapEff|CapPrm)' | tr -s '\\t\\n' '  ')\"
for d in mem disk kmsg; do if cat /e2e/$d >/dev/null 2>&1; then echo \"dev: $d OPENED\"; else echo \"dev: $d refused\"; fi; done
for p in /proc/[0-9]*; do if [ \"$(cat $p/comm 2>/dev/null)\" = squashfuse_ll ]; then echo \"server: $(awk '/^Uid:/ {print $2, $3, $4, $5}' $p/status) $(grep NoNewPrivs $p/status | tr -d '\\t')\"; fi; done",
    ]);
    out.expect_ok();
    assert_eq!(
        value_of(&out.stdout, "suid: "),
        Some(format!("{uid} CapEff: 0000000000000000 NoNewPrivs: 1").as_str()),
        "{out}"
    );
    assert_eq!(
        value_of(&out.stdout, "cap: "),
        Some(format!("{uid} CapPrm: 0000000000000000 CapEff: 0000000000000000").as_str()),
        "{out}"
    );
    for d in ["mem", "disk", "kmsg"] {
        assert!(out.stdout.contains(&format!("dev: {d} refused")), "{out}");
    }
    // The untrusted image was served by squashfuse running as the user, no_new_privs.
    let servers: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("server: "))
        .collect();
    assert!(
        !servers.is_empty(),
        "no squashfuse served the image:\n{out}"
    );
    let want = format!("server: {uid} {uid} {uid} {uid} NoNewPrivs:1");
    let record = provenance_lines(&lab.path("p.jsonl"));
    assert_eq!(record[0]["mounted_by"], "fuse", "{record:?}");
    assert!(
        servers.iter().any(|l| *l == want),
        "squashfuse runs with other rights:\n{out}"
    );
}

/// Symlinks in the image that name host paths lead into the image, never out of it;
/// a bind whose destination goes through such a symlink lands inside the container.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn image_symlinks_cannot_reach_or_bind_host_paths() {
    let lab = Lab::new("symlinks");
    // A host secret only root can read, and a host folder nobody may bind over.
    let secret = lab.write("secret.txt", "HOST-SECRET\n", 0o600);
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).unwrap();
    let host_target = lab.mkdir("host-target");
    let image = crafted_image(&lab, "links.sqfs", |root| {
        let e2e = root.join("e2e");
        std::os::unix::fs::symlink(&secret, e2e.join("secret-link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/shadow", e2e.join("shadow-link"))
            .unwrap();
        std::os::unix::fs::symlink(&host_target, e2e.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", e2e.join("up")).unwrap();
    });
    lab.write("data/marker.txt", "BOUND\n", 0o644);
    let out = lab.srun(&[
        &format!("--container={image}"),
        "--container-mounts=data:/e2e/escape,data:/e2e/up/bound",
        "sh",
        "-c",
        "cat /e2e/secret-link 2>&1 | head -c 200; echo; cat /e2e/shadow-link 2>&1 | head -c 200; echo
echo \"escape: $(cat /e2e/escape/marker.txt)\"; echo \"up: $(cat /bound/marker.txt)\"",
    ]);
    assert!(
        !out.stdout.contains("HOST-SECRET"),
        "host file read through an image symlink:\n{out}"
    );
    assert!(
        !out.stdout.contains("root:"),
        "a shadow file was read:\n{out}"
    );
    out.expect_ok();
    assert_eq!(value_of(&out.stdout, "escape: "), Some("BOUND"), "{out}");
    assert_eq!(value_of(&out.stdout, "up: "), Some("BOUND"), "{out}");
    // On the host nothing was mounted over the symlink's target.
    assert!(!host_target.join("marker.txt").exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&lab.dir.display().to_string()), "{mounts}");
}

/// Corrupt and truncated SquashFS images, an image inside another user's 0700 folder
/// and garbage option values: the step fails with one ferry line and nothing runs.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn corrupt_images_and_garbage_options_fail_with_one_line() {
    let lab = Lab::new("garbage");
    let good = lab.image("good.sqfs", "GOOD");
    let bytes = fs::read(lab.path(&good)).unwrap();
    lab.write("empty.sqfs", "", 0o644);
    fs::write(lab.path("tiny.sqfs"), &bytes[..200]).unwrap();
    fs::write(lab.path("half.sqfs"), &bytes[..bytes.len() / 2]).unwrap();
    for f in ["tiny.sqfs", "half.sqfs"] {
        lab.give(&lab.path(f));
    }
    // Another user's private folder (nobody's, 0700) with a readable image in it.
    let other = lab.path("other");
    fs::create_dir(&other).unwrap();
    fs::copy(lab.path(&good), other.join("img.sqfs")).unwrap();
    std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o700)).unwrap();
    let huge = format!("--container-mounts={}", "a/".repeat(40_000));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "empty image",
            vec!["--container=empty.sqfs".into()],
            "not a container image",
        ),
        (
            "200-byte image",
            vec!["--container=tiny.sqfs".into()],
            "tiny.sqfs",
        ),
        (
            "half an image",
            vec!["--container=half.sqfs".into()],
            "half.sqfs",
        ),
        (
            "another user's 0700 folder",
            vec!["--container=other/img.sqfs".into()],
            "cannot read it",
        ),
        (
            "huge image path",
            vec![format!("--container={}.sqfs", "i/".repeat(20_000))],
            "image ",
        ),
        (
            "newline in the image",
            vec!["--container=good.sqfs\nx".into()],
            "good.sqfs\\nx: not found",
        ),
        (
            "commas only in mounts",
            vec![
                format!("--container={good}"),
                "--container-mounts=,,,:".into(),
            ],
            "--container-mounts",
        ),
        (
            "newline in mounts",
            vec![
                format!("--container={good}"),
                "--container-mounts=/tmp:/a\nb:ro:x".into(),
            ],
            "--container-mounts",
        ),
        (
            "huge mount",
            vec![format!("--container={good}"), huge],
            "mount source",
        ),
        (
            "dotdot destination",
            vec![
                format!("--container={good}"),
                "--container-mounts=/tmp:/x/../etc".into(),
            ],
            "..",
        ),
        (
            "newline workdir",
            vec![
                format!("--container={good}"),
                "--container-workdir=\n/x".into(),
            ],
            "absolute",
        ),
    ];
    srun_each_is_refused(&lab, &cases);

    // Bytes that are not UTF-8 (made by the shell: our argument lists are text).
    for (case, option, fragment) in [
        (
            "non-UTF-8 image",
            "--container=$(printf 'good\\377.sqfs')",
            "--container=",
        ),
        (
            "non-UTF-8 mount",
            "--container=good.sqfs --container-mounts=$(printf 'd\\377'):/x",
            "option value",
        ),
        (
            "non-UTF-8 workdir",
            "--container=good.sqfs --container-workdir=$(printf '/w\\377')",
            "option value",
        ),
    ] {
        let out = lab.run(&["sh", "-c", &format!("srun {option} echo SHOULD-NOT-RUN")]);
        let seen = out.expect_one_ferry_error(case, fragment);
        assert!(seen.contains("not valid UTF-8"), "{case}: {seen}");
    }
}

/// The image file is replaced (renamed over) again and again while steps start:
/// every step runs one whole image or refuses with one line, and a step pinned to
/// image A never runs B.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn an_image_replaced_while_steps_start() {
    let lab = Lab::new("replace");
    let a = lab.image("a.sqfs", "A");
    let b = lab.image("b.sqfs", "B");
    let digest_a = sha256sum(&lab.path(&a));
    fs::copy(lab.path(&a), lab.path("live.sqfs")).unwrap();
    lab.give(&lab.path("live.sqfs"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let from = if n.is_multiple_of(2) { &b } else { &a };
                let tmp = lab.path("live.sqfs.tmp");
                fs::copy(lab.path(from), &tmp).unwrap();
                fs::rename(&tmp, lab.path("live.sqfs")).unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(7));
            }
        });
        let mut seen = BTreeSet::new();
        let mut refused = 0;
        for i in 0..12 {
            let pinned = i % 2 == 1;
            let spec = if pinned {
                format!("--container=live.sqfs@{digest_a}")
            } else {
                "--container=live.sqfs".to_string()
            };
            let out = lab.srun(&[&spec, "cat", ONLY_FILE]);
            let text = out.stdout.trim();
            if out.ok() {
                assert!(
                    text == "only-in-image A" || text == "only-in-image B",
                    "{out}"
                );
                assert!(
                    !(pinned && text.ends_with('B')),
                    "a step pinned to A ran B:\n{out}"
                );
                seen.insert(text.to_string());
            } else {
                // Replacing unlinks the old file, which changes its ctime: a step whose
                // image was swapped while it was verified refuses to run, saying so.
                let all = format!("{}\n{}", out.stdout, out.stderr);
                let lines = ferry_lines(&all);
                assert_eq!(lines.len(), 1, "{out}");
                assert!(
                    lines[0].contains("changed while it was being verified")
                        || lines[0].contains("digest mismatch"),
                    "{out}"
                );
                refused += 1;
            }
        }
        stop.store(true, Ordering::SeqCst);
        eprintln!("replaced image: ran {seen:?}, {refused} of 12 refused");
    });
}

/// A folder and image the admin installed (root's, writable by root only).
pub(super) struct TrustedDir {
    pub(super) dir: PathBuf,
}

impl TrustedDir {
    pub(super) fn new(name: &str) -> TrustedDir {
        let dir = Path::new("/var/lib").join(format!("ferry-e2e-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        TrustedDir { dir }
    }
}

impl Drop for TrustedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The site file: `deny` runs only images of the trusted folders and tells the others
/// where those are; a trusted folder that becomes group-writable stops being trusted;
/// site mounts appear in every container; user mounts outside the allowed destinations
/// are refused; a site file a user could edit stops every step. Exclusive: the policy
/// applies to every job meanwhile.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn the_site_policy_decides_which_images_run_and_where() {
    let lab = Lab::exclusive("site-policy");
    let trusted = TrustedDir::new("trusted");
    let site_data = TrustedDir::new("site-data");
    fs::write(site_data.dir.join("motd"), "SITE-MOUNT\n").unwrap();
    let own = lab.image("own.sqfs", "OWN");
    let vetted = lab.image("vetted.sqfs", "VETTED");
    let vetted_path = trusted.dir.join("vetted.sqfs");
    fs::copy(lab.path(&vetted), &vetted_path).unwrap();
    std::os::unix::fs::chown(&vetted_path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&vetted_path, fs::Permissions::from_mode(0o644)).unwrap();
    // An ext image runs from a trusted folder only (the kernel's ext4 driver).
    let vetted_ext = lab.image_as("vetted.img", "VETTED-EXT", Packaging::Ext3);
    let vetted_ext_path = trusted.dir.join("vetted.img");
    fs::copy(lab.path(&vetted_ext), &vetted_ext_path).unwrap();
    std::os::unix::fs::chown(&vetted_ext_path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&vetted_ext_path, fs::Permissions::from_mode(0o644)).unwrap();
    // In a folder of its own: the site file's folders must stay root-only, and this
    // test makes the trusted image folder group-writable.
    let policy = TrustedDir::new("policy");
    let site_file = policy.dir.join("site.json");
    fs::write(
        &site_file,
        serde_json::json!({
            "trusted_image_dirs": [trusted.dir],
            "untrusted_images": "deny",
            "site_mounts": [
                {"source": site_data.dir, "dest": "/site", "readonly": true},
                {"source": "/no/such/site/folder", "optional": true}
            ],
            "user_mount_destinations": ["/data"],
            "writable_layer_size": "16M"
        })
        .to_string(),
    )
    .unwrap();
    let check = Command::new("/usr/bin/ferry")
        .args(["check-config", site_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "check-config: {check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("deny"));
    let vetted_arg = format!("--container={}", vetted_path.display());
    let _setting = PlugstackArgs::add(&format!("site_config={}", site_file.display()));

    let out = lab.srun(&[
        &vetted_arg,
        "--container-provenance=p.jsonl",
        "sh",
        "-c",
        &format!("cat {ONLY_FILE} /site/motd"),
    ]);
    out.expect_ok();
    assert_eq!(out.stdout, "only-in-image VETTED\nSITE-MOUNT\n", "{out}");
    let record = provenance_lines(&lab.path("p.jsonl"));
    assert_eq!(record[0]["mounted_by"], "kernel", "{record:?}");

    let out = lab.srun(&[
        &format!("--container={}", vetted_ext_path.display()),
        "--container-provenance=ext.jsonl",
        "cat",
        ONLY_FILE,
    ]);
    out.expect_ok();
    assert_eq!(out.stdout, "only-in-image VETTED-EXT\n", "{out}");
    let record = provenance_lines(&lab.path("ext.jsonl"));
    assert_eq!(record[0]["mounted_by"], "kernel", "{record:?}");

    let out = lab.srun(&[&format!("--container={own}"), "echo", "SHOULD-NOT-RUN"]);
    out.expect_one_ferry_error(
        "untrusted image under deny",
        &format!(
        "not in a trusted image folder; this site runs only images from its trusted folders: {}",
        trusted.dir.display()
    ),
    );

    lab.mkdir("d");
    let out = lab.srun(&[&vetted_arg, "--container-mounts=d:/data/d", "true"]);
    out.expect_ok();
    let out = lab.srun(&[
        &vetted_arg,
        "--container-mounts=d:/opt/d",
        "echo",
        "SHOULD-NOT-RUN",
    ]);
    out.expect_one_ferry_error(
        "mount outside the allowed destinations",
        "allows user mounts only under /data",
    );

    // A group-writable trusted folder is no longer trusted.
    fs::set_permissions(&trusted.dir, fs::Permissions::from_mode(0o775)).unwrap();
    let out = lab.srun(&[&vetted_arg, "echo", "SHOULD-NOT-RUN"]);
    out.expect_one_ferry_error(
        "group-writable trusted folder",
        "not in a trusted image folder",
    );
    fs::set_permissions(&trusted.dir, fs::Permissions::from_mode(0o755)).unwrap();

    // A site file the user owns is not believed: every step stops.
    std::os::unix::fs::chown(&site_file, Some(test_user().uid), None).unwrap();
    let out = lab.srun(&[&vetted_arg, "echo", "SHOULD-NOT-RUN"]);
    out.expect_one_ferry_error("user-owned site file", "must be owned by root");
}

/// A job cancelled while its steps are being set up, and a slurmstepd killed with
/// SIGKILL while its step runs: afterwards no loop device, mount, squashfuse or other
/// live process of the test user remains. (Zombies whose parent is init are not
/// counted: this machine's init does not reap orphans; any init that does reaps them.)
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn cancel_during_setup_and_killed_slurmstepd_leave_nothing() {
    let lab = Lab::exclusive("kill");
    let image = lab.image("kill.sqfs", "KILL");
    let container = format!("--container={image}");
    let before = live_pids_of_test_user();
    for delay in [0u64, 50, 150, 300] {
        let (id, _) = lab.submit(&[&container], "srun true; srun true; srun sleep 30");
        std::thread::sleep(Duration::from_millis(delay));
        lab.run(&["scancel", &id.to_string()]).expect_ok();
        assert!(
            job_gone(id, Duration::from_secs(60)),
            "job {id} still queued"
        );
    }
    // The user's image (squashfuse) and a trusted one (kernel, loop device).
    let trusted = TrustedDir::new("kill-trusted");
    let vetted = trusted.dir.join("vetted.sqfs");
    fs::copy(lab.path(&image), &vetted).unwrap();
    std::os::unix::fs::chown(&vetted, Some(0), Some(0)).unwrap();
    let site_file = trusted.dir.join("site.json");
    fs::write(
        &site_file,
        format!(r#"{{"trusted_image_dirs": ["{}"]}}"#, trusted.dir.display()),
    )
    .unwrap();
    let _site = PlugstackArgs::add(&format!("site_config={}", site_file.display()));
    for container in [
        container.clone(),
        format!("--container={}", vetted.display()),
    ] {
        kill_slurmstepd_while_the_step_runs(&lab, &container, &before);
    }
    settle_and_drop_image_cache();
    let dir = lab.dir.display().to_string();
    let leftovers = || -> Vec<String> {
        let mut found: Vec<String> = root_output("losetup", &["-a"])
            .lines()
            .filter(|l| l.contains(&dir) || l.contains(&trusted.dir.display().to_string()))
            .map(|l| format!("loop device: {l}"))
            .collect();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&dir) || mounted_by_ferry(l))
                .map(|l| format!("host mount: {l}")),
        );
        for pid in live_pids_of_test_user().difference(&before) {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!(
                "process: {pid} {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
        found
    };
    let clean = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        leftovers().is_empty()
    });
    assert!(clean, "left behind:\n{}", leftovers().join("\n"));
}

/// Starts `srun sleep 300` in `container`, SIGKILLs its slurmstepd, cancels the job and
/// kills what the user had left running in it (nobody else is left to).
fn kill_slurmstepd_while_the_step_runs(lab: &Lab, container: &str, before: &BTreeSet<u32>) {
    let (id, _) = lab.submit(&[container], "srun sleep 300");
    let step = format!("[{id}.0]");
    let mut stepd = None;
    let found = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        stepd = root_output("pgrep", &["-f", &format!("slurmstepd: \\[{id}\\.0\\]")])
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        stepd.is_some() && !root_output("pgrep", &["-u", TEST_USER, "-x", "sleep"]).is_empty()
    });
    assert!(found, "step {step} never ran");
    run_root("kill", &["-9", &stepd.unwrap().to_string()]);
    let _ = lab.run(&["scancel", &id.to_string()]);
    let _ = job_gone(id, Duration::from_secs(60));
    // The user's task may outlive its slurmstepd (nobody is left to kill it): the admin's
    // cleanup, after which ferry's share must vanish on its own.
    std::thread::sleep(Duration::from_secs(1));
    for pid in live_pids_of_test_user().difference(before) {
        if started_by_us(*pid, &lab.job_name()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// A mountinfo line of a mount ferry makes (its source is always "ferry").
pub(super) fn mounted_by_ferry(line: &str) -> bool {
    line.split(" - ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().nth(1))
        == Some("ferry")
}

/// Processes of the test user that are not zombies reparented to init.
fn live_pids_of_test_user() -> BTreeSet<u32> {
    pids_of_test_user()
        .into_iter()
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, r)| r.trim()).unwrap_or("");
            let mut f = after.split_whitespace();
            !(f.next() == Some("Z") && f.next() == Some("1"))
        })
        .collect()
}
