//! The site's policy as plain values the runtime applies: how images are mounted, the
//! site's own binds, where users may bind, the limits. `site` reads them from the site
//! file, `request` carries them, `step_request` joins the two: this module depends on
//! neither, so the dependency goes one way.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Debian's multi-threaded low-level squashfuse.
pub const DEFAULT_FUSE_HELPER: &str = "/usr/bin/squashfuse_ll";
pub const DEFAULT_WRITABLE_LAYER: u64 = 64 << 20;
/// The largest writable layer a user may ask for (`--container-writable=SIZE`) where the
/// site file sets no `writable_layer_max` (or its `writable_layer_size`, if larger): the
/// layer is memory (tmpfs), charged to the job, so a gigabyte is what a `pip install`
/// needs without letting one step's layer be most of a node's memory.
pub const DEFAULT_WRITABLE_LAYER_MAX: u64 = 1 << 30;
/// How long preparing a container (and a task's last steps before it runs the user's
/// command) may take before it is stopped: Slurm cannot cancel a step in that phase.
/// Long enough to hash a pinned image of tens of GiB the first time.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a kept image mount outlives the last step that used it, by default.
pub const DEFAULT_IMAGE_CACHE_TTL: Duration = Duration::from_secs(600);
/// How many images a node keeps mounted at most, by default.
pub const DEFAULT_IMAGE_CACHE_MAX_IMAGES: usize = 16;
/// The share of the node's memory the kept images' sizes may add up to, by default.
pub const DEFAULT_IMAGE_CACHE_MAX_MEMORY_PERCENT: u64 = 25;

/// The node image cache's limits (see `image_cache`): kept mounts expire `ttl` after
/// the last step that used them ended, and the cache holds at most `max_images` images
/// whose sizes add up to at most `max_bytes` (their page cache is what stays warm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub max_images: usize,
    pub max_bytes: u64,
}

/// How the site sizes the cache's memory: a share of the node's memory (the default,
/// so one setting suits every node type) or a fixed number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    Percent(u64),
    Bytes(u64),
}

impl MemoryLimit {
    /// The limit in bytes on a node with `total` bytes of memory.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MemoryLimit::Bytes(n) => n,
            MemoryLimit::Percent(p) => (total as u128 * p as u128 / 100) as u64,
        }
    }
}

impl CachePolicy {
    /// No cache: every step mounts afresh and its mount goes with it.
    pub const OFF: CachePolicy = CachePolicy {
        ttl: Duration::ZERO,
        max_images: 0,
        max_bytes: 0,
    };

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_images > 0 && self.max_bytes > 0
    }
}

/// The site's policy refusing an image.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("image {path}: not in a trusted image folder; {hint}")]
    ImageDenied { path: PathBuf, hint: String },
    #[error("image {path}: ext images run only from this site's trusted image folders ({trusted}); no reader for ext runs with your rights here: convert it to SquashFS: mkdir DIR; /sbin/debugfs -R 'rdump / DIR' IMAGE; ferry build DIR OUT.sqfs")]
    ExtNeedsTrust { path: PathBuf, trusted: String },
    #[error("this site requires pinned images: use --container={path}@sha256:... (get the digest with: ferry digest {path})")]
    PinRequired { path: String },
}

/// How an image outside the trusted folders is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// By the kernel's SquashFS driver, like a trusted one.
    Kernel,
    /// By squashfuse running with the user's rights: a crafted image reaches a user
    /// process, not kernel filesystem code.
    Fuse,
    /// Refused, with a line saying where trusted images live.
    Deny,
}

impl Untrusted {
    pub fn name(self) -> &'static str {
        match self {
            Untrusted::Kernel => "kernel",
            Untrusted::Fuse => "fuse",
            Untrusted::Deny => "deny",
        }
    }
}

/// A host path bound into every container (opened as root: the admin chose it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteMount {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub readonly: bool,
    /// Skip it where the source is missing instead of failing the step.
    pub optional: bool,
}

/// How images are chosen and mounted: the part of the site policy the runtime applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Folders whose images the kernel may mount whatever `untrusted` says.
    pub trusted_dirs: Vec<PathBuf>,
    pub untrusted: Untrusted,
    pub fuse_helper: PathBuf,
}

