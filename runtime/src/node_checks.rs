//! Whether a node can run ferry jobs, and how to fix what is wrong (`ferry doctor`,
//! `ferry check-config`): one finding per fact. Every file is read under a root, so a
//! chroot or a node image can be checked, and tests can check nodes broken on purpose.
//! The plugin's line in plugstack.conf is read by the plugin's own parser
//! (`plugin_config::Config::parse`), so doctor accepts exactly what the plugin accepts.
//!
//! A check is a function `fn(&Node) -> Vec<Finding>` listed in `CHECKS`; add one there.

use crate::plugin_config::Config;
/// Slurm's plugin folders (Debian's and EL's layouts), for relative plugin paths.
use crate::plugin_config::SLURM_PLUGIN_DIRS as PLUGIN_DIRS;
use crate::resolve::under;
use crate::site::{Site, Untrusted};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];
/// What the plugin file says about itself (see spank/lib.rs BUILT_FOR).
const BUILT_FOR_MARK: &[u8] = b"plugin built for Slurm ";

const CHECKS: &[fn(&Node) -> Vec<Finding>] = &[
    kernel,
    plugstack,
    plugin_file,
    slurm_version,
    launcher,
    resolver,
    oci_conf,
    proctrack,
    job_tmp,
    munge,
    pmix,
    site_policy,
    image_cache,
    cdi_devices,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Works, but something some jobs need is missing.
    Warn,
    /// The node cannot run ferry jobs until this is fixed.
    Fail,
}

#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    /// What was found, starting with the area checked ("plugstack: ...").
    pub what: String,
    /// How to fix it (empty when all is well).
    pub fix: String,
}

fn ok(what: impl Into<String>) -> Finding {
    Finding {
        level: Level::Ok,
        what: what.into(),
        fix: String::new(),
    }
}
fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Warn,
        what: what.into(),
        fix: fix.into(),
    }
}
fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Fail,
        what: what.into(),
        fix: fix.into(),
    }
}

/// The node being checked: its root and what plugstack.conf says about ferry.
struct Node {
    root: PathBuf,
    plugstack: PathBuf,
    /// The Slurm version (`MAJOR.MINOR`) the checking command was built for.
    built_for_slurm: String,
    /// Lines that load ferry, with the file each is in.
    lines: Vec<PluginLine>,
    /// A commented-out ferry line (the package ships one), to point at.
    disabled: Option<PathBuf>,
    /// Why plugstack.conf could not be read, if it could not.
    unreadable: Option<String>,
}

struct PluginLine {
    file: PathBuf,
    plugin: PathBuf,
    args: Vec<String>,
}

impl Node {
    /// `abs` (an absolute path on the node) as seen from here.
    fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        under(&self.root, abs.as_ref())
    }

    fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.path(abs).exists()
    }

    /// The plugin's configuration from the (first) line that loads it, parsed as the
    /// plugin parses it; None without such a line.
    fn config(&self) -> Option<Result<Config, String>> {
        let line = self.lines.first()?;
        Some(Config::parse(&line.args).map_err(|e| e.trim_start_matches("ferry: ").to_string()))
    }
}

/// Checks the node whose `/` is `root`, reading `plugstack` (a path on the node) for
/// the plugin's line. `built_for_slurm`: the Slurm version (`MAJOR.MINOR`) the calling
/// command was built for, compared with the node's.
pub fn check_node(root: &Path, plugstack: &Path, built_for_slurm: &str) -> Vec<Finding> {
    let mut node = Node {
        root: root.to_path_buf(),
        plugstack: plugstack.to_path_buf(),
        built_for_slurm: built_for_slurm.to_string(),
        lines: Vec::new(),
        disabled: None,
        unreadable: None,
    };
    read_plugstack(&mut node, plugstack, 0);
    CHECKS.iter().flat_map(|check| check(&node)).collect()
}

