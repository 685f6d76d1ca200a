//! Devices through the Container Device Interface (CDI): the vendor's tool writes a
//! spec per node (`nvidia-ctk cdi generate`, AMD's and Intel's equivalents) and ferry
//! applies the devices a step asks for (`--container-devices`, `ferry run --device`,
//! or the step's GRES through the site's `cdi_gres`) without knowing the vendor.
//!
//! `spec` parses one file, `registry` reads the node's folders (root's files only),
//! `gres` maps Slurm's allocation to device names, `hooks` runs a spec's hooks (as the
//! user, inside the container). This module turns device references into `Applied`:
//! what the mount plan binds and what the task's environment gets. Every refusal is
//! one line naming the device or the spec file.
//!
//! What a device can do to a container, and why it is safe (see SECURITY.md):
//! - device nodes: only the host's existing character or block devices under /dev
//!   (never made from the spec's numbers); the host's /dev is in every container
//!   already, so a node at its own path needs nothing, and one shown elsewhere under
//!   /dev is bound there. Slurm's device cgroup and the node's mode decide who opens it;
//! - mounts: read-only, nosuid, nodev, the host file opened as the user, like the
//!   user's own `--container-mounts`: a spec cannot show a user what they cannot read;
//! - environment: set over the image's and the job's values, but `--container-env`
//!   names keep the job's;
//! - additional groups: only groups the user is already in (others are dropped with a
//!   warning): a group would open host files inside the container too;
//! - hooks: root's own programs, run as the user (see `hooks`).

pub mod gres;
pub mod hooks;
pub mod registry;
pub mod soname;
pub mod spec;

pub use registry::{Found, Registry, DEFAULT_SPEC_DIRS};
pub use spec::{DeviceRef, Edits, Hook, HookStage};

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What a request's devices add to its container, decided before it is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `kind=name` of each device, in the order given (for logs and records).
    pub devices: Vec<String>,
    /// Host device nodes shown at another path under /dev (bound, device nodes allowed).
    pub node_binds: Vec<NodeBind>,
    /// Host files and folders bound read-only, opened as the user.
    pub mounts: Vec<DeviceMount>,
    /// The libraries' SONAME links to make in the writable layer (as ldconfig would).
    pub links: Vec<Link>,
    /// The variables, in the order they apply: each spec's own, then each device's
    /// (`env_for` folds them; a task of several on a node may take only its own).
    pub env_layers: Vec<EnvLayer>,
    pub hooks: Vec<SpecHook>,
    /// The spec's groups the user is in (the others were dropped with a warning).
    pub gids: Vec<u32>,
    /// Lines to show the user (a dropped group).
    pub warnings: Vec<String>,
}

/// Variables a spec (`device: None`) or one device (`kind=name`) sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvLayer {
    pub device: Option<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBind {
    pub host: PathBuf,
    pub container: PathBuf,
}

/// A spec's mount, and the device and spec it came from (its error names them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    /// `CDI device KIND=NAME (spec FILE)`.
    pub from: String,
}

/// `dest -> target`: a library's SONAME in its folder, naming the mounted file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub dest: PathBuf,
    /// The mounted file's name (relative: it stays in its folder).
    pub target: PathBuf,
}

/// A hook and the spec file that asked for it (the error names both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecHook {
    pub spec: PathBuf,
    pub hook: Hook,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The variables of every spec used and of the devices `only` names (None: all),
    /// later ones winning.
    pub fn env_for(&self, only: Option<&[String]>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for layer in &self.env_layers {
            if let (Some(device), Some(only)) = (&layer.device, only) {
                if !only.contains(device) {
                    continue;
                }
            }
            for (name, value) in &layer.env {
                env.retain(|(n, _)| n != name);
                env.push((name.clone(), value.clone()));
            }
        }
        env
    }

    /// The libraries' folders the mounts bring (for the loader cache).
    pub fn library_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for m in &self.mounts {
            let name = m.container_path.file_name().and_then(|n| n.to_str());
            if name.is_some_and(|n| n.contains(".so")) {
                if let Some(dir) = m.container_path.parent() {
                    if !dirs.iter().any(|d| d == dir) {
                        dirs.push(dir.to_path_buf());
                    }
                }
            }
        }
        dirs
    }
}

