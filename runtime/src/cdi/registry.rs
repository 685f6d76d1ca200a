//! The node's CDI specs: read from the spec folders (as root), each file judged before
//! its text is: a spec can make ferry bind host files and run programs, so only a file
//! root alone could have written counts. A file that fails is left out with a problem
//! that names it (`ferry doctor` lists them; a step that asks for its devices hears why
//! they are unknown).

use super::spec::{Format, Spec};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The folders the CDI specification names, lowest priority first.
pub const DEFAULT_SPEC_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// A spec file is a few kilobytes (nvidia-ctk's for 8 GPUs: about 20 KiB).
pub const MAX_SPEC_SIZE: u64 = 1 << 20;

/// Spec files read from one folder at most (a folder is a handful of vendors).
const MAX_SPECS_PER_DIR: usize = 256;

/// A spec that was read, and the file it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub file: PathBuf,
    pub spec: Spec,
}

/// A file or folder left out, and why (one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CDI spec {}: {}", self.path.display(), self.reason)
    }
}

/// Every usable spec of the node's folders and the problems found on the way. When two
/// files offer the same device, the file of the later folder wins (the CDI rule: the
/// runtime's `/var/run/cdi` over the static `/etc/cdi`); two files of the same folder
/// offering one device make it unusable (which one the admin meant is unknown).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// In folder order, then file-name order.
    pub specs: Vec<Loaded>,
    /// Per folder: its index in `specs` range, to tell folders apart.
    folder_of: Vec<usize>,
    pub problems: Vec<Problem>,
}

/// Where a device reference leads.
pub enum Found<'r> {
    Device(&'r Loaded, &'r super::spec::Device),
    /// Two spec files of one folder define it.
    Conflict(&'r Path, &'r Path),
    /// Specs of this kind exist, none with this device: their files and devices.
    NoSuchDevice(Vec<&'r Loaded>),
    NoSuchKind,
}

impl Registry {
    /// Reads `dirs` (lowest priority first). A missing folder is no problem (most nodes
    /// have no devices); one that is not root's alone is.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        Registry::load_in(Path::new("/"), dirs)
    }

    /// `load` for the node whose `/` is `root` (`ferry doctor --root`): the folders
    /// are read under it, and judged there.
    pub fn load_in(root: &Path, dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry::default();
        for (i, dir) in dirs.iter().enumerate() {
            let at = crate::resolve::under(root, dir);
            match std::fs::symlink_metadata(&at) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                _ => {}
            }
            if let Some(open) = crate::image::not_root_only(root, dir) {
                registry.problems.push(Problem {
                    path: dir.clone(),
                    reason: format!(
                        "folder {} must be owned by root and writable by root only (chown root: and chmod go-w it); its specs are ignored",
                        open.display()
                    ),
                });
                continue;
            }
            registry.load_dir(&at, i);
        }
        registry
    }

    /// A registry of specs already parsed, all of one folder (for unit tests).
    #[cfg(test)]
    pub(crate) fn of(specs: Vec<(PathBuf, Spec)>) -> Registry {
        Registry {
            folder_of: specs.iter().map(|_| 0).collect(),
            specs: specs
                .into_iter()
                .map(|(file, spec)| Loaded { file, spec })
                .collect(),
            problems: Vec::new(),
        }
    }

    /// Reads the spec files of `dir` (its own trust already judged).
    pub(crate) fn load_dir(&mut self, dir: &Path, folder: usize) {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| Format::of(p).is_some())
                .collect(),
            Err(e) => {
                self.problems.push(Problem {
                    path: dir.to_path_buf(),
                    reason: format!("cannot be read ({e})"),
                });
                return;
            }
        };
        names.sort();
        if names.len() > MAX_SPECS_PER_DIR {
            self.problems.push(Problem {
                path: dir.to_path_buf(),
                reason: format!(
                    "holds {} spec files; only the first {MAX_SPECS_PER_DIR} are read",
                    names.len()
                ),
            });
            names.truncate(MAX_SPECS_PER_DIR);
        }
        for file in names {
            match read_trusted(&file) {
                Ok(spec) => {
                    self.specs.push(Loaded { file, spec });
                    self.folder_of.push(folder);
                }
                Err(reason) => self.problems.push(Problem { path: file, reason }),
            }
        }
    }

    /// The device `kind=name` of the highest-priority folder that offers it.
    pub fn find(&self, kind: &str, name: &str) -> Found<'_> {
        let mut best: Option<(usize, &Loaded, &super::spec::Device)> = None;
        let mut conflict = None;
        for (loaded, folder) in self.specs.iter().zip(&self.folder_of) {
            if loaded.spec.kind != kind {
                continue;
            }
            if let Some(device) = loaded.spec.device(name) {
                match best {
                    Some((f, earlier, _)) if f == *folder => {
                        conflict = Some((earlier.file.as_path(), loaded.file.as_path()))
                    }
                    _ => {
                        best = Some((*folder, loaded, device));
                        conflict = None;
                    }
                }
            }
        }
        match (conflict, best) {
            (Some((a, b)), _) => Found::Conflict(a, b),
            (None, Some((_, loaded, device))) => Found::Device(loaded, device),
            (None, None) => {
                let of_kind: Vec<&Loaded> =
                    self.specs.iter().filter(|l| l.spec.kind == kind).collect();
                if of_kind.is_empty() {
                    Found::NoSuchKind
                } else {
                    Found::NoSuchDevice(of_kind)
                }
            }
        }
    }

    /// Every device the node offers, `kind=name` with its file, in priority order
    /// (for `ferry doctor`).
    pub fn devices(&self) -> Vec<(String, &Path)> {
        let mut out: Vec<(String, &Path)> = Vec::new();
        for loaded in self.specs.iter().rev() {
            for device in &loaded.spec.devices {
                let name = format!("{}={}", loaded.spec.kind, device.name);
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name, &loaded.file));
                }
            }
        }
        out.reverse();
        out
    }
}

