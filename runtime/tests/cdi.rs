//! CDI devices in `ferry run --device`: a synthetic vendor the test makes (character
//! devices with the free major number 240 under /dev, a driver library and a tool to
//! bind, variables, a hook that leaves evidence), in JSON and in YAML specs, applied
//! as root and as a user; and hostile specs, each refused with one `ferry:` line.
//!
//! Needs root and the tools of `tests/prepare-host`:
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test cdi -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The major number of the fake devices: in Linux's "local/experimental use" range,
/// which no driver takes (opening one fails with ENXIO; the tests only look at them).
const FAKE_MAJOR: u32 = 240;

/// The synthetic vendor: its specs' folder, site file, device folder and files.
struct Vendor {
    /// Root's own folder under /run: the specs, the site file, the driver files.
    dir: PathBuf,
    /// `/dev/ferry-test-PID-fake`: the device nodes gpu0 and gpu1.
    dev: PathBuf,
    /// Where the hook writes what it saw (host /tmp, bound into every container).
    evidence: PathBuf,
}

impl Vendor {
    fn specs(&self) -> PathBuf {
        self.dir.join("cdi")
    }

    fn site(&self) -> PathBuf {
        self.dir.join("site.json")
    }

    fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.specs().join(name);
        write_mode(&path, text, 0o644);
        path
    }
}

fn vendor() -> &'static Vendor {
    static VENDOR: OnceLock<Vendor> = OnceLock::new();
    VENDOR.get_or_init(|| {
        let dir = TempDir::new_in(Path::new("/run"), "cdi").keep_until_exit();
        let dev = PathBuf::from(format!("/dev/{}fake", pid_tag()));
        mkdir_mode(&dev, 0o755);
        test_support::at_exit::remove_at_exit(dev.clone());
        for minor in [0, 1] {
            let node = dev.join(format!("gpu{minor}"));
            let made = Command::new("mknod")
                .args(["-m", "0666"])
                .arg(&node)
                .args(["c", &FAKE_MAJOR.to_string(), &minor.to_string()])
                .status()
                .unwrap();
            assert!(made.success(), "mknod {}", node.display());
        }
        for sub in ["cdi", "lib", "bin", "hooks"] {
            mkdir_mode(&dir.join(sub), 0o755);
        }
        write_mode(&dir.join("lib/libfake.so.1"), "fake driver 1.0\n", 0o644);
        // A real shared object named by its version, whose SONAME is another name (as
        // nvidia-ctk mounts libnvidia-ml.so.550.54.15, SONAME libnvidia-ml.so.1).
        let source = dir.join("lib/fakeml.c");
        write_mode(&source, "int fake_ml_version(void) { return 550; }\n", 0o644);
        let built = Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libfakeml.so.1", "-o"])
            .arg(dir.join("lib/libfakeml.so.550.1"))
            .arg(&source)
            .status()
            .unwrap();
        assert!(built.success(), "gcc -shared libfakeml");
        write_mode(
            &dir.join("bin/fake-smi"),
            "#!/bin/sh\necho \"fake-smi: $(ls /dev/$FAKE_DEV_DIR | tr '\\n' ' ')\"\n",
            0o755,
        );
        let evidence = PathBuf::from(format!("/tmp/{}cdi-hook", pid_tag()));
        test_support::at_exit::remove_at_exit(evidence.clone());
        write_mode(
            &dir.join("hooks/leave-evidence"),
            "#!/bin/sh\n{ echo \"uid=$(id -u) arg=$1 lib=$(cat /usr/lib/fake/libfake.so.1)\"; cat; echo; } >> \"$EVIDENCE\"\n",
            0o755,
        );
        write_mode(&dir.join("hooks/fail"), "#!/bin/sh\necho broken driver >&2\nexit 3\n", 0o755);
        write_mode(&dir.join("hooks/slow"), "#!/bin/sh\nsleep 30\n", 0o755);
        std::os::unix::fs::symlink(dir.join("hooks/leave-evidence"), dir.join("hooks/link")).unwrap();
        let vendor = Vendor { dir, dev, evidence };
        write_mode(
            &vendor.site(),
            &format!(r#"{{"cdi_spec_dirs": ["{}"], "image_cache_ttl": "0"}}"#, vendor.specs().display()),
            0o644,
        );
        vendor.write_spec("fake.json", &json_spec(&vendor));
        vendor.write_spec("other.yaml", &yaml_spec(&vendor));
        vendor
    })
}

