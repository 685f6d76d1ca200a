//! Image references as users type them (`docker://python:3.12`,
//! `docker://quay.io/biocontainers/samtools:1.19--h50ea8bc_0`,
//! `docker://ghcr.io/org/app@sha256:HEX`), with the defaults docker and podman apply:
//! registry `docker.io`, `library/` for one-component names there, tag `latest`.
//! Names and tags are checked against the distribution spec's grammar, since they
//! become parts of URLs.

use crate::digest::Digest;
use std::fmt;

/// What `docker://` may be followed by, for the messages.
const FORM: &str = "[HOST[:PORT]/]NAME[:TAG][@sha256:HEX]";
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API is not served at the name users write.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const MAX_NAME: usize = 255;
const MAX_TAG: usize = 128;

/// Why a reference cannot be used; `Display` names it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("image reference {0:?} is empty; give docker://{FORM}")]
    Empty(String),
    #[error("image reference {reference:?}: registry {host:?} is not a host name or HOST:PORT")]
    BadHost { reference: String, host: String },
    #[error("image reference {reference:?}: repository {name:?} is not valid (lowercase letters, digits and . _ - between them, / between parts)")]
    BadName { reference: String, name: String },
    #[error(
        "image reference {reference:?}: repository names are longer than {MAX_NAME} characters"
    )]
    NameTooLong { reference: String },
    #[error("image reference {reference:?}: tag {tag:?} is not valid (letters, digits, _ . -, up to {MAX_TAG}, not starting with . or -)")]
    BadTag { reference: String, tag: String },
    #[error("image reference {reference:?}: digest {digest:?} is not sha256:HEX (64 lowercase hex digits)")]
    BadDigest { reference: String, digest: String },
}

