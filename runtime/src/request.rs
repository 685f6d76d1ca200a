//! What a caller (the CLI or the SPANK plugin) asks for: a plain value, no Slurm types.

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::mount_error::MountError;
use crate::policy::{
    CachePolicy, ImagePolicy, SiteMount, DEFAULT_SETUP_TIMEOUT, DEFAULT_WRITABLE_LAYER,
};
use crate::users::User;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Request {
    /// Absolute path of the image file or root folder.
    pub image: PathBuf,
    pub user: User,
    /// The caller's working directory on the host, made visible at the same path.
    pub cwd: Option<PathBuf>,
    /// Where the command starts inside the container (default: `cwd`, else home).
    pub workdir: Option<PathBuf>,
    /// The user's own binds, opened with the user's rights.
    pub mounts: Vec<MountSpec>,
    /// Binds the site or Slurm needs (opened as root: admin-chosen, not user input).
    pub host_binds: Vec<MountSpec>,
    /// Make the host's Slurm commands usable inside the container.
    pub slurm_clients: Option<SlurmClients>,
    /// Host accounts that must also resolve inside (Slurm's own user, for its clients).
    pub accounts: Vec<User>,
    /// The pinned digest (`IMAGE@sha256:HEX`): the container is made only if it matches.
    pub pinned: Option<Digest>,
    /// Folder of known digests (None: a pinned image is hashed every time,
    /// an unpinned one's digest is unknown).
    pub digest_cache: Option<PathBuf>,
    /// Who must own `digest_cache` for it to be believed: root, or for `ferry run`
    /// without root the user (their own cache, answering only their own runs).
    pub digest_cache_owner: u32,
    /// Which images the kernel mounts, which go through FUSE, which are refused.
    pub image_policy: ImagePolicy,
    /// The site's binds into every container (opened as root).
    pub site_mounts: Vec<SiteMount>,
    /// Where the user's own binds may land, judged where they resolve (None: anywhere).
    pub user_mount_destinations: Option<Vec<PathBuf>>,
    /// Longest the setup may take before the helper (and what it waits on) is killed.
    pub setup_timeout: Duration,
    /// Size of the tmpfs under the writable layer, in bytes: with `RootAccess::Writable`
    /// the most the command can write into the root (then ENOSPC).
    pub writable_layer_size: u64,
    /// Whether the command may write to the container's root (`--container-writable`).
    pub root: RootAccess,
    /// A step of this Slurm job other than its batch step: under `fuse`, take the
    /// batch step's mount of the same image on this node when there is one (`share`).
    pub share_with_batch_step_of: Option<u32>,
    /// The node image cache's limits (`CachePolicy::OFF`: none).
    pub image_cache: CachePolicy,
    /// The `ferry` command that expires kept images (`ferry cache janitor`) once no
    /// step comes to do it, and keeps named containers (`ferry named-warden`).
    pub cache_janitor: Option<PathBuf>,
    /// `--container-name`: create this job's container of that name on the node, or
    /// join it when an earlier step made it.
    pub named: Option<crate::named::NamedContainer>,
    /// Bind the user's home folder (the site's `mount_home`, and not
    /// `--no-container-mount-home`).
    pub mount_home: bool,
    /// CDI devices (`--container-devices`, the step's GRES): their nodes, mounts,
    /// environment and hooks, resolved against the node's specs.
    pub devices: crate::cdi::Applied,
    /// Slurm's namespace file of the job's private /tmp on this node
    /// (`job_namespace::locate`): the container is made from the job's view, not the node's.
    pub job_namespace: Option<PathBuf>,
}

impl Request {
    /// A request for `image` as `user` with nothing else: no binds beyond the standard
    /// ones, no pin, no digest cache, no Slurm commands, the kernel mounts the image.
    pub fn new(image: PathBuf, user: User) -> Request {
        Request {
            image,
            user,
            cwd: None,
            workdir: None,
            mounts: Vec::new(),
            host_binds: Vec::new(),
            slurm_clients: None,
            accounts: Vec::new(),
            pinned: None,
            digest_cache: None,
            digest_cache_owner: 0,
            image_policy: ImagePolicy::kernel(),
            site_mounts: Vec::new(),
            user_mount_destinations: None,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            writable_layer_size: DEFAULT_WRITABLE_LAYER,
            root: RootAccess::ReadOnly,
            share_with_batch_step_of: None,
            image_cache: CachePolicy::OFF,
            cache_janitor: None,
            named: None,
            mount_home: true,
            devices: crate::cdi::Applied::default(),
            job_namespace: None,
        }
    }
}

#[cfg(test)]
impl Request {
    /// For unit tests: alice (uid 1001, home /home/alice) runs /images/a.sqfs from
    /// /home/alice/project, nothing else asked for.
    pub(crate) fn example() -> Request {
        let alice = User {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![],
            home: "/home/alice".into(),
            gecos: String::new(),
        };
        let mut req = Request::new("/images/a.sqfs".into(), alice);
        req.cwd = Some("/home/alice/project".into());
        req
    }
}

/// What the command may do to the container's root. Either way the image file is never
/// written (it is the overlay's read-only lower layer) and the root is `nosuid,nodev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootAccess {
    /// The default: the root is remounted read-only before the command runs; only the
    /// binds (home, /tmp, the user's mounts) take writes.
    ReadOnly,
    /// Writes go to the overlay's upper layer on the staging tmpfs (ENOSPC when it is
    /// full) and vanish with the container.
    Writable,
}

