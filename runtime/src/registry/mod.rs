//! Images from OCI registries (the distribution API): references as users type them
//! (`reference`), authentication (`auth`), the HTTP client (`client`), manifests and
//! platform choice (`manifest`), blobs checked as they stream (`blob`), and the pull
//! itself in two steps (`pull`): `resolve` fetches only manifests, so a caller that
//! already stores the manifest digest downloads nothing more; `fetch_and_unpack`
//! downloads the blobs and applies the layers.
//!
//! Behind the `registry` feature: the plugin links this crate without it, so the
//! library slurmstepd loads carries no HTTP or TLS code.

pub mod auth;
pub mod blob;
pub mod client;
pub mod manifest;
pub mod pull;
pub mod reference;

pub use auth::{Challenge, Credentials};
pub use blob::BlobError;
pub use manifest::{ManifestError, Platform};
pub use pull::{fetch_and_unpack, resolve, PullOptions, Resolved};
pub use reference::{Reference, ReferenceError};

use crate::digest::Digest;
use crate::oci::LayerError;
use std::io;
use std::path::PathBuf;

/// A pull that failed; `Display` is the one line the user reads: the reference, what
/// failed, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("--platform {0:?}: give OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")]
    BadPlatform(String),
    #[error("insecure registry {0:?}: give HOST or HOST:PORT")]
    BadInsecureRegistry(String),
    #[error("{reference}: {problem}")]
    Pull { reference: String, problem: Problem },
}

/// What went wrong while pulling one reference.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("{what}: the registry asks for a login (HTTP 401); log in with `podman login {host}` (or docker login), or check the name")]
    NeedsLogin { what: String, host: String },
    #[error("{what}: the registry refused the stored credentials for {host} (HTTP 401); log in again (podman login {host})")]
    BadCredentials { what: String, host: String },
    #[error("{what}: access denied (HTTP 403); check the name, and that your account may pull it")]
    Denied { what: String },
    #[error("{what}: not found (HTTP 404); check the name and the tag")]
    NotFound { what: String },
    #[error("{what}: the registry's rate limit is reached (HTTP 429); retry later, or log in (podman login {host}) for a higher limit")]
    RateLimited { what: String, host: String },
    #[error("{what}: the registry answered HTTP {status}; retry later")]
    Status { what: String, status: u16 },
    #[error("{what}: cannot reach {host} ({reason}); check the network and the name{}", if *.tls_failed { format!(" (a plain-HTTP registry needs --insecure-registry {host})") } else { String::new() })]
    Network {
        what: String,
        host: String,
        reason: String,
        /// The TLS handshake failed: the likeliest cause is a plain-HTTP registry.
        tls_failed: bool,
    },
    #[error("{what}: the TLS certificate of {host} is not trusted ({reason}); if the registry uses a site CA, name a file with the system CAs and that CA in SSL_CERT_FILE, or ask the administrators to add it to the system's CAs")]
    UntrustedCertificate {
        what: String,
        host: String,
        reason: String,
    },
    #[error("{what}: more than 5 redirects; the registry is misconfigured")]
    TooManyRedirects { what: String },
    #[error("{what}: redirected to {location:?}, which is not a usable https URL; refused")]
    BadRedirect { what: String, location: String },
    #[error("the token service {realm}: {reason}")]
    Token { realm: String, reason: String },
    #[error("{what}: {source}")]
    Blob { what: String, source: BlobError },
    #[error("{what}: larger than {limit} bytes; not a manifest")]
    TooLarge { what: String, limit: u64 },
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("the registry served manifest {found} for the pinned {pinned}; refused")]
    PinnedMismatch { pinned: Digest, found: Digest },
    #[error("the index names another index ({0}); ferry reads one level")]
    NestedIndex(Digest),
    #[error("the image configuration {digest}: {reason}")]
    Config { digest: Digest, reason: String },
    #[error(
        "the configuration lists {diff_ids} layers but the manifest {layers}; the image is corrupt"
    )]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("{path}: {source}")]
    Staging { path: PathBuf, source: io::Error },
    #[error("layer {index} of {count} ({digest}): {source}")]
    Layer {
        index: usize,
        count: usize,
        digest: Digest,
        source: LayerError,
    },
    #[error("layer {index} of {count} ({digest}): the layer is corrupt or truncated ({source})")]
    LayerCorrupt {
        index: usize,
        count: usize,
        digest: Digest,
        source: io::Error,
    },
    #[error("layer {index} of {count} ({digest}): its content does not match the configuration's diff_id {expected}; the image is corrupt")]
    ContentMismatch {
        index: usize,
        count: usize,
        digest: Digest,
        expected: String,
    },
    #[error("writing the image configuration: {0}")]
    StoreConfig(io::Error),
    #[error("interrupted")]
    Interrupted,
}

/// Registries redirect blobs once, to their storage; more is a loop.
pub(crate) const MAX_REDIRECTS: usize = 5;
