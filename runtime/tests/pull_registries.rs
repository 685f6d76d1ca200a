//! `ferry pull` against the harness's registries (test_support::registry): HTTPS with a
//! CA the client learns through `SSL_CERT_FILE`, Basic auth with the login from each
//! credentials file podman and docker keep, Bearer token auth with and without a login,
//! and the content-addressed store: a stored manifest downloads nothing, concurrent
//! pulls make one entry, an interrupted pull leaves nothing, an index gives the
//! platform asked for, and the bytes are the same for root and an unprivileged user.
//!
//! Each `ferry` runs with only PATH and what the test gives it in its environment, so
//! the logins and CAs of the shell that runs the tests never reach it.
//!
//! Needs root, docker-registry, podman and what `tests/prepare-host` installs:
//!
//!     cargo test -p ferry-runtime --test pull_registries -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use test_support::registry::auth_file::base64;
use test_support::registry::images::*;
use test_support::registry::*;

/// A pull of the small images takes a second or two; the large one more.
const PULL_LIMIT: Duration = Duration::from_secs(180);

#[track_caller]
fn require_registry() {
    require_root_and_tools(&["unsquashfs", "runuser"]);
    require(&registry_prerequisites());
}

/// `docker://` + the pushed reference, as users type it.
fn docker(reference: &str) -> String {
    format!("docker://{reference}")
}

/// The environment of a client of `registry`: its CA (for a TLS registry), HOME (an
/// empty folder unless the test put a login there), and `extra`.
fn client_env(
    registry: &LocalRegistry,
    home: &Path,
    extra: &[(&str, &Path)],
) -> Vec<(String, String)> {
    let mut env = registry.env_for_client();
    env.push(("HOME".into(), home.display().to_string()));
    for (name, value) in extra {
        env.push((name.to_string(), value.display().to_string()));
    }
    env
}

/// `ferry ARGS` as root from `/` with `env`.
fn ferry_env(args: &[&str], env: &[(String, String)]) -> Outcome {
    ferry_with_env(Path::new("/"), args, env, PULL_LIMIT)
}

/// `ferry pull REF OUT` with `env`; on success stdout names OUT.
fn pull_to(reference: &str, out: &Path, env: &[(String, String)]) -> Outcome {
    let outcome = ferry_env(&["pull", reference, out.to_str().unwrap()], env);
    if outcome.code == Some(0) {
        assert_eq!(outcome.stdout.trim(), out.to_str().unwrap(), "{outcome:#?}");
    }
    outcome
}

/// `ferry pull [extra] --store STORE REF`; returns the stored image's path on success.
fn pull_into_store(
    reference: &str,
    store: &Path,
    extra: &[&str],
    env: &[(String, String)],
) -> Outcome {
    let mut args = vec!["pull"];
    args.extend_from_slice(extra);
    args.extend(["--store", store.to_str().unwrap(), reference]);
    ferry_env(&args, env)
}

/// The store's entries as `ferry images --store STORE --json` lists them.
fn store_entries(store: &Path) -> Vec<serde_json::Value> {
    let out = ferry_env(
        &["images", "--store", store.to_str().unwrap(), "--json"],
        &[],
    );
    out.expect_success("ferry images --json");
    let listed: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("ferry images --json ({e}): {}", out.stdout));
    listed
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list: {listed}"))
}