/// Resolves `refs` against `registry` for a user whose groups are `user_gids`: each
/// used spec's own edits once (first use), then each device's, in the order given.
/// The error is the one line the user reads.
pub fn resolve(
    registry: &Registry,
    refs: &[DeviceRef],
    user_gids: &[u32],
) -> Result<Applied, String> {
    let mut applied = Applied::default();
    let mut used_specs: Vec<&Path> = Vec::new();
    let mut edits = Edits::default();
    for device in refs {
        let name = device.to_string();
        if applied.devices.contains(&name) {
            continue;
        }
        let (loaded, found) = match registry.find(&device.kind, &device.name) {
            Found::Device(loaded, found) => (loaded, found),
            Found::Conflict(a, b) => {
                return Err(format!(
                    "device {name}: both {} and {} define it; ask your admin to remove one (ferry doctor)",
                    a.display(),
                    b.display()
                ))
            }
            Found::NoSuchDevice(specs) => {
                let offered: Vec<String> = specs
                    .iter()
                    .flat_map(|l| l.spec.devices.iter().map(|d| d.name.clone()))
                    .collect();
                return Err(format!(
                    "device {name}: CDI spec {} has no device {:?} (it offers {}); ask for one of those",
                    specs[0].file.display(),
                    device.name,
                    offered.join(", ")
                ));
            }
            Found::NoSuchKind => {
                let hint = match registry.problems.as_slice() {
                    [] => "ferry doctor lists the devices this node offers".to_string(),
                    [one] => format!("ignored: {one}"),
                    [first, rest @ ..] => format!(
                        "ignored: {first}, and {} more (see ferry doctor)",
                        rest.len()
                    ),
                };
                return Err(format!(
                    "device {name}: no CDI spec on this node offers kind {}; {hint}",
                    device.kind
                ));
            }
        };
        let from = format!("CDI device {name} (spec {})", loaded.file.display());
        let mut take = |more: &Edits, device: Option<&str>| -> Result<(), String> {
            check_edits(&loaded.file, more)?;
            edits.extend(more);
            for mount in &more.mounts {
                let known = applied.mounts.iter().any(|m| {
                    m.host_path == mount.host_path && m.container_path == mount.container_path
                });
                if !known {
                    applied.mounts.push(DeviceMount {
                        host_path: mount.host_path.clone(),
                        container_path: mount.container_path.clone(),
                        from: from.clone(),
                    });
                }
            }
            if !more.env.is_empty() {
                applied.env_layers.push(EnvLayer {
                    device: device.map(str::to_string),
                    env: more.env.clone(),
                });
            }
            for hook in &more.hooks {
                if !applied.hooks.iter().any(|h| h.hook == *hook) {
                    applied.hooks.push(SpecHook {
                        spec: loaded.file.clone(),
                        hook: hook.clone(),
                    });
                }
            }
            Ok(())
        };
        if !used_specs.contains(&loaded.file.as_path()) {
            used_specs.push(&loaded.file);
            take(&loaded.spec.edits, None)?;
        }
        take(&found.edits, Some(&name))?;
        applied.devices.push(name);
    }
    for node in &edits.device_nodes {
        let host = check_device_node(&node.host_path)
            .map_err(|why| format!("device node {}: {why}", node.host_path.display()))?;
        if node.path != node.host_path
            && !applied.node_binds.iter().any(|b| b.container == node.path)
        {
            // The container's /dev is the host's: a node is shown at another path by a
            // bind over an entry the host has there (none is ever made in the host's).
            if std::fs::symlink_metadata(&node.path).is_err() {
                return Err(format!(
                    "device node {}: the spec shows {} there, but containers share the host's /dev, which has no {}; ask your admin to use the node's own path in the spec",
                    node.path.display(),
                    host.display(),
                    node.path.display()
                ));
            }
            applied.node_binds.push(NodeBind {
                host,
                container: node.path.clone(),
            });
        }
    }
    applied.links = library_links(&applied.mounts, host_soname);
    for gid in edits.additional_gids {
        if user_gids.contains(&gid) {
            if !applied.gids.contains(&gid) {
                applied.gids.push(gid);
            }
        } else {
            let line = format!("CDI device {}: additional group {gid} is not one of yours; it is not added (ferry adds only groups you are in)", applied.devices.join(","));
            if !applied.warnings.contains(&line) {
                applied.warnings.push(line);
            }
        }
    }
    Ok(applied)
}

