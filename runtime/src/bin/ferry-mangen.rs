//! Writes the man pages of `ferry` and its subcommands, generated from the command line
//! definition: `ferry-mangen DIR` makes DIR/ferry.1, DIR/ferry-run.1, ... The package
//! build (packaging/build-deb, packaging/ferry.spec) runs it; it is not installed.

#[path = "ferry/cli.rs"]
#[allow(dead_code)]
mod cli;

use clap::CommandFactory;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ferry-mangen DIR");
        return ExitCode::from(2);
    };
    match write_pages(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-mangen: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn write_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ferry = cli::Cli::command()
        .version(env!("CARGO_PKG_VERSION"))
        .after_help("See also: ferry-spank(8) for the Slurm plugin and its options.");
    // The subcommand pages are named ferry-SUB (as git does), and each names its parent.
    for sub in ferry.get_subcommands() {
        let name = format!("ferry-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        render(dir, &name, page)?;
    }
    render(dir, "ferry", ferry)
}

fn render(dir: &Path, name: &str, command: clap::Command) -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .section("1")
        .source(format!("ferry {}", env!("CARGO_PKG_VERSION")))
        .manual("ferry manual")
        .render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)
}