impl ImagePolicy {
    /// What a caller gets without a site policy (tests, `ferry run` by root): the
    /// kernel mounts what root asked for.
    pub fn kernel() -> ImagePolicy {
        ImagePolicy {
            trusted_dirs: Vec::new(),
            untrusted: Untrusted::Kernel,
            fuse_helper: DEFAULT_FUSE_HELPER.into(),
        }
    }

    /// The trusted folders for a message, or that there are none.
    pub fn trusted_list(&self) -> String {
        if self.trusted_dirs.is_empty() {
            "none configured".into()
        } else {
            join_paths(&self.trusted_dirs)
        }
    }

    /// What a user refused under `deny` reads after the image's path.
    pub fn where_trusted(&self) -> String {
        if self.trusted_dirs.is_empty() {
            "this site runs no images outside its trusted folders and has none configured; ask the administrators".into()
        } else {
            format!(
                "this site runs only images from its trusted folders: {}; ask the administrators to place yours there",
                join_paths(&self.trusted_dirs)
            )
        }
    }
}

/// Whether a user's bind may go to `dest` as written (a whole path component prefix of
/// one of the site's `allowed` folders; None: anywhere): the early check, at
/// submission. Where the destination resolves inside the image is checked again when
/// the container is made (`destination_allowed`).
pub fn check_user_mount_destination(
    allowed: Option<&[PathBuf]>,
    dest: &Path,
) -> Result<(), String> {
    destination_allowed(allowed, dest, dest)
        .map_err(|why| format!("mount destination {}: {why}", dest.display()))
}

/// Whether a user's bind whose destination `written` resolves to `resolved` (inside the
/// container) may be made under the site's `allowed` prefixes (None: anywhere). The
/// error says why, for a message that names the destination.
pub fn destination_allowed(
    allowed: Option<&[PathBuf]>,
    written: &Path,
    resolved: &Path,
) -> Result<(), String> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    if allowed.iter().any(|p| resolved.starts_with(p)) {
        return Ok(());
    }
    let leads = if written == resolved {
        String::new()
    } else {
        format!("it leads to {} in the container, and ", resolved.display())
    };
    Err(format!(
        "{leads}this site allows user mounts only under {}; choose a destination there",
        if allowed.is_empty() {
            "no folder at all".to_string()
        } else {
            join_paths(allowed)
        }
    ))
}

/// Folders for a message: `/a, /b`.
pub(crate) fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mount_prefixes_match_whole_components() {
        let allowed = [PathBuf::from("/data")];
        let check = |dest: &str| check_user_mount_destination(Some(&allowed), Path::new(dest));
        assert!(check("/data").is_ok());
        assert!(check("/data/in").is_ok());
        let err = check("/database").unwrap_err();
        assert!(err.contains("/database") && err.contains("/data"), "{err}");
        assert!(check_user_mount_destination(None, Path::new("/anything")).is_ok());
    }

    #[test]
    fn destinations_are_judged_where_they_resolve() {
        let allowed = [PathBuf::from("/data")];
        let ok = destination_allowed(Some(&allowed), Path::new("/data/x"), Path::new("/data/x"));
        assert_eq!(ok, Ok(()));
        let e = destination_allowed(
            Some(&allowed),
            Path::new("/data/etc/x"),
            Path::new("/etc/x"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("it leads to /etc/x in the container, and ")
                && e.contains("allows user mounts only under /data"),
            "{e}"
        );
        assert_eq!(
            destination_allowed(None, Path::new("/a"), Path::new("/etc")),
            Ok(())
        );
        assert!(destination_allowed(Some(&[]), Path::new("/a"), Path::new("/a")).is_err());
    }

    #[test]
    fn where_trusted_names_the_folders_or_says_there_are_none() {
        let mut policy = ImagePolicy::kernel();
        assert_eq!(policy.trusted_list(), "none configured");
        assert!(policy.where_trusted().contains("has none configured"));
        policy.trusted_dirs = vec!["/apps/images".into(), "/srv/containers".into()];
        assert_eq!(policy.trusted_list(), "/apps/images, /srv/containers");
        assert!(policy
            .where_trusted()
            .contains("trusted folders: /apps/images, /srv/containers;"));
    }
}
