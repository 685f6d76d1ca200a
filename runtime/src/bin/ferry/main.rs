//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses,
//! and the admin commands (version, doctor).

mod cli;
mod digest;
mod doctor;
mod inspect;
mod progress;
mod run;
mod version;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

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
        Command::Version => {
            version::print();
            ExitCode::SUCCESS
        }
        Command::Doctor { root, plugstack } => doctor::doctor(&root, &plugstack),
        Command::Inspect { json, image } => match inspect::inspect(&image, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("ferry: {message}");
                ExitCode::from(2)
            }
        },
    }
}