/// The JSON vendor: `ferry-test.example/gpu` with devices 0 and 1 (the fake nodes), a
/// library, a tool, variables and a hook.
fn json_spec(v: &Vendor) -> String {
    let dev_dir = v.dev.file_name().unwrap().to_str().unwrap();
    format!(
        r#"{{
  "cdiVersion": "0.6.0",
  "kind": "ferry-test.example/gpu",
  "devices": [
    {{"name": "0", "containerEdits": {{
       "deviceNodes": [{{"path": "{dev}/gpu0", "type": "c", "major": {FAKE_MAJOR}, "minor": 0}}],
       "env": ["FAKE_VISIBLE_DEVICES=0"]}}}},
    {{"name": "1", "containerEdits": {{
       "deviceNodes": [{{"path": "{dev}/gpu1"}}],
       "env": ["FAKE_VISIBLE_DEVICES=1"]}}}}
  ],
  "containerEdits": {{
    "env": ["FAKE_DEV_DIR={dev_dir}", "FAKE_DRIVER=1.0"],
    "mounts": [
      {{"hostPath": "{dir}/lib/libfake.so.1", "containerPath": "/usr/lib/fake/libfake.so.1", "options": ["rw", "bind"]}},
      {{"hostPath": "{dir}/bin/fake-smi", "containerPath": "/usr/bin/fake-smi"}}
    ],
    "hooks": [{{"hookName": "createContainer", "path": "{dir}/hooks/leave-evidence",
                "args": ["leave-evidence", "created"], "env": ["EVIDENCE={evidence}"]}}]
  }}
}}"#,
        dev = v.dev.display(),
        dir = v.dir.display(),
        evidence = v.evidence.display(),
    )
}

/// A second vendor in YAML, with no hook: a real library whose SONAME is not its file
/// name, and the text file that is no library.
fn yaml_spec(v: &Vendor) -> String {
    format!(
        "cdiVersion: 0.8.0\nkind: ferry-test.example/accel\ndevices:\n  - name: a\n    containerEdits:\n      deviceNodes:\n        - path: {dev}/gpu1\n      env:\n        - ACCEL=a\ncontainerEdits:\n  mounts:\n    - hostPath: {dir}/lib/libfakeml.so.550.1\n      containerPath: /usr/lib/fake/libfakeml.so.550.1\n    - hostPath: {dir}/lib/libfake.so.1\n      containerPath: /usr/lib/fake/libfake.so.1\n",
        dev = v.dev.display(),
        dir = v.dir.display(),
    )
}

