//! One CDI spec file: its text (JSON or YAML) parsed and checked into plain values.
//! Pure: `registry` reads the file (and judges who owns it); this module judges only
//! what the file says.
//!
//! The accepted shape is the Container Device Interface's, versions 0.3.0 to 0.8.0:
//! `cdiVersion`, `kind` (`vendor/class`), `devices[]` (`name`, `containerEdits`) and
//! the spec-wide `containerEdits` (`env`, `deviceNodes`, `mounts`, `hooks`,
//! `additionalGIDs`). An edit ferry does not apply (`intelRdt`, `netDevices`, a hook
//! stage other than `createContainer`/`startContainer`) refuses the spec: a device
//! half set up is worse than a clear no.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The spec versions vendors' tools write today (`nvidia-ctk` 0.5 to 0.8, others 0.3+).
const MIN_MINOR: u32 = 3;
const MAX_MINOR: u32 = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("cannot be parsed as {format}: {reason}")]
    Syntax {
        format: &'static str,
        reason: String,
    },
    #[error("cdiVersion {0:?} is not one ferry reads (0.3.0 to 0.8.0)")]
    Version(String),
    #[error("kind {0:?} must be VENDOR/CLASS, such as nvidia.com/gpu")]
    Kind(String),
    #[error("has no devices")]
    NoDevices,
    #[error("device name {0:?} must be letters, digits, '_', '-', '.' or ':'")]
    DeviceName(String),
    #[error("device {0:?} is defined twice")]
    Duplicate(String),
    #[error("{at}: {reason}")]
    Edit { at: String, reason: String },
}

/// A checked spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub version: String,
    /// `vendor/class`.
    pub kind: String,
    /// Applied once with any device of the spec.
    pub edits: Edits,
    pub devices: Vec<Device>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub edits: Edits,
}

/// What a device (or its spec) changes in a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub env: Vec<(String, String)>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
    pub additional_gids: Vec<u32>,
}

