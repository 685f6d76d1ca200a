//! The test registries' certificates, made with openssl once per test process: a CA, a
//! server certificate for 127.0.0.1 and localhost that every registry and token server
//! uses, the token signer's certificate, and a bundle of the system CAs plus the test CA
//! for clients that read `SSL_CERT_FILE`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::tempdir::TempDir;

/// Where Debian's ca-certificates keeps the system CAs as one file.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub struct TestCa {
    /// The CA's certificate (PEM): what a client must trust.
    pub ca_cert: PathBuf,
    /// The server certificate (SAN IP:127.0.0.1, DNS:localhost) and its key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The certificate and key that sign the token server's JWTs (their chain ends at
    /// the CA, which is the registry's rootcertbundle).
    pub signing_cert: PathBuf,
    pub signing_key: PathBuf,
    /// The system CAs followed by the test CA.
    pub bundle: PathBuf,
    /// A folder with `ca.crt` only, for podman's `--cert-dir`.
    pub cert_dir: PathBuf,
}

/// The test CA, made on first use and removed when the test process exits.
pub fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = TempDir::new("registry-ca");
        let ca = make_ca(dir.path());
        dir.keep_until_exit();
        ca
    })
}

fn make_ca(dir: &Path) -> TestCa {
    let file = |name: &str| dir.join(name);
    let ca = TestCa {
        ca_cert: file("ca.crt"),
        server_cert: file("server.crt"),
        server_key: file("server.key"),
        signing_cert: file("signing.crt"),
        signing_key: file("signing.key"),
        bundle: file("bundle.crt"),
        cert_dir: file("cert-dir"),
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "7",
        "-subj",
        "/CN=ferry test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path_str(&file("ca.key")),
        "-out",
        path_str(&ca.ca_cert),
    ]);
    issue(
        dir,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         extendedKeyUsage=serverAuth\n\
         basicConstraints=CA:FALSE\n",
    );
    issue(
        dir,
        "signing",
        "/CN=ferry test token signer",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    );
    let mut bundle = fs::read(SYSTEM_CA_BUNDLE).unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend(fs::read(&ca.ca_cert).unwrap());
    fs::write(&ca.bundle, bundle).unwrap();
    fs::create_dir(&ca.cert_dir).unwrap();
    fs::copy(&ca.ca_cert, ca.cert_dir.join("ca.crt")).unwrap();
    ca
}

/// Makes NAME.key and NAME.crt in `dir`, signed by the CA there, with `extensions`.
fn issue(dir: &Path, name: &str, subject: &str, extensions: &str) {
    let file = |suffix: &str| dir.join(format!("{name}.{suffix}"));
    fs::write(file("ext"), extensions).unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        path_str(&file("key")),
        "-out",
        path_str(&file("csr")),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "7",
        "-in",
        path_str(&file("csr")),
        "-CA",
        path_str(&dir.join("ca.crt")),
        "-CAkey",
        path_str(&dir.join("ca.key")),
        "-CAcreateserial",
        "-extfile",
        path_str(&file("ext")),
        "-out",
        path_str(&file("crt")),
    ]);
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
