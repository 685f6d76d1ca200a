//! Registry authentication: the `WWW-Authenticate` challenge a registry answers 401
//! with (Bearer: fetch a token from its realm; Basic: send the credentials), and the
//! credentials users already keep for podman and docker. Credentials are never printed:
//! their `Debug` shows the user name only.

use base64::Engine as _;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// One parsed challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// Get a token from `realm` (with `service` and `scope` as query parameters).
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// Send the credentials with every request.
    Basic,
}

impl Challenge {
    /// The first challenge ferry can answer among `WWW-Authenticate` header values
    /// (each may hold several challenges; Bearer is preferred over Basic).
    pub fn pick<'h>(headers: impl IntoIterator<Item = &'h str>) -> Option<Challenge> {
        let all: Vec<Challenge> = headers.into_iter().flat_map(parse_header).collect();
        all.iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or_else(|| all.first())
            .cloned()
    }
}

/// Parses a header value: `SCHEME k=v, k="v", ... [, SCHEME2 ...]`. Schemes other
/// than Bearer and Basic are skipped; a Bearer without realm is unusable and skipped.
fn parse_header(value: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut current: Option<(String, BTreeMap<String, String>)> = None;
    let mut rest = value.trim();
    let finish = |c: Option<(String, BTreeMap<String, String>)>, out: &mut Vec<Challenge>| {
        if let Some((scheme, mut params)) = c {
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => {
                    if let Some(realm) = params.remove("realm") {
                        out.push(Challenge::Bearer {
                            realm,
                            service: params.remove("service"),
                            scope: params.remove("scope"),
                        });
                    }
                }
                "basic" => out.push(Challenge::Basic),
                _ => {}
            }
        }
    };
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start();
        if let Some(value_text) = after.strip_prefix('=') {
            // A parameter of the current challenge.
            let (value, remaining) = parse_value(value_text.trim_start());
            if let Some((_, params)) = &mut current {
                params.insert(token.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else if token.is_empty() {
            break;
        } else {
            // A new scheme.
            finish(current.take(), &mut out);
            current = Some((token.to_string(), BTreeMap::new()));
            rest = after;
        }
    }
    finish(current, &mut out);
    out
}

/// A quoted string (with `\` escapes) or a token; returns it and what follows.
fn parse_value(text: &str) -> (String, &str) {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = text.find(',').unwrap_or(text.len());
        (text[..end].trim().to_string(), &text[end..])
    }
}

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: String, password: String) -> Credentials {
        Credentials { username, password }
    }

    /// The `Authorization` header value for Basic authentication.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// The credentials for `registry` (as `Reference::registry` names it) from the
    /// files podman and docker keep, in their order: `$REGISTRY_AUTH_FILE`,
    /// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.docker/config.json`. The first file
    /// with an entry for the registry wins; unreadable or malformed files are skipped
    /// (a login is optional), and an entry that only names a credential helper is not
    /// used.
    pub fn find(registry: &str, env: &dyn Fn(&str) -> Option<OsString>) -> Option<Credentials> {
        auth_files(env)
            .into_iter()
            .filter_map(|path| std::fs::read(path).ok())
            .find_map(|text| from_auth_file(&text, registry))
    }
}

/// The candidate credentials files, in the order they are searched.
fn auth_files(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE").filter(|f| !f.is_empty()) {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        files.push(PathBuf::from(dir).join("containers/auth.json"));
    }
    if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
        files.push(PathBuf::from(home).join(".docker/config.json"));
    }
    files
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The entry for `registry` in one auth.json/config.json text.
fn from_auth_file(text: &[u8], registry: &str) -> Option<Credentials> {
    let file: AuthFile = serde_json::from_slice(text).ok()?;
    file.auths
        .iter()
        .filter(|(key, _)| registry_of_key(key) == registry)
        .find_map(|(_, entry)| entry.credentials())
}

impl AuthEntry {
    fn credentials(&self) -> Option<Credentials> {
        if let Some(encoded) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()?;
            let pair = String::from_utf8(decoded).ok()?;
            let (user, password) = pair.split_once(':')?;
            return Some(Credentials::new(user.to_string(), password.to_string()));
        }
        match (&self.username, &self.password) {
            (Some(user), Some(password)) if !user.is_empty() => {
                Some(Credentials::new(user.clone(), password.clone()))
            }
            _ => None,
        }
    }
}

