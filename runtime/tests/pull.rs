//! `ferry pull` against a real registry on this machine: Debian's `docker-registry`
//! (the CNCF distribution registry) on 127.0.0.1 over plain HTTP, with images that
//! podman built and pushed in both manifest formats (Docker v2 schema 2 and OCI), a
//! multi-platform index, and a layer that deletes a file (a whiteout).
//!
//! Needs root, `docker-registry` and podman (tests/prepare-host installs them): the
//! tests are ignored unless asked for, and fail, naming what is missing, without them.
//!
//!     cargo test -p ferry-runtime --test pull -- --include-ignored

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Builds the images and pushes them. Layer one (podman build, FROM scratch): busybox
/// and two data files; layer two (a committed edit): one file deleted, one added.
/// `ferry/test:v2s2` and `ferry/test:oci` are the same image in the two formats;
/// `ferry/list:1` is an index with that image for this machine and the one-layer base
/// for s390x; `ferry/corrupt:1` adds a layer no other image has.
const RECIPE: &str = r#"
set -euo pipefail
P="podman --root $WORK/store --runroot $WORK/run --storage-driver overlay"
R=127.0.0.1:$PORT
mkdir -p "$WORK/ctx/data"
cp "$BUSYBOX" "$WORK/ctx/busybox"
echo keep > "$WORK/ctx/data/keep"
echo gone > "$WORK/ctx/data/gone"
cat > "$WORK/ctx/Containerfile" <<'EOF'
FROM scratch
COPY busybox /bin/busybox
COPY data /data
ENV APP_GREETING=hello
WORKDIR /data
CMD ["/bin/busybox", "cat", "keep"]
EOF
$P build -q --timestamp 0 -t ferry-test/base "$WORK/ctx" >/dev/null
c=$($P create ferry-test/base)
m=$($P mount "$c")
rm "$m/data/gone"
echo second > "$m/data/layer2"
$P umount "$c" >/dev/null
$P commit -q "$c" ferry-test/layers >/dev/null
$P rm -f "$c" >/dev/null
c=$($P create ferry-test/layers)
m=$($P mount "$c")
echo "unique $$ $RANDOM $(date +%s%N)" > "$m/data/unique"
$P umount "$c" >/dev/null
$P commit -q "$c" ferry-test/corrupt >/dev/null
$P rm -f "$c" >/dev/null
$P push -q --tls-verify=false --format v2s2 --digestfile "$WORK/v2s2.digest" ferry-test/layers "docker://$R/ferry/test:v2s2"
$P push -q --tls-verify=false --format oci ferry-test/layers "docker://$R/ferry/test:oci"
$P push -q --tls-verify=false --format v2s2 ferry-test/corrupt "docker://$R/ferry/corrupt:1"
$P manifest create ferry-test/list >/dev/null
$P manifest add --os linux --arch "$ARCH" ferry-test/list containers-storage:localhost/ferry-test/layers >/dev/null
$P manifest add --os linux --arch s390x ferry-test/list containers-storage:localhost/ferry-test/base >/dev/null
$P manifest push --all --tls-verify=false ferry-test/list "docker://$R/ferry/list:1" >/dev/null
$P rmi -a -f >/dev/null 2>&1 || true
rm -rf "$WORK/store" "$WORK/run" "$WORK/ctx"
"#;

