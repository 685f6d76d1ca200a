//! The Debian package that tests/run builds and installs (deploy/install) is what the
//! cluster runs: its plugin is the one plugstack.conf loads, its `ferry` is the one on
//! PATH, it is built for the installed Slurm, `man` finds its pages, and `ferry doctor`
//! finds this node ready.

use std::path::Path;
use std::process::Command;
use test_support::{find_tool, missing_tools, require, PLUGIN_CONF};

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The installed Slurm's major.minor ("22.05"); fails the test unless the package's
/// prerequisites are here.
#[track_caller]
fn installed_slurm() -> String {
    let mut missing = missing_tools(&["dpkg-query", "man", "slurmd"]);
    if !Path::new(PLUGIN_CONF).exists() {
        missing.push(format!(
            "{PLUGIN_CONF} (install the package: deploy/install)"
        ));
    }
    require(&missing);
    let (_, v) = run("slurmd", &["-V"]);
    let v = v.split_whitespace().last().unwrap().to_string();
    let mut parts = v.split('.');
    format!("{}.{}", parts.next().unwrap(), parts.next().unwrap())
}

#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn the_package_for_the_installed_slurm_provides_the_plugin_that_plugstack_loads() {
    let slurm = installed_slurm();
    let package = format!("ferry-slurm{slurm}");
    let (ok, status) = run("dpkg-query", &["-W", "-f=${Status}", &package]);
    assert!(
        ok && status == "install ok installed",
        "{package}: {status}"
    );

    let conf = std::fs::read_to_string(PLUGIN_CONF).unwrap();
    let enabled: Vec<&str> = conf
        .lines()
        .filter(|l| l.starts_with("required") || l.starts_with("optional"))
        .collect();
    assert_eq!(enabled.len(), 1, "{PLUGIN_CONF}:\n{conf}");
    let plugin = enabled[0].split_whitespace().nth(1).unwrap();
    let (ok, owner) = run("dpkg-query", &["-S", plugin]);
    assert!(ok && owner.starts_with(&format!("{package}: ")), "{owner}");
    let bytes = std::fs::read(plugin).unwrap();
    let mark = format!("plugin built for Slurm {slurm}");
    assert!(
        bytes.windows(mark.len()).any(|w| w == mark.as_bytes()),
        "{plugin} does not say {mark:?}"
    );
    // The plugstack line is a conffile: an admin's arguments survive upgrades.
    let (_, conffiles) = run("dpkg-query", &["-W", "-f=${Conffiles}", &package]);
    assert!(conffiles.contains(PLUGIN_CONF), "{conffiles}");
}

#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn ferry_on_path_is_the_package_and_states_its_slurm() {
    let slurm = installed_slurm();
    let ferry = find_tool("ferry").expect("ferry on PATH");
    assert_eq!(ferry, Path::new("/usr/bin/ferry"));
    let (ok, out) = run("ferry", &["version"]);
    assert!(ok, "{out}");
    assert_eq!(
        out,
        format!(
            "ferry {}\nplugin built for Slurm {slurm}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    let launcher = "/usr/libexec/ferry/ferry-host-exec";
    let (ok, owner) = run("dpkg-query", &["-S", launcher]);
    assert!(
        ok && owner.starts_with(&format!("ferry-slurm{slurm}: ")),
        "{owner}"
    );
}

#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn man_finds_the_pages_of_every_subcommand_and_of_the_plugin() {
    installed_slurm();
    for (section, page) in [
        ("1", "ferry"),
        ("1", "ferry-run"),
        ("1", "ferry-digest"),
        ("1", "ferry-version"),
        ("1", "ferry-doctor"),
        ("8", "ferry-spank"),
    ] {
        let (ok, path) = run("man", &["-w", section, page]);
        assert!(
            ok && path.trim() == format!("/usr/share/man/man{section}/{page}.{section}.gz"),
            "man -w {section} {page}: {path}"
        );
    }
    // Rendered text, not just a file: the plugin page documents every plugstack key.
    let out = Command::new("man")
        .args(["8", "ferry-spank"])
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "launcher=",
        "slurm_clients=",
        "host_dirs=",
        "accounts=",
        "require_digest=",
        "digest_cache=",
        "hash_unpinned_max=",
    ] {
        assert!(text.contains(key), "ferry-spank(8) lacks {key}:\n{text}");
    }
    let (_, doctor) = run("man", &["1", "ferry-doctor"]);
    assert!(doctor.contains("--root"), "{doctor}");
}