/// The registry an auth file's key names: `https://index.docker.io/v1/`,
/// `index.docker.io` and `docker.io` are all Docker Hub; a scheme and a path
/// (podman's `quay.io/org` keys) are dropped.
fn registry_of_key(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or("");
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    #[test]
    fn bearer_challenges_as_registries_send_them() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull""#;
        assert_eq!(
            Challenge::pick([hub]),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/python:pull".into()),
            })
        );
        // Spaces after commas, unquoted values, an escaped quote, no scope.
        let odd = r#"bearer realm=https://r.example/token, service="a \"b\"""#;
        assert_eq!(
            Challenge::pick([odd]),
            Some(Challenge::Bearer {
                realm: "https://r.example/token".into(),
                service: Some("a \"b\"".into()),
                scope: None,
            })
        );
        assert_eq!(
            Challenge::pick([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        // Two challenges in one value, and in two headers: Bearer preferred.
        let both = r#"Basic realm="x", Bearer realm="https://t/token",service="s""#;
        assert!(matches!(
            Challenge::pick([both]),
            Some(Challenge::Bearer { .. })
        ));
        assert!(matches!(
            Challenge::pick([r#"Basic realm="x""#, r#"Bearer realm="https://t""#]),
            Some(Challenge::Bearer { .. })
        ));
        // Unknown schemes and a Bearer without realm give nothing to answer.
        assert_eq!(Challenge::pick([r#"Negotiate abc"#]), None);
        assert_eq!(Challenge::pick([r#"Bearer service="s""#]), None);
        assert_eq!(Challenge::pick([""]), None);
    }

    #[test]
    fn credentials_never_show_their_password() {
        let c = Credentials::new("alice".into(), "s3cret".into());
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
        // "alice:s3cret" in base64.
        assert_eq!(c.basic_header(), "Basic YWxpY2U6czNjcmV0");
    }

    #[test]
    fn auth_file_entries_and_docker_hub_names() {
        let text = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "YWxpY2U6czNjcmV0"},
            "quay.io/org": {"username": "bob", "password": "pw:with:colons"},
            "ghcr.io": {"auth": ""},
            "helper.example": {}
        }, "credsStore": "desktop"}"#;
        let hub = from_auth_file(text, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3cret")
        );
        let quay = from_auth_file(text, "quay.io").unwrap();
        assert_eq!(
            (quay.username.as_str(), quay.password.as_str()),
            ("bob", "pw:with:colons")
        );
        assert_eq!(from_auth_file(text, "ghcr.io"), None);
        assert_eq!(from_auth_file(text, "helper.example"), None);
        assert_eq!(from_auth_file(text, "other.example"), None);
        assert_eq!(from_auth_file(b"not json", "docker.io"), None);
        for key in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
        ] {
            assert_eq!(registry_of_key(key), "docker.io", "{key}");
        }
        assert_eq!(registry_of_key("localhost:5000"), "localhost:5000");
    }

    #[test]
    fn files_are_searched_in_podman_then_docker_order() {
        let scratch = Scratch::new("auth");
        let write = |rel: &str, text: &str| {
            let path = scratch.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        };
        let entry = |user: &str| {
            format!(r#"{{"auths": {{"r.example": {{"username": "{user}", "password": "p"}}}}}}"#)
        };
        let explicit = write("explicit.json", &entry("from-env-file"));
        write("run/containers/auth.json", &entry("from-runtime-dir"));
        write("home/.docker/config.json", &entry("from-docker"));
        let vars = |auth_file: bool, runtime: bool| {
            let explicit = explicit.clone();
            let root = scratch.join("");
            move |name: &str| -> Option<OsString> {
                match name {
                    "REGISTRY_AUTH_FILE" if auth_file => Some(explicit.clone().into()),
                    "XDG_RUNTIME_DIR" if runtime => Some(root.join("run").into()),
                    "HOME" => Some(root.join("home").into()),
                    _ => None,
                }
            }
        };
        let user = |env: &dyn Fn(&str) -> Option<OsString>| {
            Credentials::find("r.example", env).map(|c| c.username)
        };
        assert_eq!(user(&vars(true, true)).as_deref(), Some("from-env-file"));
        assert_eq!(
            user(&vars(false, true)).as_deref(),
            Some("from-runtime-dir")
        );
        assert_eq!(user(&vars(false, false)).as_deref(), Some("from-docker"));
        // A file without an entry for the registry passes on to the next.
        write("explicit.json", r#"{"auths": {}}"#);
        assert_eq!(user(&vars(true, false)).as_deref(), Some("from-docker"));
        assert_eq!(Credentials::find("none.example", &vars(true, true)), None);
    }
}
