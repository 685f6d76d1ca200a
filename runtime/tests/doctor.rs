//! `ferry doctor --root DIR` on nodes broken on purpose: each is a small root folder
//! laid out like a node's files, so the shared test cluster is never touched. The
//! healthy real node is checked after the package install by tests/package.rs.
//! Root is needed: doctor asks the node's own Slurm for its version through chroot,
//! and here that Slurm is a shell script run by the static busybox.

mod common;

use common::{ferry, require_root_and_tools, write_mode, TempDir};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

const PLUGIN_DIR: &str = "usr/lib/x86_64-linux-gnu/slurm-wlm";

/// A node root with everything doctor wants: kernel support, the plugstack include
/// and an enabled ferry line, a plugin stating `plugin_slurm`, the launcher, a listening
/// munge socket, libpmix and Slurm's mpi/pmix plugin, and a Slurm that reports
/// `node_slurm` (slurmd -V).
struct FakeNode {
    dir: TempDir,
    _munge: UnixListener,
}

impl FakeNode {
    fn new(tag: &str, plugin_slurm: &str, node_slurm: &str) -> FakeNode {
        let dir = TempDir::new(tag);
        let at = |p: &str| dir.join(p);
        for d in [
            "proc",
            "dev",
            "bin",
            "usr/sbin",
            "run/munge",
            "etc/slurm/plugstack.conf.d",
            "usr/libexec/ferry",
            "usr/bin",
            PLUGIN_DIR,
        ] {
            fs::create_dir_all(at(d)).unwrap();
        }
        write_mode(
            &at("proc/filesystems"),
            "nodev\tsysfs\n\tsquashfs\nnodev\toverlay\nnodev\tfuse\n",
            0o644,
        );
        write_mode(&at("dev/loop-control"), "", 0o600);
        write_mode(&at("dev/fuse"), "", 0o666);
        write_mode(
            &at("etc/slurm/plugstack.conf"),
            "include /etc/slurm/plugstack.conf.d/*.conf\n",
            0o644,
        );
        write_mode(
            &at("etc/slurm/plugstack.conf.d/ferry.conf"),
            &format!("# ferry\nrequired /{PLUGIN_DIR}/ferry.so\n"),
            0o644,
        );
        write_mode(
            &at(&format!("{PLUGIN_DIR}/ferry.so")),
            &format!("\x7fELF...ferry 0.1.0 plugin built for Slurm {plugin_slurm}\0..."),
            0o755,
        );
        write_mode(&at("usr/libexec/ferry/ferry-host-exec"), "", 0o755);
        write_mode(&at("usr/bin/squashfuse_ll"), "", 0o755);
        write_mode(&at("usr/lib/x86_64-linux-gnu/libpmix.so"), "", 0o644);
        write_mode(&at(&format!("{PLUGIN_DIR}/mpi_pmix.so")), "", 0o755);
        fs::copy(common::BUSYBOX, at("bin/busybox")).unwrap();
        symlink("busybox", at("bin/sh")).unwrap();
        write_mode(
            &at("usr/sbin/slurmd"),
            &format!("#!/bin/sh\necho slurm {node_slurm}\n"),
            0o755,
        );
        let munge = UnixListener::bind(at("run/munge/munge.socket.2")).unwrap();
        FakeNode { dir, _munge: munge }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.dir.join(p)
    }

    fn doctor(&self) -> (Option<i32>, String) {
        let out = ferry(
            Path::new("/"),
            &[
                "doctor".as_ref(),
                "--root".as_ref(),
                self.dir.path().as_os_str(),
            ],
        );
        (out.code, out.stdout)
    }
}