/// A device node: the host's node (`host_path`) shown at `path` in the container. The
/// spec's type, numbers and mode are only checked against the host's node, never used
/// to make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub host_path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookStage {
    /// After the container's mounts are made, before the command (OCI `createContainer`).
    CreateContainer,
    /// Just before the command starts (OCI `startContainer`): ferry runs both at the
    /// same point, once the container is ready.
    StartContainer,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub stage: HookStage,
    pub path: PathBuf,
    /// `argv`, the program's name first (as OCI hooks have it).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    container_edits: Option<RawEdits>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDevice {
    name: String,
    #[serde(default)]
    container_edits: Option<RawEdits>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawEdits {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    device_nodes: Option<Vec<RawNode>>,
    #[serde(default)]
    mounts: Option<Vec<RawMount>>,
    #[serde(default)]
    hooks: Option<Vec<RawHook>>,
    #[serde(default, rename = "additionalGIDs")]
    additional_gids: Option<Vec<u32>>,
    /// Edits ferry does not apply (`intelRdt`, `netDevices`): any refuses the spec.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNode {
    path: String,
    host_path: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMount {
    host_path: String,
    container_path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHook {
    hook_name: String,
    path: String,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    timeout: Option<u64>,
}

/// The file's format, from its name (as the CDI registry has it: `.json`, else YAML).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// None: not a spec file's name (other files in the folders are left alone).
    pub fn of(name: &Path) -> Option<Format> {
        match name.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

impl Spec {
    pub fn parse(text: &[u8], format: Format) -> Result<Spec, SpecError> {
        let raw: RawSpec = match format {
            Format::Json => serde_json::from_slice(text).map_err(|e| SpecError::Syntax {
                format: "JSON",
                reason: e.to_string(),
            })?,
            Format::Yaml => serde_yaml_ng::from_slice(text).map_err(|e| SpecError::Syntax {
                format: "YAML",
                reason: e.to_string(),
            })?,
        };
        check_version(&raw.cdi_version)?;
        check_kind(&raw.kind)?;
        if raw.devices.is_empty() {
            return Err(SpecError::NoDevices);
        }
        let edits = Edits::check(raw.container_edits.unwrap_or_default(), "containerEdits")?;
        let mut devices: Vec<Device> = Vec::new();
        for device in raw.devices {
            if !valid_name(&device.name) {
                return Err(SpecError::DeviceName(device.name));
            }
            if devices.iter().any(|d| d.name == device.name) {
                return Err(SpecError::Duplicate(device.name));
            }
            let at = format!("device {}", device.name);
            devices.push(Device {
                edits: Edits::check(device.container_edits.unwrap_or_default(), &at)?,
                name: device.name,
            });
        }
        Ok(Spec {
            version: raw.cdi_version,
            kind: raw.kind,
            edits,
            devices,
        })
    }

    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }
}

impl Edits {
    fn check(raw: RawEdits, at: &str) -> Result<Edits, SpecError> {
        let fail = |what: String, reason: &str| SpecError::Edit {
            at: format!("{at}: {what}"),
            reason: reason.to_string(),
        };
        if let Some(name) = raw.other.keys().next() {
            return Err(fail(
                name.clone(),
                "ferry does not apply this edit; ask the vendor's tool for a spec without it",
            ));
        }
        let mut edits = Edits::default();
        for entry in raw.env.unwrap_or_default() {
            match entry.split_once('=') {
                Some((name, value)) if !name.is_empty() && !entry.contains('\0') => {
                    edits.env.push((name.to_string(), value.to_string()))
                }
                _ => return Err(fail(format!("env {entry:?}"), "give NAME=VALUE")),
            }
        }
        for node in raw.device_nodes.unwrap_or_default() {
            let what = format!("deviceNodes {:?}", node.path);
            let path = under_dev(&node.path).ok_or_else(|| {
                fail(what.clone(), "the path must be an absolute path under /dev")
            })?;
            let host_path = match &node.host_path {
                Some(host) => under_dev(host).ok_or_else(|| {
                    fail(what.clone(), "hostPath must be an absolute path under /dev")
                })?,
                None => path.clone(),
            };
            if !matches!(node.kind.as_deref(), None | Some("c" | "b" | "u")) {
                return Err(fail(what, "type must be c, b or u"));
            }
            edits.device_nodes.push(DeviceNode { path, host_path });
        }
        for mount in raw.mounts.unwrap_or_default() {
            let what = format!("mounts {:?}", mount.container_path);
            let container_path = clean_absolute(&mount.container_path)
                .filter(|p| p != Path::new("/"))
                .ok_or_else(|| {
                    fail(
                        what.clone(),
                        "containerPath must be absolute, not /, without '..'",
                    )
                })?;
            let host_path = clean_absolute(&mount.host_path)
                .ok_or_else(|| fail(what, "hostPath must be absolute, without '..'"))?;
            edits.mounts.push(Mount {
                host_path,
                container_path,
            });
        }
        for hook in raw.hooks.unwrap_or_default() {
            let what = format!("hooks {:?}", hook.path);
            let stage = match hook.hook_name.as_str() {
                "createContainer" => HookStage::CreateContainer,
                "startContainer" => HookStage::StartContainer,
                other => {
                    return Err(fail(
                        what,
                        &format!("hookName {other:?}: ferry runs only createContainer and startContainer hooks"),
                    ))
                }
            };
            let path = clean_absolute(&hook.path)
                .ok_or_else(|| fail(what.clone(), "the path must be absolute, without '..'"))?;
            let env = hook.env.unwrap_or_default();
            if env.iter().any(|e| !e.contains('=') || e.contains('\0')) {
                return Err(fail(what, "env entries must be NAME=VALUE"));
            }
            let mut args = hook.args.unwrap_or_default();
            if args.is_empty() {
                args.push(hook.path.clone());
            }
            edits.hooks.push(Hook {
                stage,
                path,
                args,
                env,
                timeout: hook.timeout.filter(|s| *s > 0).map(Duration::from_secs),
            });
        }
        edits.additional_gids = raw.additional_gids.unwrap_or_default();
        Ok(edits)
    }

    /// Adds `other`'s edits after these.
    pub fn extend(&mut self, other: &Edits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
        self.additional_gids.extend(&other.additional_gids);
    }
}

fn check_version(version: &str) -> Result<(), SpecError> {
    let bad = || SpecError::Version(version.to_string());
    let mut parts = version.split('.');
    let (major, minor) = (parts.next(), parts.next());
    let patch_ok = parts.next().is_none_or(|p| p.parse::<u32>().is_ok()) && parts.next().is_none();
    match (major, minor.and_then(|m| m.parse::<u32>().ok())) {
        (Some("0"), Some(minor)) if (MIN_MINOR..=MAX_MINOR).contains(&minor) && patch_ok => Ok(()),
        _ => Err(bad()),
    }
}

/// `vendor/class`: a vendor like a domain name (`nvidia.com`), a class like a name.
fn check_kind(kind: &str) -> Result<(), SpecError> {
    let bad = || SpecError::Kind(kind.to_string());
    let (vendor, class) = kind.split_once('/').ok_or_else(bad)?;
    let part_ok = |s: &str, extra: &[char]| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || extra.contains(&c))
    };
    if part_ok(vendor, &['.', '_'])
        && part_ok(class, &['.', '_'])
        && vendor.len() + class.len() < 200
    {
        Ok(())
    } else {
        Err(bad())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

/// An absolute path with no `..`, `.` or empty parts folded away.
fn clean_absolute(text: &str) -> Option<PathBuf> {
    let path = Path::new(text);
    if !path.is_absolute() || text.contains('\0') {
        return None;
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    Some(path.components().collect())
}

fn under_dev(text: &str) -> Option<PathBuf> {
    clean_absolute(text).filter(|p| p.starts_with("/dev") && p != Path::new("/dev"))
}

/// A `VENDOR/CLASS=NAME` device reference, as users and the GRES mapping give them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRef {
    pub kind: String,
    pub name: String,
}

impl DeviceRef {
    pub fn parse(text: &str) -> Result<DeviceRef, String> {
        let bad = || format!("device {text:?}: give VENDOR/CLASS=NAME, such as nvidia.com/gpu=0");
        let (kind, name) = text.trim().split_once('=').ok_or_else(bad)?;
        check_kind(kind).map_err(|_| bad())?;
        if !valid_name(name) {
            return Err(bad());
        }
        Ok(DeviceRef {
            kind: kind.to_string(),
            name: name.to_string(),
        })
    }

    /// A comma-separated list (`--container-devices`).
    pub fn parse_list(list: &str) -> Result<Vec<DeviceRef>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(DeviceRef::parse)
            .collect()
    }
}

impl std::fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
      "cdiVersion": "0.6.0",
      "kind": "example.com/gpu",
      "devices": [
        {"name": "0", "containerEdits": {
          "deviceNodes": [{"path": "/dev/fake0", "type": "c", "major": 240, "minor": 0,
                           "permissions": "rw", "uid": 0, "gid": 0}],
          "env": ["FAKE_VISIBLE=0"]}},
        {"name": "1", "containerEdits": {
          "deviceNodes": [{"path": "/dev/gpu1", "hostPath": "/dev/fake1"}]}}
      ],
      "containerEdits": {
        "env": ["FAKE_DRIVER=1.0"],
        "mounts": [{"hostPath": "/usr/lib/libfake.so.1", "containerPath": "/usr/lib/libfake.so.1",
                    "options": ["ro", "nosuid", "bind"], "type": "bind"}],
        "hooks": [{"hookName": "createContainer", "path": "/usr/bin/fake-hook",
                   "args": ["fake-hook", "setup"], "env": ["A=1"], "timeout": 5}],
        "additionalGIDs": [44]
      }
    }"#;

    const YAML: &str = "
