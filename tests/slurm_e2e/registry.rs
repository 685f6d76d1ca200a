//! Images from a registry, end to end: `sbatch`/`srun --container=docker://REF` as the
//! ordinary test user against a local registry, resolved at submission into the user's
//! store and carried by the job as a pinned file; `--container=sha256:HEX` from a site
//! store the admins filled with `ferry pull --store`; the errors a user reads.

use super::audit::SiteFile;
use super::*;
use test_support::registry::images::MARKER_FILE;
use test_support::registry::{LocalRegistry, ManifestFormat, RegistryKind};

/// The test user's store, where the site places it for these tests (on this one-node
/// cluster the home folder is what the compute node sees), removed afterwards.
struct UserStore {
    dir: PathBuf,
    _site: SiteFile,
}

impl UserStore {
    fn new(name: &str, extra_site_keys: &str) -> UserStore {
        let leaf = format!("ferry-e2e-store-{name}-{}", std::process::id());
        let dir = Path::new(TEST_HOME).join(&leaf);
        let _ = fs::remove_dir_all(&dir);
        let site = SiteFile::new(
            &format!("registry-{name}"),
            &format!(r#"{{"user_image_store": "{{home}}/{leaf}"{extra_site_keys}}}"#),
        );
        UserStore { dir, _site: site }
    }
}

impl Drop for UserStore {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn plain_registry(lab: &Lab) -> &'static LocalRegistry {
    let registry = LocalRegistry::shared(RegistryKind::Plain);
    lab.set_env("FERRY_INSECURE_REGISTRIES", &registry.host_port());
    registry
}

/// A job submitted with `--container=docker://REF:TAG` runs, in its batch script and in
/// every task of its steps, the image the tag named at submission, even after the tag
/// moves to another image mid-job; the job's environment holds the stored file pinned
/// by its SHA-256, and every provenance record names the reference and the manifest.
#[test]
#[ignore = "needs root, the Slurm cluster, docker-registry and podman: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_job_runs_the_image_its_tag_named_at_submission() {
    let lab = Lab::exclusive("registry-tag");
    let registry = plain_registry(&lab);
    let store = UserStore::new("tag", "");
    let first = registry.push_two_layer("e2e/app:v1", "first-image", ManifestFormat::Oci);
    let second = registry.push_two_layer("e2e/app:next", "second-image", ManifestFormat::Docker);
    let flag = lab.path("tag-moved");
    let body = format!(
        "cat {MARKER_FILE}\n\
         echo container=$SLURM_CONTAINER\n\
         srun -n 2 cat {MARKER_FILE}\n\
         while [ ! -e {flag} ]; do sleep 0.2; done\n\
         srun -n 1 cat {MARKER_FILE}",
        flag = flag.display()
    );
    let (id, output) = lab.submit(
        &[
            "-n",
            "2",
            &format!("--container=docker://{}", first.reference),
            "--container-provenance=prov.jsonl",
        ],
        &body,
    );
    // The job holds its pinned file: move the tag to the other image, then let it go on.
    registry.retag("e2e/app", "next", "v1");
    fs::write(&flag, "").unwrap();
    lab.give(&flag);
    assert!(
        job_gone(id, Duration::from_secs(120)),
        "job {id} did not end"
    );
    let log = fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(
        log.lines().filter(|l| *l == "first-image").count(),
        4,
        "batch script, two tasks, and a step after the tag moved: {log}"
    );
    assert!(!log.contains("second-image"), "{log}");
    let pinned = value_of(&log, "container=").unwrap_or_default().to_string();
    assert!(
        pinned.starts_with(&store.dir.display().to_string()) && pinned.contains("@sha256:"),
        "the job carries the stored file, pinned: {log}"
    );
    let records = provenance_lines(&lab.path("prov.jsonl"));
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert_eq!(r["reference"], first.reference.as_str(), "{r:#}");
        assert_eq!(r["manifest_digest"], first.digest.as_str(), "{r:#}");
        assert_eq!(r["pinned"], true, "{r:#}");
        assert_eq!(
            format!(
                "{}@{}",
                r["image"].as_str().unwrap(),
                r["digest"].as_str().unwrap()
            ),
            pinned,
            "{r:#}"
        );
    }
    // A second submission of the same tag (now the other image) pulls that one; the
    // first stays stored under its own manifest.
    let out = lab.srun(&[
        &format!("--container=docker://{}", first.reference),
        "cat",
        MARKER_FILE,
    ]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "second-image", "{out}");
    let listing = lab.run(&[
        "ferry",
        "images",
        "--json",
        "--store",
        &store.dir.display().to_string(),
    ]);
    listing.expect_ok();
    let entries: serde_json::Value = serde_json::from_str(&listing.stdout).unwrap();
    let manifests: BTreeSet<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["manifest_digest"].as_str())
        .collect();
    assert_eq!(
        manifests,
        BTreeSet::from([first.digest.as_str(), second.digest.as_str()]),
        "{entries:#}"
    );
}