fn fail_lines(report: &str) -> Vec<&str> {
    report.lines().filter(|l| l.starts_with("FAIL")).collect()
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_complete_node_is_ready() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-ok", "24.11", "24.11.5");
    let (code, report) = node.doctor();
    assert!(fail_lines(&report).is_empty(), "{report}");
    assert!(
        report.contains("ok    slurm: installed 24.11.5, plugin built for Slurm 24.11"),
        "{report}"
    );
    assert!(report.contains("node is ready"), "{report}");
    assert_eq!(code, Some(0), "{report}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_process_tracker_is_reported() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-proctrack", "24.11", "24.11.5");
    let conf = node.path("etc/slurm/slurm.conf");
    write_mode(
        &conf,
        "ClusterName=x\nProctrackType=proctrack/linuxproc # old\n",
        0o644,
    );
    let (code, report) = node.doctor();
    assert!(
        report.contains("warn  proctrack: proctrack/linuxproc: Slurm cannot kill")
            && report.contains("fix: set ProctrackType=proctrack/cgroup"),
        "{report}"
    );
    assert_eq!(code, Some(0), "a warning does not fail the node: {report}");
    write_mode(&conf, "ProctrackType = proctrack/cgroup\n", 0o644);
    let (_, report) = node.doctor();
    assert!(
        report.contains("ok    proctrack: proctrack/cgroup"),
        "{report}"
    );
}

/// Slurm 26.05 (and job_container/tmpfs before it) can give each job a private /tmp and
/// /dev/shm; ferry's containers bind the node's, which doctor says with what to do.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_private_tmp_per_job_is_reported() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-job-tmp", "26.05", "26.05.5");
    let conf = node.path("etc/slurm/slurm.conf");
    write_mode(
        &conf,
        "ClusterName=x\nProctrackType=proctrack/cgroup\n",
        0o644,
    );
    let (_, report) = node.doctor();
    assert!(!report.contains("job tmp:"), "{report}");
    for (setting, shown) in [
        (
            "NamespaceType = namespace/tmpfs\nPrologFlags=Contain\n",
            "ok    job tmp: NamespaceType=namespace/tmpfs: containers are made in the job's namespace, so their /tmp and /dev/shm",
        ),
        (
            "namespacetype=namespace/linux # 25.11 on\n",
            "warn  job tmp: NamespaceType=namespace/linux gives each job a private /tmp",
        ),
        (
            "JobContainerType=job_container/tmpfs\n",
            "ok    job tmp: JobContainerType=job_container/tmpfs: containers are made in the job's namespace, so their /tmp and /dev/shm",
        ),
    ] {
        write_mode(&conf, &format!("ClusterName=x\n{setting}"), 0o644);
        let (code, report) = node.doctor();
        let line = report
            .lines()
            .find(|l| l.contains("job tmp:"))
            .unwrap_or_else(|| panic!("no job tmp line for {setting:?}:\n{report}"));
        assert!(line.starts_with(shown), "{setting:?}: {line}");
        // Only namespace/linux, whose namespace ferry does not enter, still warns.
        if line.starts_with("warn") {
            assert!(
                line.contains("ferry's containers bind the node's")
                    && line.contains("fix: use namespace/tmpfs"),
                "{line}"
            );
        }
        assert_eq!(code, Some(0), "a warning does not fail the node: {report}");
    }
}