cdiVersion: 0.8.0
kind: example.com/gpu
devices:
  - name: '0'
    containerEdits:
      deviceNodes:
        - path: /dev/fake0
      env: [FAKE_VISIBLE=0]
containerEdits:
  env:
    - FAKE_DRIVER=1.0
  mounts:
    - hostPath: /usr/lib/libfake.so.1
      containerPath: /usr/lib/libfake.so.1
";

    fn json(text: &str) -> Result<Spec, SpecError> {
        Spec::parse(text.as_bytes(), Format::Json)
    }

    #[test]
    fn a_full_json_spec() {
        let spec = json(JSON).unwrap();
        assert_eq!(spec.kind, "example.com/gpu");
        assert_eq!(spec.devices.len(), 2);
        assert_eq!(
            spec.device("1").unwrap().edits.device_nodes,
            [DeviceNode {
                path: "/dev/gpu1".into(),
                host_path: "/dev/fake1".into()
            }]
        );
        assert_eq!(
            spec.device("0").unwrap().edits.device_nodes[0].host_path,
            PathBuf::from("/dev/fake0")
        );
        assert_eq!(spec.edits.env, [("FAKE_DRIVER".into(), "1.0".into())]);
        assert_eq!(spec.edits.additional_gids, [44]);
        let hook = &spec.edits.hooks[0];
        assert_eq!(hook.stage, HookStage::CreateContainer);
        assert_eq!(hook.args, ["fake-hook", "setup"]);
        assert_eq!(hook.timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn yaml_reads_the_same_as_json() {
        let yaml = Spec::parse(YAML.as_bytes(), Format::Yaml).unwrap();
        assert_eq!(yaml.version, "0.8.0");
        assert_eq!(yaml.edits.mounts, json(JSON).unwrap().edits.mounts);
        assert_eq!(
            yaml.device("0").unwrap().edits.env,
            json(JSON).unwrap().device("0").unwrap().edits.env
        );
        let err = Spec::parse(b"cdiVersion: [\n", Format::Yaml).unwrap_err();
        assert!(
            matches!(err, SpecError::Syntax { format: "YAML", .. }),
            "{err}"
        );
    }

    #[test]
    fn versions_0_3_to_0_8_only() {
        for ok in ["0.3.0", "0.5.0", "0.6.0", "0.8.0", "0.7"] {
            let text = JSON.replace("0.6.0", ok);
            assert!(json(&text).is_ok(), "{ok}");
        }
        for bad in ["0.2.0", "0.9.0", "1.0.0", "x", "0.6.0.1", ""] {
            let text = JSON.replace("0.6.0", bad);
            assert_eq!(json(&text).unwrap_err(), SpecError::Version(bad.into()));
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let cases = [
            (
                r#""kind": "example.com/gpu""#,
                r#""kind": "gpu""#,
                "VENDOR/CLASS",
            ),
            (r#""name": "1""#, r#""name": "../1""#, "device name"),
            (r#""name": "1""#, r#""name": "0""#, "defined twice"),
            ("/dev/gpu1", "/etc/gpu1", "under /dev"),
            (
                r#""hostPath": "/dev/fake1""#,
                r#""hostPath": "/tmp/fake1""#,
                "hostPath must be",
            ),
            (
                r#""containerPath": "/usr/lib/libfake.so.1""#,
                r#""containerPath": "lib/x""#,
                "containerPath",
            ),
            (
                r#""containerPath": "/usr/lib/libfake.so.1""#,
                r#""containerPath": "/usr/../etc""#,
                "'..'",
            ),
            ("createContainer", "createRuntime", "only createContainer"),
            (r#""/usr/bin/fake-hook""#, r#""fake-hook""#, "absolute"),
            ("FAKE_DRIVER=1.0", "FAKE_DRIVER", "NAME=VALUE"),
            (
                r#""additionalGIDs""#,
                r#""intelRdt": {}, "additionalGIDs""#,
                "intelRdt",
            ),
            (r#""type": "c""#, r#""type": "p""#, "type must be"),
        ];
        for (from, to, expected) in cases {
            let text = JSON.replacen(from, to, 1);
            assert_ne!(text, JSON, "{from}");
            let err = json(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{to}: {err}");
        }
        let no_devices = r#"{"cdiVersion": "0.6.0", "kind": "a.b/c", "devices": []}"#;
        assert_eq!(json(no_devices).unwrap_err(), SpecError::NoDevices);
        assert!(matches!(
            json("{").unwrap_err(),
            SpecError::Syntax { format: "JSON", .. }
        ));
    }

    #[test]
    fn unknown_top_level_and_device_fields_are_ignored() {
        let text = JSON.replacen(r#""kind""#, r#""annotations": {"x": "y"}, "kind""#, 1);
        assert!(json(&text).is_ok());
    }

    #[test]
    fn device_references() {
        assert_eq!(
            DeviceRef::parse("nvidia.com/gpu=0").unwrap(),
            DeviceRef {
                kind: "nvidia.com/gpu".into(),
                name: "0".into()
            }
        );
        assert_eq!(
            DeviceRef::parse_list("a.b/c=1, a.b/c=all,").unwrap().len(),
            2
        );
        for bad in [
            "gpu=0",
            "nvidia.com/gpu",
            "nvidia.com/gpu=",
            "a/b=../x",
            "=0",
        ] {
            assert!(
                DeviceRef::parse(bad)
                    .unwrap_err()
                    .contains("VENDOR/CLASS=NAME"),
                "{bad}"
            );
        }
        assert_eq!(DeviceRef::parse("a.b/c=x").unwrap().to_string(), "a.b/c=x");
    }

    #[test]
    fn spec_files_are_json_or_yaml_by_name() {
        assert_eq!(Format::of(Path::new("/etc/cdi/a.json")), Some(Format::Json));
        assert_eq!(Format::of(Path::new("/etc/cdi/a.yaml")), Some(Format::Yaml));
        assert_eq!(Format::of(Path::new("/etc/cdi/a.yml")), Some(Format::Yaml));
        assert_eq!(Format::of(Path::new("/etc/cdi/README")), None);
    }
}
