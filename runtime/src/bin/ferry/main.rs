//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses.

mod digest;
mod inspect;
mod progress;
mod run;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Run a command inside a container image (SquashFS, SIF or ext image file, or root folder)"
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
        /// The command and its arguments
        #[arg(last = true, required = true, value_name = "CMD")]
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
    /// Show what an image is: format, size, SquashFS compression, SIF partitions, the stored config
    Inspect {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Image file or root folder
        image: PathBuf,
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
        Command::Digest { check, image } => {
            match digest::digest_command(check.as_deref(), &image) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("ferry: {message}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Inspect { json, image } => match inspect::inspect(&image, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("ferry: {message}");
                ExitCode::from(2)
            }
        },
    }
}
