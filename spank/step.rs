//! slurmstepd (remote context): prepare the container once per step per node, let each
//! task join it, release it at step end.
//!
//! Errors from `init_post_opt` do not reach the user's terminal, so a failed prepare is
//! logged for the admin and kept: every task then prints it on the step's stderr and
//! fails, which the user does see (srun's terminal or the job's output file).

use crate::client::{
    CONTAINER_VAR, CWD_VAR, MOUNTS_BASE_VAR, MOUNTS_SPEC_VAR, PROVENANCE_FILE_VAR,
    PROVENANCE_SPEC_VAR,
};
use crate::ffi::{self, Spank};
use crate::options;
use crate::provenance;
use crate::resolve;
use crate::syslog;
use ferry_runtime::cdi::{self, gres, hooks, DeviceRef};
use ferry_runtime::named::NamedContainer;
use ferry_runtime::plugin_config::Config;
use ferry_runtime::request::BIN_DIR;
use ferry_runtime::site::{LogLevel, Site};
use ferry_runtime::step_request::{self, Inputs, Launch, SlurmStep, StepEnvironment, StepFacts};
use ferry_runtime::{Container, Request, User};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// Documented job environment: the image's absolute path and its digest when known.
const IMAGE_VAR: &str = "FERRY_IMAGE";
const DIGEST_VAR: &str = "FERRY_IMAGE_DIGEST";

#[derive(Default)]
struct Step {
    config: Config,
    container: Option<Container>,
    /// Set when preparing failed: each task prints it and fails.
    failure: Option<String>,
    /// The provenance record (one JSON line) of this step on this node.
    record: Option<String>,
    /// This task's working directory as slurmstepd set it (task processes only).
    task_cwd: Option<PathBuf>,
    /// A task of this step on this node ended with a non-zero status (no save then).
    a_task_failed: bool,
    /// How many of this node's tasks have ended.
    tasks_ended: u32,
    /// The CDI devices (their variables are set in each task over the image's and the
    /// job's) and the step's devices the user named (`--container-devices`).
    devices: ferry_runtime::cdi::Applied,
    named_devices: Vec<String>,
    /// The site's `cdi_gres`: a task's own GPUs (Slurm's per-task binding) choose
    /// which devices' variables it gets.
    gres_map: Vec<(String, String)>,
}

static STEP: Mutex<Option<Step>> = Mutex::new(None);

fn with_step<T>(f: impl FnOnce(&mut Step) -> T) -> Result<T, String> {
    let mut guard = STEP
        .lock()
        .map_err(|_| "internal state poisoned".to_string())?;
    Ok(f(guard.get_or_insert_with(Step::default)))
}

pub fn init(_spank: &Spank, args: &[String]) -> Result<(), String> {
    let config = Config::parse(args)?;
    for note in &config.obsolete {
        ffi::debug(&format!("ferry: plugstack.conf: {note}"));
    }
    with_step(|step| step.config = config)
}

pub fn prepare(spank: &Spank, _args: &[String]) -> Result<(), String> {
    let step = SlurmStep {
        job: spank.job_id(),
        step: spank.step_id(),
    };
    if step.is_extern() {
        return Ok(());
    }
    // Variables a containerized job passed down describe its image, not this step's.
    for var in [IMAGE_VAR, DIGEST_VAR] {
        if spank.getenv(var).is_some() {
            spank.unsetenv(var)?;
        }
    }
    let container_var = spank.getenv(CONTAINER_VAR);
    let Some(image) = step_request::requested_image(container_var.as_deref()) else {
        return Ok(());
    };
    let config = with_step(|s| s.config.clone())?;
    let outcome = build_request(spank, step, image, &config).and_then(|req| {
        let container = ferry_runtime::prepare(&req).map_err(|e| e.to_string())?;
        // Once per step per node, before any task; a failed hook ends the container.
        let id = format!("ferry-{}.{}", step.job.unwrap_or(0), step.name());
        if let Err(line) = hooks::run_all(&container, &req.devices.hooks, &id) {
            container.release();
            return Err(line);
        }
        Ok((container, req))
    });
    let ids = step.describe();
    match outcome {
        Ok((container, req)) => {
            ffi::debug(&format!(
                "ferry: {ids}: container ready for image {image} (read by {})",
                container.facts.mounted_by
            ));
            // The job's environment names the image and its digest (documented).
            spank.setenv(IMAGE_VAR, &container.image.display().to_string())?;
            if let Some(digest) = &container.facts.digest {
                spank.setenv(DIGEST_VAR, &digest.to_string())?;
            }
            let step_ids = provenance::StepIds {
                job: step.job,
                step: step.name(),
                node: ferry_runtime::hostname(),
                user: req.user.name.clone(),
                uid: req.user.uid,
                slurm_version: spank.slurm_version(),
            };
            // What srun/sbatch resolved this image from, when it came from a registry:
            // recorded only for the very image that resolution pinned.
            let origin = provenance::Origin::from_job(
                container_var.as_deref(),
                spank.getenv(resolve::RESOLVED_VAR).as_deref(),
                spank.getenv(resolve::REFERENCE_VAR),
                spank.getenv(resolve::MANIFEST_VAR),
            );
            let record =
                provenance::record(&step_ids, &container, &req.mounts, origin.as_ref()).to_string();
            syslog::log(syslog::INFO, &format!("provenance {record}"));
            let cache_problem = container.facts.cache.as_ref();
            if let Some(line) = cache_problem.and_then(|c| c.problem_line(&container.image)) {
                syslog::log(syslog::WARNING, &format!("{ids}: {line}"));
                ffi::info(&line);
            }
            if !req.devices.is_empty() {
                ffi::debug(&format!(
                    "ferry: {ids}: CDI devices {}",
                    req.devices.devices.join(",")
                ));
            }
            for line in &req.devices.warnings {
                syslog::log(syslog::WARNING, &format!("{ids}: {line}"));
                ffi::info(line);
            }
            with_step(|s| {
                s.container = Some(container);
                s.record = Some(record);
                s.devices = req.devices.clone();
            })
        }
        Err(message) => {
            let uid = spank.uid().map_or("?".into(), |u| u.to_string());
            syslog::log(syslog::ERR, &format!("{ids} uid {uid}: {message}"));
            ffi::error(&message);
            with_step(|s| s.failure = Some(message))
        }
    }
}