#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn doctor_finds_the_test_node_ready() {
    installed_slurm();
    let (ok, report) = run("ferry", &["doctor"]);
    assert!(ok, "ferry doctor on the test node:\n{report}");
    assert!(!report.contains("FAIL"), "{report}");
    for topic in [
        "ok    kernel: squashfs",
        "ok    plugstack: /etc/slurm/plugstack.conf.d/ferry.conf loads",
        "ok    slurm: installed",
        "ok    launcher:",
        "ok    munge:",
        "ok    oci:",
    ] {
        assert!(report.contains(topic), "no {topic:?} in:\n{report}");
    }
}

/// The RPM (EL layout) built from the same binaries: what it installs where, its Slurm
/// dependency, and the scriptlet that disables the plugstack line on removal.
#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn the_rpm_has_the_el_layout_and_requires_its_slurm_release() {
    let slurm = installed_slurm();
    let missing: Vec<String> = ["rpmbuild", "rpm"]
        .iter()
        .filter(|t| find_tool(t).is_none())
        .map(|t| format!("{t} (apt-get install rpm)"))
        .collect();
    require(&missing);
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("ferry-rpm-{}", std::process::id()));
    let (ok, built) = run(
        "bash",
        &[
            &format!("{root}/packaging/build-rpm"),
            &format!("{root}/target/release"),
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{built}");
    let rpm = built
        .lines()
        .find(|l| l.ends_with(".rpm"))
        .unwrap_or_else(|| panic!("no .rpm path in:\n{built}"))
        .to_string();
    assert!(
        rpm.ends_with(&format!(
            "/ferry-slurm{slurm}-{}-1.x86_64.rpm",
            env!("CARGO_PKG_VERSION")
        )),
        "{built}"
    );
    let (_, files) = run("rpm", &["-qlp", &rpm]);
    for f in [
        "/usr/lib64/slurm/ferry.so",
        "/usr/bin/ferry",
        "/usr/libexec/ferry/ferry-host-exec",
        "/etc/slurm/plugstack.conf.d/ferry.conf",
        "/usr/share/man/man1/ferry-doctor.1",
        "/usr/share/man/man8/ferry-spank.8",
        "/usr/share/doc/ferry/admin.md",
    ] {
        assert!(
            files.lines().any(|l| l.starts_with(f)),
            "{f} not in:\n{files}"
        );
    }
    let (_, config) = run("rpm", &["-qcp", &rpm]);
    assert_eq!(config.trim(), "/etc/slurm/plugstack.conf.d/ferry.conf");
    let (_, requires) = run("rpm", &["-qp", "--requires", &rpm]);
    let (major, minor) = slurm.split_once('.').unwrap();
    let next = format!("{major}.{:02}", minor.parse::<u32>().unwrap() + 1);
    assert!(
        requires.contains(&format!("slurm >= {slurm}")),
        "{requires}"
    );
    assert!(requires.contains(&format!("slurm < {next}")), "{requires}");
    let (_, scripts) = run("rpm", &["-qp", "--scripts", &rpm]);
    assert!(
        scripts.contains("preuninstall") && scripts.contains("#\\2\\3"),
        "{scripts}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[ignore = "needs the installed ferry package (deploy/install): run tests/run, or after deploy/build && deploy/install cargo test -- --include-ignored"]
fn the_package_ships_a_valid_example_site_file() {
    let slurm = installed_slurm();
    let example = "/usr/share/doc/ferry/examples/site.json";
    let (ok, owner) = run("dpkg-query", &["-S", example]);
    assert!(
        ok && owner.starts_with(&format!("ferry-slurm{slurm}: ")),
        "{owner}"
    );
    // Valid; warnings about this node (its folders do not exist here) may follow.
    let out = std::process::Command::new("ferry")
        .args(["check-config", example])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{example}: valid; effective policy:")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fuse"), "{stdout}");
}