/// The marker file of a pulled image, read with unsquashfs.
fn marker_of(image: &Path) -> String {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(image)
        .arg(MARKER_FILE.trim_start_matches('/'))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs -cat {}: {out:?}",
        image.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The names in `dir`, sorted (nothing when it does not exist).
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Neither the password nor the base64 the auth files carry it in appears in what
/// `ferry` printed.
#[track_caller]
fn assert_secret_kept(outcome: &Outcome, login: &Credentials) {
    let encoded = base64(login.user_colon_password().as_bytes());
    for secret in [login.password.as_str(), encoded.as_str()] {
        for (stream, text) in [("stdout", &outcome.stdout), ("stderr", &outcome.stderr)] {
            assert!(
                !text.contains(secret),
                "the password appears on {stream}: {outcome:#?}"
            );
        }
    }
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn https_works_with_the_ca_from_ssl_cert_file_and_fails_in_one_line_without() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_two_layer("ferry/tls:v1", "tls", ManifestFormat::Oci);
    let home = TempDir::new("home");
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-tls");
    let image = dir.join("tls.sqfs");
    let reference = docker(&pushed.reference);

    pull_to(&reference, &image, &client_env(registry, home.path(), &[]))
        .expect_success("pull over HTTPS with the test CA");
    assert_eq!(marker_of(&image), "tls\n");
    fs::remove_file(&image).unwrap();

    let untrusted = pull_to(
        &reference,
        &image,
        &[("HOME".into(), home.path().display().to_string())],
    );
    assert_ne!(
        untrusted.code,
        Some(0),
        "pulled without trusting the CA: {untrusted:#?}"
    );
    // It names the certificate and how to trust a site CA, not a plain-HTTP registry.
    let line = untrusted.one_ferry_line(&[
        &pushed.reference,
        &registry.host_port(),
        "certificate",
        "not trusted",
        "SSL_CERT_FILE",
    ]);
    assert!(!line.contains("--insecure-registry"), "{line}");
    assert_eq!(names(dir.path()), Vec::<String>::new(), "nothing left");
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn basic_auth_takes_the_login_from_each_credentials_file_and_never_shows_it() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::TlsBasic);
    let login = registry.credentials().unwrap().clone();
    let pushed = registry.push_two_layer("ferry/basic:v1", "basic", ManifestFormat::Docker);
    let reference = docker(&pushed.reference);
    let host = registry.host_port();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-basic");

    // Each file alone, with HOME an empty folder unless the file is HOME's own.
    let files = TempDir::new("auth");
    let empty_home = TempDir::new("home");
    let auth_file = files.join("auth-file.json");
    write_auth_file(&auth_file, &[(&host, &login)], None);
    let runtime_dir = files.join("runtime");
    write_auth_file(
        &runtime_dir.join("containers/auth.json"),
        &[(&host, &login)],
        None,
    );
    let docker_home = files.join("docker-home");
    write_docker_config(&docker_home, &[(&host, &login)], None);
    let sources: [(&str, Vec<(String, String)>); 3] = [
        (
            "REGISTRY_AUTH_FILE",
            client_env(
                registry,
                empty_home.path(),
                &[("REGISTRY_AUTH_FILE", &auth_file)],
            ),
        ),
        (
            "XDG_RUNTIME_DIR",
            client_env(
                registry,
                empty_home.path(),
                &[("XDG_RUNTIME_DIR", &runtime_dir)],
            ),
        ),
        (
            "~/.docker/config.json",
            client_env(registry, &docker_home, &[]),
        ),
    ];
    for (source, env) in &sources {
        let image = dir.join("basic.sqfs");
        let outcome = pull_to(&reference, &image, env);
        assert_secret_kept(&outcome, &login);
        outcome.expect_success(&format!("pull with the login from {source}"));
        assert_eq!(marker_of(&image), "basic\n", "{source}");
        fs::remove_file(&image).unwrap();
    }

    // A wrong password: one line saying the login was refused, and what to do.
    let wrong = Credentials::new(REGISTRY_USER, "not the pa:ss w0rd");
    let wrong_file = files.join("wrong.json");
    write_auth_file(&wrong_file, &[(&host, &wrong)], None);
    let image = dir.join("basic.sqfs");
    let refused = pull_to(
        &reference,
        &image,
        &client_env(
            registry,
            empty_home.path(),
            &[("REGISTRY_AUTH_FILE", &wrong_file)],
        ),
    );
    assert_secret_kept(&refused, &wrong);
    assert_secret_kept(&refused, &login);
    refused.one_ferry_line(&[&pushed.reference, "refused the stored credentials", &host]);

    // No login at all: one line saying to log in.
    let anonymous = pull_to(
        &reference,
        &image,
        &client_env(registry, empty_home.path(), &[]),
    );
    anonymous.one_ferry_line(&[
        &pushed.reference,
        "asks for a login",
        &format!("podman login {host}"),
    ]);
    assert_eq!(names(dir.path()), Vec::<String>::new(), "nothing left");
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn bearer_token_auth_with_a_login_and_anonymous_pull_without_one() {
    require_registry();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-token");
    let home = TempDir::new("home");
    let image = dir.join("token.sqfs");

    let registry = LocalRegistry::shared(RegistryKind::TlsToken);
    let login = registry.credentials().unwrap().clone();
    let pushed = registry.push_two_layer("ferry/token:v1", "token", ManifestFormat::Oci);
    let reference = docker(&pushed.reference);
    let auth = home.join("auth.json");
    write_auth_file(&auth, &[(&registry.host_port(), &login)], None);
    let with_login = pull_to(
        &reference,
        &image,
        &client_env(registry, home.path(), &[("REGISTRY_AUTH_FILE", &auth)]),
    );
    assert_secret_kept(&with_login, &login);
    with_login.expect_success("pull with a token got with the login");
    assert_eq!(marker_of(&image), "token\n");
    fs::remove_file(&image).unwrap();
    // The token server grants nothing without the login, nor with a wrong one.
    pull_to(&reference, &image, &client_env(registry, home.path(), &[]))
        .one_ferry_line(&[&pushed.reference, "asks for a login"]);
    let wrong = Credentials::new(REGISTRY_USER, "not the pa:ss w0rd");
    let wrong_file = home.join("wrong.json");
    write_auth_file(&wrong_file, &[(&registry.host_port(), &wrong)], None);
    let refused = pull_to(
        &reference,
        &image,
        &client_env(
            registry,
            home.path(),
            &[("REGISTRY_AUTH_FILE", &wrong_file)],
        ),
    );
    assert_secret_kept(&refused, &wrong);
    refused.one_ferry_line(&[&pushed.reference, "refused the stored credentials"]);

    let public = LocalRegistry::shared(RegistryKind::TlsTokenAnonymousPull);
    let pushed = public.push_two_layer("ferry/public:v1", "public", ManifestFormat::Oci);
    pull_to(
        &docker(&pushed.reference),
        &image,
        &client_env(public, home.path(), &[]),
    )
    .expect_success("anonymous pull with a pull-only token");
    assert_eq!(marker_of(&image), "public\n");
    fs::remove_file(&image).unwrap();
    assert_eq!(names(dir.path()), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn a_stored_manifest_downloads_no_blob_the_second_time() {
    require_registry();
    // Its own registry: the test corrupts every blob of the image in its storage.
    let registry = LocalRegistry::start(RegistryKind::Tls);
    let pushed = registry.push_two_layer("ferry/stored:v1", "stored", ManifestFormat::Oci);
    let reference = docker(&pushed.reference);
    let home = TempDir::new("home");
    let env = client_env(&registry, home.path(), &[]);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-store");
    let store = dir.join("store");

    let first = pull_into_store(&reference, &store, &[], &env);
    first.expect_success("first pull into the store");
    let stored = PathBuf::from(first.stdout.trim());
    assert!(stored.starts_with(store.join("images")), "{first:#?}");
    let bytes = fs::read(&stored).unwrap();

    // Every blob the manifest names (config and layers) no longer matches its digest.
    let manifest = registry.get_manifest("ferry/stored", "v1").json();
    let blobs: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect();
    for digest in &blobs {
        let path = registry.blob_path(digest);
        let mut data = fs::read(&path).unwrap();
        let middle = data.len() / 2;
        data[middle] ^= 0xff;
        fs::write(&path, data).unwrap();
    }

    // The manifest is all the second pull fetches: it succeeds from the store.
    let second = pull_into_store(&reference, &store, &[], &env);
    second.expect_success("second pull of a stored manifest");
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(fs::read(&stored).unwrap(), bytes);
    assert_eq!(store_entries(&store).len(), 1);
    // The corruption is real: a store without the entry must download, and refuses.
    let other = dir.join("other-store");
    pull_into_store(&reference, &other, &[], &env).one_ferry_line(&[&pushed.reference, "sha256:"]);
    assert_eq!(names(&other.join("images")), Vec::<String>::new());
    assert_eq!(names(&other.join("staging")), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn two_concurrent_pulls_of_one_reference_make_one_entry() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_two_layer("ferry/concurrent:v1", "concurrent", ManifestFormat::Oci);
    let reference = docker(&pushed.reference);
    let home = TempDir::new("home");
    let env = client_env(registry, home.path(), &[]);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-concurrent");
    let store = dir.join("store");

    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let pulls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| pull_into_store(&reference, &store, &[], &env)))
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for outcome in &outcomes {
        outcome.expect_success("one of two concurrent pulls");
    }
    assert_eq!(
        outcomes[0].stdout, outcomes[1].stdout,
        "the same stored file"
    );
    let entries = store_entries(&store);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0]["manifest_digest"], pushed.digest.as_str());
    assert_eq!(names(&store.join("images")).len(), 1);
    assert_eq!(
        names(&store.join("staging")),
        Vec::<String>::new(),
        "no staging left"
    );
    assert_eq!(
        marker_of(Path::new(outcomes[0].stdout.trim())),
        "concurrent\n"
    );
}