/// The links the loader needs to find the mounted libraries by their SONAME, as
/// ldconfig makes them: for each mount whose file (`soname_of` its host path) names
/// another SONAME, `FOLDER/SONAME -> FILE` beside it in the container. A SONAME that
/// another mount already puts there needs none.
fn library_links(mounts: &[DeviceMount], soname_of: impl Fn(&Path) -> Option<String>) -> Vec<Link> {
    let mut links: Vec<Link> = Vec::new();
    for mount in mounts {
        let (Some(dir), Some(file)) = (
            mount.container_path.parent(),
            mount.container_path.file_name(),
        ) else {
            continue;
        };
        let Some(soname) = soname_of(&mount.host_path) else {
            continue;
        };
        if file == soname.as_str() {
            continue;
        }
        let dest = dir.join(&soname);
        if mounts.iter().any(|m| m.container_path == dest) || links.iter().any(|l| l.dest == dest) {
            continue;
        }
        links.push(Link {
            dest,
            target: file.into(),
        });
    }
    links
}

/// The SONAME of the host file an admin's spec mounts, read as root: only a regular
/// file that root alone can change, on a path (after symlinks) whose folders root
/// alone can change, so no user can swap what is read. Anything else: no link.
fn host_soname(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = std::fs::canonicalize(path).ok()?;
    if crate::image::not_root_only(Path::new("/"), &real).is_some() {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&real)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    soname::soname(&file)
}

/// What the edits ask that only the live node can answer: hooks are root's programs.
fn check_edits(spec: &Path, edits: &Edits) -> Result<(), String> {
    for hook in &edits.hooks {
        hooks::check_program(&hook.path).map_err(|why| {
            format!(
                "CDI spec {}: hook {}: {why}; ask your admin to fix the spec",
                spec.display(),
                hook.path.display()
            )
        })?;
    }
    Ok(())
}

/// The host's device node at `path`: a character or block device under /dev (after
/// symlinks, which under /dev only root makes). Returns where it really is.
pub fn check_device_node(path: &Path) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(path)
        .map_err(|e| format!("cannot be found on this node ({e}); is the driver loaded?"))?;
    if !real.starts_with("/dev") {
        return Err(format!("leads to {}, outside /dev", real.display()));
    }
    let meta = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    let kind = meta.file_type();
    if !(kind.is_char_device() || kind.is_block_device()) {
        return Err("is not a device node on this node (ferry never makes one from a spec)".into());
    }
    Ok(real)
}

