//! The one builder of a `Request` from the site policy, for a step of a Slurm job (the
//! plugin, in slurmstepd) and for `ferry run`. Pure: the callers do the I/O (look the
//! user up, load the site file, read the environment and the options, see which host
//! folders exist) and pass plain values in. The step policy is decided here, where unit
//! tests reach it: which steps run in a container, where relative paths are taken from,
//! pins, sharing the batch step's mount, and what the site and plugstack.conf add.

use crate::digest::{split_pinned, Digest, DEFAULT_CACHE_DIR};
use crate::error::Error;
use crate::plugin_config::Config;
use crate::policy::{check_user_mount_destination, PolicyError};
use crate::request::{MountSpec, Request, RootAccess, SlurmClients, SLURM_COMMANDS};
use crate::site::{parse_size, Site};
use crate::users::User;
use std::path::{Path, PathBuf};

/// `--container=none` runs a step of a containerized job on the host.
pub const NO_CONTAINER: &str = "none";

/// Slurm's ids of its steps that have no number (slurm.h's `SLURM_BATCH_SCRIPT`,
/// `SLURM_INTERACTIVE_STEP`, `SLURM_EXTERN_CONT`).
const BATCH_STEP: u32 = 0xffff_fffb;
const INTERACTIVE_STEP: u32 = 0xffff_fffa;
const EXTERN_STEP: u32 = 0xffff_fffc;

/// Which step of which job, as slurmstepd says (None where it would not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlurmStep {
    pub job: Option<u32>,
    pub step: Option<u32>,
}

impl SlurmStep {
    /// The extern step holds no user processes: ferry leaves it, and its environment, alone.
    pub fn is_extern(&self) -> bool {
        self.step == Some(EXTERN_STEP)
    }

    /// The step's name in logs and provenance records: `batch`, `interactive`,
    /// `extern`, its number, or `?`.
    pub fn name(&self) -> String {
        match self.step {
            None => "?".into(),
            Some(BATCH_STEP) => "batch".into(),
            Some(INTERACTIVE_STEP) => "interactive".into(),
            Some(EXTERN_STEP) => "extern".into(),
            Some(n) => n.to_string(),
        }
    }

    /// `job 12 step batch`, for the admin's log lines.
    pub fn describe(&self) -> String {
        format!(
            "job {} step {}",
            self.job.map_or("?".into(), |j| j.to_string()),
            self.name()
        )
    }

    /// The batch step outlives the job's other steps: they may take its FUSE mount of
    /// the same image. The batch step itself, or a step Slurm does not name, mounts its own.
    fn shares_with_batch_step_of(&self) -> Option<u32> {
        match self.step {
            Some(BATCH_STEP) | None => None,
            Some(_) => self.job,
        }
    }
}

/// The image a step asked for, from the `SLURM_CONTAINER` it started with. Our client
/// side settles that value in srun and sbatch (the command line's `--container`, else
/// the one the job's environment passed down), so the later steps of a containerized
/// job inherit its image. Unset, empty or `none`: the step runs on the host.
pub fn requested_image(container: Option<&str>) -> Option<&str> {
    container.filter(|v| !v.is_empty() && *v != NO_CONTAINER)
}

/// plugstack.conf's `require_digest`: an image without a pin (`IMAGE@sha256:HEX`) is
/// refused. srun and sbatch check it before submission; slurmstepd checks it again.
pub fn check_pin_rule(path: &str, pin: Option<&Digest>, require_digest: bool) -> Result<(), Error> {
    if require_digest && pin.is_none() {
        return Err(PolicyError::PinRequired {
            path: path.to_string(),
        }
        .into());
    }
    Ok(())
}

/// The job environment's values the step policy reads.
#[derive(Clone, Debug, Default)]
pub struct StepEnvironment {
    /// `FERRY_SUBMIT_DIR`: the folder srun or sbatch ran in (set by our client side).
    pub submit_folder: Option<String>,
    /// `PWD` and `SLURM_SUBMIT_DIR`: the usual variables, where the first is missing.
    pub pwd: Option<String>,
    pub slurm_submit_dir: Option<String>,
    /// `FERRY_MOUNTS_SPEC` and `FERRY_MOUNTS_BASE`: the `--container-mounts` value as
    /// it was given and the folder it was given in (set by our client side).
    pub mounts_spec: Option<String>,
    pub mounts_base: Option<String>,
}

