//! CDI devices in Slurm steps, with the test cluster's two fake GPUs
//! (deploy/slurm-cluster: GresTypes=gpu, gres.conf File=/dev/ferry-fake/gpu[0-1], char
//! devices 240:0-1) and a spec the test writes for them: `srun --gres=gpu:1` applies
//! the allocated device without naming it (the site's `cdi_gres`), a 2-rank step gives
//! each rank its own device's variables, `--container-devices` names one, an unknown
//! one is one line, and the spec's hook runs once per step per node, as the user.

use super::*;

const FAKE_DIR: &str = "/dev/ferry-fake";
const KIND: &str = "ferry-test.example/gpu";

/// The spec folder and site file (root's, under /var/lib), the driver file and hook.
struct FakeVendor {
    root: adversarial::TrustedDir,
}

impl FakeVendor {
    fn new(lab: &Lab) -> FakeVendor {
        let root = adversarial::TrustedDir::new("cdi");
        let dir = &root.dir;
        for sub in ["cdi", "lib", "hooks"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("lib/libfake.so.1"), "fake driver 1.0\n").unwrap();
        // A real library named by its version, with another SONAME (as the vendors'
        // libraries are): ferry links the SONAME to it in the container.
        fs::write(
            dir.join("lib/fakeml.c"),
            "int fake_ml(void) { return 1; }\n",
        )
        .unwrap();
        let built = std::process::Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libfakeml.so.1", "-o"])
            .arg(dir.join("lib/libfakeml.so.550.1"))
            .arg(dir.join("lib/fakeml.c"))
            .status()
            .unwrap();
        assert!(built.success(), "gcc -shared libfakeml");
        let hook = dir.join("hooks/leave-evidence");
        fs::write(
            &hook,
            "#!/bin/sh\n{ echo \"uid=$(id -u) $(cat)\"; } >> \"$EVIDENCE\"\n",
        )
        .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        let devices: Vec<String> = (0..2)
            .map(|n| {
                format!(
                    r#"{{"name": "{n}", "containerEdits": {{
                         "deviceNodes": [{{"path": "{FAKE_DIR}/gpu{n}"}}],
                         "env": ["FAKE_VISIBLE_DEVICES={n}"]}}}}"#
                )
            })
            .collect();
        let spec = format!(
            r#"{{"cdiVersion": "0.5.0", "kind": "{KIND}", "devices": [{}],
                "containerEdits": {{
                  "env": ["FAKE_DRIVER=1.0"],
                  "mounts": [{{"hostPath": "{lib}", "containerPath": "/usr/lib/fake/libfake.so.1"}},
                             {{"hostPath": "{ml}", "containerPath": "/usr/lib/fake/libfakeml.so.550.1"}}],
                  "hooks": [{{"hookName": "createContainer", "path": "{hook}",
                              "env": ["EVIDENCE={evidence}"]}}]}}}}"#,
            devices.join(","),
            lib = dir.join("lib/libfake.so.1").display(),
            ml = dir.join("lib/libfakeml.so.550.1").display(),
            hook = hook.display(),
            evidence = lab.path("hook-evidence").display(),
        );
        fs::write(dir.join("cdi/fake.json"), spec).unwrap();
        fs::write(
            dir.join("site.json"),
            format!(
                r#"{{"cdi_spec_dirs": ["{}"], "cdi_gres": {{"gpu": "{KIND}"}}}}"#,
                dir.join("cdi").display()
            ),
        )
        .unwrap();
        FakeVendor { root }
    }

    fn site(&self) -> PathBuf {
        self.root.dir.join("site.json")
    }
}

fn require_fake_gpus() {
    for n in 0..2 {
        let node = Path::new(FAKE_DIR).join(format!("gpu{n}"));
        if !node.exists() {
            test_support::missing_prerequisite(&format!(
                "{} (the test cluster's fake GPUs: run deploy/slurm-cluster)",
                node.display()
            ));
        }
    }
}

