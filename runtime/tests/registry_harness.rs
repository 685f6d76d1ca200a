//! The registry harness of test_support works: each kind of local registry (plain HTTP,
//! TLS, Basic auth, Bearer token auth) serves what podman pushed into it, refuses and
//! accepts as its auth says, and the pushed images are what the pull tests expect
//! (two layers with a whiteout and a config, a two-platform index, a large layer, a
//! tag that moves).
//!
//! Needs root and what `tests/prepare-host` installs (docker-registry, podman, openssl,
//! apache2-utils, python3-jwt, python3-cryptography, busybox-static, curl):
//!
//!     cargo test -p ferry-runtime --test registry_harness -- --include-ignored

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use test_support::registry::images::*;
use test_support::registry::*;

/// The digest the registry names for a manifest it served.
fn served_digest(response: &Response) -> String {
    response
        .header("docker-content-digest")
        .unwrap_or_else(|| panic!("no digest header: {response:?}"))
        .to_string()
}

/// The manifest of `name:tag`, which must be there.
fn manifest(registry: &LocalRegistry, repository: &str, tag: &str) -> serde_json::Value {
    let response = registry.get_manifest(repository, tag);
    assert_eq!(
        response.status,
        200,
        "{repository}:{tag}: {}\n{}",
        response.text(),
        registry.log()
    );
    response.json()
}

/// Runs a podman command on a throw-away store in `work` (TLS trusted through the test
/// CA, or not required for a plain registry), with `auth_file` as its login.
fn podman(registry: &LocalRegistry, work: &Path, auth_file: Option<&Path>, args: &str) -> Outcome {
    let tls = match registry.ca_cert_path() {
        Some(_) => format!("--cert-dir={}", test_ca().cert_dir.display()),
        None => "--tls-verify=false".to_string(),
    };
    let auth = auth_file.map_or(String::new(), |f| format!("--authfile={}", f.display()));
    let script =
        format!("P=\"podman --root $WORK/store --runroot $WORK/run --storage-driver vfs\"\n{args}")
            .replace("TLS", &tls)
            .replace("AUTH", &auth);
    let mut bash = Command::new("bash");
    bash.args([
        "-c",
        &format!("set -euo pipefail\n{script}\n$P rmi -a -f >/dev/null"),
    ])
    .env("WORK", work)
    .env("NO_PROXY", "127.0.0.1,localhost")
    .env_remove("REGISTRY_AUTH_FILE");
    run_with_timeout(bash, Duration::from_secs(300))
}

/// podman pulls `reference` and reports what a client sees: the marker, the kept file,
/// the second layer's file, whether the whited-out file is there, and the config.
fn pull_and_look(registry: &LocalRegistry, reference: &str, auth_file: Option<&Path>) -> Outcome {
    let work = TempDir::new_in(Path::new("/var/tmp"), "podman-pull");
    let script = format!(
        "$P pull -q TLS AUTH {reference} >/dev/null\n\
         c=$($P create {reference})\n\
         m=$($P mount \"$c\")\n\
         cat \"$m{MARKER_FILE}\" \"$m{KEPT_FILE}\" \"$m{SECOND_LAYER_FILE}\"\n\
         test -e \"$m{WHITED_OUT_FILE}\" && echo whited-out-file-present\n\
         $P umount \"$c\" >/dev/null; $P rm -f \"$c\" >/dev/null\n\
         $P image inspect --format '{{{{json .Config.Env}}}} {{{{.Config.WorkingDir}}}} \
         {{{{json .Config.Entrypoint}}}} {{{{json .Config.Cmd}}}}' {reference}"
    );
    podman(registry, work.path(), auth_file, &script)
}

/// What [`pull_and_look`] prints for the two-layer image with `marker`.
fn two_layer_view(marker: &str) -> String {
    format!(
        "{marker}\nkeep\nsecond\n{} {IMAGE_WORKDIR} {} {}\n",
        serde_json::to_string(&IMAGE_ENV).unwrap(),
        serde_json::to_string(&IMAGE_ENTRYPOINT).unwrap(),
        serde_json::to_string(&IMAGE_CMD).unwrap()
    )
}

/// The names in the gzip layer `blob` (tar's listing).
fn layer_names(blob: &[u8]) -> Vec<String> {
    let dir = TempDir::new("layer");
    std::fs::write(dir.join("layer.tgz"), blob).unwrap();
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(dir.join("layer.tgz"))
        .output()
        .unwrap();
    assert!(out.status.success(), "tar -tz: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").to_string())
        .collect()
}

