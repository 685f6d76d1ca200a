//! ferry's runtime: open an image, assemble a private mount namespace for it once, and
//! let any number of processes (every task of a Slurm step) join it.
//!
//! `unsafe` lives only in `sys`; everything else is safe code over it, and the compiler
//! holds every other module to that.

#![deny(unsafe_code)]

// Root code that only the runtime itself calls: the setup helper's pieces.
mod as_user;
mod assemble;
pub mod cdi;
mod container;
pub mod digest;
pub mod error;
pub mod image;
pub mod image_cache;
pub mod image_config;
pub mod job_namespace;
pub mod mount_error;
pub mod named;
pub mod node_checks;
pub mod oci;
mod plan;
pub mod plugin_config;
pub mod policy;
mod privileged;
#[cfg(feature = "registry")]
pub mod registry;
pub mod request;
pub mod resolve;
pub mod save;
#[cfg(test)]
mod scratch;
mod share;
pub mod sif;
pub mod site;
pub mod squash;
pub mod step_request;
pub mod store;
pub mod submit_check;
pub mod superblock;
#[allow(unsafe_code)] // the syscall seam: every block carries a `// SAFETY:` line
mod sys;
pub mod userns;
pub mod users;
mod verify;

pub use container::{prepare, prepare_here, Container, ImageFacts};
pub use error::{Error, Result};
pub use request::{MountSpec, Request, SlurmClients};
pub use users::User;

/// Where the packages install the static launcher of Slurm's commands inside images
/// (the plugin's `launcher=` default; `ferry doctor` checks it).
pub const DEFAULT_LAUNCHER: &str = "/usr/libexec/ferry/ferry-host-exec";

/// This node's host name (for records and logs).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// True when running as root (the CLI's `run` needs it).
pub fn is_root() -> bool {
    sys::euid() == 0
}

pub mod interrupt {
    //! Ctrl-C and termination during long CLI operations: noted, not fatal, so the
    //! operation can clean up before it exits.
    pub use crate::sys::{catch_interrupts, interrupted, restore_default_sigpipe};
}

pub mod process {
    //! Forking the CLI's own process: `ferry run --save` waits for its command.
    pub use crate::sys::{die_with_parent, fork, Forked};
}

pub mod exec {
    //! Replacing the current process with a command (CLI and launcher).
    pub use crate::sys::{execv, execvp};
}
