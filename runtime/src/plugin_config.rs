//! The plugin's arguments from plugstack.conf, parsed once into a typed config: the one
//! parser, used by the plugin and by `ferry doctor`.
//! Unknown keys and bad values are errors naming the key; an obsolete key is accepted
//! (an older line keeps working) and noted in `Config::obsolete`.
//!
//!   required /usr/lib/.../ferry.so [launcher=PATH] [host_dirs=DIR,DIR,...] [slurm_clients=yes|no]
//!            [accounts=NAME,NAME,...] [require_digest=yes|no] [digest_cache=DIR]
//!            [site_config=FILE] [ferry=PATH]
//!
//! Obsolete, without effect: `hash_unpinned_max=SIZE` (unpinned images are no longer
//! hashed before a step).

use std::path::PathBuf;

pub const DEFAULT_LAUNCHER: &str = crate::DEFAULT_LAUNCHER;

/// The `ferry` command srun and sbatch run, as the user, to resolve a registry or
/// `sha256:` image at submission (the plugin itself links no HTTP code).
pub const DEFAULT_FERRY: &str = "/usr/bin/ferry";

/// Host folders that Slurm's clients and PMI need inside the container, bound at the
/// same path when they exist: configuration, munge's socket, the slurmd spool (batch
/// script, PMIx sockets) and Slurm's plugin folders (Debian's and EL's layouts).
pub const DEFAULT_HOST_DIRS: &[&str] = &[
    "/etc/slurm",
    "/run/munge",
    "/var/spool/slurmd",
    "/var/spool/slurm/d",
    SLURM_PLUGIN_DIRS[0],
    SLURM_PLUGIN_DIRS[1],
    SLURM_PLUGIN_DIRS[2],
    SLURM_PLUGIN_DIRS[3],
];

/// Where the distributions put Slurm's plugins (and so this plugin): Debian's and EL's.
pub const SLURM_PLUGIN_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/slurm-wlm",
    "/usr/lib/aarch64-linux-gnu/slurm-wlm",
    "/usr/lib64/slurm",
    "/usr/lib/slurm",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub launcher: PathBuf,
    pub host_dirs: Vec<PathBuf>,
    pub slurm_clients: bool,
    /// Host accounts added to the container's passwd/group (Slurm's clients look up
    /// SlurmUser by name).
    pub accounts: Vec<String>,
    /// Refuse images that are not pinned with `@sha256:`.
    pub require_digest: bool,
    /// Root-owned folder of known image digests.
    pub digest_cache: PathBuf,
    /// The site policy file, and whether plugstack.conf named it (then it must exist).
    pub site_config: PathBuf,
    pub site_config_required: bool,
    /// The `ferry` command that resolves registry and `sha256:` images at submission.
    pub ferry: PathBuf,
    /// Arguments of an older line that no longer do anything, each with the line that
    /// `ferry doctor` and the plugin's log show (refusing them would fail every step
    /// of a site that upgraded without editing plugstack.conf).
    pub obsolete: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            launcher: DEFAULT_LAUNCHER.into(),
            host_dirs: DEFAULT_HOST_DIRS.iter().map(PathBuf::from).collect(),
            slurm_clients: true,
            accounts: vec!["slurm".into(), "munge".into()],
            require_digest: false,
            digest_cache: crate::digest::DEFAULT_CACHE_DIR.into(),
            site_config: crate::site::DEFAULT_SITE_CONFIG.into(),
            site_config_required: false,
            ferry: DEFAULT_FERRY.into(),
            obsolete: Vec::new(),
        }
    }
}