/// Reads a plugstack file and the files it includes (Slurm's `include` takes a glob).
fn read_plugstack(node: &mut Node, file: &Path, depth: u32) {
    let text = match fs::read_to_string(node.path(file)) {
        Ok(t) => t,
        Err(e) => {
            if depth == 0 {
                node.unreadable = Some(format!("{}: {e}", file.display()));
            }
            return;
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if matches!(words.first(), Some(&"required" | &"optional"))
                && words.get(1).is_some_and(|p| is_ferry(Path::new(p)))
            {
                node.disabled = Some(file.to_path_buf());
            }
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        match words.as_slice() {
            ["include", pattern, ..] if depth < 8 => {
                let pattern = relative_to(file, pattern);
                for included in expand(node, &pattern) {
                    read_plugstack(node, &included, depth + 1);
                }
            }
            ["required" | "optional", plugin, args @ ..] if is_ferry(Path::new(plugin)) => {
                let plugin = if plugin.starts_with('/') {
                    PathBuf::from(plugin)
                } else {
                    PLUGIN_DIRS
                        .iter()
                        .map(|d| Path::new(d).join(plugin))
                        .find(|p| node.exists(p))
                        .unwrap_or_else(|| PathBuf::from(plugin))
                };
                node.lines.push(PluginLine {
                    file: file.to_path_buf(),
                    plugin,
                    args: args.iter().map(|a| a.to_string()).collect(),
                });
            }
            _ => {}
        }
    }
}

fn is_ferry(plugin: &Path) -> bool {
    plugin.file_name().and_then(|n| n.to_str()) == Some("ferry.so")
}

fn relative_to(file: &Path, pattern: &str) -> PathBuf {
    if pattern.starts_with('/') {
        PathBuf::from(pattern)
    } else {
        file.parent().unwrap_or(Path::new("/")).join(pattern)
    }
}

/// Expands a `*` in the last component of an include path (what sites use: `*.conf`).
fn expand(node: &Node, pattern: &Path) -> Vec<PathBuf> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![pattern.to_path_buf()];
    };
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let Ok(entries) = fs::read_dir(node.path(dir)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)
        })
        .map(|n| dir.join(n))
        .collect();
    found.sort();
    found
}

fn kernel(node: &Node) -> Vec<Finding> {
    let filesystems = fs::read_to_string(node.path("/proc/filesystems")).unwrap_or_default();
    let has = |fs: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
    };
    let mut found = Vec::new();
    for (fs, why) in [
        ("squashfs", "images are SquashFS files"),
        ("overlay", "images are made writable with an overlay"),
    ] {
        found.push(if has(fs) {
            ok(format!("kernel: {fs} file system"))
        } else {
            fail(
                format!("kernel: no {fs} file system in /proc/filesystems ({why})"),
                format!("load the module (modprobe {fs}) and add it to /etc/modules-load.d"),
            )
        });
    }
    found.push(if node.exists("/dev/loop-control") {
        ok("kernel: loop devices (/dev/loop-control)")
    } else {
        fail(
            "kernel: no /dev/loop-control (image files are mounted through loop devices)",
            "load the loop module (modprobe loop)",
        )
    });
    found.push(if has("fuse") && node.exists("/dev/fuse") {
        ok("kernel: FUSE (/dev/fuse)")
    } else {
        warn(
            "kernel: no FUSE (/dev/fuse or fuse in /proc/filesystems); users' own images need it under the site's fuse policy (the default)",
            "modprobe fuse",
        )
    });
    found
}