#[derive(Clone, Debug)]
pub struct SlurmClients {
    /// The static launcher (`ferry-host-exec`) on the host.
    pub launcher: PathBuf,
    /// Command names linked to the launcher in `/.ferry/bin`.
    pub commands: Vec<String>,
}

/// The host's root, read-only, for the Slurm launcher.
pub const HOST_ROOT: &str = "/.ferry/host";
/// Put on PATH (last) so that `srun` and friends are found inside.
pub const BIN_DIR: &str = "/.ferry/bin";

pub const SLURM_COMMANDS: &[&str] = &[
    "srun", "sbatch", "salloc", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sstat",
    "sattach", "sprio", "sshare",
];

/// The standard command folders, added to PATH where missing: an image's commands live
/// there even when the host's PATH (a module system's, say) names other places.
pub const STANDARD_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// PATH for a command in the container: the caller's, then any missing standard
/// folder, then `extra` (ferry's own commands) last so that the image's win.
pub fn container_path(caller: Option<&str>, extra: Option<&str>) -> String {
    let mut parts: Vec<&str> = caller
        .unwrap_or("")
        .split(':')
        .filter(|p| !p.is_empty())
        .collect();
    for dir in STANDARD_PATH.iter().copied().chain(extra) {
        if !parts.contains(&dir) {
            parts.push(dir);
        }
    }
    parts.join(":")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub readonly: bool,
}

impl MountSpec {
    /// Parses `SRC[:DST[:ro|rw]]`. A relative SRC is taken against `base` (the caller's
    /// working directory); DST defaults to SRC and must be absolute and free of `..`.
    pub fn parse(spec: &str, base: &Path) -> Result<MountSpec> {
        let bad = |reason: &str| -> Error {
            MountError::BadSpec {
                spec: spec.to_string(),
                reason: reason.to_string(),
            }
            .into()
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, flag) = match parts.as_slice() {
            [s] => (*s, *s, None),
            [s, d] if *d == "ro" || *d == "rw" => (*s, *s, Some(*d)),
            [s, d] => (*s, *d, None),
            [s, d, f] => (*s, *d, Some(*f)),
            _ => return Err(bad("expected SRC[:DST[:ro]]")),
        };
        if src.is_empty() {
            return Err(bad("the source is empty; expected SRC[:DST[:ro]]"));
        }
        let readonly = match flag {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => return Err(bad(&format!("unknown flag {other:?}; use ro or rw"))),
        };
        let source = base.join(src);
        let dest = PathBuf::from(if dst.is_empty() { src } else { dst });
        let dest = if dest.is_absolute() {
            dest
        } else if dst == src {
            source.clone()
        } else {
            return Err(bad("the destination must be an absolute path"));
        };
        if dest.components().any(|c| c == Component::ParentDir) {
            return Err(bad("the destination must not contain '..'"));
        }
        if dest == Path::new("/") {
            return Err(bad("cannot mount over the container's root"));
        }
        Ok(MountSpec {
            source,
            dest,
            readonly,
        })
    }

    /// Parses a comma-separated list (the plugin's `--container-mounts`).
    pub fn parse_list(list: &str, base: &Path) -> Result<Vec<MountSpec>> {
        MountSpec::split_list(list)
            .map(|s| MountSpec::parse(s, base))
            .collect()
    }

    /// The specs of a comma-separated list, trimmed, empty ones left out.
    pub fn split_list(list: &str) -> impl Iterator<Item = &str> {
        list.split(',').map(str::trim).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<MountSpec> {
        MountSpec::parse(s, Path::new("/home/alice/run"))
    }

    #[test]
    fn forms() {
        assert_eq!(
            p("/data").unwrap(),
            MountSpec {
                source: "/data".into(),
                dest: "/data".into(),
                readonly: false
            }
        );
        assert_eq!(
            p("/data:ro").unwrap(),
            MountSpec {
                source: "/data".into(),
                dest: "/data".into(),
                readonly: true
            }
        );
        assert_eq!(
            p("/data:/in:ro").unwrap(),
            MountSpec {
                source: "/data".into(),
                dest: "/in".into(),
                readonly: true
            }
        );
        assert_eq!(
            p("out:/out").unwrap().source,
            PathBuf::from("/home/alice/run/out")
        );
        assert_eq!(p("out").unwrap().dest, PathBuf::from("/home/alice/run/out"));
    }

    #[test]
    fn path_keeps_the_callers_order_and_adds_what_is_missing() {
        assert_eq!(
            container_path(Some("/opt/x/bin:/usr/bin"), Some(BIN_DIR)),
            "/opt/x/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin:/.ferry/bin"
        );
        assert_eq!(container_path(None, None), STANDARD_PATH.join(":"));
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(p("/a:/b:rx")
            .unwrap_err()
            .to_string()
            .contains("unknown flag"));
        assert!(p("/a:b").unwrap_err().to_string().contains("absolute"));
        assert!(p("/a:/x/../etc").unwrap_err().to_string().contains(".."));
        assert!(p("/a:/").unwrap_err().to_string().contains("root"));
        assert!(p(":/b").unwrap_err().to_string().contains("empty"));
        assert!(p("/a:/b:ro:x").is_err());
    }
}
