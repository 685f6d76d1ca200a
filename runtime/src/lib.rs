//! ferry's runtime: open an image, assemble a private mount namespace for it once, and
//! let any number of processes (every task of a Slurm step) join it.
//!
//! `unsafe` lives only in `sys`; everything else is safe code over it.

pub mod assemble;
pub mod container;
pub mod error;
pub mod image;
pub mod plan;
pub mod request;
pub mod resolve;
mod sys;
pub mod users;

pub use container::{prepare, Container};
pub use error::{Error, Result};
pub use request::{MountSpec, Request, SlurmClients};
pub use users::User;

/// Exits with the user's message; for the CLI only.
pub fn is_root() -> bool {
    sys::euid() == 0
}

pub mod exec {
    //! Replacing the current process with a command (CLI and launcher).
    pub use crate::sys::{execv, execvp};
}
