//! The image's own configuration (from `ferry import`): stored inside the image as
//! `/.ferry/image.json`, applied when a command starts.
//!
//! Precedence, the same for `ferry run` and for Slurm steps:
//! - Environment: every variable the host (the job) sets wins; the image's `Env` only
//!   fills in what the host does not set. Variables that belong to Slurm, the process
//!   managers and the user's identity (`RESERVED_PREFIXES`, `RESERVED_NAMES`) are never
//!   taken from the image, set or not. `PATH` is the exception: when the image's `Env`
//!   has one, it replaces the host's (the image's commands live there), then the
//!   standard folders and ferry's own are appended (see `request::container_path`),
//!   unless the user named `PATH` in `--container-env` (Slurm steps): then the job's
//!   PATH wins too.
//! - Working directory: an explicit option (`--container-workdir`, `ferry run
//!   --workdir`) wins over the image's `WorkingDir`, which wins over the default (the
//!   folder the job was submitted from, or the current folder).
//! - `User` and `Labels` are kept for inspection only: a command always runs as the
//!   job's user.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the configuration lives inside an image.
pub const CONFIG_PATH: &str = "/.ferry/image.json";
/// Larger files are refused: a configuration is a few kilobytes.
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// Why an image's stored configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    #[error("image {image}: {CONFIG_PATH} is not a valid image configuration (line {line}, column {column}: {what}); rebuild the image with ferry import, or remove that file")]
    Invalid {
        image: PathBuf,
        line: usize,
        column: usize,
        /// "unexpected value", "truncated" or "not JSON".
        what: &'static str,
    },
    #[error("image {image}: {CONFIG_PATH}: Env entry {entry:?} is not NAME=VALUE without NUL bytes; fix or remove that file")]
    BadEnv {
        image: PathBuf,
        /// The entry's first 60 characters.
        entry: String,
    },
    #[error("image {image}: {CONFIG_PATH} is larger than {MAX_CONFIG_SIZE} bytes; rebuild the image with ferry import, or remove that file")]
    TooLarge { image: PathBuf },
    #[error("image {image}: {CONFIG_PATH} {problem}; rebuild the image with ferry import, or remove that file")]
    Unreadable {
        image: PathBuf,
        problem: StoredProblem,
    },
}

/// What stopped root reading the stored file inside the image.
#[derive(Debug)]
pub enum StoredProblem {
    Open(std::io::Error),
    Read(std::io::Error),
    NotRegular,
}

impl fmt::Display for StoredProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredProblem::Open(e) => write!(f, "cannot be opened ({e})"),
            StoredProblem::Read(e) => write!(f, "cannot be read ({e})"),
            StoredProblem::NotRegular => f.write_str("is not a regular file"),
        }
    }
}

/// The parts of an OCI/Docker image configuration that ferry keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Variable name prefixes that always come from the host: Slurm, SPANK, ferry, and the
/// process managers MPI libraries talk to (PMI-1/2, PMIx, Open MPI's launcher, Hydra).
pub const RESERVED_PREFIXES: &[&str] = &[
    "SLURM_", "SPANK_", "FERRY_", "PMI_", "PMIX_", "OMPI_", "HYDRA_", "MPIR_", "I_MPI_",
];
/// Open MPI tunables (`OMPI_MCA_*`) are settings images commonly carry: not reserved.
const UNRESERVED_PREFIXES: &[&str] = &["OMPI_MCA_"];
/// Single names that always come from the host: who the user is and where.
pub const RESERVED_NAMES: &[&str] = &["HOME", "USER", "LOGNAME", "PWD", "TERM"];

fn reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name)
        || (RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
            && !UNRESERVED_PREFIXES.iter().any(|p| name.starts_with(p)))
}

impl ImageConfig {
    /// Parses the stored configuration; `image` names the image in the error.
    pub fn parse(text: &[u8], image: &Path) -> Result<ImageConfig, ImageConfigError> {
        let config: ImageConfig =
            serde_json::from_slice(text).map_err(|e| ImageConfigError::Invalid {
                image: image.to_path_buf(),
                line: e.line(),
                column: e.column(),
                what: match e.classify() {
                    serde_json::error::Category::Data => "unexpected value",
                    serde_json::error::Category::Eof => "truncated",
                    _ => "not JSON",
                },
            })?;
        if let Some(entry) = config
            .env
            .iter()
            .flatten()
            .find(|e| e.contains('\0') || e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(ImageConfigError::BadEnv {
                image: image.to_path_buf(),
                entry: entry.chars().take(60).collect(),
            });
        }
        Ok(config)
    }

    /// Checks the stored file's bytes as `ferry run` does before using them: bounded in
    /// size, then `parse`d. `ferry inspect` calls it so that both give one verdict.
    pub fn check_stored(text: &[u8], image: &Path) -> Result<ImageConfig, ImageConfigError> {
        if text.len() as u64 > MAX_CONFIG_SIZE {
            return Err(ImageConfigError::TooLarge {
                image: image.to_path_buf(),
            });
        }
        ImageConfig::parse(text, image)
    }