/// Starts `ferry pull ARGS`, waits until `started` says it is under way, sends SIGINT
/// and returns what it printed.
fn interrupt_pull(args: &[&str], env: &[(String, String)], started: impl Fn() -> bool) -> Outcome {
    let mut cmd = ferry_command(Path::new("/"), args, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("starting ferry pull");
    let deadline = Instant::now() + PULL_LIMIT;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    loop {
        if started() {
            break;
        }
        let exited = matches!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::WNOWAIT)),
            Ok(status) if status != nix::sys::wait::WaitStatus::StillAlive
        );
        assert!(
            !exited,
            "ferry pull ended before it was interrupted: {:#?}",
            child.wait_with_output()
        );
        assert!(Instant::now() < deadline, "the pull never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let output = child.wait_with_output().unwrap();
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: Duration::ZERO,
    }
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn an_interrupted_pull_leaves_nothing_and_says_so_in_one_line() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_large("ferry/large:64m", 64, ManifestFormat::Oci);
    let reference = docker(&pushed.reference);
    let home = TempDir::new("home");
    let env = client_env(registry, home.path(), &[]);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-interrupt");

    // Into a file: its staging folder is a hidden sibling of OUT.
    let image = dir.join("large.sqfs");
    let outcome = interrupt_pull(&["pull", &reference, image.to_str().unwrap()], &env, || {
        !names(dir.path()).is_empty()
    });
    assert_ne!(outcome.code, Some(0), "{outcome:#?}");
    outcome.one_ferry_line(&["interrupted"]);
    assert_eq!(
        names(dir.path()),
        Vec::<String>::new(),
        "no partial file, no staging"
    );

    // Into a store: its staging folder is under ROOT/staging.
    let store = dir.join("store");
    let staging = store.join("staging");
    let args = ["pull", "--store", store.to_str().unwrap(), &reference];
    let outcome = interrupt_pull(&args, &env, || !names(&staging).is_empty());
    assert_ne!(outcome.code, Some(0), "{outcome:#?}");
    outcome.one_ferry_line(&["interrupted"]);
    assert_eq!(names(&staging), Vec::<String>::new(), "no staging left");
    assert_eq!(
        names(&store.join("images")),
        Vec::<String>::new(),
        "no image"
    );
    assert_eq!(
        names(&store.join("entries")),
        Vec::<String>::new(),
        "no entry"
    );
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn the_platform_asked_for_is_taken_from_the_index() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_multi_platform("ferry/multi:v1", ManifestFormat::Oci);
    let reference = docker(&pushed.index.reference);
    let home = TempDir::new("home");
    let env = client_env(registry, home.path(), &[]);
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-platform");
    let store = dir.join("store");

    // The index is stored under its digest: after another platform, the first one asked
    // for again must still be that platform's image, not the one the entry names.
    for (platform, digest) in [
        ("linux/arm64", &pushed.arm64_digest),
        ("linux/amd64", &pushed.amd64_digest),
        ("linux/arm64", &pushed.arm64_digest),
    ] {
        let outcome = pull_into_store(&reference, &store, &["--platform", platform], &env);
        outcome.expect_success(&format!("pull of {platform}"));
        assert_eq!(
            marker_of(Path::new(outcome.stdout.trim())),
            format!("{platform}\n")
        );
        let entries = store_entries(&store);
        assert!(
            entries
                .iter()
                .any(|e| e["manifest_digest"] == pushed.index.digest.as_str()
                    && e["platform_manifest_digest"] == digest.as_str()),
            "{platform}: {entries:#?}"
        );
    }
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn root_and_an_unprivileged_user_pull_the_same_bytes() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_two_layer("ferry/repro:v1", "repro", ManifestFormat::Docker);
    let reference = docker(&pushed.by_digest());
    let home = TempDir::new("home");
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-repro");

    // Root, into a store.
    let store = dir.join("store");
    let as_root = pull_into_store(
        &reference,
        &store,
        &[],
        &client_env(registry, home.path(), &[]),
    );
    as_root.expect_success("pull as root into a store");
    let stored = PathBuf::from(as_root.stdout.trim());

    // The test user, into a file in a folder of theirs.
    let theirs = TempDir::new_in(Path::new("/var/tmp"), "pull-repro-user");
    theirs.give_to_test_user();
    let image = theirs.join("repro.sqfs");
    let mut cmd = Command::new(find_tool("runuser").expect("runuser (util-linux)"));
    cmd.args(["-u", TEST_USER, "--"])
        .arg(ferry_bin())
        .args(["pull", &reference, image.to_str().unwrap()])
        .current_dir("/")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(registry.env_for_client());
    let as_user = run_with_timeout(cmd, PULL_LIMIT);
    as_user.expect_success("pull as the test user");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&image).unwrap()),
        test_user().uid
    );
    assert_eq!(
        sha256sum(&image),
        sha256sum(&stored),
        "the same SquashFS bytes"
    );
    assert_eq!(marker_of(&image), "repro\n");
}

