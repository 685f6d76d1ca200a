//! Errors at submission: srun and sbatch check the image and the options as the user
//! on the submit host before a job exists. Each bad input makes sbatch (and srun) exit
//! non-zero with one `ferry:` line and leaves no job in `squeue`; an image missing on
//! the submit host is a warning and the job is accepted, unless the site file says
//! `"submit_check": "strict"`; `"off"` leaves the image to the nodes.
//!
//! Jobs are submitted with `--hold`, so an accepted one never runs; the test cancels it.

use super::audit::SiteFile;
use super::*;

/// What one `sbatch --hold` left: sbatch's output and the jobs squeue lists under its
/// job name (cancelled by the time this returns).
struct Submission {
    out: Out,
    jobs: Vec<u64>,
}

/// `sbatch --hold -J LAB-TAG OPTS --wrap 'echo SHOULD-NOT-RUN'` as the test user from the
/// lab folder.
fn submit_held(lab: &Lab, tag: &str, opts: &[&str]) -> Submission {
    let name = format!("{}-{tag}", lab.job_name());
    let mut argv = vec![
        "sbatch",
        "--hold",
        "-J",
        &name,
        "-t",
        "5",
        "-o",
        "/dev/null",
    ];
    argv.extend_from_slice(opts);
    argv.extend(["--wrap", "echo SHOULD-NOT-RUN"]);
    let out = lab.run(&argv);
    let jobs: Vec<u64> = root_output("squeue", &["-h", "-u", TEST_USER, "-n", &name, "-o", "%i"])
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect();
    for id in &jobs {
        root_output("scancel", &[&id.to_string()]);
    }
    Submission { out, jobs }
}

/// sbatch refused the submission with one ferry line saying `fragment`, and no job exists.
#[track_caller]
fn assert_refused(case: &str, s: &Submission, fragment: &str) {
    s.out.expect_one_ferry_error(case, fragment);
    assert!(
        s.jobs.is_empty(),
        "{case}: squeue lists jobs {:?}:\n{}",
        s.jobs,
        s.out
    );
}

/// sbatch accepted the submission: exit 0, one job, and exactly the `warnings` ferry
/// lines on stderr (each `ferry: warning: ` and holding its fragment).
#[track_caller]
fn assert_accepted(case: &str, s: &Submission, warnings: &[&str]) {
    assert!(s.out.ok(), "{case}: sbatch failed:\n{}", s.out);
    assert_eq!(
        s.jobs.len(),
        1,
        "{case}: jobs in squeue {:?}:\n{}",
        s.jobs,
        s.out
    );
    let lines: Vec<&str> = s
        .out
        .stderr
        .lines()
        .filter(|l| l.contains("ferry: "))
        .collect();
    assert_eq!(
        lines.len(),
        warnings.len(),
        "{case}: expected {} ferry line(s):\n{}",
        warnings.len(),
        s.out
    );
    for (line, fragment) in lines.iter().zip(warnings) {
        assert!(
            line.starts_with("ferry: warning: ") && line.contains(fragment),
            "{case}: not a warning saying {fragment:?}: {line}"
        );
    }
}