impl StepEnvironment {
    /// The folder srun or sbatch ran in, which is also where a step launched from
    /// another folder inside a job starts; then the usual variables.
    fn launch_folder(&self) -> Option<PathBuf> {
        [&self.submit_folder, &self.pwd, &self.slurm_submit_dir]
            .into_iter()
            .flatten()
            .map(PathBuf::from)
            .find(|p| p.is_absolute())
    }
}

/// A step of a Slurm job, as the plugin sees it in slurmstepd.
pub struct StepFacts<'a> {
    pub step: SlurmStep,
    /// `--container-mounts`, given to this srun or inherited from sbatch.
    pub mounts: Option<String>,
    pub env: StepEnvironment,
    /// The plugin's arguments in plugstack.conf.
    pub config: &'a Config,
    /// The folders of `config.host_dirs` that exist on this node.
    pub host_dirs: Vec<PathBuf>,
    /// The users of `config.accounts` this node knows.
    pub accounts: Vec<User>,
}

/// `ferry run`, started by root on this host.
pub struct CommandFacts {
    /// The folder it runs in: relative paths are taken from it and it is bound in.
    pub folder: PathBuf,
    /// Its `--mount` values, one spec each.
    pub mounts: Vec<String>,
}

/// Who asks: the rules differ only where the two differ (plugstack.conf's settings
/// apply to Slurm steps, which also learn their folder from the job's environment).
pub enum Launch<'a> {
    SlurmStep(StepFacts<'a>),
    FerryRun(CommandFacts),
}

pub struct Inputs<'a> {
    /// `--container`'s value or `ferry run`'s IMAGE: a path, maybe pinned (`IMAGE@sha256:HEX`).
    pub image: &'a str,
    pub user: User,
    /// Where the command starts inside the container (`--container-workdir`, `--workdir`).
    pub workdir: Option<PathBuf>,
    /// The site policy. None (`ferry run` without `--site-config`): the kernel mounts
    /// what root asked for, with the default limits.
    pub site: Option<&'a Site>,
    pub launch: Launch<'a>,
}

/// The request for a step or a `ferry run`. Errors are the lines the user reads (the
/// plugin adds `ferry: `).
pub fn build(inputs: Inputs) -> Result<Request, String> {
    let Inputs {
        image,
        user,
        workdir,
        site,
        launch,
    } = inputs;
    let folder = match &launch {
        Launch::SlurmStep(facts) => facts.env.launch_folder(),
        Launch::FerryRun(facts) => Some(facts.folder.clone()),
    };
    // A step with no folder to go by (Slurm's environment lacks them all) takes
    // relative paths from the user's home.
    let base = folder.clone().unwrap_or_else(|| user.home.clone());
    let allowed = site.and_then(|s| s.user_mount_destinations.as_deref());
    let mounts = match &launch {
        Launch::SlurmStep(facts) => {
            step_mounts(facts, &base, allowed).map_err(|e| format!("--container-mounts: {e}"))?
        }
        Launch::FerryRun(facts) => {
            user_mounts(facts.mounts.iter().map(String::as_str), &base, allowed)?
        }
    };
    let (path, pinned) = split_pinned(image)?;
    let require_digest = matches!(&launch, Launch::SlurmStep(facts) if facts.config.require_digest);
    check_pin_rule(path, pinned.as_ref(), require_digest).map_err(|e| e.to_string())?;
    let mut request = Request {
        cwd: folder,
        workdir,
        mounts,
        pinned,
        digest_cache: Some(DEFAULT_CACHE_DIR.into()),
        ..Request::new(base.join(path), user)
    };
    if let Some(site) = site {
        request.image_policy = site.images.clone();
        request.site_mounts = site.site_mounts.clone();
        request.writable_layer_size = site.writable_layer_size;
        request.user_mount_destinations = site.user_mount_destinations.clone();
        request.setup_timeout = site.setup_timeout;
        request.image_cache = site.image_cache(crate::image_cache::node_memory());
        request.mount_home = site.mount_home;
    }
    if let Launch::SlurmStep(facts) = launch {
        let config = facts.config;
        // Slurm's configuration, munge and the spool: opened as root, admin-chosen.
        request.host_binds = facts
            .host_dirs
            .into_iter()
            .map(|dir| MountSpec {
                source: dir.clone(),
                dest: dir,
                readonly: false,
            })
            .collect();
        request.slurm_clients = config.slurm_clients.then(|| SlurmClients {
            launcher: config.launcher.clone(),
            commands: SLURM_COMMANDS.iter().map(|c| c.to_string()).collect(),
        });
        request.accounts = facts.accounts;
        request.digest_cache = Some(config.digest_cache.clone());
        request.share_with_batch_step_of = facts.step.shares_with_batch_step_of();
        request.cache_janitor = Some(config.ferry.clone());
    }
    Ok(request)
}