/// Without root, a user pulls a reference into their own store and runs it by the same
/// reference: `ferry run docker://…` finds the stored image (pinned to the bytes it
/// stored) and runs it in the user's own namespace, with the image's PATH, WorkingDir
/// and default command.
#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn an_unprivileged_user_pulls_and_runs_a_reference_without_root() {
    require_registry();
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    let pushed = registry.push_two_layer("ferry/rootless:v1", "rootless", ManifestFormat::Oci);
    let reference = docker(&pushed.reference);
    let home = TempDir::new_in(Path::new("/var/tmp"), "pull-rootless-home");
    home.give_to_test_user();
    let as_user = |args: &[&str]| {
        let mut cmd = Command::new(find_tool("runuser").expect("runuser (util-linux)"));
        cmd.args(["-u", TEST_USER, "--"])
            .arg(ferry_bin())
            .args(args)
            .current_dir(home.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home.path())
            .envs(registry.env_for_client());
        run_with_timeout(cmd, PULL_LIMIT)
    };
    as_user(&["pull", &reference]).expect_success("pull as the test user");
    let default = as_user(&["run", &reference]);
    default.expect_success("run the stored image without root");
    assert_eq!(default.stdout, "rootless\n", "{default:#?}");
    let inside = as_user(&[
        "run",
        &reference,
        "--",
        "/bin/sh",
        "-c",
        "echo $(id -u) $(pwd) $PATH",
    ]);
    inside.expect_success("a command of the user's");
    // The image's PATH first (then the standard folders ferry adds).
    assert!(
        inside
            .stdout
            .starts_with(&format!("{} {IMAGE_WORKDIR} /bin:", test_user().uid)),
        "{inside:#?}"
    );
}