/// `--container=sha256:HEX` runs the image with that SquashFS digest from a site store
/// the admins filled with `ferry pull --store DIR`, verified like any pinned image;
/// a digest no store holds is refused at submission with one line.
#[test]
#[ignore = "needs root, the Slurm cluster, docker-registry and podman: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_bare_digest_runs_the_image_of_a_site_store() {
    let lab = Lab::exclusive("registry-digest");
    let registry = plain_registry(&lab);
    let site_store = adversarial::TrustedDir::new("site-store");
    let image = registry.push_two_layer("e2e/site:1", "site-image", ManifestFormat::Oci);
    let pull = Command::new(find_tool("ferry").unwrap())
        .args([
            "pull",
            "--insecure-registry",
            &registry.host_port(),
            "--store",
        ])
        .arg(&site_store.dir)
        .arg(format!("docker://{}", image.reference))
        .output()
        .unwrap();
    assert!(pull.status.success(), "{pull:?}");
    let stored = String::from_utf8_lossy(&pull.stdout).trim().to_string();
    let digest = sha256sum(Path::new(&stored));
    assert!(digest.starts_with("sha256:"), "{digest}");
    let _store = UserStore::new(
        "digest",
        &format!(r#", "image_stores": ["{}"]"#, site_store.dir.display()),
    );
    let out = lab.srun(&[&format!("--container={digest}"), "cat", MARKER_FILE]);
    out.expect_ok();
    assert_eq!(out.stdout.trim(), "site-image", "{out}");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let out = lab.srun(&[&format!("--container={unknown}"), "true"]);
    assert_one_ferry_error(
        "a digest no store holds",
        out.code,
        &out.stderr,
        "no stored image has this digest",
    );
}

/// What a user reads when a reference cannot be resolved: a missing tag names the
/// reference; a store on a local file system the site did not place is refused at
/// submission, saying why and what to do. Nothing runs.
#[test]
#[ignore = "needs root, the Slurm cluster, docker-registry and podman: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn registry_failures_stop_the_submission_with_one_line() {
    let lab = Lab::exclusive("registry-errors");
    let registry = plain_registry(&lab);
    registry.push_two_layer("e2e/err:1", "err-image", ManifestFormat::Oci);
    {
        let _store = UserStore::new("errors", "");
        let missing = registry.reference("e2e/err:no-such-tag");
        let out = lab.srun(&[
            &format!("--container=docker://{missing}"),
            "echo",
            "SHOULD-NOT-RUN",
        ]);
        assert_one_ferry_error(
            "a missing tag",
            out.code,
            &out.stderr,
            "e2e/err:no-such-tag",
        );
        assert!(!out.stdout.contains("SHOULD-NOT-RUN"), "{out}");
    }
    // No user_image_store: the default store in the home folder, which lies on a local
    // file system here.
    let _site = SiteFile::new("registry-local", "{}");
    let out = lab.srun(&[
        &format!("--container=docker://{}", registry.reference("e2e/err:1")),
        "echo",
        "SHOULD-NOT-RUN",
    ]);
    assert_one_ferry_error(
        "a store the compute nodes may not see",
        out.code,
        &out.stderr,
        "on a local file system",
    );
    let _ = fs::remove_dir_all(Path::new(TEST_HOME).join(".cache/ferry"));
}

/// Another user's pulled image stays theirs: with the victim's image in the victim's
/// own store (in their 0700 home), the test user can neither find it by its digest nor
/// run the stored file pinned by its path (the step opens it with the user's rights).
#[test]
#[ignore = "needs root, the Slurm cluster, docker-registry and podman: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn another_users_store_is_out_of_reach() {
    use super::audit::{as_victim, VICTIM_HOME};
    let lab = Lab::new("registry-victim");
    let registry = plain_registry(&lab);
    let secret = registry.push_two_layer("e2e/victim:1", "victim-image", ManifestFormat::Oci);
    let store = Path::new(VICTIM_HOME).join(format!("ferry-e2e-store-{}", std::process::id()));
    let store_arg = store.display().to_string();
    let pull = as_victim(
        Path::new(VICTIM_HOME),
        &[
            "ferry",
            "pull",
            "--insecure-registry",
            &registry.host_port(),
            "--store",
            &store_arg,
            &format!("docker://{}", secret.reference),
        ],
        120,
    );
    pull.expect_ok();
    let stored = pull.stdout.trim().to_string();
    let digest = sha256sum(Path::new(&stored));
    let by_digest = lab.srun(&[&format!("--container={digest}"), "cat", MARKER_FILE]);
    let pinned = format!("{stored}@{digest}");
    let by_path = lab.srun(&[&format!("--container={pinned}"), "cat", MARKER_FILE]);
    let _ = fs::remove_dir_all(&store);
    assert_one_ferry_error(
        "the victim's image by digest",
        by_digest.code,
        &by_digest.stderr,
        "no stored image has this digest",
    );
    assert_one_ferry_error(
        "the victim's stored file by path",
        by_path.code,
        &by_path.stderr,
        "cannot read it",
    );
    for out in [&by_digest, &by_path] {
        assert!(!out.stdout.contains("victim-image"), "{out}");
    }
}