/// `--container-writable[=SIZE]` and `ferry run --writable[=SIZE]`, on a request `build`
/// made: the root stays writable, its layer SIZE bytes (`64M`, `2G`; none: the site's
/// `writable_layer_size`), at most the site's `writable_layer_max` (no site: the
/// defaults). The error is the one line the user reads.
pub fn make_writable(
    request: &mut Request,
    site: Option<&Site>,
    size: Option<&str>,
) -> Result<(), String> {
    request.writable_layer_size = writable_layer_size(site, size)?;
    request.root = RootAccess::Writable;
    Ok(())
}

/// The writable layer `--container-writable[=SIZE]` asks for, in bytes, if `site`
/// allows it (checked at submission too).
pub fn writable_layer_size(site: Option<&Site>, size: Option<&str>) -> Result<u64, String> {
    let default = Site::default();
    let site = site.unwrap_or(&default);
    let bytes = match size {
        None => site.writable_layer_size,
        Some(text) => parse_size(text)
            .filter(|n| *n >= MIN_ASKED_LAYER)
            .ok_or_else(|| {
                format!(
                    "writable layer size {text:?}: give a size of at least 1M, such as 512M or 2G"
                )
            })?,
    };
    if bytes > site.writable_layer_max {
        return Err(format!(
            "writable layer size {} is above this site's maximum of {} (writable_layer_max in the site file); ask for at most that",
            size.map_or_else(|| mebibytes(bytes), str::to_string),
            mebibytes(site.writable_layer_max)
        ));
    }
    Ok(bytes)
}

/// The smallest writable layer a user may ask for: it also holds the account files.
const MIN_ASKED_LAYER: u64 = 1 << 20;

/// `1024M`: sizes in the unit users write them in.
fn mebibytes(bytes: u64) -> String {
    format!("{}M", bytes >> 20)
}

/// The step's `--container-mounts`. Relative sources are taken from where the option
/// was given: an srun inside a job that inherits sbatch's option keeps sbatch's folder
/// as their base; an option of its own is taken from the folder srun ran in.
fn step_mounts(
    facts: &StepFacts,
    base: &Path,
    allowed: Option<&[PathBuf]>,
) -> Result<Vec<MountSpec>, String> {
    let Some(list) = &facts.mounts else {
        return Ok(Vec::new());
    };
    let given_in = match (&facts.env.mounts_spec, &facts.env.mounts_base) {
        (Some(spec), Some(folder)) if spec == list => PathBuf::from(folder),
        _ => base.to_path_buf(),
    };
    user_mounts(MountSpec::split_list(list), &given_in, allowed)
}