fn plugstack(node: &Node) -> Vec<Finding> {
    let conf = node.plugstack.display();
    if let Some(why) = &node.unreadable {
        return vec![fail(
            format!("plugstack: cannot read {why}"),
            format!("create {conf} with the line: include /etc/slurm/plugstack.conf.d/*.conf"),
        )];
    }
    match node.lines.as_slice() {
        [] => {
            let fix = match &node.disabled {
                Some(file) => format!(
                    "enable the plugin: uncomment the ferry.so line of {} on every node (see ferry-spank(8))",
                    file.display()
                ),
                None => format!(
                    "add 'required /PLUGIN-DIR/ferry.so' to {conf} or a file it includes (reinstall the ferry package for /etc/slurm/plugstack.conf.d/ferry.conf)"
                ),
            };
            vec![fail(
                format!("plugstack: no enabled line loads ferry.so from {conf}"),
                fix,
            )]
        }
        [line] => match node.config() {
            Some(Err(why)) => vec![fail(
                format!("plugstack: {}: {why}", line.file.display()),
                "correct the ferry.so line's arguments (see ferry-spank(8)): the plugin refuses them and every step fails",
            )],
            config => {
                let mut found = vec![ok(format!(
                    "plugstack: {} loads {}",
                    line.file.display(),
                    line.plugin.display()
                ))];
                let obsolete = config.and_then(Result::ok).map(|c| c.obsolete).unwrap_or_default();
                found.extend(obsolete.into_iter().map(|note| {
                    warn(
                        format!("plugstack: {}: {note}", line.file.display()),
                        "remove it from the ferry.so line (it is still accepted so that older lines load)",
                    )
                }));
                found
            }
        },
        lines => vec![fail(
            format!(
                "plugstack: ferry.so is loaded {} times ({})",
                lines.len(),
                lines
                    .iter()
                    .map(|l| l.file.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "keep one line (Slurm would register ferry's options twice and fail)",
        )],
    }
}

fn plugin_file(node: &Node) -> Vec<Finding> {
    let Some(line) = node.lines.first() else {
        return Vec::new();
    };
    match fs::metadata(node.path(&line.plugin)) {
        Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 => {
            vec![ok(format!("plugin: {} is in place", line.plugin.display()))]
        }
        Ok(_) => vec![fail(
            format!(
                "plugin: {} is not a root-owned file that only root can write",
                line.plugin.display()
            ),
            "reinstall the ferry package",
        )],
        Err(e) => vec![fail(
            format!("plugin: {}: {e}", line.plugin.display()),
            "install the ferry package, or correct the path in the plugstack line",
        )],
    }
}

/// Slurm loads a SPANK plugin only if it was built for the running Slurm's major.minor.
fn slurm_version(node: &Node) -> Vec<Finding> {
    let installed = installed_slurm(node);
    let mut found = Vec::new();
    let Some(installed) = installed else {
        return vec![fail(
            "slurm: cannot tell the installed Slurm's version (neither slurmd -V nor sinfo -V ran)",
            "install Slurm (slurmd on compute nodes, slurm-client on login nodes)",
        )];
    };
    let release = major_minor(&installed);
    // A missing plugin file is the `plugin_file` check's finding.
    let plugin_bytes = node
        .lines
        .first()
        .and_then(|l| fs::read(node.path(&l.plugin)).ok());
    match plugin_bytes.as_deref().map(built_for) {
        None => {}
        Some(Some(built)) if Some(built.as_str()) == release.as_deref() => found.push(ok(format!(
            "slurm: installed {installed}, plugin built for Slurm {built}"
        ))),
        Some(Some(built)) => found.push(fail(
            format!("slurm: installed {installed}, but the plugin is built for Slurm {built}: Slurm will refuse to load it"),
            format!(
                "install ferry built for Slurm {} (package ferry-slurm{}; to build it see 'Slurm versions' in ferry-spank(8))",
                release.as_deref().unwrap_or("?"),
                release.as_deref().unwrap_or("?")
            ),
        )),
        Some(None) => found.push(warn(
            format!("slurm: installed {installed}; the plugin file does not say which Slurm it is for (not a ferry build?)"),
            "reinstall the ferry package",
        )),
    }
    if release.as_deref() != Some(node.built_for_slurm.as_str()) {
        found.push(warn(
            format!(
                "slurm: this ferry command is from a build for Slurm {}, the node runs {installed}",
                node.built_for_slurm
            ),
            "install the ferry package built for the node's Slurm",
        ));
    }
    found
}

/// "22.05.8" from `slurmd -V` (or `sinfo -V` on nodes without slurmd), run in the root.
fn installed_slurm(node: &Node) -> Option<String> {
    for program in ["slurmd", "sinfo"] {
        let mut command = if node.root == Path::new("/") {
            Command::new(program)
        } else {
            let mut c = Command::new("chroot");
            c.arg(&node.root).arg(program);
            c
        };
        let Ok(out) = command.arg("-V").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(v) = text
            .split_whitespace()
            .last()
            .filter(|_| out.status.success())
        {
            return Some(v.to_string());
        }
    }
    None
}

fn major_minor(version: &str) -> Option<String> {
    let mut parts = version.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("{major}.{minor:02}"))
}

/// The Slurm version stated in a plugin file ("plugin built for Slurm 22.05").
fn built_for(bytes: &[u8]) -> Option<String> {
    let at = bytes
        .windows(BUILT_FOR_MARK.len())
        .position(|w| w == BUILT_FOR_MARK)?
        + BUILT_FOR_MARK.len();
    let version: String = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| *b as char)
        .collect();
    major_minor(&version)
}

