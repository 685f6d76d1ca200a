//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses,
//! and the admin commands (version, doctor).

mod build;
mod cache;
mod check_config;
mod cli;
mod digest;
mod doctor;
mod images;
mod import;
mod inspect;
mod progress;
mod pull;
mod run;
mod say;
mod version;

use clap::Parser;
use cli::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    ferry_runtime::interrupt::restore_default_sigpipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            mounts,
            workdir,
            site_config,
            user,
            writable,
            readonly: _,
            save,
            fakeroot,
            devices,
            image,
            command,
        } => match run::run(
            run::Options {
                mounts,
                workdir,
                site_config,
                user,
                writable,
                save,
                fakeroot,
                devices,
            },
            image,
            command,
        ) {
            Ok(never) => match never {},
            Err(message) => say::fail(&message, 125),
        },
        Command::Build {
            force,
            all_root,
            compression,
            rootfs,
            out,
        } => report(build::build_command(
            &rootfs,
            &out,
            force,
            all_root,
            compression,
        )),
        Command::Import {
            force,
            compression,
            archive,
            out,
        } => report(import::import_command(&archive, &out, force, compression)),
        Command::Pull {
            store,
            site_config,
            force,
            compression,
            platform,
            insecure_registries,
            reference,
            out,
        } => report(pull::pull_command(pull::PullArgs {
            reference,
            out,
            store,
            site_config,
            force,
            compression,
            platform,
            insecure_registries,
        })),
        Command::Resolve {
            json,
            local,
            site_config,
            platform,
            insecure_registries,
            image,
        } => pull::resolve_command(pull::ResolveArgs {
            image,
            json,
            local,
            site_config,
            platform,
            insecure_registries,
        }),
        Command::CheckConfig { file } => check_config::check_config(file),
        Command::Digest { check, image } => {
            match digest::digest_command(check.as_deref(), &image) {
                Ok(code) => code,
                Err(message) => say::fail(&message, 2),
            }
        }
        Command::Version => {
            version::print();
            ExitCode::SUCCESS
        }
        Command::Doctor {
            root,
            plugstack,
            user,
        } => match user || !ferry_runtime::is_root() {
            true => doctor::doctor_user(),
            false => doctor::doctor(&root, &plugstack),
        },
        Command::Images {
            action,
            store,
            json,
        } => match images::images(action, store, json) {
            Ok(code) => code,
            Err(message) => say::fail(&message, 1),
        },
        Command::Cache { action, json } => match cache::cache(action, json) {
            Ok(code) => code,
            Err(message) => say::fail(&message, 1),
        },
        Command::Inspect { json, image } => match inspect::inspect(&image, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => say::fail(&message, 2),
        },
        Command::NamedWarden {
            job,
            node,
            name,
            from,
        } => {
            let named = ferry_runtime::named::NamedContainer { job, node, name };
            report(
                ferry_runtime::named::run_warden(&named, &from)
                    .map_err(|e| format!("named container {}: {e}", named.name)),
            )
        }
    }
}

/// Exit 0, or one line on stderr and exit 1.
fn report(outcome: Result<(), String>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => say::fail(&message, 1),
    }
}
