//! The node image cache under `ferry run`, on nodes set up as sites set theirs up: a
//! root mount with shared propagation (systemd's default), and a cache folder the
//! runtime must refuse. Each test runs in a mount namespace of its own with a fresh
//! tmpfs at /run/ferry, so the host's cache is never touched.
//!
//!     sudo tests/prepare-host
//!     cargo test -p ferry-runtime --test image_cache -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::process::Command;

/// Runs `script` (sh) in a private mount namespace whose /run/ferry is an empty tmpfs;
/// `$FERRY` is the ferry binary, `$IMAGE` the fixture's image, `$SITE` an empty site
/// file (the documented defaults: images kept for 10 minutes).
fn in_own_namespace(script: &str) -> Outcome {
    in_namespace(Command::new("unshare"), script)
}

/// As `in_own_namespace`, with the namespace made on CPU `cpu`.
fn in_own_namespace_on_cpu(cpu: usize, script: &str) -> Outcome {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu.to_string(), "unshare"]);
    in_namespace(cmd, script)
}

/// Ends what a test's runs kept in its namespace, whatever happened: the janitor (left
/// running, it would sweep the cache's cgroup, which is the host's too, against this
/// namespace's records) and the kept mounts (a kept squashfuse lives in this namespace
/// and would keep it, and so its own mount, alive). Not `ferry cache drop --all`: that
/// sweeps the host's cgroup too.
const END_JANITOR: &str = r#"end_janitor() {
    pid=$(cut -d' ' -f1 /run/ferry/image-cache/.janitor 2>/dev/null || true)
    [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
    for ns in /run/ferry/image-cache/*/ns; do
        [ -e "$ns" ] && umount -l "$ns" 2>/dev/null || true
    done
}
"#;

fn in_namespace(mut cmd: Command, script: &str) -> Outcome {
    fs::create_dir_all("/run/ferry").unwrap();
    let site = TempDir::new("cache-site");
    fs::write(site.path().join("site.json"), "{}").unwrap();
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "{END_JANITOR}set -e; mount -t tmpfs -o mode=0755 ferry-test /run/ferry; trap end_janitor EXIT; {script}"
        ))
        .env("FERRY", ferry_bin())
        .env("IMAGE", &fixture().image)
        .env("SITE", site.path().join("site.json"));
    run_with_timeout(cmd, RUN_TIMEOUT)
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_node_whose_root_mount_is_shared_keeps_images_warm() {
    require_root_and_tools(&["unshare"]);
    let _g = shared();
    // Under systemd / is shared, and each container's namespace receives from it: the
    // kernel refuses to bind a namespace's file below such a mount (EINVAL) unless the
    // cache folder is a private mount of its own.
    let out = in_own_namespace(
        r#"mount --make-rshared /
        "$FERRY" run --site-config "$SITE" "$IMAGE" -- cat /data/only-in-image
        "$FERRY" run --site-config "$SITE" "$IMAGE" -- cat /data/only-in-image
        "$FERRY" cache --json >/run/ferry/listing
        end_janitor
        grep ' /run/ferry/image-cache ' /proc/self/mountinfo | tail -n 1
        cat /run/ferry/listing"#,
    );
    out.expect_success("ferry run twice on a node whose / is shared");
    assert_eq!(out.stderr, "", "no warning expected");
    let (runs, rest) = out.stdout.split_at(2 * ONLY_IN_IMAGE.len());
    assert_eq!(runs, ONLY_IN_IMAGE.repeat(2));
    // The topmost mount there (the host's own cache folder may lie beneath the tmpfs):
    // no `shared:N` or `master:N` among its optional fields.
    let (mount, listing) = rest.split_once('\n').unwrap();
    let fields = mount.split(" - ").next().unwrap();
    assert!(
        mount.contains("ferry-test") && !fields.contains("shared:") && !fields.contains("master:"),
        "the cache folder is a private mount of its own: {mount}"
    );
    let entries: Vec<serde_json::Value> = serde_json::from_str(listing).unwrap();
    assert_eq!(entries.len(), 1, "one kept mount: {listing}");
    assert_eq!(
        entries[0]["image"].as_str(),
        Some(fixture().image.to_str().unwrap()),
        "{listing}"
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_cache_folder_open_to_others_is_not_used_and_the_run_goes_on() {
    require_root_and_tools(&["unshare"]);
    let _g = shared();
    let out = in_own_namespace(
        r#"mkdir -m 0755 /run/ferry/image-cache
        "$FERRY" run --site-config "$SITE" "$IMAGE" -- cat /data/only-in-image
        ls -A /run/ferry/image-cache | wc -l"#,
    );
    out.expect_success("ferry run with a cache folder others can read");
    assert_eq!(out.stdout, format!("{ONLY_IN_IMAGE}0\n"), "nothing kept");
    let image = fixture().image.display().to_string();
    assert_eq!(
        out.stderr,
        format!(
            "ferry: warning: image {image}: not kept warm on this node (opening \
             /run/ferry/image-cache: /run/ferry/image-cache must be root's and closed to \
             others); each step mounts it afresh until this is fixed (ferry doctor checks \
             the image cache)\n"
        )
    );
}

#[test]
#[ignore = "needs root and a host prepared by tests/prepare-host: run tests/run, or as root cargo test -- --include-ignored"]
fn a_node_namespace_made_on_another_cpu_keeps_images_warm() {
    require_root_and_tools(&["unshare", "taskset"]);
    let _g = shared();
    // Since Linux 6.18 each CPU numbers namespaces from its own batch of ids, and the
    // kernel binds a namespace's file only in a namespace with a smaller id. When the
    // node's namespace (here: this test's) was numbered on one CPU and the step runs on
    // another, the step's new namespace may number below it: both ways round must keep.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("note: one CPU: namespace ids come in order, nothing to work around");
    }
    for (node_cpu, step_cpu) in [(0, 1 % cpus), (1 % cpus, 0)] {
        let out = in_own_namespace_on_cpu(
            node_cpu,
            &format!(
                r#"taskset -c {step_cpu} "$FERRY" run --site-config "$SITE" "$IMAGE" -- cat /data/only-in-image
                "$FERRY" cache --json >/run/ferry/listing
                end_janitor
                cat /run/ferry/listing"#
            ),
        );
        let case = format!("namespace made on CPU {node_cpu}, step on CPU {step_cpu}");
        out.expect_success(&case);
        assert_eq!(out.stderr, "", "{case}: no warning expected");
        let listing = out.stdout.strip_prefix(ONLY_IN_IMAGE).unwrap();
        let entries: Vec<serde_json::Value> = serde_json::from_str(listing).unwrap();
        assert_eq!(entries.len(), 1, "{case}: one kept mount: {listing}");
    }
}