fn launcher(node: &Node) -> Vec<Finding> {
    // Without a line, or with arguments the plugin refuses, `plugstack` said it all.
    let Some(Ok(config)) = node.config() else {
        return Vec::new();
    };
    if !config.slurm_clients {
        return Vec::new();
    }
    let path = config.launcher.display();
    match fs::metadata(node.path(&config.launcher)) {
        Ok(m) if m.is_file() && m.uid() == 0 && m.permissions().mode() & 0o111 != 0 => {
            vec![ok(format!("launcher: {path} is in place"))]
        }
        Ok(_) => vec![fail(
            format!("launcher: {path} is not a root-owned executable"),
            "reinstall the ferry package",
        )],
        Err(e) => vec![fail(
            format!("launcher: {path}: {e} (Slurm's commands inside images need it)"),
            "reinstall the ferry package, or set launcher=PATH in the plugstack line, or slurm_clients=no",
        )],
    }
}

/// srun and sbatch run this command (as the user) for `--container=docker://REF` and
/// `sha256:HEX`: a node where users submit needs it.
fn resolver(node: &Node) -> Vec<Finding> {
    let Some(Ok(config)) = node.config() else {
        return Vec::new();
    };
    let path = config.ferry.display();
    match fs::metadata(node.path(&config.ferry)) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            vec![ok(format!("registry images: {path} resolves them at submission"))]
        }
        _ => vec![warn(
            format!("registry images: {path} is missing: --container=docker://REF and sha256:HEX cannot be resolved when jobs are submitted here"),
            "install the ferry package on every node users submit from, or set ferry=PATH in the plugstack line",
        )],
    }
}

fn oci_conf(node: &Node) -> Vec<Finding> {
    if node.exists("/etc/slurm/oci.conf") {
        vec![fail(
            "oci: /etc/slurm/oci.conf exists: Slurm's own OCI support would take --container jobs from ferry",
            "remove /etc/slurm/oci.conf on every node (ferry replaces it)",
        )]
    } else {
        vec![ok("oci: no /etc/slurm/oci.conf")]
    }
}

/// The last value of `key` in the node's slurm.conf (keys are case-insensitive);
/// `Err` for a configless node (slurmd has its configuration from slurmctld).
fn slurm_setting(node: &Node, key: &str) -> Result<Option<String>, ()> {
    let conf = fs::read_to_string(node.path("/etc/slurm/slurm.conf")).map_err(|_| ())?;
    Ok(conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().to_string())
        .next_back())
}

/// The process tracker decides whether Slurm can kill every process of a step (see
/// SECURITY.md, "What the process tracker decides").
fn proctrack(node: &Node) -> Vec<Finding> {
    let Ok(tracker) = slurm_setting(node, "ProctrackType") else {
        return Vec::new();
    };
    let tracker = tracker.unwrap_or_else(|| "proctrack/cgroup".into()); // Slurm's default
    if tracker == "proctrack/cgroup" {
        vec![ok(format!(
            "proctrack: {tracker}: every process of a step is killed with it"
        ))]
    } else {
        vec![warn(
            format!("proctrack: {tracker}: Slurm cannot kill a task that double-forks or has not exec'd yet; ferry bounds its setup (setup_timeout) and kills what is left in a container at step end, nothing more; and Slurm kills the squashfuse the image cache keeps with its step, so users' own images are not kept warm"),
            "set ProctrackType=proctrack/cgroup (with a cgroup.conf) in slurm.conf",
        )]
    }
}

/// A private /tmp and /dev/shm per job: Slurm's namespace/tmpfs and namespace/linux
/// (NamespaceType, Slurm 25.11 on) and job_container/tmpfs (JobContainerType, before).
/// The tmpfs plugins' namespace is where ferry makes a step's container
/// (`job_namespace`), so containers get the job's /tmp (measured on Slurm 26.05 with
/// namespace/tmpfs, with and without contain_spank); namespace/linux's is not entered.
fn job_tmp(node: &Node) -> Vec<Finding> {
    let mut found = Vec::new();
    for key in ["NamespaceType", "JobContainerType"] {
        let Ok(Some(plugin)) = slurm_setting(node, key) else {
            continue;
        };
        if plugin.ends_with("/none") || plugin.is_empty() {
            continue;
        }
        if plugin.ends_with("/tmpfs") {
            found.push(ok(format!(
                "job tmp: {key}={plugin}: containers are made in the job's namespace, so their /tmp and /dev/shm (and job_container.conf's other Dirs) are the job's private ones, as for its steps without a container"
            )));
            continue;
        }
        found.push(warn(
            format!("job tmp: {key}={plugin} gives each job a private /tmp and /dev/shm, but ferry's containers bind the node's: files a step with --container writes there are seen by other jobs on the node and stay after the job, and its steps without a container do not see them"),
            "use namespace/tmpfs (ferry makes containers in its namespace), or tell users to keep job files out of /tmp and /dev/shm in containers (a folder of the job, or --container-mounts=DIR:/tmp), or clean /tmp and /dev/shm of the job's user in the Epilog",
        ));
    }
    found
}

