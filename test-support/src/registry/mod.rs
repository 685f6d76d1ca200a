//! A real OCI registry on this machine for the pull tests: Debian's `docker-registry`
//! (the CNCF distribution registry 2.8) on a free 127.0.0.1 port, started as a child of
//! the test, with its own storage folder and config. Kinds: plain HTTP, HTTPS with the
//! test CA, HTTPS with htpasswd Basic auth, and HTTPS with Bearer token auth served by
//! `token-server.py` (Debian's python3-jwt and python3-cryptography) on another port.
//! Images go in with podman ([`images`]); a client learns to trust the CA from
//! [`LocalRegistry::env_for_client`] and finds a login in the files [`auth_file`] writes.
//!
//! Each registry is killed and its folder removed when dropped, or when the test
//! process exits for one kept in a static ([`LocalRegistry::shared`]).

pub mod auth_file;
pub mod ca;
pub mod images;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::at_exit::{forget_process, kill_at_exit, remove_at_exit};
use crate::prerequisites::{find_tool, is_root, missing_tools, static_busybox_problem};
use crate::tempdir::TempDir;
pub use auth_file::{auth_file_json, write_auth_file, write_docker_config, Credentials};
pub use ca::{test_ca, TestCa};
pub use images::{ManifestFormat, PlatformIndex, PushedImage};

/// The login of the registries with auth (htpasswd and the token server). The colon and
/// the space catch a client that splits `USER:PASSWORD` at the wrong colon or quotes badly.
pub const REGISTRY_USER: &str = "ferry-puller";
pub const REGISTRY_PASSWORD: &str = "pa:ss w0rd";
/// The `service` and `issuer` of the Bearer-auth registry and its token server.
pub const TOKEN_SERVICE: &str = "ferry-test-registry";
pub const TOKEN_ISSUER: &str = "ferry-test-token-issuer";

/// The token server, written into each Bearer-auth registry's folder.
const TOKEN_SERVER: &str = include_str!("token-server.py");
/// Debian's python, which has python3-jwt (a python3 earlier on PATH may lack it).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
const START_LIMIT: Duration = Duration::from_secs(20);
/// Media types a manifest request accepts: image manifests and indexes, OCI and Docker.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryKind {
    /// HTTP, no auth: a registry the client must be told is insecure.
    Plain,
    /// HTTPS with a certificate from the test CA, no auth.
    Tls,
    /// HTTPS and htpasswd Basic auth ([`REGISTRY_USER`], [`REGISTRY_PASSWORD`]).
    TlsBasic,
    /// HTTPS and Bearer token auth: the token server wants the Basic login for any token.
    TlsToken,
    /// HTTPS and Bearer token auth where a request without a login gets a pull-only
    /// token, as Docker Hub hands out for public repositories.
    TlsTokenAnonymousPull,
}

impl RegistryKind {
    pub const ALL: [RegistryKind; 5] = [
        RegistryKind::Plain,
        RegistryKind::Tls,
        RegistryKind::TlsBasic,
        RegistryKind::TlsToken,
        RegistryKind::TlsTokenAnonymousPull,
    ];

    pub fn is_tls(self) -> bool {
        self != RegistryKind::Plain
    }

    pub fn has_token_server(self) -> bool {
        matches!(
            self,
            RegistryKind::TlsToken | RegistryKind::TlsTokenAnonymousPull
        )
    }

    /// Whether pushing (and, except for anonymous pull, pulling) needs the login.
    pub fn has_login(self) -> bool {
        matches!(self, RegistryKind::TlsBasic) || self.has_token_server()
    }
}