/// A Slurm built without PMIx (Debian's 26.05) has no mpi/pmix plugin, whatever the
/// node's libpmix: doctor says so instead of reporting PMIx as ready.
#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_slurm_without_its_pmix_plugin_is_reported() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-no-pmix", "26.05", "26.05.5");
    let (_, report) = node.doctor();
    assert!(
        report.contains("ok    pmix: /usr/lib/x86_64-linux-gnu/libpmix.so"),
        "{report}"
    );
    fs::remove_file(node.path(&format!("{PLUGIN_DIR}/mpi_pmix.so"))).unwrap();
    let (code, report) = node.doctor();
    assert!(
        report.contains(&format!(
            "warn  pmix: Slurm has no mpi/pmix plugin (no mpi_pmix*.so in /{PLUGIN_DIR}): srun --mpi=pmix cannot run"
        )),
        "{report}"
    );
    // What Open MPI images can do instead (tests/mpi_e2e.rs runs it on 26.05).
    assert!(
        report.contains("Open MPI images (PMIx only) need their own mpirun inside a batch job"),
        "{report}"
    );
    assert!(!report.contains("ok    pmix"), "{report}");
    assert_eq!(code, Some(0), "a warning does not fail the node: {report}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_plugin_built_for_another_slurm_is_reported_with_the_package_to_install() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-version", "22.05", "24.11.5");
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 1, "{report}");
    assert!(
        fails[0].contains("installed 24.11.5, but the plugin is built for Slurm 22.05")
            && fails[0]
                .contains("fix: install ferry built for Slurm 24.11 (package ferry-slurm24.11"),
        "{report}"
    );
    assert!(report.contains("NOT ready: 1 problem(s)"), "{report}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn missing_kernel_support_is_reported_with_the_module_to_load() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-kernel", "24.11", "24.11.5");
    write_mode(&node.path("proc/filesystems"), "\tsquashfs\n", 0o644);
    fs::remove_file(node.path("dev/loop-control")).unwrap();
    fs::remove_file(node.path("dev/fuse")).unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 3, "{report}");
    assert!(fails[0].contains("no overlay file system") && fails[0].contains("modprobe overlay"));
    assert!(fails[1].contains("/dev/loop-control") && fails[1].contains("modprobe loop"));
    // FUSE: the kernel check only warns; the site policy (default: users' images
    // through squashfuse) makes it a failure.
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("warn  kernel: no FUSE")),
        "{report}"
    );
    assert!(
        fails[2].contains("fuse: no /dev/fuse") && fails[2].contains("modprobe fuse"),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_disabled_plugstack_line_an_oci_conf_and_a_dead_munge_fail() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-conf", "24.11", "24.11.5");
    write_mode(
        &node.path("etc/slurm/plugstack.conf.d/ferry.conf"),
        &format!("# shipped disabled\n#required /{PLUGIN_DIR}/ferry.so\n"),
        0o644,
    );
    write_mode(&node.path("etc/slurm/oci.conf"), "RunTimeRun=x\n", 0o644);
    fs::remove_file(node.path("run/munge/munge.socket.2")).unwrap();
    fs::remove_file(node.path("usr/lib/x86_64-linux-gnu/libpmix.so")).unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 3, "{report}");
    assert!(
        fails[0].contains("no enabled line loads ferry.so")
            && fails[0]
                .contains("uncomment the ferry.so line of /etc/slurm/plugstack.conf.d/ferry.conf"),
        "{report}"
    );
    assert!(
        fails[1].contains("oci.conf exists") && fails[1].contains("remove /etc/slurm/oci.conf")
    );
    assert!(fails[2].contains("munge") && fails[2].contains("start munged"));
    assert!(report.contains("warn  pmix: no libpmix.so"), "{report}");
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_plugin_loaded_twice_or_missing_its_file_fails() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-twice", "24.11", "24.11.5");
    write_mode(
        &node.path("etc/slurm/plugstack.conf"),
        "include /etc/slurm/plugstack.conf.d/*.conf\noptional ferry.so launcher=/opt/none\n",
        0o644,
    );
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("FAIL  plugstack: ferry.so is loaded 2 times"),
        "{report}"
    );

    // One line again, but its plugin file is gone and its launcher is elsewhere.
    write_mode(
        &node.path("etc/slurm/plugstack.conf.d/ferry.conf"),
        &format!("required /{PLUGIN_DIR}/ferry.so launcher=/opt/none\n"),
        0o644,
    );
    write_mode(
        &node.path("etc/slurm/plugstack.conf"),
        "include plugstack.conf.d/*.conf\n",
        0o644,
    );
    fs::remove_file(node.path(&format!("{PLUGIN_DIR}/ferry.so"))).unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 2, "{report}");
    assert!(fails[0].starts_with(&format!(
        "FAIL  plugin: /{PLUGIN_DIR}/ferry.so: No such file"
    )));
    assert!(fails[1].starts_with("FAIL  launcher: /opt/none: No such file"));
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_node_without_plugstack_conf_fails_with_the_line_to_write() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-noconf", "24.11", "24.11.5");
    fs::remove_file(node.path("etc/slurm/plugstack.conf")).unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("FAIL  plugstack: cannot read /etc/slurm/plugstack.conf")
            && report.contains("include /etc/slurm/plugstack.conf.d/*.conf"),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn the_site_file_and_what_its_policy_needs_are_checked() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-site", "24.11", "24.11.5");
    // No site file: the defaults need squashfuse.
    fs::remove_file(node.path("usr/bin/squashfuse_ll")).unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("ok    site: no /etc/ferry/site.json"),
        "{report}"
    );
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 1, "{report}");
    assert!(
        fails[0].contains("fuse: /usr/bin/squashfuse_ll is missing")
            && fails[0].contains("apt install squashfuse"),
        "{report}"
    );

    // A named site file with deny (no squashfuse needed), a trusted folder others can
    // write and a required site mount that is missing.
    fs::create_dir_all(node.path("etc/ferry")).unwrap();
    fs::create_dir_all(node.path("srv/images")).unwrap();
    fs::set_permissions(node.path("srv/images"), fs::Permissions::from_mode(0o777)).unwrap();
    write_mode(
        &node.path("etc/ferry/policy.json"),
        r#"{"trusted_image_dirs": ["/srv/images"], "untrusted_images": "deny",
            "site_mounts": [{"source": "/scratch"}]}"#,
        0o644,
    );
    write_mode(
        &node.path("etc/slurm/plugstack.conf.d/ferry.conf"),
        &format!("required /{PLUGIN_DIR}/ferry.so site_config=/etc/ferry/policy.json\n"),
        0o644,
    );
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("ok    site: /etc/ferry/policy.json: untrusted images: deny"),
        "{report}"
    );
    assert!(
        report.contains(
            "warn  site: trusted folder /srv/images is not root's or is writable by others"
        ),
        "{report}"
    );
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 1, "{report}");
    assert!(
        fails[0].contains("site mount /scratch is missing"),
        "{report}"
    );

    // A site file a user could edit is not believed: every step would fail.
    fs::set_permissions(
        node.path("etc/ferry/policy.json"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (code, report) = node.doctor();
    assert_eq!(code, Some(1), "{report}");
    let fails = fail_lines(&report);
    assert_eq!(fails.len(), 1, "{report}");
    assert!(
        fails[0].contains("must be owned by root") && fails[0].contains("ferry check-config"),
        "{report}"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn cdi_devices_and_spec_problems_are_listed() {
    require_root_and_tools(&[]);
    let node = FakeNode::new("doctor-cdi", "24.11", "24.11.5");
    let (_, report) = node.doctor();
    assert!(
        report.contains("ok    cdi: no CDI specs in /etc/cdi, /var/run/cdi"),
        "{report}"
    );
    fs::create_dir_all(node.path("etc/cdi")).unwrap();
    write_mode(
        &node.path("etc/cdi/vendor.yaml"),
        "cdiVersion: 0.6.0\nkind: example.com/gpu\ndevices:\n  - name: '0'\n  - name: '1'\n",
        0o644,
    );
    write_mode(
        &node.path("etc/cdi/open.json"),
        r#"{"cdiVersion": "0.6.0", "kind": "example.com/x", "devices": [{"name": "a"}]}"#,
        0o666,
    );
    write_mode(&node.path("etc/cdi/broken.yaml"), "cdiVersion: [", 0o644);
    // The site maps GRES gpu to a kind no spec offers.
    fs::create_dir_all(node.path("etc/ferry")).unwrap();
    write_mode(
        &node.path("etc/ferry/site.json"),
        r#"{"cdi_gres": {"gpu": "nvidia.com/gpu"}}"#,
        0o644,
    );
    let (_, report) = node.doctor();
    assert!(
        report.contains("ok    cdi: /etc/cdi/vendor.yaml: example.com/gpu devices 0, 1"),
        "{report}"
    );
    let warns: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("warn  cdi:"))
        .collect();
    assert_eq!(warns.len(), 3, "{report}");
    assert!(
        warns
            .iter()
            .any(|l| l.contains("open.json: must be owned by root and writable by root only")),
        "{report}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains("broken.yaml: cannot be parsed as YAML")),
        "{report}"
    );
    assert!(
        warns.iter().any(|l| l.contains(
            "cdi_gres maps GRES gpu to nvidia.com/gpu, but no spec here offers that kind"
        )),
        "{report}"
    );
    // Warnings only: the node still runs ferry jobs.
    assert!(
        fail_lines(&report).iter().all(|l| !l.contains("cdi")),
        "{report}"
    );
}