fn munge(node: &Node) -> Vec<Finding> {
    let socket = "/run/munge/munge.socket.2";
    match UnixStream::connect(node.path(socket)) {
        Ok(_) => vec![ok(format!("munge: munged answers on {socket}"))],
        Err(e) => vec![fail(
            format!("munge: cannot connect to {socket}: {e}"),
            "start munged (systemctl enable --now munge)",
        )],
    }
}

fn pmix(node: &Node) -> Vec<Finding> {
    // Debian's Slurm 26.05 is built without PMIx: no mpi_pmix plugin, whatever the
    // node's libpmix.
    let plugin_dirs: Vec<&str> = PLUGIN_DIRS
        .iter()
        .copied()
        .filter(|d| node.exists(d))
        .collect();
    let has_pmix_plugin = plugin_dirs.iter().any(|d| {
        fs::read_dir(node.path(d)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("mpi_pmix"))
        })
    });
    if !plugin_dirs.is_empty() && !has_pmix_plugin {
        return vec![warn(
            format!("pmix: Slurm has no mpi/pmix plugin (no mpi_pmix*.so in {}): srun --mpi=pmix cannot run, so Open MPI images (PMIx only) need their own mpirun inside a batch job; MPICH images use --mpi=pmi2", plugin_dirs.join(", ")),
            "install a Slurm built with PMIx (--with-pmix) and the node's libpmix, then restart slurmd",
        )];
    }
    match LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join("libpmix.so"))
        .find(|p| node.exists(p))
    {
        Some(p) => vec![ok(format!("pmix: {} (srun --mpi=pmix)", p.display()))],
        None => vec![warn(
            "pmix: no libpmix.so: srun --mpi=pmix jobs fail (\"can not load PMIx library\")",
            "install libpmix-dev (Debian) or pmix-devel (EL), then restart slurmd",
        )],
    }
}

/// The site file the plugin will read (named by `site_config=`, else the default when
/// present) and what its policy needs on this node (`site_needs`).
fn site_policy(node: &Node) -> Vec<Finding> {
    let Some(Ok(config)) = node.config() else {
        return Vec::new();
    };
    let file = config.site_config.display();
    let (site, found) = if !config.site_config_required && !node.exists(&config.site_config) {
        let found = ok(format!(
            "site: no {file}; defaults: users' images through squashfuse, no trusted folders"
        ));
        (Site::default(), found)
    } else {
        match Site::load(&node.path(&config.site_config)) {
            Ok(site) => {
                let found = ok(format!(
                    "site: {file}: untrusted images: {}",
                    site.images.untrusted.name()
                ));
                (site, found)
            }
            Err(why) => {
                return vec![fail(
                    format!("site: {why} (every step fails)"),
                    format!("fix the file (ferry check-config {file} says what is wrong)"),
                )]
            }
        }
    };
    std::iter::once(found)
        .chain(site_needs(&node.root, &site))
        .collect()
}

/// The CDI devices this node offers (`--container-devices`, the site's `cdi_gres`) and
/// the spec files that are left out, or whose devices could not be applied here.
fn cdi_devices(node: &Node) -> Vec<Finding> {
    let site = match node.config() {
        Some(Ok(config)) if node.exists(&config.site_config) => {
            Site::load(&node.path(&config.site_config)).unwrap_or_default()
        }
        _ => Site::default(),
    };
    let dirs = crate::cdi::spec_dirs(site.cdi_spec_dirs.as_deref());
    let where_ = crate::policy::join_paths(&dirs);
    let registry = crate::cdi::Registry::load_in(&node.root, &dirs);
    // Device nodes and hook programs are the live node's: checked only on it.
    let live = node.root == Path::new("/");
    let mut found: Vec<Finding> = registry
        .problems
        .iter()
        .map(|p| {
            warn(
                format!("cdi: {p}"),
                "fix or remove the file (its devices are unknown to steps until then)",
            )
        })
        .collect();
    if registry.specs.is_empty() {
        found.push(ok(format!(
            "cdi: no CDI specs in {where_} (no devices for --container-devices)"
        )));
    }
    for loaded in &registry.specs {
        let names: Vec<&str> = loaded
            .spec
            .devices
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        found.push(ok(format!(
            "cdi: {}: {} devices {}",
            Path::new("/")
                .join(loaded.file.strip_prefix(&node.root).unwrap_or(&loaded.file))
                .display(),
            loaded.spec.kind,
            names.join(", ")
        )));
        for device in loaded.spec.devices.iter().filter(|_| live) {
            let refs = [crate::cdi::DeviceRef {
                kind: loaded.spec.kind.clone(),
                name: device.name.clone(),
            }];
            if let Err(line) = crate::cdi::resolve(&registry, &refs, &[]) {
                found.push(warn(
                    format!("cdi: {line}"),
                    "regenerate the spec with the vendor's tool (nvidia-ctk cdi generate, ...)",
                ));
            }
        }
    }
    for (gres, kind) in &site.cdi_gres {
        if !registry.specs.iter().any(|l| &l.spec.kind == kind) {
            found.push(warn(
                format!("cdi: cdi_gres maps GRES {gres} to {kind}, but no spec here offers that kind: steps given a {gres} fail"),
                "generate the node's spec (nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml), or fix cdi_gres",
            ));
        }
    }
    found
}

