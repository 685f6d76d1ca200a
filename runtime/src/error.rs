//! The crate's error: one variant per concern, each a typed error of the module that
//! knows what failed (`image`, `policy`, `digest`, the mount plan, the setup helper,
//! the task joining, `image_config`, `users`, `oci`, `squash`, `store`). Every message
//! is one line that names the image, path or option and says what to do.

use std::io;

pub use crate::container::{SetupError, TaskError};
pub use crate::digest::DigestError;
pub use crate::image::ImageError;
pub use crate::image_config::ImageConfigError;
pub use crate::mount_error::{MountError, MountStep};
pub use crate::oci::ArchiveError;
pub use crate::policy::PolicyError;
#[cfg(feature = "registry")]
pub use crate::registry::RegistryError;
pub use crate::save::SaveError;
pub use crate::squash::SquashError;
pub use crate::store::StoreError;
pub use crate::users::UserError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    ImageConfig(#[from] ImageConfigError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Oci(#[from] ArchiveError),
    #[error(transparent)]
    Squash(#[from] SquashError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Save(#[from] SaveError),
    #[cfg(feature = "registry")]
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// What the setup helper reported, rebuilt in the parent: the category of the
    /// helper's error and the line it wrote (its `io::Error` sources cannot cross the
    /// pipe, so the parent keeps the kind and the text, never a guess).
    #[error("{message}")]
    Helper { kind: ErrorKind, message: String },
    /// A named container (`--container-name`) that cannot be made or joined.
    #[error("{0}")]
    Named(String),
    /// A generic system call with nothing more specific to say (a pipe, a socket pair).
    #[error("{what}: {source}")]
    System {
        what: &'static str,
        source: io::Error,
    },
}

/// The categories of `Error`: what the helper's report carries across the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Image,
    Policy,
    Digest,
    Mount,
    Setup,
    Task,
    ImageConfig,
    User,
    Oci,
    Squash,
    Store,
    Save,
    /// A pull from a registry (only the CLI pulls; kept in every build so the
    /// helper's reports read the same).
    Registry,
    Named,
    System,
    /// The helper panicked: a bug, not the user's input.
    Internal,
}

impl Error {
    pub(crate) fn system(what: &'static str, source: io::Error) -> Self {
        Error::System { what, source }
    }

    /// The category, the same for an error made here and one the helper reported.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Image(_) => ErrorKind::Image,
            Error::Policy(_) => ErrorKind::Policy,
            Error::Digest(_) => ErrorKind::Digest,
            Error::Mount(_) => ErrorKind::Mount,
            Error::Setup(_) => ErrorKind::Setup,
            Error::Task(_) => ErrorKind::Task,
            Error::ImageConfig(_) => ErrorKind::ImageConfig,
            Error::User(_) => ErrorKind::User,
            Error::Oci(_) => ErrorKind::Oci,
            Error::Squash(_) => ErrorKind::Squash,
            Error::Save(_) => ErrorKind::Save,
            Error::Store(_) => ErrorKind::Store,
            #[cfg(feature = "registry")]
            Error::Registry(_) => ErrorKind::Registry,
            Error::Helper { kind, .. } => *kind,
            Error::Named(_) => ErrorKind::Named,
            Error::System { .. } => ErrorKind::System,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Longest message shown: a path of 80,000 characters helps nobody, and Slurm cuts
/// long lines where it likes.
const MAX_MESSAGE: usize = 1024;

/// A message as the one line the user reads: control characters (a newline in an
/// option value or a path) are escaped, and an overlong middle is cut.
pub fn one_line(message: &str) -> String {
    let escaped: String = message
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<char>>()
            } else {
                vec![c]
            }
        })
        .collect();
    let chars: Vec<char> = escaped.chars().collect();
    if chars.len() <= MAX_MESSAGE {
        return escaped;
    }
    let keep = MAX_MESSAGE / 2;
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn messages_become_one_bounded_line() {
        assert_eq!(
            one_line("image /a\nb\tc: not found"),
            r"image /a\nb\tc: not found"
        );
        assert_eq!(one_line("plain"), "plain");
        let huge = format!("start {} end", "a/".repeat(40_000));
        let line = one_line(&huge);
        assert!(line.len() <= 1030 && line.starts_with("start ") && line.ends_with(" end"));
    }
}
