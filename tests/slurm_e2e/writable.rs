//! `--container-writable[=SIZE]` and `--container-save=FILE` as the user sees them:
//! writes inside, gone after the step, the size limit, a size above the site's maximum
//! refused, and a saved image that runs, holds the writes and is byte-identical when
//! the same state is saved twice; a failed step saves nothing.

use super::*;

/// Runs `script` (sh) in `image` as a step with `opts`, the home folder left out (so
/// the user's home is the container's own).
fn step(lab: &Lab, image: &str, opts: &[&str], script: &str) -> Out {
    let image_opt = format!("--container={image}");
    let mut args: Vec<&str> = vec![&image_opt, "--no-container-mount-home"];
    args.extend(opts);
    args.extend(["sh", "-c", script]);
    lab.srun(&args)
}

#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn writes_stay_inside_the_step_and_within_the_layer() {
    let lab = Lab::new("writable");
    let image = lab.image("w.sqfs", "W");
    // Read-only by default: no home folder to write into.
    let out = step(&lab, &image, &[], "echo x > ~/f && echo wrote");
    assert!(!out.stdout.contains("wrote"), "{out}");
    // Writable: the write lands, and the next step does not see it.
    let out = step(
        &lab,
        &image,
        &["--container-writable"],
        "echo kept > ~/f && cat ~/f && touch /usr/new 2>/dev/null || echo usr-is-roots",
    );
    out.expect_ok();
    assert_eq!(out.stdout, "kept\nusr-is-roots\n", "{out}");
    let out = step(
        &lab,
        &image,
        &["--container-writable"],
        "cat ~/f 2>/dev/null || echo gone",
    );
    assert_eq!(out.stdout, "gone\n", "{out}");
    // The layer's size is the limit: ENOSPC past it, the step still ends normally.
    let out = step(
        &lab,
        &image,
        &["--container-writable=2M"],
        "dd if=/dev/zero of=$HOME/big bs=1M count=4 2>&1; echo done",
    );
    assert!(out.stdout.contains("No space left on device"), "{out}");
    assert!(out.stdout.ends_with("done\n"), "{out}");
    // Above the site's maximum (1G by default): one line naming the key.
    let out = step(&lab, &image, &["--container-writable=100G"], "echo ran");
    assert!(!out.stdout.contains("ran"), "{out}");
    out.expect_one_ferry_error("a layer above the maximum", "writable_layer_max");
}

#[test]
#[ignore = "needs root and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn a_saved_container_runs_and_saves_the_same_bytes_twice() {
    let lab = Lab::new("save");
    let image = lab.image("base.sqfs", "BASE");
    let digest = lab.run(&["ferry", "digest", &image]);
    digest.expect_ok();
    let hex = digest
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let pinned = format!("{image}@{hex}");
    let write = "mkdir -p ~/.local && echo from-step > ~/.local/note";
    for name in ["a.sqfs", "b.sqfs"] {
        let save = format!("--container-save={name}");
        step(&lab, &pinned, &["--container-writable", &save], write).expect_ok();
    }
    let (a, b) = (lab.path("a.sqfs"), lab.path("b.sqfs"));
    let meta = fs::metadata(&a).unwrap();
    assert_eq!(meta.uid(), test_user().uid, "written as the user");
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "same state, same bytes"
    );
    // It runs, with the write and the image's own file.
    let out = step(
        &lab,
        "a.sqfs",
        &[],
        &format!("cat ~/.local/note {ONLY_FILE}"),
    );
    out.expect_ok();
    assert_eq!(out.stdout, "from-step\nonly-in-image BASE\n", "{out}");
    // It names its parent.
    let inspect = lab.run(&["ferry", "inspect", "a.sqfs"]);
    inspect.expect_ok();
    assert!(
        inspect
            .stdout
            .contains(&lab.path(&image).display().to_string())
            && inspect.stdout.contains(&hex),
        "{inspect}"
    );
    // A step that fails saves nothing.
    let out = step(
        &lab,
        &image,
        &["--container-writable", "--container-save=failed.sqfs"],
        "exit 3",
    );
    assert!(!out.ok(), "{out}");
    assert!(!lab.path("failed.sqfs").exists());
}