/// Exclusive: the site file applies to every step meanwhile.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn gres_steps_get_their_devices_and_each_rank_its_own() {
    let lab = Lab::exclusive("cdi");
    require_fake_gpus();
    let image = lab.image("cdi.sqfs", "CDI");
    let vendor = FakeVendor::new(&lab);
    let _site = PlugstackArgs::add(&format!("site_config={}", vendor.site().display()));
    let container = format!("--container={image}");
    let evidence = lab.path("hook-evidence");
    let hook_runs = || {
        fs::read_to_string(&evidence)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };

    // One GPU from Slurm: its device node, the driver file and the variables.
    let out = lab.srun(&[
        "--gres=gpu:1",
        &container,
        "sh",
        "-c",
        "g=$SLURM_STEP_GPUS; test -c /dev/ferry-fake/gpu$g && echo \"node $g $FAKE_VISIBLE_DEVICES $FAKE_DRIVER\"; cat /usr/lib/fake/libfake.so.1; readlink /usr/lib/fake/libfakeml.so.1",
    ]);
    out.expect_ok();
    let first = out.stdout.lines().next().unwrap_or_default().to_string();
    let parts: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert_eq!(
        parts[1], parts[2],
        "the variable names the allocated GPU: {out}"
    );
    assert_eq!(parts[3], "1.0", "{out}");
    // The library's SONAME link, made beside it.
    assert!(
        out.stdout
            .ends_with("fake driver 1.0\nlibfakeml.so.550.1\n"),
        "{out}"
    );
    // The hook ran once, as the user, with the OCI state.
    assert_eq!(hook_runs(), 1);
    let line = fs::read_to_string(&evidence).unwrap();
    assert!(
        line.starts_with(&format!("uid={} {{", test_user().uid)),
        "{line}"
    );
    assert!(line.contains(r#""status":"created""#), "{line}");

    // Two ranks, one GPU each: each rank's variables name its own GPU; one hook run.
    let out = lab.srun(&[
        "-n2",
        "--gpus-per-task=1",
        &container,
        "sh",
        "-c",
        "echo \"rank $SLURM_PROCID $SLURM_STEP_GPUS $FAKE_VISIBLE_DEVICES\"",
    ]);
    out.expect_ok();
    let mut ranks: Vec<(String, String)> = out
        .stdout
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 4, "{out}");
            assert_eq!(w[2], w[3], "a rank sees another's device variables: {out}");
            (w[1].to_string(), w[2].to_string())
        })
        .collect();
    ranks.sort();
    assert_eq!(ranks.len(), 2, "{out}");
    assert_ne!(ranks[0].1, ranks[1].1, "both ranks have one GPU: {out}");
    assert_eq!(hook_runs(), 2, "one hook run per step per node");

    // No GPU asked: no device; named with --container-devices: that one.
    let out = lab.srun(&[&container, "sh", "-c", "echo ${FAKE_DRIVER:-none}"]);
    assert_eq!(out.expect_ok().stdout, "none\n", "{out}");
    let out = lab.srun(&[
        &format!("--container-devices={KIND}=1"),
        &container,
        "sh",
        "-c",
        "echo $FAKE_VISIBLE_DEVICES",
    ]);
    assert_eq!(out.expect_ok().stdout, "1\n", "{out}");
    // An unknown device, and a malformed option: one line each, nothing runs.
    let out = lab.srun(&[
        &format!("--container-devices={KIND}=7"),
        &container,
        "echo",
        "SHOULD-NOT-RUN",
    ]);
    out.expect_one_ferry_error("an unknown device", &format!("{KIND}=7"));
    let out = lab.srun(&[
        "--container-devices=gpu7",
        &container,
        "echo",
        "SHOULD-NOT-RUN",
    ]);
    out.expect_one_ferry_error("a malformed device", "VENDOR/CLASS=NAME");
}

/// A failing hook fails the step with one line naming the spec and the hook.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_failing_hook_fails_the_step_with_one_line() {
    let lab = Lab::exclusive("cdi-hook");
    require_fake_gpus();
    let image = lab.image("cdi.sqfs", "CDI");
    let vendor = FakeVendor::new(&lab);
    let hook = vendor.root.dir.join("hooks/leave-evidence");
    fs::write(&hook, "#!/bin/sh\necho driver not loaded >&2\nexit 1\n").unwrap();
    let _site = PlugstackArgs::add(&format!("site_config={}", vendor.site().display()));
    let out = lab.srun(&[
        "--gres=gpu:1",
        &format!("--container={image}"),
        "echo",
        "SHOULD-NOT-RUN",
    ]);
    let seen = out.expect_one_ferry_error("a failing hook", "leave-evidence");
    assert!(
        seen.contains("fake.json") && seen.contains("driver not loaded"),
        "{seen}"
    );
}