/// One file of the gzip layer `blob`.
fn layer_file(blob: &[u8], path: &str) -> String {
    let dir = TempDir::new("layer");
    std::fs::write(dir.join("layer.tgz"), blob).unwrap();
    let out = Command::new("tar")
        .arg("-xzOf")
        .arg(dir.join("layer.tgz"))
        .args(["--wildcards", &format!("*{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar -xzO {path}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn plain_and_tls_registries_serve_the_two_layer_image() {
    require(&registry_prerequisites());
    for kind in [RegistryKind::Plain, RegistryKind::Tls] {
        let registry = LocalRegistry::start(kind);
        assert_eq!(registry.request("/v2/", &[]).status, 200, "{kind:?}");
        let pushed =
            registry.push_two_layer("ferry/two-layer:v1", "two-layer", ManifestFormat::Oci);
        assert_eq!(
            pushed.reference,
            format!("{}/ferry/two-layer:v1", registry.host_port())
        );
        let response = registry.get_manifest("ferry/two-layer", "v1");
        assert_eq!(served_digest(&response), pushed.digest, "{kind:?}");
        let manifest = response.json();
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "{kind:?}: {manifest}");
        // The second layer deletes the file with a whiteout entry.
        let top = registry.get_blob("ferry/two-layer", layers[1]["digest"].as_str().unwrap());
        assert_eq!(top.status, 200);
        let names = layer_names(&top.body);
        assert!(
            names.iter().any(|n| n == "data/.wh.gone"),
            "{kind:?}: {names:?}"
        );
        // The same manifest by digest, and podman sees the image the pull tests expect.
        let by_digest = registry.get_manifest("ferry/two-layer", &pushed.digest);
        assert_eq!(by_digest.status, 200);
        assert_eq!(by_digest.body, response.body);
        let look = pull_and_look(&registry, &pushed.by_digest(), None);
        assert_eq!(look.code, Some(0), "{kind:?}: {look:#?}");
        assert_eq!(look.stdout, two_layer_view("two-layer"), "{kind:?}");
    }
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn a_client_trusts_the_tls_registry_through_env_for_client() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    // Python's default context reads SSL_CERT_FILE, as rustls-native-certs and Go do.
    let fetch = |env: &[(String, String)]| {
        let mut python = Command::new("/usr/bin/python3");
        python
            .args([
                "-c",
                "import sys, urllib.request\n\
                 try:\n    print(urllib.request.urlopen(sys.argv[1]).status)\n\
                 except Exception as e:\n    print(e)",
            ])
            .arg(format!("{}/v2/", registry.base_url()))
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR");
        for (name, value) in env {
            python.env(name, value);
        }
        run_with_timeout(python, Duration::from_secs(30)).stdout
    };
    assert!(
        fetch(&[]).contains("CERTIFICATE_VERIFY_FAILED"),
        "untrusted without the CA"
    );
    assert_eq!(fetch(&registry.env_for_client()), "200\n");
    let ca = registry.ca_cert_path().unwrap();
    let bundle = std::fs::read_to_string(&registry.env_for_client()[0].1).unwrap();
    assert!(bundle.ends_with(&std::fs::read_to_string(ca).unwrap()));
    assert!(LocalRegistry::shared(RegistryKind::Plain)
        .env_for_client()
        .is_empty());
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn the_basic_auth_registry_wants_the_login() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::start(RegistryKind::TlsBasic);
    let login = registry.credentials().expect("a login").clone();
    assert_eq!(login, Credentials::new(REGISTRY_USER, REGISTRY_PASSWORD));
    let anonymous = registry.request("/v2/", &[]);
    assert_eq!(anonymous.status, 401);
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let wrong = registry.request("/v2/", &["-u", &format!("{REGISTRY_USER}:wrong")]);
    assert_eq!(wrong.status, 401);
    assert_eq!(
        registry
            .request("/v2/", &["-u", &login.user_colon_password()])
            .status,
        200
    );

    // Pushing needed the login; pulling without it is refused, with it served.
    let pushed = registry.push_two_layer("ferry/basic:v1", "basic", ManifestFormat::Docker);
    let refused = registry.request("/v2/ferry/basic/manifests/v1", &[]);
    assert_eq!(refused.status, 401);
    let response = registry.get_manifest("ferry/basic", "v1");
    assert_eq!(served_digest(&response), pushed.digest);
    assert_eq!(
        response.json()["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // podman finds the login in an auth file the harness wrote, and fails without it.
    let home = TempDir::new("home");
    let config = write_docker_config(home.path(), &[(&registry.host_port(), &login)], None);
    let look = pull_and_look(&registry, &pushed.reference, Some(&config));
    assert_eq!(look.code, Some(0), "{look:#?}");
    assert_eq!(look.stdout, two_layer_view("basic"));
    let empty = home.join("empty.json");
    write_auth_file(&empty, &[], None);
    let without = pull_and_look(&registry, &pushed.reference, Some(&empty));
    assert_ne!(
        without.code,
        Some(0),
        "pulled without a login: {without:#?}"
    );
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn the_token_registry_challenges_and_its_token_server_checks_the_login() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::start(RegistryKind::TlsToken);
    let realm = registry.token_realm().expect("a token server");
    let anonymous = registry.request("/v2/", &[]);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"{TOKEN_SERVICE}\"").as_str())
    );

    let pushed = registry.push_two_layer("ferry/token:v1", "token", ManifestFormat::Oci);
    let scope = "repository:ferry/token:pull";
    let wrong = Credentials::new(REGISTRY_USER, "wrong");
    assert_eq!(registry.token_request(scope, Some(&wrong)).status, 401);
    assert_eq!(registry.token_request(scope, None).status, 401);
    let granted = registry.token_request(scope, registry.credentials());
    assert_eq!(granted.status, 200, "{}", granted.text());
    let token = granted.json()["token"].as_str().unwrap().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let path = "/v2/ferry/token/manifests/v1";
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let bearer = format!("Authorization: Bearer {token}");
    let served = registry.request(path, &["-H", &bearer, "-H", accept]);
    assert_eq!(served.status, 200, "{}\n{}", served.text(), registry.log());
    assert_eq!(served_digest(&served), pushed.digest);
    // The token grants what its scope named, no more.
    let other = registry.bearer_token("repository:ferry/other:pull");
    let other = format!("Authorization: Bearer {other}");
    assert_eq!(
        registry.request(path, &["-H", &other, "-H", accept]).status,
        401
    );
    let forged = format!("Authorization: Bearer {token}x");
    assert_eq!(
        registry
            .request(path, &["-H", &forged, "-H", accept])
            .status,
        401
    );

    // podman goes through the challenge with the login from an auth file.
    let dir = TempDir::new("auth");
    let auth = dir.join("containers/auth.json");
    write_auth_file(
        &auth,
        &[(&registry.host_port(), registry.credentials().unwrap())],
        None,
    );
    let look = pull_and_look(&registry, &pushed.reference, Some(&auth));
    assert_eq!(look.code, Some(0), "{look:#?}");
    assert_eq!(look.stdout, two_layer_view("token"));
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn the_anonymous_token_registry_lets_anyone_pull_and_only_the_login_push() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::start(RegistryKind::TlsTokenAnonymousPull);
    let pushed = registry.push_two_layer("ferry/public:v1", "public", ManifestFormat::Oci);
    let scope = "repository:ferry/public:pull,push";
    let anonymous = registry.token_request(scope, None);
    assert_eq!(anonymous.status, 200, "{}", anonymous.text());
    let bearer = format!(
        "Authorization: Bearer {}",
        anonymous.json()["token"].as_str().unwrap()
    );
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let path = "/v2/ferry/public/manifests/v1";
    let served = registry.request(path, &["-H", &bearer, "-H", accept]);
    assert_eq!(served_digest(&served), pushed.digest);
    // The anonymous token carries pull only: a push with it is refused.
    let put = registry.request(
        "/v2/ferry/public/manifests/v2",
        &[
            "-X",
            "PUT",
            "-H",
            &bearer,
            "-H",
            "Content-Type: application/vnd.oci.image.manifest.v1+json",
            "--data-binary",
            "{}",
        ],
    );
    assert_eq!(put.status, 401, "{}", put.text());
    let wrong = Credentials::new(REGISTRY_USER, "wrong");
    assert_eq!(registry.token_request(scope, Some(&wrong)).status, 401);
    let look = pull_and_look(&registry, &pushed.reference, None);
    assert_eq!(look.code, Some(0), "{look:#?}");
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn the_index_lists_two_platforms_whose_markers_differ() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::shared(RegistryKind::Tls);
    for (tag, format, index_type) in [
        (
            "oci",
            ManifestFormat::Oci,
            "application/vnd.oci.image.index.v1+json",
        ),
        (
            "docker",
            ManifestFormat::Docker,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ] {
        let pushed = registry.push_multi_platform(&format!("ferry/multi:{tag}"), format);
        let response = registry.get_manifest("ferry/multi", tag);
        assert_eq!(served_digest(&response), pushed.index.digest, "{tag}");
        let index = response.json();
        assert_eq!(index["mediaType"], index_type);
        let platforms: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]))
            .collect();
        assert_eq!(
            platforms,
            ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""],
            "{tag}"
        );
        assert_ne!(pushed.amd64_digest, pushed.arm64_digest);
        for (digest, arch) in [
            (&pushed.amd64_digest, "amd64"),
            (&pushed.arm64_digest, "arm64"),
        ] {
            let image = manifest(registry, "ferry/multi", digest);
            let config =
                registry.get_blob("ferry/multi", image["config"]["digest"].as_str().unwrap());
            assert_eq!(config.json()["architecture"], arch, "{tag}");
            let base = image["layers"][0]["digest"].as_str().unwrap();
            let base = registry.get_blob("ferry/multi", base);
            assert_eq!(
                layer_file(&base.body, MARKER_FILE),
                format!("linux/{arch}\n")
            );
        }
    }
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn a_tag_moves_to_another_image_and_blobs_lie_where_blob_path_says() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::start(RegistryKind::TlsToken);
    let first = registry.push_two_layer("ferry/moving:first", "first", ManifestFormat::Oci);
    let second = registry.push_two_layer("ferry/moving:second", "second", ManifestFormat::Oci);
    assert_ne!(first.digest, second.digest);
    assert_eq!(
        registry.retag("ferry/moving", "first", "latest"),
        first.digest
    );
    assert_eq!(
        served_digest(&registry.get_manifest("ferry/moving", "latest")),
        first.digest
    );
    assert_eq!(
        registry.retag("ferry/moving", "second", "latest"),
        second.digest
    );
    assert_eq!(
        served_digest(&registry.get_manifest("ferry/moving", "latest")),
        second.digest
    );
    // The old image stays pullable by digest.
    assert_eq!(
        registry.get_manifest("ferry/moving", &first.digest).status,
        200
    );

    // Every blob of the manifest is the file blob_path names, with that digest.
    let image = manifest(&registry, "ferry/moving", "second");
    let blobs = image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&image["config"]]);
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap();
        let path = registry.blob_path(digest);
        assert_eq!(sha256sum(&path), digest);
        assert!(path.starts_with(registry.storage_dir()));
    }
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn the_large_image_has_one_layer_of_the_size_asked_for() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::shared(RegistryKind::Plain);
    let pushed = registry.push_large("ferry/large:8m", 8, ManifestFormat::Oci);
    let image = manifest(registry, "ferry/large", "8m");
    assert_eq!(
        served_digest(&registry.get_manifest("ferry/large", "8m")),
        pushed.digest
    );
    let layers = image["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let size = layers[0]["size"].as_u64().unwrap();
    assert!(size > 8 << 20, "random data does not compress: {size}");
}

#[test]
#[ignore = "needs root and tests/prepare-host (docker-registry, podman, openssl, htpasswd, python3-jwt): run tests/run, or as root cargo test -- --include-ignored"]
fn a_dropped_registry_is_stopped_and_its_folder_removed() {
    require(&registry_prerequisites());
    let registry = LocalRegistry::start(RegistryKind::TlsToken);
    let storage = registry.storage_dir();
    let pid = registry.pid();
    let realm = registry.token_realm().unwrap();
    let base = registry.base_url();
    assert!(storage.is_dir());
    drop(registry);
    assert!(!storage.exists(), "{} left", storage.display());
    // The pid may be reused by then, but not by a registry serving that folder.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let folder = storage.parent().unwrap().to_string_lossy().into_owned();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&folder),
        "registry {pid} still there"
    );
    for url in [format!("{base}/v2/"), realm] {
        let status = Command::new("curl")
            .args(["-sk", "--noproxy", "*", "--max-time", "5", &url])
            .status()
            .unwrap();
        assert_eq!(
            status.code(),
            Some(7),
            "{url} still answers (curl: couldn't connect)"
        );
    }
}