/// The node image cache: its settings, and on this very node (not a root checked from
/// outside) what it keeps now and whether a janitor expires it.
fn image_cache(node: &Node) -> Vec<Finding> {
    let site = match node.config() {
        Some(Ok(config)) if node.exists(&config.site_config) => {
            match Site::load(&node.path(&config.site_config)) {
                Ok(site) => site,
                Err(_) => return Vec::new(), // `site_policy` says why
            }
        }
        _ => Site::default(),
    };
    let policy = site.image_cache(crate::image_cache::node_memory());
    let settings = if policy.enabled() {
        format!(
            "kept {} s after their last step, at most {} images and {} MiB",
            policy.ttl.as_secs(),
            policy.max_images,
            policy.max_bytes >> 20
        )
    } else {
        "off (image_cache_ttl, image_cache_max_images or image_cache_max_memory is 0)".into()
    };
    if node.root != Path::new("/") || crate::sys::euid() != 0 {
        return vec![ok(format!("image cache: {settings}"))];
    }
    let entries = match crate::image_cache::list() {
        Ok(entries) => entries,
        Err(e) => {
            return vec![warn(
                format!(
                    "image cache: cannot read {}: {e}",
                    crate::image_cache::CACHE_DIR
                ),
                "ferry cache drop --all, then check that the folder is root's (mode 0700)",
            )]
        }
    };
    let bytes: u64 = entries.iter().map(|e| e.size()).sum();
    let in_use = entries.iter().filter(|e| e.in_use).count();
    let summary = format!(
        "image cache: {settings}; now {} kept ({} MiB, {in_use} in use)",
        entries.len(),
        bytes >> 20
    );
    let broken = entries.iter().filter(|e| e.broken()).count();
    if broken > 0 {
        return vec![warn(
            format!("{summary}; {broken} whose squashfuse is gone (a step drops them)"),
            "ferry cache drop --all (or wait: the next step or the janitor drops them)",
        )];
    }
    let idle = entries.len() - in_use;
    if idle > 0 && !crate::image_cache::janitor_running() {
        return vec![warn(
            format!("{summary}; no janitor expires them"),
            "ferry cache drop --all (the next step that keeps an image starts a janitor)",
        )];
    }
    vec![ok(summary)]
}

