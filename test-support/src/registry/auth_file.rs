//! The credentials files users already have, as the pull tests write them: podman's
//! `auth.json` and docker's `~/.docker/config.json` share the format
//! `{"auths": {"HOST:PORT": {"auth": base64("USER:PASSWORD")}}}`.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::user::TestUser;

/// A registry login: what htpasswd and the token server accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// `USER:PASSWORD`, as podman's `--creds` and curl's `-u` take it.
    pub fn user_colon_password(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// The JSON of an auth file with one entry per `(HOST:PORT, credentials)`.
pub fn auth_file_json(entries: &[(&str, &Credentials)]) -> String {
    let auths = entries
        .iter()
        .map(|(host, credentials)| {
            let auth = base64(credentials.user_colon_password().as_bytes());
            (host.to_string(), serde_json::json!({ "auth": auth }))
        })
        .collect::<serde_json::Map<_, _>>();
    serde_json::to_string_pretty(&serde_json::json!({ "auths": auths })).unwrap()
}

/// Writes an auth file at `path` (mode 0600, its missing parent folders 0700), owned by
/// `owner` when given (a file in the test user's home must be theirs).
pub fn write_auth_file(path: &Path, entries: &[(&str, &Credentials)], owner: Option<&TestUser>) {
    let mut missing = Vec::new();
    let mut parent = path.parent();
    while let Some(folder) = parent.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(folder.to_path_buf());
        parent = folder.parent();
    }
    for folder in missing.iter().rev() {
        fs::create_dir(folder).unwrap_or_else(|e| panic!("mkdir {}: {e}", folder.display()));
        fs::set_permissions(folder, fs::Permissions::from_mode(0o700)).unwrap();
    }
    fs::write(path, auth_file_json(entries))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    if let Some(user) = owner {
        for made in missing.iter().map(PathBuf::as_path).chain([path]) {
            chown(made, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
}

/// Writes `HOME/.docker/config.json` (as [`write_auth_file`] does) and returns its path.
pub fn write_docker_config(
    home: &Path,
    entries: &[(&str, &Credentials)],
    owner: Option<&TestUser>,
) -> PathBuf {
    let path = home.join(".docker/config.json");
    write_auth_file(&path, entries, owner);
    path
}

/// Standard base64 with padding (RFC 4648), as the auth files carry `USER:PASSWORD`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(group >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("alice:s3cr?t>", "YWxpY2U6czNjcj90Pg=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn an_auth_file_names_each_registry_with_its_login() {
        let json = auth_file_json(&[
            ("127.0.0.1:5000", &Credentials::new("alice", "pw")),
            ("localhost:5001", &Credentials::new("bob", "x")),
        ]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["auths"]["127.0.0.1:5000"]["auth"], "YWxpY2U6cHc=");
        assert_eq!(parsed["auths"]["localhost:5001"]["auth"], "Ym9iOng=");
    }

    #[test]
    fn an_auth_file_and_its_new_folders_are_private() {
        let dir = crate::tempdir::TempDir::new("auth-file");
        let path = write_docker_config(dir.path(), &[("h:1", &Credentials::new("u", "p"))], None);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join(".docker")), 0o700);
        assert!(fs::read_to_string(&path).unwrap().contains("\"dTpw\""));
    }
}
