//! Named containers (`--container-name`), end to end as the user: the batch script's
//! container joined by its steps (writes included), one container per node on both
//! nodes of the pair partition, a name reused with another image refused, and nothing
//! left on the node after the job, also when it is cancelled mid-step.

use super::*;

const NAMED_DIR: &str = "/run/ferry/named";

/// The named-container folders of `job` on this host (one per node that made one).
fn job_folders(job: u64) -> Vec<String> {
    fs::read_dir(NAMED_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(&format!(".{job}")))
                .collect()
        })
        .unwrap_or_default()
}

/// Live `ferry named-warden` processes keeping a container of `job`.
fn wardens_of(job: u64) -> usize {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.get(1) == Some(&&b"named-warden"[..])
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"--job" && w[1] == job.to_string().as_bytes())
            })
        })
        .count()
}

/// Waits until job `job` left nothing on the node: no warden, no folder, no loop device
/// over `image` and no squashfuse of the test user.
#[track_caller]
fn assert_job_left_nothing(job: u64, image: &Path) {
    let clean = || {
        wardens_of(job) == 0
            && job_folders(job).is_empty()
            && loop_devices_for(image).is_empty()
            && live_fuse_servers_of_test_user().is_empty()
    };
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(200), clean),
        "job {job} left: {} wardens, folders {:?}, loop devices {:?}, servers {:?}",
        wardens_of(job),
        job_folders(job),
        loop_devices_for(image),
        live_fuse_servers_of_test_user()
    );
}

/// Loop devices whose backing file is `image`.
fn loop_devices_for(image: &Path) -> Vec<String> {
    root_output("losetup", &["-a"])
        .lines()
        .filter(|l| l.contains(&image.display().to_string()))
        .map(str::to_string)
        .collect()
}