/// What `site`'s policy needs on the node whose `/` is `root`: root-only trusted
/// folders, the required site mounts, and under `fuse` squashfuse and /dev/fuse.
/// Also `ferry check-config`'s checks of this host.
pub fn site_needs(root: &Path, site: &Site) -> Vec<Finding> {
    let mut found = Vec::new();
    for dir in &site.images.trusted_dirs {
        match crate::image::not_root_only(root, dir) {
            None => {}
            Some(bad) if !under(root, &bad).exists() => found.push(warn(
                format!("site: trusted folder {}: {} does not exist", dir.display(), bad.display()),
                "create it on this node or remove it from trusted_image_dirs",
            )),
            Some(bad) if &bad == dir => found.push(warn(
                format!("site: trusted folder {} is not root's or is writable by others: its images count as untrusted", dir.display()),
                format!("chown root: {0} and chmod go-w {0}", dir.display()),
            )),
            Some(bad) => found.push(warn(
                format!("site: trusted folder {}: {} above it is not root's or is writable by others: its images count as untrusted", dir.display(), bad.display()),
                format!("chown root: {0} and chmod go-w {0}", bad.display()),
            )),
        }
    }
    for m in site.site_mounts.iter().filter(|m| !m.optional) {
        if !under(root, &m.source).exists() {
            found.push(fail(
                format!(
                    "site: site mount {} is missing and not optional (every step fails)",
                    m.source.display()
                ),
                "mount it on this node, or mark it \"optional\": true",
            ));
        }
    }
    if site.images.untrusted != Untrusted::Fuse {
        return found;
    }
    let helper = &site.images.fuse_helper;
    match fs::metadata(under(root, helper)) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            found.push(ok(format!("fuse: {} (users' own images)", helper.display())))
        }
        _ => found.push(fail(
            format!("fuse: {} is missing: users' own images cannot run", helper.display()),
            "apt install squashfuse (EL: dnf install squashfuse), or set untrusted_images in the site file",
        )),
    }
    if !under(root, Path::new("/dev/fuse")).exists() {
        found.push(fail(
            "fuse: no /dev/fuse: users' own images cannot run",
            "modprobe fuse (and load it at boot), or set untrusted_images in the site file",
        ));
    }
    found
}

/// Whether this machine lets the calling user run images without root (`ferry run` as
/// a user; `ferry doctor --user`): user namespaces (the same detection `ferry run`
/// uses), the FUSE device and squashfuse for image files, overlay for `--writable`.
pub fn check_user() -> Vec<Finding> {
    let mut findings = Vec::new();
    match crate::userns::check() {
        Ok(()) => findings.push(ok(
            "user namespaces: you can make one (ferry run works without root)",
        )),
        Err(line) => {
            findings.push(fail(
                line,
                "root folders, SquashFS and SIF images then run only as root or through the Slurm plugin",
            ));
            return findings;
        }
    }
    let device = Path::new("/dev/fuse");
    match crate::sys::open_path(device, libc::O_RDWR) {
        Ok(_) => findings.push(ok("/dev/fuse: you can open it (SquashFS and SIF images through squashfuse)")),
        Err(e) => findings.push(fail(
            format!("/dev/fuse: you cannot open it ({e}): SquashFS and SIF images cannot run without root here (root folders can)"),
            "an admin can open it to users as distributions ship it: chmod 0666 /dev/fuse (udev: KERNEL==\"fuse\", MODE=\"0666\")",
        )),
    }
    let helper = Path::new(crate::policy::DEFAULT_FUSE_HELPER);
    if helper.exists() {
        findings.push(ok(format!("{}: installed", helper.display())));
    } else {
        findings.push(fail(
            format!("{}: missing: SquashFS and SIF images cannot run without root", helper.display()),
            "install squashfuse (Debian/Ubuntu: apt install squashfuse; RHEL: dnf install squashfuse)",
        ));
    }
    match kernel_version() {
        Some(v) if v >= (5, 11) => findings.push(ok(format!(
            "kernel {}.{}: overlay in a user namespace (--writable) is supported",
            v.0, v.1
        ))),
        Some(v) => findings.push(warn(
            format!("kernel {}.{}: --writable without root needs Linux 5.11 or later (overlay in a user namespace)", v.0, v.1),
            "run --writable containers through the Slurm plugin or as root",
        )),
        None => {}
    }
    findings
}