/// Parses every spec, then checks every destination against the site's prefixes.
fn user_mounts<'s>(
    specs: impl Iterator<Item = &'s str>,
    base: &Path,
    allowed: Option<&[PathBuf]>,
) -> Result<Vec<MountSpec>, String> {
    let mounts = specs
        .map(|spec| MountSpec::parse(spec, base))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| e.to_string())?;
    for mount in &mounts {
        check_user_mount_destination(allowed, &mount.dest)?;
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Untrusted;
    use std::time::Duration;

    const JOB: u32 = 4242;

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
            home: "/home/alice".into(),
            gecos: String::new(),
        }
    }

    fn pin() -> String {
        format!("sha256:{}", "ab".repeat(32))
    }

    /// Step 0 of job 4242, launched by srun in /home/alice/run, image relative to it.
    fn step_facts(config: &Config) -> StepFacts<'_> {
        StepFacts {
            step: SlurmStep {
                job: Some(JOB),
                step: Some(0),
            },
            mounts: None,
            env: StepEnvironment {
                submit_folder: Some("/home/alice/run".into()),
                ..StepEnvironment::default()
            },
            config,
            host_dirs: Vec::new(),
            accounts: Vec::new(),
        }
    }

    fn build_step(image: &str, site: &Site, facts: StepFacts) -> Result<Request, String> {
        build(Inputs {
            image,
            user: alice(),
            workdir: None,
            site: Some(site),
            launch: Launch::SlurmStep(facts),
        })
    }

    fn build_run(image: &str, mounts: &[&str], site: Option<&Site>) -> Result<Request, String> {
        build(Inputs {
            image,
            user: alice(),
            workdir: None,
            site,
            launch: Launch::FerryRun(CommandFacts {
                folder: "/srv/work".into(),
                mounts: mounts.iter().map(|m| m.to_string()).collect(),
            }),
        })
    }

    fn site(json: &str) -> Site {
        Site::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_relative_image_is_taken_from_the_folder_srun_ran_in_which_is_bound() {
        let config = Config::default();
        let req = build_step("img.sqfs", &Site::default(), step_facts(&config)).unwrap();
        assert_eq!(req.image, PathBuf::from("/home/alice/run/img.sqfs"));
        assert_eq!(req.cwd, Some(PathBuf::from("/home/alice/run")));
        let req = build_step("/images/a.sqfs", &Site::default(), step_facts(&config)).unwrap();
        assert_eq!(req.image, PathBuf::from("/images/a.sqfs"));
    }

    #[test]
    fn the_folder_falls_back_to_pwd_then_the_submit_dir_and_skips_relative_values() {
        let config = Config::default();
        let folder = |env: StepEnvironment| {
            let facts = StepFacts {
                env,
                ..step_facts(&config)
            };
            build_step("img", &Site::default(), facts).unwrap()
        };
        let req = folder(StepEnvironment {
            submit_folder: Some("relative".into()),
            pwd: Some("/scratch/alice".into()),
            slurm_submit_dir: Some("/home/alice".into()),
            ..StepEnvironment::default()
        });
        assert_eq!(req.cwd, Some(PathBuf::from("/scratch/alice")));
        let req = folder(StepEnvironment {
            slurm_submit_dir: Some("/home/alice/jobs".into()),
            ..StepEnvironment::default()
        });
        assert_eq!(req.image, PathBuf::from("/home/alice/jobs/img"));
        // Nothing to go by: relative paths from home, and no folder is bound.
        let req = folder(StepEnvironment::default());
        assert_eq!(req.cwd, None);
        assert_eq!(req.image, PathBuf::from("/home/alice/img"));
    }

    #[test]
    fn mount_sources_are_taken_from_the_folder_srun_ran_in() {
        let config = Config::default();
        let facts = StepFacts {
            mounts: Some("data:/data:ro, /scratch ,".into()),
            ..step_facts(&config)
        };
        let req = build_step("img", &Site::default(), facts).unwrap();
        assert_eq!(
            req.mounts,
            vec![
                MountSpec {
                    source: "/home/alice/run/data".into(),
                    dest: "/data".into(),
                    readonly: true
                },
                MountSpec {
                    source: "/scratch".into(),
                    dest: "/scratch".into(),
                    readonly: false
                },
            ]
        );
    }

    #[test]
    fn an_inherited_mount_option_keeps_the_folder_it_was_given_in() {
        let config = Config::default();
        let env = StepEnvironment {
            submit_folder: Some("/home/alice/run/sub".into()),
            mounts_spec: Some("data:/data".into()),
            mounts_base: Some("/home/alice/run".into()),
            ..StepEnvironment::default()
        };
        let with = |mounts: &str| {
            let facts = StepFacts {
                mounts: Some(mounts.into()),
                env: env.clone(),
                ..step_facts(&config)
            };
            build_step("img", &Site::default(), facts).unwrap().mounts[0]
                .source
                .clone()
        };
        // sbatch --container-mounts=data:/data in /home/alice/run; srun in run/sub.
        assert_eq!(with("data:/data"), PathBuf::from("/home/alice/run/data"));
        // srun gives an option of its own: from the folder srun ran in.
        assert_eq!(with("data:/d2"), PathBuf::from("/home/alice/run/sub/data"));
    }

    #[test]
    fn mount_errors_name_the_option_in_a_step_and_not_in_ferry_run() {
        let config = Config::default();
        let facts = StepFacts {
            mounts: Some("/a:/b:rx".into()),
            ..step_facts(&config)
        };
        let err = build_step("img", &Site::default(), facts).unwrap_err();
        assert!(
            err.starts_with("--container-mounts: mount \"/a:/b:rx\": unknown flag"),
            "{err}"
        );
        let err = build_run("img", &["/a:/b:rx"], None).unwrap_err();
        assert!(err.starts_with("mount \"/a:/b:rx\": unknown flag"), "{err}");
        // ferry run takes each --mount whole: a comma is part of the path.
        let req = build_run("img", &["/a,b"], None).unwrap();
        assert_eq!(req.mounts[0].source, PathBuf::from("/a,b"));
    }

    #[test]
    fn user_mount_destinations_are_the_sites_prefixes() {
        let config = Config::default();
        let site = site(r#"{"user_mount_destinations": ["/data"]}"#);
        let with = |mounts: &str| {
            let facts = StepFacts {
                mounts: Some(mounts.into()),
                ..step_facts(&config)
            };
            build_step("img", &site, facts)
        };
        let req = with("/x:/data/in").unwrap();
        assert_eq!(
            req.user_mount_destinations,
            Some(vec![PathBuf::from("/data")])
        );
        let err = with("/x:/data/in,/y:/database").unwrap_err();
        assert_eq!(
            err,
            "--container-mounts: mount destination /database: this site allows user mounts only under /data; choose a destination there"
        );
        let err = build_run("img", &["/y:/etc"], Some(&site)).unwrap_err();
        assert!(err.starts_with("mount destination /etc: "), "{err}");
        assert!(build_run("img", &["/y:/etc"], None).is_ok());
    }

    #[test]
    fn every_spec_is_parsed_before_any_destination_is_judged() {
        let site = site(r#"{"user_mount_destinations": ["/data"]}"#);
        let err = build_run("img", &["/x:/etc", "/y:/z:bad"], Some(&site)).unwrap_err();
        assert!(err.contains("unknown flag"), "{err}");
    }

    #[test]
    fn a_pinned_image_carries_its_digest_and_loses_it_from_the_path() {
        let config = Config::default();
        let image = format!("img.sqfs@{}", pin());
        let req = build_step(&image, &Site::default(), step_facts(&config)).unwrap();
        assert_eq!(req.image, PathBuf::from("/home/alice/run/img.sqfs"));
        assert_eq!(req.pinned.unwrap().to_string(), pin());
        let req = build_step("img.sqfs", &Site::default(), step_facts(&config)).unwrap();
        assert_eq!(req.pinned, None);
        let err =
            build_step("img.sqfs@sha256:12", &Site::default(), step_facts(&config)).unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn require_digest_refuses_an_unpinned_image_in_a_step() {
        let config = Config {
            require_digest: true,
            ..Config::default()
        };
        let err = build_step("img.sqfs", &Site::default(), step_facts(&config)).unwrap_err();
        assert_eq!(
            err,
            "this site requires pinned images: use --container=img.sqfs@sha256:... (get the digest with: ferry digest img.sqfs)"
        );
        let pinned = format!("img.sqfs@{}", pin());
        assert!(build_step(&pinned, &Site::default(), step_facts(&config)).is_ok());
        // The rule is plugstack.conf's: ferry run, by root, has none.
        assert!(build_run("img.sqfs", &[], None).is_ok());
    }

    #[test]
    fn the_pin_rule_alone() {
        let digest = Digest::parse(&pin()).unwrap();
        assert!(check_pin_rule("/i", None, false).is_ok());
        assert!(check_pin_rule("/i", Some(&digest), true).is_ok());
        assert!(matches!(
            check_pin_rule("/i", None, true),
            Err(Error::Policy(PolicyError::PinRequired { path })) if path == "/i"
        ));
    }

    #[test]
    fn later_steps_inherit_the_image_unless_they_ask_for_none() {
        assert_eq!(
            requested_image(Some("/home/alice/img")),
            Some("/home/alice/img")
        );
        assert_eq!(requested_image(Some(NO_CONTAINER)), None);
        assert_eq!(requested_image(Some("")), None);
        assert_eq!(requested_image(None), None);
    }

    #[test]
    fn steps_are_named_and_the_extern_step_is_left_alone() {
        let step = |id| SlurmStep {
            job: Some(JOB),
            step: id,
        };
        assert!(step(Some(EXTERN_STEP)).is_extern());
        assert!(!step(Some(BATCH_STEP)).is_extern());
        assert!(!step(Some(0)).is_extern());
        assert_eq!(step(Some(BATCH_STEP)).describe(), "job 4242 step batch");
        assert_eq!(step(Some(INTERACTIVE_STEP)).name(), "interactive");
        assert_eq!(step(Some(EXTERN_STEP)).name(), "extern");
        assert_eq!(step(Some(3)).name(), "3");
        let unknown = SlurmStep {
            job: None,
            step: None,
        };
        assert_eq!(unknown.describe(), "job ? step ?");
    }

    #[test]
    fn steps_share_the_batch_steps_mount_and_the_batch_step_makes_its_own() {
        let config = Config::default();
        let site = site(r#"{"untrusted_images": "fuse"}"#);
        let share = |id| {
            let facts = StepFacts {
                step: SlurmStep {
                    job: Some(JOB),
                    step: id,
                },
                ..step_facts(&config)
            };
            build_step("img", &site, facts)
                .unwrap()
                .share_with_batch_step_of
        };
        assert_eq!(share(Some(BATCH_STEP)), None);
        assert_eq!(share(Some(0)), Some(JOB));
        assert_eq!(share(Some(7)), Some(JOB));
        assert_eq!(share(Some(INTERACTIVE_STEP)), Some(JOB));
        assert_eq!(share(None), None);
        assert_eq!(
            build_run("img", &[], Some(&site))
                .unwrap()
                .share_with_batch_step_of,
            None
        );
    }

    #[test]
    fn slurm_clients_follow_plugstack_conf() {
        let config = Config {
            launcher: "/opt/ferry/ferry-host-exec".into(),
            ..Config::default()
        };
        let req = build_step("img", &Site::default(), step_facts(&config)).unwrap();
        let clients = req.slurm_clients.unwrap();
        assert_eq!(
            clients.launcher,
            PathBuf::from("/opt/ferry/ferry-host-exec")
        );
        assert!(clients.commands.iter().any(|c| c == "srun"));
        assert_eq!(clients.commands.len(), SLURM_COMMANDS.len());
        let config = Config {
            slurm_clients: false,
            ..Config::default()
        };
        let req = build_step("img", &Site::default(), step_facts(&config)).unwrap();
        assert!(req.slurm_clients.is_none());
        assert!(build_run("img", &[], None).unwrap().slurm_clients.is_none());
    }

    #[test]
    fn present_host_dirs_are_bound_read_write_at_their_own_path() {
        let config = Config::default();
        let facts = StepFacts {
            host_dirs: vec!["/etc/slurm".into(), "/run/munge".into()],
            ..step_facts(&config)
        };
        let req = build_step("img", &Site::default(), facts).unwrap();
        assert_eq!(
            req.host_binds,
            vec![
                MountSpec {
                    source: "/etc/slurm".into(),
                    dest: "/etc/slurm".into(),
                    readonly: false
                },
                MountSpec {
                    source: "/run/munge".into(),
                    dest: "/run/munge".into(),
                    readonly: false
                },
            ]
        );
        assert!(req.mounts.is_empty());
        assert!(build_run("img", &[], None).unwrap().host_binds.is_empty());
    }

    #[test]
    fn accounts_and_digest_settings_come_from_plugstack_conf() {
        let config = Config {
            digest_cache: "/var/lib/ferry/d".into(),
            ..Config::default()
        };
        let slurm = User {
            name: "slurm".into(),
            uid: 64030,
            ..alice()
        };
        let facts = StepFacts {
            accounts: vec![slurm.clone()],
            ..step_facts(&config)
        };
        let req = build_step("img", &Site::default(), facts).unwrap();
        assert_eq!(req.accounts, vec![slurm]);
        assert_eq!(req.digest_cache, Some(PathBuf::from("/var/lib/ferry/d")));
        let req = build_run("img", &[], None).unwrap();
        assert!(req.accounts.is_empty());
        assert_eq!(req.digest_cache, Some(PathBuf::from(DEFAULT_CACHE_DIR)));
    }

    #[test]
    fn the_site_policy_is_carried_into_the_request() {
        let config = Config::default();
        let site = site(
            r#"{
              "trusted_image_dirs": ["/apps/images"],
              "untrusted_images": "deny",
              "site_mounts": [{"source": "/opt/apps", "dest": "/apps", "readonly": true}],
              "writable_layer_size": "256M",
              "setup_timeout": "10m"
            }"#,
        );
        for req in [
            build_step("img", &site, step_facts(&config)).unwrap(),
            build_run("img", &[], Some(&site)).unwrap(),
        ] {
            assert_eq!(req.image_policy, site.images);
            assert_eq!(req.image_policy.untrusted, Untrusted::Deny);
            assert_eq!(req.site_mounts, site.site_mounts);
            assert_eq!(req.writable_layer_size, 256 << 20);
            assert_eq!(req.setup_timeout, Duration::from_secs(600));
            assert_eq!(req.user_mount_destinations, None);
        }
    }

    #[test]
    fn ferry_run_without_a_site_file_has_the_kernel_mount_and_the_defaults() {
        let req = build_run("img.sqfs", &["in:/in"], None).unwrap();
        let bare = Request::new("/srv/work/img.sqfs".into(), alice());
        assert_eq!(req.image, bare.image);
        assert_eq!(req.cwd, Some(PathBuf::from("/srv/work")));
        assert_eq!(req.mounts[0].source, PathBuf::from("/srv/work/in"));
        assert_eq!(req.image_policy, bare.image_policy);
        assert_eq!(req.image_policy.untrusted, Untrusted::Kernel);
        assert_eq!(req.setup_timeout, bare.setup_timeout);
        assert_eq!(req.writable_layer_size, bare.writable_layer_size);
        assert!(req.site_mounts.is_empty());
        // A step without a site file gets the plugin's default: FUSE for untrusted images.
        let config = Config::default();
        let req = build_step("img", &Site::default(), step_facts(&config)).unwrap();
        assert_eq!(req.image_policy.untrusted, Untrusted::Fuse);
    }

    #[test]
    fn a_writable_root_is_asked_for_with_a_size_up_to_the_sites_maximum() {
        let req = build_run("img", &[], None).unwrap();
        assert_eq!(req.root, RootAccess::ReadOnly, "read-only by default");
        let site = site(r#"{"writable_layer_size": "128M", "writable_layer_max": "2G"}"#);
        let writable = |size: Option<&str>| {
            let mut req = build_run("img", &[], Some(&site)).unwrap();
            make_writable(&mut req, Some(&site), size).map(|_| req)
        };
        let req = writable(None).unwrap();
        assert_eq!(req.root, RootAccess::Writable);
        assert_eq!(req.writable_layer_size, 128 << 20);
        assert_eq!(writable(Some("2G")).unwrap().writable_layer_size, 2 << 30);
        assert_eq!(
            writable(Some("512M")).unwrap().writable_layer_size,
            512 << 20
        );
        assert_eq!(
            writable(Some("3G")).unwrap_err(),
            "writable layer size 3G is above this site's maximum of 2048M (writable_layer_max in the site file); ask for at most that"
        );
        for bad in ["lots", "12", "-1G", ""] {
            let e = writable(Some(bad)).unwrap_err();
            assert!(e.starts_with("writable layer size "), "{bad}: {e}");
        }
        // No site file: the built-in maximum.
        let mut req = build_run("img", &[], None).unwrap();
        assert!(make_writable(&mut req, None, Some("1G")).is_ok());
        assert!(make_writable(&mut req, None, Some("2G")).is_err());
    }

    #[test]
    fn the_workdir_is_passed_through() {
        let config = Config::default();
        let req = build(Inputs {
            image: "img",
            user: alice(),
            workdir: Some("/opt/app".into()),
            site: Some(&Site::default()),
            launch: Launch::SlurmStep(step_facts(&config)),
        })
        .unwrap();
        assert_eq!(req.workdir, Some(PathBuf::from("/opt/app")));
        assert_eq!(req.user, alice());
    }
}
