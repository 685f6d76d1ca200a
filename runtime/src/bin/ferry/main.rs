//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses.

mod check_config;
mod digest;
mod progress;
mod run;

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
        /// Apply this site file's image policy, site mounts and limits, as the plugin does
        /// (default: none; the kernel mounts the image)
        #[arg(long, value_name = "FILE")]
        site_config: Option<PathBuf>,
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
    /// Validate a site file (default /etc/ferry/site.json) and print the effective policy;
    /// exit 1 on errors or when this host cannot apply it
    CheckConfig {
        /// The site file
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            mounts,
            workdir,
            site_config,
            user,
            image,
            command,
        } => match run::run(mounts, workdir, site_config, user, image, command) {
            Ok(never) => match never {},
            Err(message) => {
                eprintln!("ferry: {}", ferry_runtime::error::one_line(&message));
                ExitCode::from(125)
            }
        },
        Command::CheckConfig { file } => check_config::check_config(file),
        Command::Digest { check, image } => {
            match digest::digest_command(check.as_deref(), &image) {
                Ok(code) => code,
                Err(message) => {
                    eprintln!("ferry: {}", ferry_runtime::error::one_line(&message));
                    ExitCode::from(2)
                }
            }
        }
    }
}