/// The lab's inputs that are wrong on the submit host: (case, options, fragment).
fn refused_inputs(lab: &Lab) -> Vec<(&'static str, Vec<String>, &'static str)> {
    let good = lab.image("good.sqfs", "GOOD");
    let bytes = fs::read(lab.path(&good)).unwrap();
    lab.write("notimage.sqfs", "this is not a SquashFS image\n", 0o644);
    lab.write("empty.sqfs", "", 0o644);
    let secret = lab.image("secret.sqfs", "SECRET");
    let secret_path = lab.path(&secret);
    std::os::unix::fs::chown(&secret_path, Some(0), Some(0)).unwrap();
    fs::set_permissions(&secret_path, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(lab.path("half.sqfs"), &bytes[..bytes.len() / 2]).unwrap();
    lab.give(&lab.path("half.sqfs"));
    let mut damaged = bytes.clone();
    damaged[12..16].copy_from_slice(&12345u32.to_le_bytes()); // the block size
    fs::write(lab.path("damaged.sqfs"), &damaged).unwrap();
    lab.give(&lab.path("damaged.sqfs"));
    let folder = folder_image(lab, "rootfs").display().to_string();
    lab.mkdir("plain");
    let private = lab.path("private");
    fs::create_dir(&private).unwrap(); // root's, 0700
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let digest = sha256sum(&lab.path(&good));
    let with_good = |opt: String| vec![format!("--container={good}"), opt];
    vec![
        (
            "not an image",
            vec!["--container=notimage.sqfs".into()],
            "not a container image",
        ),
        (
            "empty file",
            vec!["--container=empty.sqfs".into()],
            "not a container image",
        ),
        (
            "unreadable image",
            vec![format!("--container={secret}")],
            "cannot read it",
        ),
        (
            "image cut short",
            vec!["--container=half.sqfs".into()],
            "bytes long but the file holds",
        ),
        (
            "damaged superblock",
            vec!["--container=damaged.sqfs".into()],
            "superblock is damaged",
        ),
        (
            "wrong pinned digest",
            vec![format!("--container={good}@{}", zero_digest())],
            "digest mismatch",
        ),
        (
            "pinned root folder",
            vec![format!("--container={folder}@{digest}")],
            "a root folder has no digest to pin",
        ),
        (
            "folder that is no root filesystem",
            vec!["--container=plain".into()],
            "not a root filesystem",
        ),
        (
            "bad --container-mounts syntax",
            with_good("--container-mounts=/srv:/mnt:rx".into()),
            "--container-mounts",
        ),
        (
            "unreadable mount source",
            with_good(format!(
                "--container-mounts={}:/mnt/private",
                private.display()
            )),
            "mount source",
        ),
        (
            "relative --container-workdir",
            with_good("--container-workdir=rel".into()),
            "absolute",
        ),
        (
            "bad --container-name",
            with_good("--container-name=../x".into()),
            "--container-name",
        ),
    ]
}

/// Every input that is wrong on the submit host: sbatch exits non-zero with one ferry
/// line and squeue shows no job; srun refuses the same before a step exists.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn bad_inputs_are_refused_at_submission_and_no_job_exists() {
    let lab = Lab::new("submit-refused");
    let cases = refused_inputs(&lab);
    let mut failed = Vec::new();
    for (i, (case, opts, fragment)) in cases.iter().enumerate() {
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let s = submit_held(&lab, &format!("r{i}"), &opts);
            assert_refused(case, &s, fragment);
            // srun: refused in its own context, before any step or allocation.
            let name = format!("{}-s{i}", lab.job_name());
            let mut args = vec!["-J", name.as_str()];
            args.extend(&opts);
            args.extend(["echo", "SHOULD-NOT-RUN"]);
            let out = lab.srun(&args);
            out.expect_one_ferry_error(case, fragment);
        }));
        if result.is_err() {
            failed.push(*case);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// What the submit host cannot judge is accepted: a good image (no line at all), a
/// right pin, an image missing here (one warning line; it may exist on the nodes
/// only), a `--container-save` folder missing here (one warning line).
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn what_the_submit_host_cannot_judge_is_accepted() {
    let lab = Lab::new("submit-accepted");
    let good = lab.image("good.sqfs", "GOOD");
    let digest = sha256sum(&lab.path(&good));
    let missing = lab.path("only/on/nodes.sqfs").display().to_string();

    let s = submit_held(&lab, "good", &[&format!("--container={good}")]);
    assert_accepted("good image", &s, &[]);
    let s = submit_held(&lab, "pinned", &[&format!("--container={good}@{digest}")]);
    assert_accepted("right pin", &s, &[]);
    // Again: the user's digest cache answers (the result is the same).
    let s = submit_held(&lab, "pinned2", &[&format!("--container={good}@{digest}")]);
    assert_accepted("right pin, cached", &s, &[]);
    let s = submit_held(&lab, "missing", &[&format!("--container={missing}")]);
    assert_accepted(
        "image missing on the submit host",
        &s,
        &[&format!("image {missing}: not found on this host")],
    );
    let s = submit_held(
        &lab,
        "save",
        &[
            &format!("--container={good}"),
            "--container-writable",
            "--container-save=no/such/folder/out.sqfs",
        ],
    );
    assert_accepted(
        "--container-save into a missing folder",
        &s,
        &["does not exist on this host"],
    );
    // A mount source missing here may exist on the nodes: no line.
    let s = submit_held(
        &lab,
        "mount-elsewhere",
        &[
            &format!("--container={good}"),
            "--container-mounts=/only/on/nodes:/data",
        ],
    );
    assert_accepted("mount source missing on the submit host", &s, &[]);
}

/// `"submit_check": "strict"` refuses an image missing on the submit host; `"off"`
/// leaves every image check to the nodes (the options' syntax is still checked).
/// Exclusive: site file.
#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn the_site_chooses_strict_or_off() {
    let lab = Lab::exclusive("submit-site");
    let good = lab.image("good.sqfs", "GOOD");
    lab.write("notimage.sqfs", "this is not a SquashFS image\n", 0o644);
    let missing = lab.path("only/on/nodes.sqfs").display().to_string();
    {
        let _site = SiteFile::new("submit-strict", r#"{"submit_check": "strict"}"#);
        let s = submit_held(&lab, "strict-missing", &[&format!("--container={missing}")]);
        assert_refused("strict, missing image", &s, "submit_check: strict");
        let out = lab.srun(&[&format!("--container={missing}"), "echo", "SHOULD-NOT-RUN"]);
        out.expect_one_ferry_error("strict, srun", "submit_check: strict");
        let s = submit_held(&lab, "strict-good", &[&format!("--container={good}")]);
        assert_accepted("strict, good image", &s, &[]);
    }
    {
        let _site = SiteFile::new("submit-off", r#"{"submit_check": "off"}"#);
        let s = submit_held(&lab, "off-notimage", &["--container=notimage.sqfs"]);
        assert_accepted("off, not an image (the node refuses it)", &s, &[]);
        let s = submit_held(&lab, "off-missing", &[&format!("--container={missing}")]);
        assert_accepted("off, missing image", &s, &[]);
        let s = submit_held(
            &lab,
            "off-workdir",
            &[&format!("--container={good}"), "--container-workdir=rel"],
        );
        assert_refused("off, relative workdir", &s, "absolute");
    }
    // A site file with a bad value is refused at submission, as every node would.
    let _site = SiteFile::new("submit-bad", r#"{"submit_check": "sometimes"}"#);
    let s = submit_held(&lab, "bad-site", &[&format!("--container={good}")]);
    assert_refused("bad submit_check value", &s, "submit_check");
}
