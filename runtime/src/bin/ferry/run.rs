//! `ferry run`: prepare, join and exec, as root, optionally as another user.

use ferry_runtime::image_config::ImageConfig;
use ferry_runtime::site::Site;
use ferry_runtime::step_request::{self, CommandFacts, Inputs, Launch};
use ferry_runtime::{exec, prepare, User};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub enum Never {}

pub fn run(
    mounts: Vec<String>,
    workdir: Option<PathBuf>,
    site_config: Option<PathBuf>,
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
    let spec = image.to_str().ok_or("the image path is not valid UTF-8")?;
    // A registry reference or a stored image's digest: the stored file, pinned.
    let resolved;
    let spec = if ferry_runtime::store::names_a_stored_image(spec) {
        resolved = crate::pull::resolve_for(&user, spec, site_config.as_deref())?;
        resolved.as_str()
    } else {
        spec
    };
    let site = site_config.as_deref().map(Site::load).transpose()?;
    let mut request = step_request::build(Inputs {
        image: spec,
        user,
        workdir,
        site: site.as_ref(),
        launch: Launch::FerryRun(CommandFacts {
            folder: cwd,
            mounts,
        }),
    })?;
    // This very program expires the images a site file lets this node keep.
    request.cache_janitor = std::env::current_exe().ok();
    let container = prepare(&request).map_err(|e| e.to_string())?;
    let cache = container.facts.cache.as_ref();
    if let Some(line) = cache.and_then(|c| c.problem_line(&request.image)) {
        crate::say::warning(&line);
    }
    container.join().map_err(|e| e.to_string())?;
    container.become_user().map_err(|e| e.to_string())?;
    let config = container.facts.config.clone().unwrap_or_default();
    drop_to_env(&container.user, &config);
    container.enter_workdir().map_err(|e| e.to_string())?;
    drop(container); // the namespace lives on in this process
    let command: Vec<std::ffi::OsString> = if command.is_empty() {
        config
            .default_command()
            .into_iter()
            .map(Into::into)
            .collect()
    } else {
        command
    };
    if command.is_empty() {
        return Err(format!(
            "no command given and image {} has no Entrypoint or Cmd; give one after --",
            request.image.display()
        ));
    }
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

/// The environment the caller's command sees: theirs, with who they are now, and the
/// image's own variables where the caller sets none (see `image_config`).
fn drop_to_env(user: &User, config: &ImageConfig) {
    std::env::set_var("HOME", &user.home);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    for (name, value) in config.environment(|n| std::env::var(n).ok(), None, &[]) {
        std::env::set_var(name, value);
    }
}