impl Config {
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut config = Config::default();
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("plugstack.conf argument {arg:?}: expected key=value"))?;
            let bad = |why: &str| format!("plugstack.conf argument {key}={value:?}: {why}");
            match key {
                "launcher" if value.starts_with('/') => config.launcher = value.into(),
                "launcher" => return Err(bad("give an absolute path")),
                "ferry" if value.starts_with('/') => config.ferry = value.into(),
                "ferry" => return Err(bad("give an absolute path")),
                "host_dirs" => {
                    let dirs: Vec<PathBuf> = value.split(',').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
                    if dirs.iter().any(|d| !d.is_absolute()) {
                        return Err(bad("every folder must be an absolute path"));
                    }
                    config.host_dirs = dirs;
                }
                "slurm_clients" => config.slurm_clients = yes_no(value).ok_or_else(|| bad("use yes or no"))?,
                "require_digest" => config.require_digest = yes_no(value).ok_or_else(|| bad("use yes or no"))?,
                "digest_cache" if value.starts_with('/') => config.digest_cache = value.into(),
                "digest_cache" => return Err(bad("give an absolute path")),
                "hash_unpinned_max" => config.obsolete.push(format!(
                    "{key}={value} is obsolete and has no effect: unpinned images are no longer hashed before a step (pin an image, IMAGE@sha256:..., to have its digest recorded)"
                )),
                "site_config" if value.starts_with('/') => {
                    config.site_config = value.into();
                    config.site_config_required = true;
                }
                "site_config" => return Err(bad("give an absolute path")),
                "accounts" => config.accounts = value.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                _ => {
                    return Err(format!(
                        "plugstack.conf: unknown argument {key:?} (known: launcher, host_dirs, slurm_clients, accounts, require_digest, digest_cache, site_config, ferry)"
                    ))
                }
            }
        }
        Ok(config)
    }
}

fn yes_no(value: &str) -> Option<bool> {
    match value {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_without_arguments() {
        assert_eq!(parse(&[]).unwrap(), Config::default());
    }

    #[test]
    fn known_keys() {
        let c = parse(&[
            "launcher=/opt/ferry/ferry-host-exec",
            "host_dirs=/etc/slurm,/run/munge",
            "slurm_clients=no",
            "accounts=slurm",
        ])
        .unwrap();
        assert_eq!(c.launcher, PathBuf::from("/opt/ferry/ferry-host-exec"));
        assert_eq!(
            c.host_dirs,
            vec![PathBuf::from("/etc/slurm"), PathBuf::from("/run/munge")]
        );
        assert!(!c.slurm_clients);
        assert_eq!(c.accounts, vec!["slurm".to_string()]);
    }

    #[test]
    fn digest_settings() {
        let c = parse(&["require_digest=yes", "digest_cache=/var/lib/ferry/d"]).unwrap();
        assert!(c.require_digest);
        assert_eq!(c.digest_cache, PathBuf::from("/var/lib/ferry/d"));
        assert!(c.obsolete.is_empty());
        assert!(parse(&["require_digest=perhaps"])
            .unwrap_err()
            .contains("require_digest"));
    }

    #[test]
    fn an_obsolete_argument_is_accepted_and_noted() {
        // Lines written for older versions keep loading, whatever value they give.
        for value in ["512M", "0", "lots"] {
            let c = parse(&["require_digest=yes", &format!("hash_unpinned_max={value}")]).unwrap();
            assert!(c.require_digest);
            assert_eq!(c.obsolete.len(), 1, "{c:?}");
            let note = &c.obsolete[0];
            assert!(
                note.starts_with(&format!("hash_unpinned_max={value} is obsolete")),
                "{note}"
            );
            assert!(
                note.contains("no effect") && note.contains("@sha256:"),
                "{note}"
            );
        }
    }

    #[test]
    fn site_config_path() {
        let c = parse(&["site_config=/etc/ferry/other.json"]).unwrap();
        assert_eq!(c.site_config, PathBuf::from("/etc/ferry/other.json"));
        assert!(c.site_config_required);
        assert!(!Config::default().site_config_required);
        assert!(parse(&["site_config=site.json"])
            .unwrap_err()
            .contains("site_config"));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(parse(&["colour=blue"]).unwrap_err().contains("\"colour\""));
        assert!(parse(&["launcher=relative"])
            .unwrap_err()
            .contains("launcher"));
        assert!(parse(&["slurm_clients=maybe"])
            .unwrap_err()
            .contains("slurm_clients"));
        assert!(parse(&["host_dirs=etc"]).unwrap_err().contains("host_dirs"));
        assert!(parse(&["bare"]).unwrap_err().contains("key=value"));
    }
}