/// Reads one spec file if root alone could have written it: a regular file (not a
/// symlink), owned by root, not writable by group or others, at most `MAX_SPEC_SIZE`.
/// The error is the reason, for a line that names the file.
pub(crate) fn read_trusted(file: &Path) -> Result<Spec, String> {
    let format = Format::of(file).ok_or("not a .json, .yaml or .yml file")?;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(file);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("is a symlink; ferry reads only regular files owned by root".into())
        }
        Err(e) => return Err(format!("cannot be opened ({e})")),
    };
    let meta = crate::sys::fstat(file.as_fd()).map_err(|e| format!("cannot be read ({e})"))?;
    if meta.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err("is not a regular file".into());
    }
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be read ({e})"))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err("must be owned by root and writable by root only (chown root: and chmod go-w it); ignored".into());
    }
    if meta.len() > MAX_SPEC_SIZE {
        return Err(format!(
            "is larger than {} KiB; a spec is a few kilobytes",
            MAX_SPEC_SIZE >> 10
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_SPEC_SIZE + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot be read ({e})"))?;
    if text.len() as u64 > MAX_SPEC_SIZE {
        return Err(format!(
            "is larger than {} KiB; a spec is a few kilobytes",
            MAX_SPEC_SIZE >> 10
        ));
    }
    Spec::parse(&text, format).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn spec(kind: &str, devices: &[&str]) -> String {
        let devices: Vec<String> = devices
            .iter()
            .map(|d| format!(r#"{{"name": "{d}", "containerEdits": {{"env": ["DEV_{d}=1"]}}}}"#))
            .collect();
        format!(
            r#"{{"cdiVersion": "0.6.0", "kind": "{kind}", "devices": [{}]}}"#,
            devices.join(",")
        )
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn root_only() -> bool {
        if crate::is_root() {
            return true;
        }
        eprintln!("skipped: the spec files must be root's, and this test is not root");
        false
    }

    #[test]
    fn only_root_only_regular_small_files_are_read() {
        if !root_only() {
            return;
        }
        let dir = Scratch::new("cdi-trust");
        write(&dir, "a.json", &spec("a.com/x", &["0"]), 0o644);
        write(&dir, "b.json", &spec("b.com/x", &["0"]), 0o664);
        write(&dir, "c.yaml", "cdiVersion: [", 0o644);
        let huge = format!(
            "{}{}",
            spec("d.com/x", &["0"]),
            " ".repeat(MAX_SPEC_SIZE as usize)
        );
        write(&dir, "d.json", &huge, 0o644);
        let e = write(&dir, "e.json", &spec("e.com/x", &["0"]), 0o644);
        std::os::unix::fs::chown(&e, Some(65534), None).unwrap();
        std::os::unix::fs::symlink(dir.join("a.json"), dir.join("f.json")).unwrap();
        write(&dir, "notes.txt", "not a spec", 0o644);
        let mut registry = Registry::default();
        registry.load_dir(&dir, 0);
        let kinds: Vec<&str> = registry
            .specs
            .iter()
            .map(|l| l.spec.kind.as_str())
            .collect();
        assert_eq!(kinds, ["a.com/x"]);
        let problems: Vec<String> = registry.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 5, "{problems:?}");
        let about = |name: &str| {
            problems
                .iter()
                .find(|p| p.contains(&format!("/{name}:")))
                .unwrap_or_else(|| panic!("{name}: {problems:?}"))
                .clone()
        };
        assert!(about("b.json").contains("writable by root only"));
        assert!(about("c.yaml").contains("YAML"));
        assert!(about("d.json").contains("larger than 1024 KiB"));
        assert!(about("e.json").contains("owned by root"));
        assert!(about("f.json").contains("symlink"));
    }

    #[test]
    fn later_folders_win_and_one_folder_may_not_say_it_twice() {
        if !root_only() {
            return;
        }
        let (low, high) = (Scratch::new("cdi-low"), Scratch::new("cdi-high"));
        write(&low, "v.json", &spec("v.com/gpu", &["0", "1"]), 0o644);
        write(&high, "v.json", &spec("v.com/gpu", &["1"]), 0o644);
        write(&high, "w1.json", &spec("w.com/gpu", &["0"]), 0o644);
        write(&high, "w2.yaml", &spec("w.com/gpu", &["0"]), 0o644);
        let mut registry = Registry::default();
        registry.load_dir(&low, 0);
        registry.load_dir(&high, 1);
        let file_of = |kind, name| match registry.find(kind, name) {
            Found::Device(loaded, _) => loaded.file.clone(),
            _ => panic!("{kind}={name} not found"),
        };
        assert_eq!(file_of("v.com/gpu", "0"), low.join("v.json"));
        assert_eq!(file_of("v.com/gpu", "1"), high.join("v.json"));
        assert!(matches!(
            registry.find("w.com/gpu", "0"),
            Found::Conflict(..)
        ));
        assert!(matches!(registry.find("v.com/gpu", "7"), Found::NoSuchDevice(l) if l.len() == 2));
        assert!(matches!(registry.find("x.com/gpu", "0"), Found::NoSuchKind));
        let devices: Vec<String> = registry.devices().into_iter().map(|(d, _)| d).collect();
        assert_eq!(devices, ["v.com/gpu=0", "v.com/gpu=1", "w.com/gpu=0"]);
    }

    #[test]
    fn a_folder_others_may_write_is_ignored_whole() {
        let dir = Scratch::new("cdi-open");
        std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        write(&dir, "a.json", &spec("a.com/x", &["0"]), 0o644);
        let missing = dir.join("missing");
        let registry = Registry::load(&[dir.to_path_buf(), missing]);
        assert!(registry.specs.is_empty());
        assert_eq!(registry.problems.len(), 1, "{:?}", registry.problems);
        assert!(registry.problems[0]
            .reason
            .contains("writable by root only"));
    }
}