/// The spec folders: the site's, else the standard ones.
pub fn spec_dirs(site: Option<&[PathBuf]>) -> Vec<PathBuf> {
    match site {
        Some(dirs) => dirs.to_vec(),
        None => DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// The environment for a task: the image's and the job's (`base`), then the devices'
/// over them, but names the user listed in `--container-env` keep the job's value;
/// then the folders of the libraries the devices bind (`libraries`) added at the end of
/// `LD_LIBRARY_PATH` (after the job's own folders), so that the loader finds them
/// without a rewritten loader cache (the root is read-only).
pub fn layer_env(
    base: Vec<(String, String)>,
    devices: &[(String, String)],
    libraries: &[PathBuf],
    job_wins: &[String],
    job: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut out = base;
    for (name, value) in devices {
        if job_wins.contains(name) && job(name).is_some() {
            continue;
        }
        out.retain(|(n, _)| n != name);
        out.push((name.clone(), value.clone()));
    }
    if !libraries.is_empty() {
        const NAME: &str = "LD_LIBRARY_PATH";
        let now = match out.iter().position(|(n, _)| n == NAME) {
            Some(i) => Some(out.remove(i).1),
            None => job(NAME),
        };
        let mut parts: Vec<String> = now
            .iter()
            .flat_map(|v| v.split(':'))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        for dir in libraries {
            let dir = dir.display().to_string();
            if !parts.contains(&dir) {
                parts.push(dir);
            }
        }
        out.push((NAME.to_string(), parts.join(":")));
    }
    out
}

/// Reads the node's specs (the site's folders, else the standard ones) and resolves
/// `refs` for `user`: what `Request::devices` holds. Nothing asked: nothing read.
pub fn devices_for(
    site_dirs: Option<&[PathBuf]>,
    refs: &[DeviceRef],
    user: &crate::User,
) -> Result<Applied, String> {
    if refs.is_empty() {
        return Ok(Applied::default());
    }
    let registry = Registry::load(&spec_dirs(site_dirs));
    resolve(&registry, refs, &user.gids())
}

#[cfg(test)]
mod tests {
    use super::spec::{Format, Spec};
    use super::*;

    /// A vendor whose "devices" are /dev/null and /dev/zero (real character devices).
    const SPEC: &str = r#"{
      "cdiVersion": "0.6.0", "kind": "example.com/gpu",
      "containerEdits": {
        "env": ["FAKE_DRIVER=1", "SHARED=spec"],
        "mounts": [{"hostPath": "/usr/lib/libfake.so.1", "containerPath": "/usr/lib/fake/libfake.so.1"},
                   {"hostPath": "/usr/bin/fake-smi", "containerPath": "/usr/bin/fake-smi"}],
        "additionalGIDs": [5, 77]
      },
      "devices": [
        {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}], "env": ["SHARED=0"]}},
        {"name": "1", "containerEdits": {"deviceNodes": [{"path": "/dev/full", "hostPath": "/dev/zero"}]}},
        {"name": "nowhere", "containerEdits": {"deviceNodes": [{"path": "/dev/fake1", "hostPath": "/dev/zero"}]}},
        {"name": "bad", "containerEdits": {"deviceNodes": [{"path": "/dev/fake-missing"}]}},
        {"name": "shm", "containerEdits": {"deviceNodes": [{"path": "/dev/shm"}]}}
      ]}"#;

    fn registry() -> Registry {
        Registry::of(vec![(
            "/etc/cdi/example.json".into(),
            Spec::parse(SPEC.as_bytes(), Format::Json).unwrap(),
        )])
    }

    fn refs(list: &str) -> Vec<DeviceRef> {
        DeviceRef::parse_list(list).unwrap()
    }

    #[test]
    fn the_specs_edits_once_then_each_devices() {
        let applied = resolve(
            &registry(),
            &refs("example.com/gpu=0,example.com/gpu=1,example.com/gpu=0"),
            &[5, 1000],
        )
        .unwrap();
        assert_eq!(applied.devices, ["example.com/gpu=0", "example.com/gpu=1"]);
        assert_eq!(applied.mounts.len(), 2);
        // /dev/null is in the host's /dev already; /dev/zero is shown as /dev/full.
        assert_eq!(
            applied.node_binds,
            [NodeBind {
                host: "/dev/zero".into(),
                container: "/dev/full".into()
            }]
        );
        assert_eq!(
            applied.env_for(None),
            [
                ("FAKE_DRIVER".to_string(), "1".to_string()),
                ("SHARED".to_string(), "0".to_string())
            ]
        );
        // Group 77 is not the user's: dropped, with a warning.
        assert_eq!(applied.gids, [5]);
        assert_eq!(applied.warnings.len(), 1);
        assert!(
            applied.warnings[0].contains("group 77"),
            "{:?}",
            applied.warnings
        );
        assert_eq!(applied.library_dirs(), [PathBuf::from("/usr/lib/fake")]);
        // A task that has only device 1 (Slurm's per-task binding) gets its variables.
        let only = ["example.com/gpu=1".to_string()];
        assert_eq!(
            applied.env_for(Some(&only)),
            [
                ("FAKE_DRIVER".to_string(), "1".to_string()),
                ("SHARED".to_string(), "spec".to_string())
            ]
        );
    }

    #[test]
    fn unknown_devices_and_nodes_that_are_not_devices_are_one_line() {
        let err = |list: &str| resolve(&registry(), &refs(list), &[]).unwrap_err();
        let e = err("example.com/gpu=7");
        assert!(
            e.contains("/etc/cdi/example.json has no device \"7\""),
            "{e}"
        );
        assert!(e.contains("0, 1, nowhere, bad, shm"), "{e}");
        // A path the host's /dev does not have: nothing to bind over (none is made).
        let e = err("example.com/gpu=nowhere");
        assert!(
            e.contains("/dev/fake1") && e.contains("containers share the host's /dev"),
            "{e}"
        );
        let e = err("other.com/gpu=0");
        assert!(
            e.contains("no CDI spec on this node offers kind other.com/gpu"),
            "{e}"
        );
        let e = err("example.com/gpu=bad");
        assert!(
            e.contains("/dev/fake-missing") && e.contains("cannot be found"),
            "{e}"
        );
        let e = err("example.com/gpu=shm");
        assert!(e.contains("not a device node"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn each_library_gets_its_soname_link_beside_it() {
        let mount = |host: &str, container: &str| DeviceMount {
            host_path: host.into(),
            container_path: container.into(),
            from: "CDI device x/y=0 (spec s.json)".into(),
        };
        let mounts = [
            mount("/h/libcuda.so.550.54.15", "/usr/lib/libcuda.so.550.54.15"),
            // Shown under another name: the link names the container's file.
            mount("/h/libnvidia-ml.so.550.54.15", "/usr/lib/ml/libml.so.550"),
            // The SONAME is the file's own name: no link.
            mount("/h/libsame.so.1", "/usr/lib/libsame.so.1"),
            // The SONAME is another mount's file: that one is it, no link.
            mount("/h/libdup.so.1.0", "/usr/lib/libdup.so.1.0"),
            mount("/h/libdup.so.1", "/usr/lib/libdup.so.1"),
            // The same SONAME twice: the first file wins.
            mount("/h/libcuda.so.old", "/usr/lib/libcuda.so.old"),
            // No SONAME (a tool, a folder): nothing.
            mount("/h/nvidia-smi", "/usr/bin/nvidia-smi"),
        ];
        let soname_of = |p: &Path| {
            let name = p.file_name()?.to_str()?;
            Some(match name {
                "nvidia-smi" => return None,
                n if n.starts_with("libcuda") => "libcuda.so.1".to_string(),
                n if n.starts_with("libnvidia-ml") => "libnvidia-ml.so.1".to_string(),
                n if n.starts_with("libdup") => "libdup.so.1".to_string(),
                n => n.to_string(),
            })
        };
        let link = |dest: &str, target: &str| Link {
            dest: dest.into(),
            target: target.into(),
        };
        assert_eq!(
            library_links(&mounts, soname_of),
            [
                link("/usr/lib/libcuda.so.1", "libcuda.so.550.54.15"),
                link("/usr/lib/ml/libnvidia-ml.so.1", "libml.so.550"),
            ]
        );
    }

    #[test]
    fn the_device_libraries_folders_follow_the_jobs_library_path() {
        let libs = [PathBuf::from("/usr/lib/fake"), PathBuf::from("/opt/x/lib")];
        let job = |n: &str| (n == "LD_LIBRARY_PATH").then(|| "/home/a/lib:/opt/x/lib".to_string());
        let env = layer_env(Vec::new(), &[], &libs, &[], job);
        assert_eq!(
            env,
            [(
                "LD_LIBRARY_PATH".to_string(),
                "/home/a/lib:/opt/x/lib:/usr/lib/fake".to_string()
            )]
        );
        let env = layer_env(Vec::new(), &[], &libs, &[], |_| None);
        assert_eq!(env[0].1, "/usr/lib/fake:/opt/x/lib");
        assert!(layer_env(Vec::new(), &[], &[], &[], job).is_empty());
    }

    #[test]
    fn device_env_goes_over_the_image_and_job_but_not_over_container_env_names() {
        let base = vec![
            ("A".to_string(), "image".to_string()),
            ("B".to_string(), "job".to_string()),
        ];
        let devices = [
            ("A".to_string(), "dev".to_string()),
            ("B".to_string(), "dev".to_string()),
            ("C".to_string(), "dev".to_string()),
        ];
        let job = |n: &str| (n == "B").then(|| "job".to_string());
        let env = layer_env(base.clone(), &devices, &[], &["B".into()], job);
        assert_eq!(
            env,
            [
                ("B".to_string(), "job".to_string()),
                ("A".to_string(), "dev".to_string()),
                ("C".to_string(), "dev".to_string()),
            ]
        );
    }
}