/// A parsed, normalised reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The registry as users name it (`docker.io`, `quay.io`, `localhost:5000`).
    pub registry: String,
    /// The repository inside it (`library/python`).
    pub repository: String,
    /// The tag, when one was given or defaulted (`latest` when there is no digest).
    pub tag: Option<String>,
    /// The manifest digest the reference is pinned to, when given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference with or without its `docker://` prefix.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let text = input.strip_prefix("docker://").unwrap_or(input);
        if text.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (named, digest) = match text.split_once('@') {
            Some((named, digest)) => {
                let parsed = Digest::parse(digest)
                    .filter(|d| d.to_string() == digest)
                    .ok_or_else(|| ReferenceError::BadDigest {
                        reference: input.to_string(),
                        digest: digest.to_string(),
                    })?;
                (named, Some(parsed))
            }
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_part = named.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match named[last_part..].rfind(':') {
            Some(i) => (&named[..last_part + i], Some(&named[last_part + i + 1..])),
            None => (named, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ReferenceError::BadTag {
                    reference: input.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        let (registry, repository) = split_registry(path);
        if !valid_host(registry) {
            return Err(ReferenceError::BadHost {
                reference: input.to_string(),
                host: registry.to_string(),
            });
        }
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            other => other,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if !repository.split('/').all(valid_component) {
            return Err(ReferenceError::BadName {
                reference: input.to_string(),
                name: repository,
            });
        }
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(ReferenceError::NameTooLong {
                reference: input.to_string(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) whose `/v2/` API serves this registry.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What the manifest is fetched by: the digest when pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

/// The normalised form: `docker.io/library/python:3.12`, `ghcr.io/org/app@sha256:HEX`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits off the registry: the first component is a host when it has a `.` or a `:`
/// or is `localhost` (docker's rule), else the name is on Docker Hub.
fn split_registry(path: &str) -> (&str, &str) {
    match path.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, path),
    }
}

/// `HOST` or `HOST:PORT`: DNS labels or an IPv4 address, and a decimal port.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let port_ok = match port {
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
        None => true,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: `.`, `_`, `__` or a run of `-`.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > start);
        expect_alnum = true;
    }
    !bytes.is_empty() && !expect_alnum
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [first, rest @ ..] => {
            word(*first)
                && tag.len() <= MAX_TAG
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parts(input: &str) -> (String, String, Option<String>, Option<String>, String) {
        let r = Reference::parse(input).unwrap();
        (
            r.registry.clone(),
            r.repository.clone(),
            r.tag.clone(),
            r.digest.as_ref().map(|d| d.to_string()),
            r.api_host().to_string(),
        )
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn forms_users_type() {
        assert_eq!(
            parts("docker://python:3.12"),
            (
                "docker.io".into(),
                "library/python".into(),
                some("3.12"),
                None,
                "registry-1.docker.io".into()
            )
        );
        assert_eq!(
            parts("docker://quay.io/biocontainers/samtools:1.19--h50ea8bc_0"),
            (
                "quay.io".into(),
                "biocontainers/samtools".into(),
                some("1.19--h50ea8bc_0"),
                None,
                "quay.io".into()
            )
        );
        let pinned = format!("docker://ghcr.io/org/app@sha256:{HEX}");
        assert_eq!(
            parts(&pinned),
            (
                "ghcr.io".into(),
                "org/app".into(),
                None,
                Some(format!("sha256:{HEX}")),
                "ghcr.io".into()
            )
        );
        assert_eq!(
            parts("docker://localhost:5000/x:y"),
            (
                "localhost:5000".into(),
                "x".into(),
                some("y"),
                None,
                "localhost:5000".into()
            )
        );
        assert_eq!(
            parts("docker://127.0.0.1:5000/x"),
            (
                "127.0.0.1:5000".into(),
                "x".into(),
                some("latest"),
                None,
                "127.0.0.1:5000".into()
            )
        );
        assert_eq!(parts("localhost/a/b").0, "localhost");
        // Without the prefix, a user/name on Docker Hub, and Hub's other names.
        assert_eq!(parts("ubuntu").1, "library/ubuntu");
        assert_eq!(parts("docker://user/tool:1").1, "user/tool");
        assert_eq!(parts("docker://user/tool:1").0, "docker.io");
        assert_eq!(parts("index.docker.io/debian").1, "library/debian");
        assert_eq!(parts("index.docker.io/debian").0, "docker.io");
    }

    #[test]
    fn normalised_text_and_manifest_key() {
        let r = Reference::parse("docker://python:3.12").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/python:3.12");
        assert_eq!(r.manifest_key(), "3.12");
        let r = Reference::parse("docker://python").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/python:latest");
        let both = format!("quay.io/a/b:1.0@sha256:{HEX}");
        let r = Reference::parse(&both).unwrap();
        assert_eq!(r.to_string(), both);
        assert_eq!(r.manifest_key(), format!("sha256:{HEX}"));
    }

    #[test]
    fn bad_input_is_refused_with_its_reason() {
        let err = |s: &str| Reference::parse(s).unwrap_err();
        assert!(matches!(err("docker://"), ReferenceError::Empty(_)));
        assert!(matches!(err(""), ReferenceError::Empty(_)));
        assert!(matches!(
            err("docker://Python"),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://a//b"),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://a/-b"),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://a/b."),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://a/b___c"),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://quay.io/"),
            ReferenceError::BadName { .. }
        ));
        assert!(matches!(
            err("docker://a/b:"),
            ReferenceError::BadTag { .. }
        ));
        assert!(matches!(
            err("docker://a/b:.x"),
            ReferenceError::BadTag { .. }
        ));
        assert!(matches!(
            err("docker://a/b:x/y"),
            ReferenceError::BadName { .. }
        ));
        let long_tag = format!("a/b:{}", "t".repeat(129));
        assert!(matches!(err(&long_tag), ReferenceError::BadTag { .. }));
        assert!(matches!(
            err("a/b@sha256:abc"),
            ReferenceError::BadDigest { .. }
        ));
        assert!(matches!(
            err(&format!("a/b@sha512:{HEX}")),
            ReferenceError::BadDigest { .. }
        ));
        assert!(matches!(
            err(&format!("a/b@sha256:{}", HEX.to_uppercase())),
            ReferenceError::BadDigest { .. }
        ));
        assert!(matches!(
            err("exa_mple.com/x"),
            ReferenceError::BadHost { .. }
        ));
        assert!(matches!(
            err("localhost:port/x"),
            ReferenceError::BadHost { .. }
        ));
        assert!(matches!(
            err("host:123456/x"),
            ReferenceError::BadHost { .. }
        ));
        let long_name = format!("quay.io/{}", "a/".repeat(130) + "b");
        assert!(matches!(
            err(&long_name),
            ReferenceError::NameTooLong { .. }
        ));
        assert_eq!(
            err("docker://Python").to_string(),
            "image reference \"docker://Python\": repository \"library/Python\" is not valid \
             (lowercase letters, digits and . _ - between them, / between parts)"
        );
    }

    #[test]
    fn name_components_follow_the_grammar() {
        for good in ["a", "a0", "a.b", "a_b", "a__b", "a-b", "a---b", "1.19"] {
            assert!(valid_component(good), "{good}");
        }
        for bad in ["", "A", ".a", "a.", "a..b", "a___b", "a_-b", "-a", "a-"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }
}