/// The running kernel's major and minor version.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    /// A node root whose plugstack.conf loads ferry with `args`; its launcher is missing.
    fn node_with_line(args: &str) -> Scratch {
        let root = Scratch::new("node-checks");
        fs::create_dir_all(root.join("etc/slurm")).unwrap();
        fs::write(
            root.join("etc/slurm/plugstack.conf"),
            format!("required /usr/lib/slurm/ferry.so {args}\n"),
        )
        .unwrap();
        root
    }

    fn findings(root: &Path, area: &str) -> Vec<Finding> {
        check_node(root, Path::new("/etc/slurm/plugstack.conf"), "24.11")
            .into_iter()
            .filter(|f| f.what.starts_with(area))
            .collect()
    }

    fn plugin_accepts(args: &str) -> bool {
        let args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        Config::parse(&args).is_ok()
    }

    #[test]
    fn arguments_the_plugin_refuses_fail_the_plugstack_check() {
        for args in [
            "colour=blue",
            "slurm_clients=maybe",
            "launcher=relative",
            "bare",
        ] {
            assert!(!plugin_accepts(args), "{args}");
            let root = node_with_line(args);
            let found = findings(&root, "plugstack:");
            assert!(
                matches!(found.as_slice(), [f] if f.level == Level::Fail),
                "{args}: {found:?}"
            );
            let key = args.split('=').next().unwrap();
            assert!(found[0].what.contains(key), "{args}: {found:?}");
            // Nothing is checked on the strength of arguments the plugin refuses.
            assert!(findings(&root, "launcher:").is_empty(), "{args}");
            assert!(findings(&root, "site:").is_empty(), "{args}");
        }
    }

    #[test]
    fn the_image_cache_is_reported_with_the_sites_settings() {
        use std::os::unix::fs::PermissionsExt;
        let root = node_with_line("site_config=/etc/ferry/site.json");
        fs::create_dir_all(root.join("etc/ferry")).unwrap();
        let site = root.join("etc/ferry/site.json");
        for (text, says) in [
            (
                r#"{"image_cache_ttl": "2m", "image_cache_max_images": 3, "image_cache_max_memory": "1G"}"#,
                "image cache: kept 120 s after their last step, at most 3 images and 1024 MiB",
            ),
            (r#"{"image_cache_ttl": "0"}"#, "image cache: off ("),
        ] {
            fs::write(&site, text).unwrap();
            fs::set_permissions(&site, fs::Permissions::from_mode(0o644)).unwrap();
            let found = findings(&root, "image cache:");
            assert!(
                matches!(found.as_slice(), [f] if f.level == Level::Ok && f.what.starts_with(says)),
                "{text}: {found:?}"
            );
        }
    }

    #[test]
    fn slurm_clients_is_read_as_the_plugin_reads_it() {
        for (args, clients) in [
            ("slurm_clients=false", false),
            ("slurm_clients=0", false),
            ("slurm_clients=no", false),
            ("slurm_clients=true", true),
            ("", true),
        ] {
            let args_list: Vec<String> = args.split_whitespace().map(str::to_string).collect();
            assert_eq!(Config::parse(&args_list).unwrap().slurm_clients, clients);
            let root = node_with_line(args);
            let plugstack = findings(&root, "plugstack:");
            assert!(
                matches!(plugstack.as_slice(), [f] if f.level == Level::Ok),
                "{args}: {plugstack:?}"
            );
            // The launcher is missing: checked (and failed) only when the plugin uses it.
            let launcher = findings(&root, "launcher:");
            assert_eq!(launcher.len(), usize::from(clients), "{args}: {launcher:?}");
            assert!(launcher.iter().all(|f| f.level == Level::Fail));
        }
    }

    #[test]
    fn an_obsolete_argument_is_a_warning_not_a_failure() {
        let root = node_with_line("hash_unpinned_max=2G require_digest=yes");
        let found = findings(&root, "plugstack:");
        assert!(
            matches!(found.as_slice(), [loads, note] if loads.level == Level::Ok && note.level == Level::Warn),
            "{found:?}"
        );
        assert!(
            found[1].what.contains("hash_unpinned_max=2G is obsolete"),
            "{found:?}"
        );
        assert!(found[1].fix.contains("remove it"), "{found:?}");
        // The rest of the line still counts: the launcher is checked as usual.
        assert!(!findings(&root, "launcher:").is_empty());
    }

    #[test]
    fn the_launcher_and_site_file_named_on_the_line_are_checked() {
        let root = node_with_line("launcher=/opt/ferry/exec site_config=/etc/ferry/other.json");
        let launcher = findings(&root, "launcher:");
        assert!(
            launcher[0].what.starts_with("launcher: /opt/ferry/exec:"),
            "{launcher:?}"
        );
        // Named on the line, the site file must exist (the plugin fails every step).
        let site = findings(&root, "site:");
        assert!(
            matches!(site.as_slice(), [f] if f.level == Level::Fail && f.what.contains("/etc/ferry/other.json")),
            "{site:?}"
        );
    }

    #[test]
    fn reads_the_slurm_version_a_plugin_states() {
        let bytes = b"\x7fELF....ferry 0.1.0 plugin built for Slurm 24.11\0more";
        assert_eq!(built_for(bytes).as_deref(), Some("24.11"));
        assert_eq!(built_for(b"no mark here"), None);
    }

    #[test]
    fn major_minor_of_slurm_versions() {
        assert_eq!(major_minor("22.05.8").as_deref(), Some("22.05"));
        assert_eq!(major_minor("24.11").as_deref(), Some("24.11"));
        assert_eq!(major_minor("slurm"), None);
    }
}