/// The site policy: the file plugstack.conf names, else /etc/ferry/site.json when it
/// exists, else the documented defaults.
fn load_site(config: &Config) -> Result<Site, String> {
    if !config.site_config_required && !config.site_config.exists() {
        return Ok(Site::default());
    }
    let site = Site::load_trusted(&config.site_config)?;
    syslog::set_max_severity(match site.log_level {
        LogLevel::Error => syslog::ERR,
        LogLevel::Warning => syslog::WARNING,
        LogLevel::Info => syslog::INFO,
        LogLevel::Debug => syslog::DEBUG,
    });
    Ok(site)
}

/// Gathers what the step policy needs (the site file, the job's user, its environment
/// and options, this node's host folders and accounts) for `step_request::build`.
fn build_request(
    spank: &Spank,
    step: SlurmStep,
    image: &str,
    config: &Config,
) -> Result<Request, String> {
    let site = load_site(config)?;
    let uid = spank.uid().ok_or("cannot read the job's uid")?;
    let gid = spank.gid().ok_or("cannot read the job's gid")?;
    let user = User::by_uid(uid, gid, spank.supplementary_gids()).map_err(|e| e.to_string())?;
    let facts = StepFacts {
        step,
        mounts: options::mounts(),
        env: StepEnvironment {
            submit_folder: spank.getenv(CWD_VAR),
            pwd: spank.getenv("PWD"),
            slurm_submit_dir: spank.getenv("SLURM_SUBMIT_DIR"),
            mounts_spec: spank.getenv(MOUNTS_SPEC_VAR),
            mounts_base: spank.getenv(MOUNTS_BASE_VAR),
        },
        config,
        host_dirs: config
            .host_dirs
            .iter()
            .filter(|d| d.is_dir())
            .cloned()
            .collect(),
        accounts: config
            .accounts
            .iter()
            .filter_map(|name| User::by_name(name).ok())
            .collect(),
    };
    // Slurm's root-owned configuration and job number decide, never the job's input.
    let job_namespace = match step.job {
        Some(job) => ferry_runtime::job_namespace::locate(job)
            .map_err(|e| format!("Slurm's private /tmp of the job: {e}"))?,
        None => None,
    };
    let mut req = step_request::build(Inputs {
        image,
        user,
        workdir: options::workdir().map(PathBuf::from),
        site: Some(&site),
        launch: Launch::SlurmStep(facts),
    })?;
    req.job_namespace = job_namespace;
    if let Some(size) = options::writable() {
        step_request::make_writable(&mut req, Some(&site), size.as_deref())?;
    }
    if options::no_mount_home() {
        req.mount_home = false;
    }
    let mut devices = match options::devices() {
        Some(list) => {
            DeviceRef::parse_list(&list).map_err(|e| format!("--container-devices: {e}"))?
        }
        None => Vec::new(),
    };
    let named: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    with_step(|s| {
        s.named_devices = named;
        s.gres_map = site.cdi_gres.clone();
    })?;
    // The GPUs Slurm gave the step, as the site maps them (slurmstepd's view of the
    // step's environment: the user cannot name others than Slurm allocated).
    devices.extend(gres::allocated(
        &site.cdi_gres,
        step.name() == "batch",
        |name| spank.getenv(name),
    )?);
    req.devices = cdi::devices_for(site.cdi_spec_dirs.as_deref(), &devices, &req.user)?;
    if let (Some(name), Some(job)) = (options::name(), step.job) {
        ferry_runtime::named::check_name(&name)?;
        req.named = Some(NamedContainer {
            job,
            // The host name (not the job's SLURMD_NODENAME: a batch script passes its
            // own on to every step, on every node).
            node: ferry_runtime::hostname(),
            name,
        });
    }
    Ok(req)
}

