//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses.

mod build;
mod digest;
mod import;
mod progress;
mod run;
mod unpack;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Run a command inside a container image (SquashFS file or root folder)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run CMD inside IMAGE (needs root; --user runs it as that user, as a Slurm step would)
    Run {
        /// Bind SRC (a host path) at DST inside, read-only with :ro. Repeatable.
        #[arg(long = "mount", short = 'm', value_name = "SRC[:DST[:ro]]")]
        mounts: Vec<String>,
        /// Folder inside the container to start in (default: the current folder, bound from the host)
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Run as this user (default: the caller)
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Image file or root folder
        image: PathBuf,
        /// The command and its arguments (default: the image's Entrypoint and Cmd, from ferry import)
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the SHA-256 digest of an image file, to pin it as IMAGE@sha256:HEX
    Digest {
        /// Verify against this digest instead (uses the node's digest cache when root);
        /// exit 1 on a mismatch
        #[arg(long, value_name = "sha256:HEX")]
        check: Option<String>,
        /// Image file
        image: PathBuf,
    },
    /// Make a reproducible SquashFS image of a root folder (same folder, same bytes)
    Build {
        /// Replace OUT if it exists
        #[arg(long)]
        force: bool,
        /// Store every file as owned by root (default: the owners on disk)
        #[arg(long)]
        all_root: bool,
        /// Root folder (the image's /)
        rootfs: PathBuf,
        /// SquashFS image to write
        out: PathBuf,
    },
    /// Make a SquashFS image from a docker/podman save archive or an OCI image layout
    Import {
        /// Replace OUT if it exists
        #[arg(long)]
        force: bool,
        /// docker-archive tar, OCI archive tar, or OCI layout folder
        archive: PathBuf,
        /// SquashFS image to write
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            mounts,
            workdir,
            user,
            image,
            command,
        } => match run::run(mounts, workdir, user, image, command) {
            Ok(never) => match never {},
            Err(message) => {
                eprintln!("ferry: {message}");
                ExitCode::from(125)
            }
        },
        Command::Build {
            force,
            all_root,
            rootfs,
            out,
        } => report(build::build_command(&rootfs, &out, force, all_root)),
        Command::Import {
            force,
            archive,
            out,
        } => report(import::import_command(&archive, &out, force)),
        Command::Digest { check, image } => {
            match digest::digest_command(check.as_deref(), &image) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("ferry: {message}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Exit 0, or one line on stderr and exit 1.
fn report(outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ferry: {message}");
            ExitCode::from(1)
        }
    }
}