/// `ferry run [--user ferrytest] --site-config SITE OPTIONS IMAGE -- sh -c SCRIPT`.
fn run(as_user: bool, options: &[&str], script: &str) -> Outcome {
    let v = vendor();
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "cdi-cwd");
    cwd.give_to_test_user();
    let mut args: Vec<String> = vec!["run".into()];
    if as_user {
        args.extend(["--user".into(), TEST_USER.into()]);
    }
    args.extend(["--site-config".into(), v.site().display().to_string()]);
    args.extend(options.iter().map(|s| s.to_string()));
    args.extend([
        fixture().image.display().to_string(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    ferry(cwd.path(), &args)
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_device_brings_its_node_driver_files_variables_and_hook_as_root_and_as_a_user() {
    require_root_and_tools(&["mknod"]);
    let _g = shared();
    let v = vendor();
    let script = format!(
        "test -c {dev}/gpu0 && echo node; cat /usr/lib/fake/libfake.so.1; fake-smi; echo \"$FAKE_VISIBLE_DEVICES $FAKE_DRIVER\"; echo x > /usr/lib/fake/libfake.so.1 2>/dev/null || echo read-only",
        dev = v.dev.display()
    );
    for as_user in [false, true] {
        let _ = fs::remove_file(&v.evidence);
        let out = run(as_user, &["--device", "ferry-test.example/gpu=0"], &script);
        out.expect_success("a fake GPU");
        assert_eq!(
            out.stdout, "node\nfake driver 1.0\nfake-smi: gpu0 gpu1 \n0 1.0\nread-only\n",
            "as_user {as_user}"
        );
        // The hook ran once, as the user, inside the container (the library is there),
        // and read the OCI state.
        let evidence = fs::read_to_string(&v.evidence).unwrap();
        let uid = if as_user { test_user().uid } else { 0 };
        let lines: Vec<&str> = evidence.lines().collect();
        assert_eq!(lines.len(), 2, "{evidence}");
        assert_eq!(
            lines[0],
            format!("uid={uid} arg=created lib=fake driver 1.0")
        );
        let state: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(state["status"], "created");
        assert!(state["id"].as_str().unwrap().starts_with("ferry-run-"));
    }
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_mounted_library_is_found_by_its_soname() {
    require_root_and_tools(&["mknod", "gcc"]);
    let _g = shared();
    // The link is relative, beside the file, and resolves to it; the root stays
    // read-only (the link was made in the writable layer before it was remounted).
    let script = "cd /usr/lib/fake && readlink libfakeml.so.1 && cmp libfakeml.so.1 libfakeml.so.550.1 && echo same; ln -sf x libfakeml.so.1 2>/dev/null || echo read-only";
    for as_user in [false, true] {
        let out = run(as_user, &["--device", "ferry-test.example/accel=a"], script);
        out.expect_success("a library by its SONAME");
        assert_eq!(
            out.stdout, "libfakeml.so.550.1\nsame\nread-only\n",
            "as_user {as_user}"
        );
    }
    // The text file that is no ELF library gets no link.
    let out = run(
        true,
        &["--device", "ferry-test.example/accel=a"],
        "ls /usr/lib/fake",
    );
    out.expect_success("the library folder");
    assert_eq!(
        out.stdout,
        "libfake.so.1\nlibfakeml.so.1\nlibfakeml.so.550.1\n"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn yaml_specs_and_several_devices_in_one_option() {
    require_root_and_tools(&["mknod"]);
    let _g = shared();
    let v = vendor();
    let out = run(
        true,
        &[
            "--device",
            "ferry-test.example/accel=a,ferry-test.example/gpu=1",
        ],
        "echo \"$ACCEL $FAKE_VISIBLE_DEVICES\"",
    );
    out.expect_success("two vendors");
    assert_eq!(out.stdout, "a 1\n");
    let _ = v;
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn unknown_devices_are_one_line_naming_them() {
    require_root_and_tools(&["mknod"]);
    let _g = shared();
    let out = run(true, &["--device", "ferry-test.example/gpu=7"], "true");
    assert_eq!(out.code, Some(125));
    out.one_ferry_line(&["ferry-test.example/gpu=7", "fake.json", "0, 1"]);
    let out = run(true, &["--device", "nobody.example/gpu=0"], "true");
    out.one_ferry_line(&["nobody.example/gpu", "ferry doctor"]);
    let out = run(true, &["--device", "gpu0"], "true");
    out.one_ferry_line(&["VENDOR/CLASS=NAME"]);
}

/// A hostile or broken spec in a folder of its own (the site file names only it).
fn with_spec(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new_in(Path::new("/run"), "cdi-hostile");
    let specs = dir.join("cdi");
    mkdir_mode(&specs, 0o755);
    write_mode(&specs.join(name), text, 0o644);
    let site = dir.join("site.json");
    write_mode(
        &site,
        &format!(
            r#"{{"cdi_spec_dirs": ["{}"], "image_cache_ttl": "0"}}"#,
            specs.display()
        ),
        0o644,
    );
    (dir, site)
}

fn run_with_site(site: &Path, device: &str) -> Outcome {
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "cdi-cwd");
    cwd.give_to_test_user();
    let site = site.display().to_string();
    let image = fixture().image.display().to_string();
    ferry(
        cwd.path(),
        &[
            "run",
            "--user",
            TEST_USER,
            "--site-config",
            &site,
            "--device",
            device,
            &image,
            "--",
            "true",
        ],
    )
}

fn hostile(edits: &str) -> String {
    format!(
        r#"{{"cdiVersion": "0.6.0", "kind": "hostile.example/x",
            "devices": [{{"name": "0", "containerEdits": {{{edits}}}}}]}}"#
    )
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn hostile_specs_are_refused_with_one_line() {
    require_root_and_tools(&["mknod"]);
    let _g = shared();
    let v = vendor();
    let hooks = v.dir.join("hooks");
    let state = HostState::capture();
    // A mount of a file the user cannot read: opened as the user, it fails.
    let (_d, site) = with_spec(
        "shadow.json",
        &hostile(r#""mounts": [{"hostPath": "/etc/shadow", "containerPath": "/etc/x"}]"#),
    );
    run_with_site(&site, "hostile.example/x=0").one_ferry_line(&[
        "CDI device hostile.example/x=0 (spec ",
        "shadow.json): mount source /etc/shadow",
        TEST_USER,
    ]);
    // A hook through a symlink, a failing hook, a hook past its time.
    for (hook, timeout, says) in [
        ("link", "", "symlink"),
        ("fail", "", "exit status 3: broken driver"),
        ("slow", r#", "timeout": 1"#, "longer than 1 s"),
    ] {
        let (_d, site) = with_spec(
            "hook.json",
            &hostile(&format!(
                r#""hooks": [{{"hookName": "createContainer", "path": "{}"{timeout}}}]"#,
                hooks.join(hook).display()
            )),
        );
        let out = run_with_site(&site, "hostile.example/x=0");
        assert_eq!(out.code, Some(125), "{out:#?}");
        out.one_ferry_line(&["hook.json", hook, says]);
    }
    // A node shown at a path the host's /dev lacks (ferry makes none there).
    let (_d, site) = with_spec(
        "nowhere.json",
        &hostile(r#""deviceNodes": [{"path": "/dev/ferry-nowhere", "hostPath": "/dev/zero"}]"#),
    );
    run_with_site(&site, "hostile.example/x=0")
        .one_ferry_line(&["/dev/ferry-nowhere", "containers share the host's /dev"]);
    assert!(!Path::new("/dev/ferry-nowhere").exists());
    // A device node that is no device, and a node number the spec makes up.
    let (_d, site) = with_spec(
        "node.json",
        &hostile(r#""deviceNodes": [{"path": "/dev/shm"}]"#),
    );
    run_with_site(&site, "hostile.example/x=0").one_ferry_line(&["/dev/shm", "not a device node"]);
    let (_d, site) = with_spec(
        "made-up.json",
        &hostile(
            r#""deviceNodes": [{"path": "/dev/ferry-made-up", "type": "c", "major": 1, "minor": 3}]"#,
        ),
    );
    run_with_site(&site, "hostile.example/x=0")
        .one_ferry_line(&["/dev/ferry-made-up", "cannot be found"]);
    assert!(!Path::new("/dev/ferry-made-up").exists());
    // Bad YAML, a huge file, a file others may write, one a user owns: ignored, named.
    for (name, text, mode, owner) in [
        ("bad.yaml", "cdiVersion: [".to_string(), 0o644, 0),
        (
            "huge.json",
            format!("{}{}", hostile(""), " ".repeat(2 << 20)),
            0o644,
            0,
        ),
        ("open.json", hostile(""), 0o666, 0),
        ("users.json", hostile(""), 0o644, test_user().uid),
    ] {
        let (d, site) = with_spec(name, &text);
        let file = d.join("cdi").join(name);
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&file, Some(owner), None).unwrap();
        run_with_site(&site, "hostile.example/x=0").one_ferry_line(&[
            "hostile.example/x",
            "ignored: CDI spec",
            name,
        ]);
    }
    state.assert_nothing_left("hostile specs");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_node_is_shown_over_an_entry_of_the_hosts_dev() {
    require_root_and_tools(&["mknod"]);
    let _g = shared();
    let v = vendor();
    let (_d, site) = with_spec(
        "over.json",
        &hostile(&format!(
            r#""deviceNodes": [{{"path": "/dev/full", "hostPath": "{}/gpu0"}}]"#,
            v.dev.display()
        )),
    );
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "cdi-cwd");
    cwd.give_to_test_user();
    let image = fixture().image.display().to_string();
    let site = site.display().to_string();
    let out = ferry(
        cwd.path(),
        &[
            "run",
            "--user",
            TEST_USER,
            "--site-config",
            &site,
            "--device",
            "hostile.example/x=0",
            &image,
            "--",
            "stat",
            "-c",
            "%t:%T",
            "/dev/full",
        ],
    );
    out.expect_success("a node shown at another path");
    // Major 240 (0xf0), minor 0: the fake GPU, not the host's /dev/full (1:7).
    assert_eq!(out.stdout, "f0:0\n");
}

/// `ferry run --device` as TEST_USER without root (setpriv, ferry's own user namespace).
fn run_without_root(site: &Path, device: &str, script: &str) -> Outcome {
    let cwd = TempDir::new_in(Path::new("/var/tmp"), "cdi-cwd");
    cwd.give_to_test_user();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", TEST_USER, "--regid", TEST_GROUP, "--init-groups"])
        .arg(ferry_bin())
        .arg("run")
        .arg("--site-config")
        .arg(site)
        .args(["--device", device])
        .arg(&fixture().image)
        .args(["--", "sh", "-c", script])
        .current_dir(cwd.path());
    run_with_timeout(cmd, std::time::Duration::from_secs(60))
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn without_root_devices_apply_unless_they_need_root() {
    require_root_and_tools(&["mknod", "gcc", "setpriv"]);
    let _g = shared();
    let v = vendor();
    // A node at its own path, the library (a bind the user could make) and its
    // SONAME link in ferry's own writable layer: no root needed.
    let out = run_without_root(
        &v.site(),
        "ferry-test.example/accel=a",
        &format!(
            "test -c {}/gpu1 && echo node; readlink /usr/lib/fake/libfakeml.so.1; echo $ACCEL",
            v.dev.display()
        ),
    );
    out.expect_success("a device without root");
    assert_eq!(out.stdout, "node\nlibfakeml.so.550.1\na\n");
    // A hook is run only by root: refused, naming the spec and the hook.
    let out = run_without_root(&v.site(), "ferry-test.example/gpu=0", "true");
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["fake.json", "leave-evidence", "only as root"]);
    // A node shown at another path is a bind into /dev: refused, naming both paths.
    let (_d, site) = with_spec(
        "elsewhere.json",
        &hostile(&format!(
            r#""deviceNodes": [{{"path": "/dev/full", "hostPath": "{}/gpu0"}}]"#,
            v.dev.display()
        )),
    );
    let out = run_without_root(&site, "hostile.example/x=0", "true");
    assert_eq!(out.code, Some(125), "{out:#?}");
    out.one_ferry_line(&["/dev/full", "gpu0", "needs root"]);
}