    /// The image's working directory, when it names an absolute folder.
    pub fn workdir(&self) -> Option<PathBuf> {
        self.working_dir
            .as_deref()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from)
    }

    /// The command to run when none is given: Entrypoint then Cmd.
    pub fn default_command(&self) -> Vec<String> {
        self.entrypoint
            .iter()
            .flatten()
            .chain(self.cmd.iter().flatten())
            .cloned()
            .collect()
    }

    /// The variables to set for a command, given the host's environment (`host` looks
    /// one up), ferry's extra PATH folder and the names whose host value wins over the
    /// image's (`--container-env`): see the module's precedence rules.
    pub fn environment(
        &self,
        host: impl Fn(&str) -> Option<String>,
        extra_path: Option<&str>,
        host_wins: &[String],
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut image_path = None;
        for (name, value) in self.env.iter().flatten().filter_map(|e| e.split_once('=')) {
            if name == "PATH" {
                image_path = Some(value.to_string());
            } else if !name.is_empty() && !reserved(name) && host(name).is_none() {
                out.retain(|(n, _)| n != name);
                out.push((name.to_string(), value.to_string()));
            }
        }
        let host_path = host_wins.iter().any(|n| n == "PATH").then(|| host("PATH"));
        let path = match host_path.flatten() {
            Some(path) => Some(path),
            None => image_path.or_else(|| host("PATH")),
        };
        out.push((
            "PATH".into(),
            crate::request::container_path(path.as_deref(), extra_path),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfig {
        ImageConfig::parse(json.as_bytes(), Path::new("/img.sqfs")).unwrap()
    }

    #[test]
    fn host_wins_image_fills_in_path_from_image() {
        let c = config(
            r#"{"Env":["PATH=/opt/app/bin:/usr/bin","LANG=C.UTF-8","APP_HOME=/opt/app",
                "SLURM_JOB_ID=1","PMIX_RANK=3","OMPI_COMM_WORLD_RANK=2","OMPI_MCA_btl=self",
                "HOME=/root","A=1","A=2"]}"#,
        );
        let host = |name: &str| match name {
            "LANG" => Some("en_US.UTF-8".to_string()),
            "PATH" => Some("/host/bin".to_string()),
            _ => None,
        };
        let env = c.environment(host, Some("/.ferry/bin"), &[]);
        assert_eq!(
            env,
            vec![
                ("APP_HOME".to_string(), "/opt/app".to_string()),
                ("OMPI_MCA_btl".to_string(), "self".to_string()),
                ("A".to_string(), "2".to_string()),
                (
                    "PATH".to_string(),
                    "/opt/app/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin:/.ferry/bin"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn container_env_path_makes_the_jobs_path_win() {
        let c = config(r#"{"Env":["PATH=/opt/app/bin","LANG=C"]}"#);
        let host = |name: &str| (name == "PATH").then(|| "/home/a/bin:/usr/bin".to_string());
        let path =
            |env: Vec<(String, String)>| env.into_iter().find(|(n, _)| n == "PATH").unwrap().1;
        assert_eq!(
            path(c.environment(host, None, &["PATH".into()])),
            crate::request::container_path(Some("/home/a/bin:/usr/bin"), None)
        );
        assert!(path(c.environment(host, None, &[])).starts_with("/opt/app/bin:"));
        // Named but unset in the job: the image's stays.
        assert!(path(c.environment(|_| None, None, &["PATH".into()])).starts_with("/opt/app/bin:"));
    }

    #[test]
    fn without_image_path_the_hosts_is_kept() {
        let env = ImageConfig::default().environment(|_| Some("/host/bin".into()), None, &[]);
        assert_eq!(
            env,
            vec![(
                "PATH".to_string(),
                format!("/host/bin:{}", crate::request::STANDARD_PATH.join(":"))
            )]
        );
    }

    #[test]
    fn stored_files_are_bounded_then_parsed() {
        let image = Path::new("/img.sqfs");
        let mut big = b"{\"Env\": [\"A=".to_vec();
        big.resize(MAX_CONFIG_SIZE as usize + 1, b'x');
        let e = ImageConfig::check_stored(&big, image).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("image /img.sqfs: /.ferry/image.json is larger than {MAX_CONFIG_SIZE} bytes; rebuild the image with ferry import, or remove that file")
        );
        let e = ImageConfig::check_stored(br#"{"Env": "PATH=/bin"}"#, image).unwrap_err();
        assert_eq!(
            e.to_string(),
            ImageConfig::parse(br#"{"Env": "PATH=/bin"}"#, image)
                .unwrap_err()
                .to_string()
        );
        let ok = ImageConfig::check_stored(br#"{"Env": ["PATH=/bin"]}"#, image).unwrap();
        assert_eq!(ok.env, Some(vec!["PATH=/bin".to_string()]));
    }

    #[test]
    fn garbage_is_one_clear_line_naming_the_image() {
        for bad in [
            &b"not json"[..],
            b"{\"Env\": 3}",
            b"{\"Env\": [\"NOEQUALS\"]}",
            b"{\"Env\": [\"=x\"]}",
            b"{\"Env\": [\"A=\\u0000\"]}",
            b"{\"Env\": [\"A=",
            b"\xff\xfe",
        ] {
            let e = ImageConfig::parse(bad, Path::new("/img.sqfs"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("image /img.sqfs: /.ferry/image.json"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn workdir_and_default_command() {
        let c = config(r#"{"WorkingDir":"/srv","Entrypoint":["/app"],"Cmd":["--x"],"Unknown":1}"#);
        assert_eq!(c.workdir(), Some(PathBuf::from("/srv")));
        assert_eq!(c.default_command(), vec!["/app", "--x"]);
        assert_eq!(config(r#"{"WorkingDir":"rel"}"#).workdir(), None);
        assert_eq!(config(r#"{"WorkingDir":null}"#).workdir(), None);
    }
}