struct Registry {
    /// `127.0.0.1:PORT`.
    host: String,
    storage: PathBuf,
    /// The digest podman recorded for `ferry/test:v2s2`.
    v2s2_digest: String,
    /// Held open: the registry's wrapper kills it when this closes (the test process
    /// exits), since a static is never dropped.
    _lifeline: Mutex<ChildStdin>,
    /// The wrapper (bash), reaped by init once the test process is gone.
    _wrapper: Mutex<Child>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

#[track_caller]
fn require_registry_tools() {
    require_root_and_tools(&["podman", "docker-registry", "unsquashfs"]);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| {
        let dir = TempDir::new_in(Path::new("/var/tmp"), "registry").keep_until_exit();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.join("storage");
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n",
                storage.display()
            ),
        )
        .unwrap();
        let mut wrapper: Child = Command::new("bash")
            .args([
                "-c",
                "docker-registry serve \"$1\" >\"$2\" 2>&1 & pid=$!; read -r _; kill $pid",
                "registry",
            ])
            .arg(&config)
            .arg(dir.join("registry.log"))
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting docker-registry");
        let lifeline = wrapper.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {host}: {}",
                fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut cmd = Command::new("bash");
        cmd.args(["-c", RECIPE])
            .env("WORK", &dir)
            .env("PORT", port.to_string())
            .env("BUSYBOX", BUSYBOX)
            .env("ARCH", go_arch());
        let out = run_with_timeout(cmd, Duration::from_secs(300));
        assert_eq!(out.code, Some(0), "building and pushing the images: {out:#?}");
        let v2s2_digest = fs::read_to_string(dir.join("v2s2.digest"))
            .unwrap()
            .trim()
            .to_string();
        Registry {
            host,
            storage,
            v2s2_digest,
            _lifeline: Mutex::new(lifeline),
            _wrapper: Mutex::new(wrapper),
        }
    })
}

/// `ferry pull --insecure-registry HOST [extra] docker://HOST/NAME OUT` as root.
fn pull(name: &str, out: &Path, extra: &[&str]) -> Outcome {
    let r = registry();
    let reference = format!("docker://{}/{name}", r.host);
    let mut args: Vec<&str> = vec!["pull", "--insecure-registry", &r.host];
    args.extend_from_slice(extra);
    args.push(&reference);
    args.push(out.to_str().unwrap());
    ferry(Path::new("/"), &args)
}

/// The image unpacked by unsquashfs.
fn unpack(image: &Path, into: &Path) -> PathBuf {
    let dest = into.join(format!(
        "{}.d",
        image.file_name().unwrap().to_string_lossy()
    ));
    let out = Command::new("unsquashfs")
        .args(["-no-progress", "-quiet", "-d"])
        .arg(&dest)
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "unsquashfs {}: {out:?}",
        image.display()
    );
    dest
}

