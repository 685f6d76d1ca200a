//! `ferry run`: prepare, join and exec, as root, optionally as another user. With
//! `--save` it forks instead: the child joins and execs, this process waits and, when
//! the command succeeded, saves the container as a new image.
//!
//! Without root, this process first enters a user namespace of its own (`userns`),
//! and the same assembly builds the container there, in this process itself
//! (`prepare_here`; with `--save`, in `prepare`'s helper): only the image's mount
//! differs (squashfuse as the user; no loop devices, no node image cache).

use ferry_runtime::cdi::{self, hooks, DeviceRef};
use ferry_runtime::image_config::ImageConfig;
use ferry_runtime::save::ParentImage;
use ferry_runtime::site::Site;
use ferry_runtime::step_request::{self, CommandFacts, Inputs, Launch};
use ferry_runtime::{exec, prepare, prepare_here, Container, Request, User};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub enum Never {}

/// `ferry run`'s options.
pub struct Options {
    pub mounts: Vec<String>,
    pub workdir: Option<PathBuf>,
    pub site_config: Option<PathBuf>,
    pub user: Option<String>,
    /// `--writable[=SIZE]`: "" without a size.
    pub writable: Option<String>,
    pub save: Option<PathBuf>,
    /// `--fakeroot` (without root only): uid and gid 0 inside the user namespace.
    pub fakeroot: bool,
    /// `--device`: CDI devices, `VENDOR/CLASS=NAME` (each may be a comma list).
    pub devices: Vec<String>,
}

pub fn run(
    options: Options,
    image: PathBuf,
    command: Vec<std::ffi::OsString>,
) -> Result<Never, String> {
    let Options {
        mounts,
        workdir,
        site_config,
        user,
        writable,
        save,
        fakeroot,
        devices,
    } = options;
    let rootless = !ferry_runtime::is_root();
    if rootless && save.is_some() && !fakeroot {
        // Saved by the user's mksquashfs in the namespace, where the image's files
        // belong to root only with --fakeroot (else they would be stored as nobody's).
        return Err("--save without root needs --fakeroot, so that the image's files keep root as their owner in the saved image: add --fakeroot".into());
    }
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    let user = if rootless {
        caller_without_root(user.as_deref())?
    } else if fakeroot {
        return Err("--fakeroot is for ferry run without root (as root the command already runs as root); drop it".into());
    } else {
        match user {
            Some(name) => User::by_name(&name),
            None => User::by_uid(0, 0, nix_groups()),
        }
        .map_err(|e| e.to_string())?
    };
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
            folder: cwd.clone(),
            mounts,
        }),
    })?;
    if let Some(size) = &writable {
        let size = Some(size.as_str()).filter(|s| !s.is_empty());
        step_request::make_writable(&mut request, site.as_ref(), size)?;
    }
    let devices = DeviceRef::parse_list(&devices.join(","))?;
    request.devices = cdi::devices_for(
        site.as_ref().and_then(|s| s.cdi_spec_dirs.as_deref()),
        &devices,
        &request.user,
    )?;
    if rootless {
        devices_without_root(&request.devices)?;
    }
    for line in &request.devices.warnings {
        crate::say::warning(line);
    }
    if rootless {
        without_root(&mut request, fakeroot)?;
    } else {
        // This very program expires the images a site file lets this node keep.
        request.cache_janitor = std::env::current_exe().ok();
    }
    // Without root and without --save, this process builds the container and stays in
    // it (no helper to fork); --save must wait outside it for the command to end.
    let container = if rootless && save.is_none() {
        prepare_here(&request)
    } else {
        prepare(&request)
    }
    .map_err(|e| e.to_string())?;
    // Never any without root (`devices_without_root` refuses specs with hooks).
    if let Err(line) = hooks::run_all(
        &container,
        &request.devices.hooks,
        &format!("ferry-run-{}", std::process::id()),
    ) {
        container.release();
        return Err(line);
    }
    let cache = container.facts.cache.as_ref();
    if let Some(line) = cache.and_then(|c| c.problem_line(&request.image)) {
        crate::say::warning(&line);
    }
    match save {
        None => enter_and_exec(container, &request, command, None),
        Some(out) => run_then_save(container, &request, command, &cwd.join(out)),
    }
}

