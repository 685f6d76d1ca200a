//! `ferry`: run a container image outside Slurm, on the same runtime the plugin uses.

use clap::{Parser, Subcommand};
use ferry_runtime::digest::{self, split_pinned, Cache, Digest};
use ferry_runtime::{exec, prepare, MountSpec, Request, User};
use std::ffi::CString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
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
        } => match run(mounts, workdir, user, image, command) {
            Ok(never) => match never {},
            Err(message) => {
                eprintln!("ferry: {message}");
                ExitCode::from(125)
            }
        },
        Command::Digest { check, image } => match digest_command(check.as_deref(), &image) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("ferry: {message}");
                ExitCode::from(2)
            }
        },
    }
}

enum Never {}

fn run(
    mounts: Vec<String>,
    workdir: Option<PathBuf>,
    user: Option<String>,
    image: PathBuf,
    command: Vec<std::ffi::OsString>,
) -> Result<Never, String> {
    if !ferry_runtime::is_root() {
        return Err("ferry run needs root: it mounts the image in a private mount namespace; run it with sudo (use --user NAME to run as yourself), or use sbatch/srun --container=IMAGE on a cluster with ferry".into());
    }
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let user = match user {
        Some(name) => User::by_name(&name),
        None => User::by_uid(0, 0, nix_groups()),
    }
    .map_err(|e| e.to_string())?;
    let mounts = mounts
        .iter()
        .map(|m| MountSpec::parse(m, &cwd))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let spec = image.to_str().ok_or("the image path is not valid UTF-8")?;
    let (image, pinned) = split_pinned(spec)?;
    let request = Request {
        cwd: Some(cwd.clone()),
        workdir,
        mounts,
        pinned,
        digest_cache: Some(digest::DEFAULT_CACHE_DIR.into()),
        ..Request::new(cwd.join(image), user)
    };
    let container = prepare(&request).map_err(|e| e.to_string())?;
    container.join().map_err(|e| e.to_string())?;
    container.become_user().map_err(|e| e.to_string())?;
    drop_to_env(&container.user);
    container.enter_workdir().map_err(|e| e.to_string())?;
    drop(container); // the namespace lives on in this process
    let argv: Vec<CString> = command
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| "an argument contains a NUL byte".to_string())
        })
        .collect::<Result<_, _>>()?;
    let err = exec::execvp(&argv);
    let name = command[0].to_string_lossy();
    Err(match err.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "{name}: command not found in image {}",
            request.image.display()
        ),
        _ => format!(
            "{name}: cannot run it in image {}: {err}",
            request.image.display()
        ),
    })
}

fn nix_groups() -> Vec<u32> {
    nix::unistd::getgroups()
        .map(|g| g.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// The environment the caller's command sees: theirs, with who they are now.
fn drop_to_env(user: &User) {
    std::env::set_var("HOME", &user.home);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    let path = ferry_runtime::request::container_path(std::env::var("PATH").ok().as_deref(), None);
    std::env::set_var("PATH", path);
}

fn digest_command(check: Option<&str>, image: &PathBuf) -> Result<ExitCode, String> {
    let file = std::fs::File::open(image).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("image {}: not found; check the path", image.display())
        }
        _ => format!("image {}: cannot read it ({e})", image.display()),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("image {}: {e}", image.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "image {}: not a file; only image files have a digest (a root folder cannot be pinned)",
            image.display()
        ));
    }
    let size = meta.len();
    let cache = ferry_runtime::is_root().then(|| Cache::new(digest::DEFAULT_CACHE_DIR));
    if let Some(expected) = check {
        let expected = Digest::parse(expected)
            .ok_or_else(|| format!("--check {expected}: expected sha256: and 64 hex digits"))?;
        let (found, source, _) = digest::digest_of(&file, cache.as_ref())
            .map_err(|e| format!("image {}: {e}", image.display()))?;
        let source = match source {
            digest::Source::Cache => "cached",
            digest::Source::Computed => "hashed",
        };
        if found == expected {
            println!("{}: OK ({source})", image.display());
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{}: MISMATCH: expected {expected}, found {found} ({source})",
            image.display()
        );
        return Ok(ExitCode::from(1));
    }
    let before =
        digest::FileVersion::of(&file).map_err(|e| format!("image {}: {e}", image.display()))?;
    let mut bar = Progress::new(image, size);
    let found = digest::hash_file(&file, &mut |done| bar.show(done))
        .map_err(|e| format!("image {}: {e}", image.display()))?;
    bar.finish();
    digest::remember(cache.as_ref(), &file, &before, &found);
    println!("{found}  {}", image.display());
    Ok(ExitCode::SUCCESS)
}

/// A one-line progress display on a terminal for files worth waiting for; silent in scripts.
struct Progress {
    label: String,
    size: u64,
    shown: Option<u64>,
    enabled: bool,
}

impl Progress {
    fn new(image: &std::path::Path, size: u64) -> Progress {
        let enabled = std::io::stderr().is_terminal() && size >= 256 << 20;
        Progress {
            label: image.display().to_string(),
            size,
            shown: None,
            enabled,
        }
    }

    fn show(&mut self, done: u64) {
        if !self.enabled || self.size == 0 {
            return;
        }
        let percent = done * 100 / self.size;
        if self.shown != Some(percent) {
            self.shown = Some(percent);
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            eprint!(
                "\rhashing {}: {percent:3}% ({:.1} of {:.1} GiB)",
                self.label,
                gib(done),
                gib(self.size)
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self) {
        if self.enabled && self.shown.is_some() {
            eprintln!();
        }
    }
}