/// Nothing but `keep` is left in `dir`: no partial image, no staging folder.
#[track_caller]
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "what {} holds", dir.display());
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn both_manifest_formats_give_the_same_image_bytes() {
    require_registry_tools();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull");
    let v2s2 = dir.join("v2s2.sqfs");
    let out = pull("ferry/test:v2s2", &v2s2, &[]);
    out.expect_success("pull of the v2s2 tag");
    assert_eq!(out.stdout.trim(), v2s2.to_str().unwrap());
    let oci = dir.join("oci.sqfs");
    pull("ferry/test:oci", &oci, &[]).expect_success("pull of the OCI tag");
    assert_eq!(sha256sum(&v2s2), sha256sum(&oci), "same tree, same bytes");

    // Pinned by digest, and pulled again over an existing file with --force.
    let r = registry();
    let pinned = format!("ferry/test@{}", r.v2s2_digest);
    pull(&pinned, &v2s2, &[]).one_ferry_line(&["already exists", "--force"]);
    pull(&pinned, &v2s2, &["--force"]).expect_success("pull by digest");
    assert_eq!(sha256sum(&v2s2), sha256sum(&oci));

    // The layers applied in order: the whiteout removed `gone`; the config is kept.
    let root = unpack(&v2s2, dir.path());
    assert_eq!(
        fs::read_to_string(root.join("data/keep")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("data/layer2")).unwrap(),
        "second\n"
    );
    assert!(!root.join("data/gone").exists(), "the whiteout applied");
    assert!(root.join("bin/busybox").is_file());
    let config = fs::read_to_string(root.join(".ferry/image.json")).unwrap();
    assert!(config.contains("APP_GREETING=hello"), "{config}");
    assert!(config.contains("\"WorkingDir\": \"/data\""), "{config}");
    only(dir.path(), &["oci.sqfs", "v2s2.sqfs", "v2s2.sqfs.d"]);
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn the_index_gives_this_machines_image_or_the_platform_asked_for() {
    require_registry_tools();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-index");
    let here = dir.join("here.sqfs");
    pull("ferry/list:1", &here, &[]).expect_success("pull of the index");
    assert!(!unpack(&here, dir.path()).join("data/gone").exists());
    let other = dir.join("s390x.sqfs");
    pull("ferry/list:1", &other, &["--platform", "linux/s390x"]).expect_success("pull for s390x");
    assert!(unpack(&other, dir.path()).join("data/gone").exists());
    let none = dir.join("none.sqfs");
    let line = pull("ferry/list:1", &none, &["--platform", "linux/riscv64"])
        .one_ferry_line(&["ferry/list:1", "linux/riscv64", "linux/s390x", "--platform"])
        .to_string();
    assert!(line.contains(&format!("linux/{}", go_arch())), "{line}");
    assert!(!none.exists());
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn failures_are_one_line_and_leave_nothing() {
    require_registry_tools();
    let r = registry();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-fail");
    let out = dir.join("x.sqfs");
    pull("ferry/test:missing", &out, &[]).one_ferry_line(&["ferry/test:missing", "not found"]);
    pull("ferry/nothing:1", &out, &[]).one_ferry_line(&["ferry/nothing:1", "not found"]);
    // A digest the registry does not have, and a bad reference.
    let absent = format!("ferry/test@sha256:{}", "0".repeat(64));
    pull(&absent, &out, &[]).one_ferry_line(&["not found"]);
    pull("ferry/Test:1", &out, &[]).one_ferry_line(&["ferry/Test", "not valid"]);
    // HTTPS is the default: a plain-HTTP registry not named insecure is an error that
    // says how to name it.
    let reference = format!("docker://{}/ferry/test:v2s2", r.host);
    ferry(Path::new("/"), &["pull", &reference, out.to_str().unwrap()])
        .one_ferry_line(&[&reference, "--insecure-registry"]);
    only(dir.path(), &[]);
}

#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn a_corrupt_layer_is_refused() {
    require_registry_tools();
    let r = registry();
    // The layer only ferry/corrupt has: its layer links minus ferry/test's.
    let layers = |repo: &str| -> Vec<String> {
        let dir = r
            .storage
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_layers/sha256");
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let shared = layers("ferry/test");
    let own: Vec<String> = layers("ferry/corrupt")
        .into_iter()
        .filter(|l| !shared.contains(l))
        .collect();
    assert!(!own.is_empty(), "ferry/corrupt has a layer of its own");
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-corrupt");
    let out = dir.join("x.sqfs");
    // Before: it pulls.
    pull("ferry/corrupt:1", &out, &[]).expect_success("pull before the corruption");
    fs::remove_file(&out).unwrap();
    for hex in &own {
        let data = r
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = fs::read(&data).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        fs::File::create(&data).unwrap().write_all(&bytes).unwrap();
    }
    pull("ferry/corrupt:1", &out, &[]).one_ferry_line(&["ferry/corrupt:1", "digest mismatch"]);
    only(dir.path(), &[]);
}

/// `ferry run --user NAME docker://REF` resolves the reference as that user would at
/// submission, with their rights: the image goes into their own store (owned by them,
/// root never writes there), and runs pinned. `ferry run sha256:HEX` then finds it
/// there without the registry.
#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn ferry_run_takes_references_and_digests_through_the_users_store() {
    require_registry_tools();
    let r = registry();
    let cache = Path::new(test_support::TEST_HOME).join(".cache/ferry");
    let _ = fs::remove_dir_all(&cache);
    let reference = format!("docker://{}/ferry/test:oci", r.host);
    let mut cmd = Command::new(ferry_bin());
    cmd.args(["run", "--user", test_support::TEST_USER, &reference, "--"])
        .args(["/bin/busybox", "cat", "/data/keep"])
        .current_dir("/")
        .env("FERRY_INSECURE_REGISTRIES", &r.host);
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    out.expect_success("ferry run of a reference");
    assert_eq!(out.stdout, "keep\n");
    let images: Vec<PathBuf> = fs::read_dir(cache.join("images/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    let owner = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&images[0]).unwrap());
    assert_eq!(
        owner,
        test_support::test_user().uid,
        "stored by the user, not root"
    );
    let digest = sha256sum(&images[0]);
    let mut cmd = Command::new(ferry_bin());
    cmd.args(["run", "--user", test_support::TEST_USER, &digest, "--"])
        .args(["/bin/busybox", "cat", "/data/layer2"])
        .current_dir("/");
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    out.expect_success("ferry run of a stored digest");
    assert_eq!(out.stdout, "second\n");
    let _ = fs::remove_dir_all(&cache);
}

/// A registry front that answers manifests itself (from the real registry) and sends
/// blob requests to another host, as registries backed by object storage do.
const REDIRECTING_FRONT: &str = r#"
import http.server, sys, urllib.request, urllib.error
registry = sys.argv[1]
hits = open(sys.argv[2], "a")
class Front(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_HEAD(self):
        self.answer(body=False)
    def do_GET(self):
        self.answer(body=True)
    def answer(self, body):
        if self.path.startswith("/storage/"):
            hits.write(self.headers.get("Host", "") + " " + self.path + "\n")
            hits.flush()
            target = "http://" + registry + self.path[len("/storage"):]
        elif "/blobs/" in self.path:
            self.send_response(307)
            port = self.server.server_address[1]
            self.send_header("Location", "http://localhost:%d/storage%s" % (port, self.path))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            target = "http://" + registry + self.path
        headers = {k: v for k, v in self.headers.items() if k.lower() == "accept"}
        try:
            reply = urllib.request.urlopen(urllib.request.Request(target, method=self.command, headers=headers))
        except urllib.error.HTTPError as e:
            reply = e
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Blobs that the registry redirects to another host (object storage) are followed
/// there and still checked against their digests.
#[test]
#[ignore = "needs root, docker-registry and podman: sudo tests/prepare-host"]
fn blobs_redirected_to_another_host_are_followed() {
    use std::io::BufRead;
    require_registry_tools();
    let r = registry();
    let dir = TempDir::new_in(Path::new("/var/tmp"), "pull-redirect");
    let mut front = Command::new("/usr/bin/python3")
        .args(["-c", REDIRECTING_FRONT, &r.host])
        .arg(dir.join("storage-hits"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(front.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().to_string();
    let host = format!("127.0.0.1:{port}");
    let out_file = dir.join("redirected.sqfs");
    let reference = format!("docker://{host}/ferry/test:oci");
    let insecure = format!("{host},localhost:{port}");
    let mut cmd = Command::new(ferry_bin());
    cmd.args(["pull", &reference, out_file.to_str().unwrap()])
        .current_dir("/")
        .env("FERRY_INSECURE_REGISTRIES", &insecure);
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    let _ = front.kill();
    let _ = front.wait();
    out.expect_success("pull through the redirecting front");
    // The blobs really came through the other host name.
    let hits = fs::read_to_string(dir.join("storage-hits")).unwrap_or_default();
    assert!(
        hits.lines().count() >= 2,
        "blob requests at the storage host: {hits:?}"
    );
    let direct = dir.join("direct.sqfs");
    pull("ferry/test:oci", &direct, &[]).expect_success("pull from the registry itself");
    assert_eq!(sha256sum(&out_file), sha256sum(&direct), "the same image");
}