/// Joins the container as its user and execs the command (or the image's default).
/// With `die_with`, the command is killed when that process (ferry, waiting to save)
/// dies: it would otherwise keep the container, and its squashfuse, alive.
fn enter_and_exec(
    container: Container,
    request: &Request,
    command: Vec<std::ffi::OsString>,
    die_with: Option<nix::unistd::Pid>,
) -> Result<Never, String> {
    container.join().map_err(|e| e.to_string())?;
    container.become_user().map_err(|e| e.to_string())?;
    if let Some(parent) = die_with {
        // After becoming the user: a change of ids disarms it.
        ferry_runtime::process::die_with_parent(parent)
            .map_err(|e| format!("cannot start the command: {e}"))?;
    }
    let config = container.facts.config.clone().unwrap_or_default();
    drop_to_env(&container.user, &config, &request.devices);
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

/// `--save`: the command runs in a child; when it exits with status 0, the container is
/// saved to `out`. Exits with the command's status (128 + N for a signal); a failed
/// save is one line and status 1.
fn run_then_save(
    container: Container,
    request: &Request,
    command: Vec<std::ffi::OsString>,
    out: &std::path::Path,
) -> Result<Never, String> {
    use ferry_runtime::process::{fork, Forked};
    use nix::sys::wait::{waitpid, WaitStatus};
    let parent = nix::unistd::getpid();
    let child = match fork().map_err(|e| format!("cannot start the command: {e}"))? {
        Forked::Child => match enter_and_exec(container, request, command, Some(parent)) {
            Ok(never) => match never {},
            Err(message) => {
                crate::say::error(&message);
                std::process::exit(125)
            }
        },
        Forked::Parent(pid) => pid,
    };
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for the command: {e}")),
        }
    };
    if status == 0 {
        match container.save(out, &ParentImage::of(&container)) {
            Ok(saved) => {
                if let Some(first) = saved.unreadable.first() {
                    crate::say::warning(&format!(
                        "{}: saved without {} path(s) {} cannot read in the container (first: {}); they are left out, or stored empty",
                        out.display(),
                        saved.unreadable.len(),
                        container.user.name,
                        first.display()
                    ));
                }
            }
            Err(e) => {
                crate::say::error(&e.to_string());
                container.release();
                std::process::exit(1)
            }
        }
    }
    container.release();
    std::process::exit(status)
}

/// The caller, for a run without root: `--user` may only name themselves.
fn caller_without_root(asked: Option<&str>) -> Result<User, String> {
    let uid = nix::unistd::getuid().as_raw();
    let me = User::by_uid(uid, nix::unistd::getgid().as_raw(), nix_groups())
        .map_err(|e| e.to_string())?;
    match asked {
        Some(name) if name != me.name && name != uid.to_string() => Err(format!(
            "ferry run --user {name}: without root the command runs as you ({}); drop --user, or run it as root (sudo ferry run --user {name} ...)",
            me.name
        )),
        _ => Ok(me),
    }
}

/// Enters the user namespace and fits the request to it: what the kernel lets a user
/// mount (SquashFS and SIF through squashfuse as the user, root folders bound; no
/// kernel file systems, so no trusted folders), no node image cache, the user's own
/// digest cache instead of the node's, and with `--fakeroot` root inside.
/// A site file still gives its mounts, limits and mount destinations.
fn without_root(request: &mut Request, fakeroot: bool) -> Result<(), String> {
    use ferry_runtime::userns::{self, Inside};
    let inside = if fakeroot {
        Inside::Root
    } else {
        Inside::Themselves
    };
    userns::enter(inside).map_err(|reason| reason.line())?;
    request.image_policy.trusted_dirs.clear();
    request.image_policy.untrusted = ferry_runtime::policy::Untrusted::Fuse;
    request.image_cache = ferry_runtime::policy::CachePolicy::OFF;
    request.cache_janitor = None;
    if fakeroot {
        request.user = User {
            name: "root".into(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            home: "/root".into(),
            gecos: "root".into(),
        };
    }
    // The user's own digest cache (the submit check's): a pinned image is hashed once
    // per version of its file. Its owner as the namespace shows them (0 with --fakeroot).
    request.digest_cache = ferry_runtime::digest::user_cache_dir();
    request.digest_cache_owner = request.user.uid;
    Ok(())
}

/// Without root, a device applies when nothing of it needs root: its nodes are at
/// their own paths under the host's /dev (in every container already) and its mounts
/// are binds the user could make anyway. A node shown at another path (a bind into
/// /dev) and a hook (run by root as the user, joined to the container) need root.
fn devices_without_root(applied: &cdi::Applied) -> Result<(), String> {
    let devices = applied.devices.join(",");
    if let Some(node) = applied.node_binds.first() {
        return Err(format!(
            "--device {devices}: its device node {} is shown at {} in the container, which needs root; run ferry as root, or use srun --container-devices",
            node.host.display(),
            node.container.display()
        ));
    }
    if let Some(hook) = applied.hooks.first() {
        return Err(format!(
            "--device {devices}: CDI spec {} runs hook {}, and ferry runs hooks only as root; run ferry as root, or use srun --container-devices",
            hook.spec.display(),
            hook.hook.path.display()
        ));
    }
    Ok(())
}

fn nix_groups() -> Vec<u32> {
    nix::unistd::getgroups()
        .map(|g| g.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// The environment the caller's command sees: theirs, with who they are now, and the
/// image's own variables where the caller sets none (see `image_config`).
/// Then the CDI devices' variables over both.
fn drop_to_env(user: &User, config: &ImageConfig, devices: &cdi::Applied) {
    std::env::set_var("HOME", &user.home);
    std::env::set_var("USER", &user.name);
    std::env::set_var("LOGNAME", &user.name);
    let base = config.environment(|n| std::env::var(n).ok(), None, &[]);
    let env = cdi::layer_env(
        base,
        &devices.env_for(None),
        &devices.library_dirs(),
        &[],
        |n| std::env::var(n).ok(),
    );
    for (name, value) in env {
        std::env::set_var(name, value);
    }
}