/// Task child, as root: remember where slurmstepd put us, then join the container.
pub fn task_join(spank: &Spank) -> Result<(), String> {
    let (joined, failure) = with_step(|s| {
        if s.failure.is_some() {
            return (None, s.failure.clone());
        }
        let Some(container) = &s.container else {
            return (None, None);
        };
        s.task_cwd = std::env::current_dir().ok();
        let joined = container
            .join()
            .and_then(|_| container.start_task_deadline())
            .map_err(|e| e.to_string());
        (Some(joined), None)
    })?;
    if let Some(message) = failure {
        // Every task fails; only the node's first task says why, so the user reads one line.
        return Err(if spank.local_task_id() == Some(0) {
            message
        } else {
            String::new()
        });
    }
    joined.unwrap_or(Ok(()))
}

/// Task child, as the user, just before Slurm looks up the command on PATH: enter the
/// working directory and set the image's environment (see `image_config` for the
/// precedence: the job's variables win, the image fills in, PATH is the image's) with
/// the image's standard folders and ours on PATH. The deadline armed when the task
/// joined ends here, whatever happens.
pub fn task_enter(spank: &Spank) -> Result<(), String> {
    if !with_step(|s| s.container.is_some())? {
        return Ok(()); // not a container step: no deadline was armed
    }
    let entered = enter(spank);
    Container::end_task_deadline();
    entered
}

fn enter(spank: &Spank) -> Result<(), String> {
    let plan = with_step(|s| {
        s.container.as_ref().map(|c| {
            (
                c.image.clone(),
                s.task_cwd.clone(),
                c.facts.config.clone().unwrap_or_default(),
                (task_devices(spank, s), s.devices.library_dirs()),
            )
        })
    })?;
    let Some((image, task_cwd, config, device_env)) = plan else {
        return Ok(());
    };
    let image_workdir = config.workdir();
    let workdir = options::workdir()
        .map(PathBuf::from)
        .or(image_workdir.clone())
        .or_else(|| task_cwd.map(|here| folder_srun_ran_in(spank, here)))
        .unwrap_or_else(|| PathBuf::from("/"));
    std::env::set_current_dir(&workdir).map_err(|e| {
        let hint = if options::workdir().is_some() {
            "choose an existing folder with --container-workdir".to_string()
        } else if image_workdir.is_some() {
            "the image's WorkingDir must be usable; choose another with --container-workdir"
                .to_string()
        } else {
            format!("bind it with --container-mounts={}", workdir.display())
        };
        format!(
            "working directory {} is not usable in image {} ({e}); {hint}",
            workdir.display(),
            image.display()
        )
    })?;
    spank.setenv("PWD", &workdir.display().to_string())?;
    write_provenance_file(spank)?;
    let host_wins = options::env_names();
    let base = config.environment(|n| spank.getenv(n), Some(BIN_DIR), &host_wins);
    let (device_env, libraries) = device_env;
    let env = cdi::layer_env(base, &device_env, &libraries, &host_wins, |n| {
        spank.getenv(n)
    });
    for (name, value) in env {
        spank.setenv(&name, &value)?;
    }
    Ok(())
}

/// The devices' variables for this task: with several tasks on the node and Slurm
/// binding GPUs per task (`--gpus-per-task`, `--gpu-bind`), the task's own
/// `SLURM_STEP_GPUS` names its GPUs: only those devices' variables (and every spec's
/// and named device's); else all of the step's.
fn task_devices(spank: &Spank, step: &Step) -> Vec<(String, String)> {
    let own = gres::allocated(&step.gres_map, false, |n| spank.getenv(n)).unwrap_or_default();
    if own.is_empty() {
        return step.devices.env_for(None);
    }
    let only: Vec<String> = own
        .iter()
        .map(|d| d.to_string())
        .chain(step.named_devices.iter().cloned())
        .collect();
    step.devices.env_for(Some(&only))
}