/// Root (podman pushes as root), the registry and the tools the harness runs, and a
/// static busybox for the images: each missing one, for [`crate::require`].
pub fn registry_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (podman pushes the test images as root)".to_string());
    }
    missing.extend(missing_tools(&[
        "docker-registry",
        "podman",
        "openssl",
        "htpasswd",
        "curl",
    ]));
    let python_modules = Command::new(SYSTEM_PYTHON)
        .args(["-c", "import jwt, cryptography"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !python_modules.is_ok_and(|s| s.success()) {
        missing.push(format!(
            "{SYSTEM_PYTHON} with the modules jwt and cryptography (python3-jwt, python3-cryptography)"
        ));
    }
    missing.extend(static_busybox_problem(Path::new(crate::fixture::BUSYBOX)));
    missing
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The headers of the last response, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub struct LocalRegistry {
    kind: RegistryKind,
    port: u16,
    // The processes are fields before the folder: they die before it is removed.
    registry: KilledOnDrop,
    token_server: Option<(KilledOnDrop, u16)>,
    credentials: Option<Credentials>,
    requests: AtomicU64,
    /// Config, storage, htpasswd, logs and the token server's script: removed on drop.
    dir: TempDir,
}

impl LocalRegistry {
    /// Starts a registry of `kind` (and its token server) and waits until it answers.
    pub fn start(kind: RegistryKind) -> LocalRegistry {
        let dir = TempDir::new_in(Path::new("/var/tmp"), "registry");
        remove_at_exit(dir.path().to_path_buf());
        fs::create_dir(dir.join("storage")).unwrap();
        fs::create_dir(dir.join("requests")).unwrap();
        let credentials = kind
            .has_login()
            .then(|| Credentials::new(REGISTRY_USER, REGISTRY_PASSWORD));
        if kind == RegistryKind::TlsBasic {
            write_htpasswd(&dir.join("htpasswd"));
        }
        let token_server = kind
            .has_token_server()
            .then(|| start_token_server(dir.path(), kind));
        let token_port = token_server.as_ref().map(|(_, port)| *port);
        // A free port can be taken between our probe and the registry's bind: try again.
        let mut failure = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("config.yml");
            fs::write(&config, registry_config(kind, dir.path(), port, token_port)).unwrap();
            let log = dir.join("registry.log");
            let mut registry = spawn_logged(
                Command::new(find_tool("docker-registry").unwrap_or("docker-registry".into()))
                    .arg("serve")
                    .arg(&config)
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin"),
                &log,
            );
            let base_url = format!(
                "{}://127.0.0.1:{port}",
                if kind.is_tls() { "https" } else { "http" }
            );
            match wait_ready(&mut registry.0, &base_url, kind) {
                Ok(()) => {
                    return LocalRegistry {
                        kind,
                        port,
                        registry,
                        token_server,
                        credentials,
                        requests: AtomicU64::new(0),
                        dir,
                    }
                }
                Err(why) => {
                    failure = format!("{why}: {}", fs::read_to_string(&log).unwrap_or_default());
                    if !failure.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("the {kind:?} test registry did not start: {failure}");
    }

    /// One registry of `kind` for the whole test process, started on first use.
    pub fn shared(kind: RegistryKind) -> &'static LocalRegistry {
        static SHARED: [OnceLock<LocalRegistry>; 5] = [
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
            OnceLock::new(),
        ];
        let index = RegistryKind::ALL.iter().position(|k| *k == kind).unwrap();
        SHARED[index].get_or_init(|| LocalRegistry::start(kind))
    }

    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    /// The registry process (to stop it with a signal, as a network failure).
    pub fn pid(&self) -> u32 {
        self.registry.0.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`: the registry part of a reference, and the key of an auth file.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `HOST:PORT/NAME` (NAME being `repo:tag` or `repo@digest`).
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.host_port())
    }

    /// `https://127.0.0.1:PORT` (or `http://` for a plain registry).
    pub fn base_url(&self) -> String {
        let scheme = if self.kind.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host_port())
    }

    /// The test CA's certificate, which a client must trust (None for a plain registry).
    pub fn ca_cert_path(&self) -> Option<&'static Path> {
        self.kind.is_tls().then(|| test_ca().ca_cert.as_path())
    }

    /// The login the registry wants (None when it wants none).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The registry's storage root (`docker/registry/v2/...` under it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// The file that holds the blob `sha256:HEX` in the storage (to corrupt it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The token server's URL (`https://127.0.0.1:PORT/token`), for token kinds.
    pub fn token_realm(&self) -> Option<String> {
        self.token_server
            .as_ref()
            .map(|(_, port)| format!("https://127.0.0.1:{port}/token"))
    }

    /// What a client's environment needs to trust the registry: `SSL_CERT_FILE` naming
    /// the system CAs plus the test CA (nothing for a plain registry, which the client
    /// must be told is insecure instead).
    pub fn env_for_client(&self) -> Vec<(String, String)> {
        if !self.kind.is_tls() {
            return Vec::new();
        }
        vec![(
            "SSL_CERT_FILE".to_string(),
            test_ca().bundle.display().to_string(),
        )]
    }

    /// What the registry logged so far (for a failing test's message).
    pub fn log(&self) -> String {
        let mut log = fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        if self.token_server.is_some() {
            log += &fs::read_to_string(self.dir.join("token-server.log")).unwrap_or_default();
        }
        log
    }

    /// GET (or whatever `extra` says) `BASE_URL + path` with curl, trusting the test CA;
    /// `extra` adds curl options (`-u`, `-H`, `-X`, `--data-binary`).
    pub fn request(&self, path: &str, extra: &[&str]) -> Response {
        self.request_url(&format!("{}{path}", self.base_url()), extra)
    }

    /// As [`LocalRegistry::request`], for any URL (the token server's).
    pub fn request_url(&self, url: &str, extra: &[&str]) -> Response {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let headers = self.dir.join(format!("requests/{n}.headers"));
        let body = self.dir.join(format!("requests/{n}.body"));
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--noproxy", "*", "--max-time", "120"]);
        if let Some(ca) = self.ca_cert_path() {
            curl.arg("--cacert").arg(ca);
        }
        curl.arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(extra)
            .arg(url)
            .stdin(Stdio::null());
        let out = curl.output().expect("running curl");
        assert!(
            out.status.success(),
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl's status for {url}: {out:?}"));
        let response = Response {
            status,
            headers: parse_headers(&fs::read_to_string(&headers).unwrap_or_default()),
            body: fs::read(&body).unwrap_or_default(),
        };
        let _ = fs::remove_file(headers);
        let _ = fs::remove_file(body);
        response
    }

    /// Asks the token server for a token for `scope` (`repository:NAME:pull`), with
    /// `login` as Basic credentials (or none).
    pub fn token_request(&self, scope: &str, login: Option<&Credentials>) -> Response {
        let realm = self
            .token_realm()
            .unwrap_or_else(|| panic!("a {:?} registry has no token server", self.kind));
        let url = format!("{realm}?service={TOKEN_SERVICE}&scope={scope}");
        match login {
            Some(login) => self.request_url(&url, &["-u", &login.user_colon_password()]),
            None => self.request_url(&url, &[]),
        }
    }

    /// A token for `scope` with the registry's login (the test fails without one).
    pub fn bearer_token(&self, scope: &str) -> String {
        let response = self.token_request(scope, self.credentials());
        assert_eq!(
            response.status,
            200,
            "token for {scope}: {}",
            response.text()
        );
        let token = response.json()["token"].as_str().map(str::to_string);
        token.unwrap_or_else(|| panic!("no token in {}", response.text()))
    }

    /// curl options that authorize `actions` (`pull`, `pull,push`) on `repository` with
    /// the registry's login: `-u` for Basic, a Bearer token header, or nothing.
    pub fn auth_args(&self, repository: &str, actions: &str) -> Vec<String> {
        match (self.kind.has_token_server(), self.credentials()) {
            (true, _) => {
                let token = self.bearer_token(&format!("repository:{repository}:{actions}"));
                vec!["-H".into(), format!("Authorization: Bearer {token}")]
            }
            (false, Some(login)) => vec!["-u".into(), login.user_colon_password()],
            (false, None) => Vec::new(),
        }
    }

    /// The manifest or index `repository:reference` as the registry serves it (any of the
    /// OCI and Docker media types), with the login.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> Response {
        let mut args = self.auth_args(repository, "pull");
        args.extend(["-H".into(), format!("Accept: {MANIFEST_TYPES}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&format!("/v2/{repository}/manifests/{reference}"), &args)
    }

    /// The blob `digest` of `repository` (a layer or config), with the login.
    pub fn get_blob(&self, repository: &str, digest: &str) -> Response {
        let args = self.auth_args(repository, "pull");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.request(&format!("/v2/{repository}/blobs/{digest}"), &args)
    }

    /// Points `repository:to_tag` at the manifest `repository:from` has now (the same
    /// bytes, so the same digest), as when a tag moves. Returns that digest.
    pub fn retag(&self, repository: &str, from: &str, to_tag: &str) -> String {
        let manifest = self.get_manifest(repository, from);
        assert_eq!(
            manifest.status,
            200,
            "{repository}:{from}: {}",
            manifest.text()
        );
        let media_type = manifest
            .header("content-type")
            .expect("a manifest has a content type")
            .to_string();
        let body = self.dir.join(format!(
            "requests/retag-{}.json",
            self.requests.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&body, &manifest.body).unwrap();
        let mut args = self.auth_args(repository, "pull,push");
        args.extend([
            "-X".into(),
            "PUT".into(),
            "-H".into(),
            format!("Content-Type: {media_type}"),
            "--data-binary".into(),
            format!("@{}", body.display()),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let put = self.request(&format!("/v2/{repository}/manifests/{to_tag}"), &args);
        let _ = fs::remove_file(body);
        assert_eq!(
            put.status,
            201,
            "retag {repository}:{to_tag}: {}",
            put.text()
        );
        put.header("docker-content-digest")
            .expect("the registry names the digest it stored")
            .to_string()
    }
}

/// A child process that is killed and reaped when dropped, and at exit if never dropped.
struct KilledOnDrop(Child);

impl KilledOnDrop {
    fn new(child: Child) -> KilledOnDrop {
        kill_at_exit(child.id());
        KilledOnDrop(child)
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        forget_process(self.0.id());
    }
}

/// Starts `command` with stdout and stderr going to `log`.
fn spawn_logged(command: &mut Command, log: &Path) -> KilledOnDrop {
    let out = fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    KilledOnDrop::new(child)
}

/// A port nobody listens on now (the kernel's pick for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Waits until `GET /v2/` answers 200 or 401; Err when the registry exits or is slow.
fn wait_ready(registry: &mut Child, base_url: &str, kind: RegistryKind) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if let Some(status) = registry.try_wait().unwrap() {
            return Err(format!("docker-registry exited ({status})"));
        }
        let mut curl = Command::new("curl");
        curl.args(["-s", "--noproxy", "*", "--max-time", "2", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"]);
        if kind.is_tls() {
            curl.arg("--cacert").arg(&test_ca().ca_cert);
        }
        let out = curl
            .arg(format!("{base_url}/v2/"))
            .stdin(Stdio::null())
            .output()
            .expect("running curl");
        if matches!(String::from_utf8_lossy(&out.stdout).trim(), "200" | "401") {
            return Ok(());
        }
        if started.elapsed() > START_LIMIT {
            return Err(format!("no answer on {base_url} within {START_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bcrypt htpasswd file distribution wants, with the one login.
fn write_htpasswd(path: &Path) {
    let out = Command::new("htpasswd")
        .args(["-B", "-b", "-c"])
        .arg(path)
        .args([REGISTRY_USER, REGISTRY_PASSWORD])
        .stdin(Stdio::null())
        .output()
        .expect("running htpasswd");
    assert!(
        out.status.success(),
        "htpasswd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the token server over TLS on a port of its choosing and returns it with that
/// port (which it writes to a file once bound).
fn start_token_server(dir: &Path, kind: RegistryKind) -> (KilledOnDrop, u16) {
    let ca = test_ca();
    let script = dir.join("token-server.py");
    fs::write(&script, TOKEN_SERVER).unwrap();
    let password_file = dir.join("token-password");
    fs::write(&password_file, REGISTRY_PASSWORD).unwrap();
    let port_file = dir.join("token-server.port");
    let mut command = Command::new(SYSTEM_PYTHON);
    command
        .arg(&script)
        .arg("--port-file")
        .arg(&port_file)
        .arg("--tls-cert")
        .arg(&ca.server_cert)
        .arg("--tls-key")
        .arg(&ca.server_key)
        .arg("--signing-cert")
        .arg(&ca.signing_cert)
        .arg("--signing-key")
        .arg(&ca.signing_key)
        .args(["--issuer", TOKEN_ISSUER, "--service", TOKEN_SERVICE])
        .args(["--user", REGISTRY_USER])
        .arg("--password-file")
        .arg(&password_file)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    if kind == RegistryKind::TlsTokenAnonymousPull {
        command.arg("--anonymous-pull");
    }
    let log = dir.join("token-server.log");
    let mut server = spawn_logged(&mut command, &log);
    let started = Instant::now();
    loop {
        if let Ok(port) = fs::read_to_string(&port_file) {
            return (server, port.trim().parse().expect("a port number"));
        }
        let exited = server.0.try_wait().unwrap();
        if exited.is_some() || started.elapsed() > START_LIMIT {
            panic!(
                "the token server did not start ({exited:?}): {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The registry's config: storage in `dir`, 127.0.0.1:`port`, TLS and auth by `kind`.
fn registry_config(kind: RegistryKind, dir: &Path, port: u16, token_port: Option<u16>) -> String {
    let dir = dir.display();
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {dir}/storage\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: ferry-test-not-a-secret\n"
    );
    if kind.is_tls() {
        let ca = test_ca();
        config += &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            ca.server_cert.display(),
            ca.server_key.display()
        );
    }
    if kind == RegistryKind::TlsBasic {
        config += &format!("auth:\n  htpasswd:\n    realm: ferry-test\n    path: {dir}/htpasswd\n");
    }
    if let Some(token_port) = token_port {
        config += &format!(
            "auth:\n  token:\n    realm: https://127.0.0.1:{token_port}/token\n    \
             service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            test_ca().ca_cert.display()
        );
    }
    config
}

/// Header lines of curl's `-D` file, from the last response (after redirects or 100).
fn parse_headers(dump: &str) -> Vec<(String, String)> {
    let last = dump
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .unwrap_or_default();
    last.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect()
}
