//! The plugin's arguments from plugstack.conf, parsed once into a typed config.
//! Unknown keys and bad values are errors naming the key.
//!
//!   required /usr/lib/.../ferry.so [launcher=PATH] [host_dirs=DIR,DIR,...] [slurm_clients=yes|no]
//!            [accounts=NAME,NAME,...]

use std::path::PathBuf;

pub const DEFAULT_LAUNCHER: &str = "/usr/local/libexec/ferry/ferry-host-exec";

/// Host folders that Slurm's clients and PMI need inside the container, bound at the
/// same path when they exist: configuration, munge's socket, the slurmd spool (batch
/// script, PMIx sockets) and Slurm's plugin folders (Debian's and EL's layouts).
pub const DEFAULT_HOST_DIRS: &[&str] = &[
    "/etc/slurm",
    "/run/munge",
    "/var/spool/slurmd",
    "/var/spool/slurm/d",
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            launcher: DEFAULT_LAUNCHER.into(),
            host_dirs: DEFAULT_HOST_DIRS.iter().map(PathBuf::from).collect(),
            slurm_clients: true,
            accounts: vec!["slurm".into(), "munge".into()],
        }
    }
}

impl Config {
    pub fn parse(args: &[String]) -> Result<Config, String> {
        let mut config = Config::default();
        for arg in args {
            let (key, value) = arg.split_once('=').ok_or_else(|| {
                format!("ferry: plugstack.conf argument {arg:?}: expected key=value")
            })?;
            let bad = |why: &str| format!("ferry: plugstack.conf argument {key}={value:?}: {why}");
            match key {
                "launcher" if value.starts_with('/') => config.launcher = value.into(),
                "launcher" => return Err(bad("give an absolute path")),
                "host_dirs" => {
                    let dirs: Vec<PathBuf> = value.split(',').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
                    if dirs.iter().any(|d| !d.is_absolute()) {
                        return Err(bad("every folder must be an absolute path"));
                    }
                    config.host_dirs = dirs;
                }
                "slurm_clients" => {
                    config.slurm_clients = match value {
                        "yes" | "true" | "1" => true,
                        "no" | "false" | "0" => false,
                        _ => return Err(bad("use yes or no")),
                    }
                }
                "accounts" => config.accounts = value.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect(),
                _ => {
                    return Err(format!(
                        "ferry: plugstack.conf: unknown argument {key:?} (known: launcher, host_dirs, slurm_clients, accounts)"
                    ))
                }
            }
        }
        Ok(config)
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