/// Where the task starts without an explicit choice: where slurmstepd put it. But srun
/// run from a folder that exists only in the image (a shell inside the container did
/// `cd /opt/app`) made slurmstepd fall back to /tmp on the host: then the folder srun
/// ran in, when the user can enter it in the container (we are the user here). So too
/// at `/`: Slurm's namespace/tmpfs (a private /tmp per job) leaves the task at the root
/// when it joins the job's namespace and changes to the step's folder only after our
/// hook (slurmstepd's mgr.c, 26.05).
fn folder_srun_ran_in(spank: &Spank, here: PathBuf) -> PathBuf {
    if here != std::path::Path::new("/tmp") && here != std::path::Path::new("/") {
        return here;
    }
    match spank.getenv(CWD_VAR).map(PathBuf::from) {
        Some(origin)
            if origin.is_absolute()
                && origin != here
                && std::env::set_current_dir(&origin).is_ok() =>
        {
            origin
        }
        _ => here,
    }
}

/// slurmstepd, as each task ends. `--container-save`: once the first node's last task
/// ended, and all of them succeeded, save the container, before slurmstepd reports the
/// step's end (so a next `srun` of the job already finds the image).
pub fn task_ended(spank: &Spank) {
    let failed = spank.task_exit_status() != Some(0);
    let Ok((ended, any_failed)) = with_step(|s| {
        s.a_task_failed |= failed;
        s.tasks_ended += 1;
        (s.tasks_ended, s.a_task_failed)
    }) else {
        return;
    };
    let Some(spec) = options::save() else {
        return;
    };
    let last = spank.local_task_count() == Some(ended);
    if !last || any_failed || spank.node_id() != Some(0) {
        return;
    }
    let _ = with_step(|s| {
        if let Some(container) = &s.container {
            save(spank, container, &spec);
        }
    });
}

pub fn release() {
    if let Ok(Some(container)) = with_step(|s| s.container.take()) {
        container.release();
    }
}

/// `--container-save=FILE`: the first node packs its container into FILE, as the user.
/// A failure is one line in the step's error output and in syslog.
fn save(spank: &Spank, container: &Container, spec: &str) {
    let base = spank
        .getenv(CWD_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| container.user.home.clone());
    let out = base.join(spec);
    let parent = ferry_runtime::save::ParentImage::of(container);
    let ids = format!(
        "job {} step {}",
        spank.job_id().map_or("?".into(), |j| j.to_string()),
        spank.step_id().map_or("?".into(), |s| s.to_string())
    );
    match container.save(&out, &parent) {
        Ok(saved) => {
            syslog::log(
                syslog::INFO,
                &format!(
                    "{ids}: saved the container of image {} as {}",
                    container.image.display(),
                    saved.path.display()
                ),
            );
            if !saved.unreadable.is_empty() {
                ffi::info(&format!(
                    "--container-save={spec}: {} path(s) you cannot read were left out or stored empty, such as {}",
                    saved.unreadable.len(),
                    saved.unreadable[0].display()
                ));
            }
        }
        Err(e) => {
            let message = format!("--container-save={spec}: {e}");
            syslog::log(syslog::ERR, &format!("{ids}: {message}"));
            ffi::error(&message);
        }
    }
}

/// `--container-provenance=FILE`: the first task of the step's first node appends the
/// record, as the user and from inside the container, so it can only write where the
/// user can.
fn write_provenance_file(spank: &Spank) -> Result<(), String> {
    let Some(spec) = options::provenance() else {
        return Ok(());
    };
    if spank.node_id() != Some(0) || spank.local_task_id() != Some(0) {
        return Ok(());
    }
    let file = match spank.getenv(PROVENANCE_SPEC_VAR) {
        Some(s) if s == spec => spank.getenv(PROVENANCE_FILE_VAR).map(PathBuf::from),
        _ => None,
    }
    .unwrap_or_else(|| PathBuf::from(&spec));
    let Some(record) = with_step(|s| s.record.clone())? else {
        return Ok(());
    };
    // Never waiting: a FIFO (or a device) would block the task before it execs, where
    // Slurm cannot kill it. O_NONBLOCK makes such an open fail or return at once.
    let not_regular = || {
        format!(
            "--container-provenance={spec}: {} is not a regular file; name a regular file (it is created if missing)",
            file.display()
        )
    };
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&file)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => not_regular(),
            _ => format!(
                "--container-provenance={spec}: cannot write {} ({e})",
                file.display()
            ),
        })?;
    if !out.metadata().is_ok_and(|m| m.is_file()) {
        return Err(not_regular());
    }
    std::io::Write::write_all(&mut out, format!("{record}\n").as_bytes()).map_err(|e| {
        format!(
            "--container-provenance={spec}: cannot write {} ({e})",
            file.display()
        )
    })
}