fn named_uses(provenance: &Path) -> Vec<(String, String)> {
    let mut uses: Vec<(String, String)> = provenance_lines(provenance)
        .iter()
        .map(|r| {
            (
                r["step"].as_str().unwrap_or_default().to_string(),
                r["container_name_use"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string(),
            )
        })
        .collect();
    uses.sort();
    uses
}

/// The batch script's named container is joined by its steps: what the script wrote
/// into the writable root (its home, which is not bound: the container's own), each
/// step reads, and what a step writes, the next reads; only the batch step mounts the
/// image (the provenance of the steps says they joined).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn the_batch_scripts_named_container_is_joined_by_its_steps() {
    let lab = Lab::exclusive("named-batch");
    let _site = audit::SiteFile::new("named-batch", r#"{"image_cache_ttl": "0"}"#);
    let image = lab.image("env.sqfs", "ENV");
    let job = lab.sbatch(
        &[
            &format!("--container={image}"),
            "--container-name=env",
            "--container-writable",
            "--no-container-mount-home",
            "--container-provenance=named.jsonl",
        ],
        r#"mkdir -p ~/.local/lib && echo from-batch > ~/.local/lib/written-by-batch
srun -n1 sh -c 'echo "step0 reads: $(cat ~/.local/lib/written-by-batch)"; echo from-step0 > ~/written-by-step0'
srun -n1 sh -c 'echo "step1 reads: $(cat ~/written-by-step0)"'"#,
    );
    job.expect_ok();
    assert_eq!(
        value_of(&job.log, "step0 reads: "),
        Some("from-batch"),
        "{job}"
    );
    assert_eq!(
        value_of(&job.log, "step1 reads: "),
        Some("from-step0"),
        "{job}"
    );
    let expected = [("0", "joined"), ("1", "joined"), ("batch", "created")]
        .map(|(s, u)| (s.to_string(), u.to_string()));
    assert_eq!(named_uses(&lab.path("named.jsonl")), expected);
    assert_job_left_nothing(job.id.unwrap(), &lab.path(&image));
    // The image file itself was never written.
    assert!(!String::from_utf8_lossy(&fs::read(lab.path(&image)).unwrap()).contains("from-batch"));
}

/// On each node the job's first step with the name makes that node's container: the
/// pair partition's two nodes each keep their own, and a later step on both nodes sees
/// on each node what the earlier one wrote there.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn each_node_keeps_its_own_named_container() {
    let lab = Lab::exclusive("named-pair");
    let _site = audit::SiteFile::new("named-pair", r#"{"image_cache_ttl": "0"}"#);
    let image = lab.image("pair.sqfs", "PAIR");
    let job = lab.sbatch(
        &[
            "--partition=pair",
            "--nodes=2",
            "--ntasks=2",
            "--ntasks-per-node=1",
            &format!("--container={image}"),
            "--container-name=pairenv",
            "--container-writable",
            "--no-container-mount-home",
        ],
        r#"srun sh -c 'echo "$SLURMD_NODENAME" > ~/node-wrote'
srun sh -c 'echo "on $SLURMD_NODENAME: $(cat ~/node-wrote)"'"#,
    );
    job.expect_ok();
    let host = node_hostname();
    for node in [host.clone(), format!("{host}-2")] {
        assert_eq!(
            value_of(&job.log, &format!("on {node}: ")),
            Some(node.as_str()),
            "{job}"
        );
    }
    assert_job_left_nothing(job.id.unwrap(), &lab.path(&image));
}

/// A name made from one image, then asked for with another: the step fails with one
/// line that names both images; the job's container stays usable.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_name_reused_with_another_image_is_refused() {
    let lab = Lab::exclusive("named-other");
    let _site = audit::SiteFile::new("named-other", r#"{"image_cache_ttl": "0"}"#);
    let first = lab.image("first.sqfs", "FIRST");
    let second = lab.image("second.sqfs", "SECOND");
    let job = lab.sbatch(
        &[&format!("--container={first}"), "--container-name=env"],
        &format!(
            "srun -n1 --container={second} cat {ONLY_FILE} && echo second-ran\nsrun -n1 sh -c 'echo \"again: $(cat {ONLY_FILE})\"'"
        ),
    );
    let lines = ferry_lines(&job.log);
    assert_eq!(lines.len(), 1, "one ferry line: {job}");
    assert!(
        lines[0].contains(
            "--container-name=env: this job's container of that name was made from image"
        ) && lines[0].contains("first.sqfs")
            && lines[0].contains("second.sqfs"),
        "{job}"
    );
    assert!(!job.log.contains("second-ran"), "{job}");
    assert_eq!(
        value_of(&job.log, "again: "),
        Some("only-in-image FIRST"),
        "{job}"
    );
    assert_job_left_nothing(job.id.unwrap(), &lab.path(&first));
}

/// A job cancelled while a step runs in its named container: once the job is gone,
/// so are the container, its warden, its squashfuse and every mount.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_cancelled_job_leaves_no_named_container() {
    let lab = Lab::exclusive("named-cancel");
    let _site = audit::SiteFile::new("named-cancel", r#"{"image_cache_ttl": "0"}"#);
    let image = lab.image("c.sqfs", "CANCEL");
    let before = test_support::host::HostState::capture();
    let (id, _output) = lab.submit(
        &[
            &format!("--container={image}"),
            "--container-name=env",
            "--container-writable",
            "--no-container-mount-home",
        ],
        "srun -n1 sh -c 'echo x > ~/x; sleep 300'",
    );
    assert!(
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || wardens_of(id) == 1
        ),
        "the named container's warden did not start"
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("scancel")
        .arg(id.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "scancel: {out:?}");
    assert!(
        job_gone(id, Duration::from_secs(60)),
        "job {id} still there"
    );
    assert_job_left_nothing(id, &lab.path(&image));
    before.assert_nothing_left("a cancelled job with a named container");
}

/// One job keeps at most 16 named containers on a node: the 17th name is one line, and
/// the names it has still work.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_job_keeps_at_most_sixteen_named_containers_per_node() {
    let lab = Lab::exclusive("named-many");
    let _site = audit::SiteFile::new("named-many", r#"{"image_cache_ttl": "0"}"#);
    let image = lab.image("m.sqfs", "MANY");
    let job = lab.sbatch(
        &[&format!("--container={image}")],
        &format!(
            "for i in $(seq 1 17); do srun -n1 --container-name=n$i true || echo \"name $i refused\"; done\nsrun -n1 --container-name=n3 cat {ONLY_FILE}"
        ),
    );
    let lines = ferry_lines(&job.log);
    assert_eq!(lines.len(), 1, "{job}");
    assert!(
        lines[0].contains("--container-name=n17") && lines[0].contains("16 named containers"),
        "{job}"
    );
    assert!(
        job.log.contains("name 17 refused") && !job.log.contains("name 16 refused"),
        "{job}"
    );
    assert!(job.log.contains("only-in-image MANY"), "{job}");
    assert_job_left_nothing(job.id.unwrap(), &lab.path(&image));
}
