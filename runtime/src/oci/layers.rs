//! Applying image layers (tar streams) in order onto a private staging folder.
//!
//! A layer is untrusted input: every path is resolved inside the staging root by hand
//! (`resolve::walk`: symlinks expanded against that root, never followed out of it; `..` in an entry's
//! name is refused), the last component is never followed, and existing entries are
//! removed rather than written through. Whiteouts (`.wh.NAME`) delete what lower layers
//! made; an opaque marker (`.wh..wh..opq`) empties a folder of what lower layers put in
//! it. The staging folder is ours alone (mode 0700), so nobody races these checks.

use crate::resolve::{self, Entry, Lookup};
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a layer cannot be applied; `Display` is the reason, the caller names the layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("not a tar stream ({0})")]
    NotTar(io::Error),
    #[error("interrupted")]
    Interrupted,
    #[error("corrupt or truncated tar ({0})")]
    CorruptTar(io::Error),
    #[error("an entry has an unusable name ({0})")]
    UnusableName(io::Error),
    #[error("entry {0}: the path leaves the image ('..'); the layer is unsafe")]
    LeavesImage(PathBuf),
    #[error("entry {entry}: {source}")]
    Entry { entry: PathBuf, source: io::Error },
    #[error("reading the layer to its end: {0}")]
    ReadToEnd(io::Error),
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

pub struct Unpacker {
    root: PathBuf,
    /// Owners are kept only when running as root (chown needs it).
    keep_owners: bool,
    /// Final modes of folders, applied at the end (a 0555 folder must stay writable
    /// while later entries and layers go into it).
    dir_modes: BTreeMap<PathBuf, u32>,
    /// Device files skipped (the container gets the host's /dev).
    pub skipped_devices: usize,
}

impl Unpacker {
    pub fn new(root: PathBuf, keep_owners: bool) -> Unpacker {
        // The image's root is 0755 unless a layer says otherwise ("./"): the staging
        // folder's own 0700 must not become the image's.
        Unpacker {
            root,
            keep_owners,
            dir_modes: BTreeMap::from([(PathBuf::new(), 0o755)]),
            skipped_devices: 0,
        }
    }

    /// Applies one layer. `reader` yields the uncompressed tar stream; it is read to the
    /// end so the caller's digests cover every byte.
    pub fn apply_layer(&mut self, reader: impl Read) -> Result<(), LayerError> {
        let mut archive = tar::Archive::new(reader);
        // Paths made by this layer (relative to the root, resolved): an opaque marker
        // only removes what lower layers made.
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        let entries = archive.entries().map_err(LayerError::NotTar)?;
        for entry in entries {
            if crate::interrupt::interrupted() {
                return Err(LayerError::Interrupted);
            }
            let mut entry = entry.map_err(LayerError::CorruptTar)?;
            let raw = entry.path().map_err(LayerError::UnusableName)?.into_owned();
            let Some(name) = normalize(&raw) else {
                return Err(LayerError::LeavesImage(raw));
            };
            self.apply_entry(&mut entry, &name, &mut this_layer)
                .map_err(|source| LayerError::Entry { entry: raw, source })?;
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(LayerError::ReadToEnd)?;
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &Path,
        this_layer: &mut HashSet<PathBuf>,
    ) -> io::Result<()> {
        let Some(file_name) = name.file_name() else {
            // The layer's root itself ("./"): its mode is the image root's.
            let mode = entry.header().mode()? & 0o7777;
            self.dir_modes.insert(PathBuf::new(), mode);
            return Ok(());
        };
        let parent = name.parent().unwrap_or(Path::new(""));
        let file_name_str = file_name.to_string_lossy();
        if file_name_str == OPAQUE_MARKER {
            if let Some(dir) = self.resolve_dir(parent, false)? {
                for child in fs::read_dir(self.root.join(&dir))? {
                    let child = dir.join(child?.file_name());
                    if !this_layer.contains(&child) {
                        remove_any(&self.root.join(&child))?;
                    }
                }
            }
            return Ok(());
        }
        if let Some(hidden) = file_name_str.strip_prefix(WHITEOUT_PREFIX) {
            // `.wh..wh.*` other than the opaque marker are aufs bookkeeping: skipped.
            if !hidden.starts_with(".wh.") && !hidden.is_empty() {
                if let Some(dir) = self.resolve_dir(parent, false)? {
                    remove_any(&self.root.join(dir).join(hidden))?;
                }
            }
            return Ok(());
        }
        let dir = self
            .resolve_dir(parent, true)?
            .ok_or_else(|| io::Error::other("its folder could not be made"))?;
        let rel = dir.join(file_name);
        let target = self.root.join(&rel);
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode()? & 0o7777;
        let (uid, gid) = (header.uid()? as u32, header.gid()? as u32);
        let existing = fs::symlink_metadata(&target).ok();
        let keeps_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keeps_dir {
            remove_any(&target)?;
        }
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !keeps_dir {
                    fs::DirBuilder::new().mode(0o700).create(&target)?;
                }
                self.dir_modes.insert(rel.clone(), mode);
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)?;
                io::copy(entry, &mut file)?;
                drop(file);
                self.own(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            }
            T::Symlink => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("symlink without a target"))?;
                std::os::unix::fs::symlink(&link, &target)?;
                self.own(&target, uid, gid)?;
            }
            T::Link => {
                let link = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other("hard link without a target"))?;
                let link_name = normalize(&link).ok_or_else(|| {
                    io::Error::other(format!(
                        "hard link target {} leaves the image",
                        link.display()
                    ))
                })?;
                let source = self.resolve_entry(&link_name)?.ok_or_else(|| {
                    io::Error::other(format!(
                        "hard link target {} is not in the image",
                        link.display()
                    ))
                })?;
                if fs::symlink_metadata(self.root.join(&source))?.is_dir() {
                    return Err(io::Error::other("hard link to a folder"));
                }
                fs::hard_link(self.root.join(source), &target)?;
            }
            T::Fifo => {
                nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(mode))?;
                self.own(&target, uid, gid)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
            }
            T::Char | T::Block => {
                self.skipped_devices += 1;
                return Ok(());
            }
            // PAX and GNU long-name headers are consumed by the tar reader; anything
            // else (sockets have no tar type) is not part of a root filesystem.
            _ => return Ok(()),
        }
        this_layer.insert(rel);
        Ok(())
    }

    fn own(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        if self.keep_owners {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// Resolves folder `path` (relative, normalized) inside the root, following symlinks
    /// against the root. Missing folders are created when `create`, else None. Returns
    /// the resolved path relative to the root, made of real folders only.
    fn resolve_dir(&mut self, path: &Path, create: bool) -> io::Result<Option<PathBuf>> {
        let mut folders = StagingFolders {
            root: &self.root,
            dir_modes: &mut self.dir_modes,
            create,
        };
        match resolve::walk(&mut folders, PathBuf::new(), path) {
            Ok(rel) => Ok(Some(rel)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Resolves an existing entry (its folder followed, the entry itself not).
    fn resolve_entry(&mut self, path: &Path) -> io::Result<Option<PathBuf>> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        let Some(dir) = self.resolve_dir(parent, false)? else {
            return Ok(None);
        };
        let rel = dir.join(name);
        Ok(fs::symlink_metadata(self.root.join(&rel))
            .is_ok()
            .then_some(rel))
    }

    /// Gives every folder its final mode, deepest first (a folder made read-only last).
    pub fn finish(&mut self) -> io::Result<()> {
        for (rel, mode) in self.dir_modes.iter().rev() {
            let path = self.root.join(rel);
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
            }
        }
        Ok(())
    }
}

/// The staging root's folders looked up by name (the root is ours alone: nobody changes
/// a name between its check and its use). Missing folders are made when `create`, 0755
/// once the layers are applied.
struct StagingFolders<'u> {
    root: &'u Path,
    dir_modes: &'u mut BTreeMap<PathBuf, u32>,
    create: bool,
}

impl Lookup for StagingFolders<'_> {
    type Handle = PathBuf;

    fn lookup(&mut self, parent: &PathBuf, name: &OsStr, _: bool) -> io::Result<Entry<PathBuf>> {
        let rel = parent.join(name);
        let full = self.root.join(&rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => Ok(Entry::Dir(rel)),
            Ok(m) if m.file_type().is_symlink() => Ok(Entry::Symlink(fs::read_link(&full)?)),
            Ok(_) => Err(io::Error::other(format!(
                "{} is not a folder",
                rel.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.create => {
                fs::DirBuilder::new().mode(0o700).create(&full)?;
                self.dir_modes.insert(rel.clone(), 0o755);
                Ok(Entry::Dir(rel))
            }
            Err(e) => Err(e),
        }
    }
}

/// An entry name as a clean relative path: `./` and leading `/` dropped; None when it
/// has `..` (a layer never needs it).
fn normalize(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Removes a file, symlink or whole folder without following symlinks; gone is fine.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            make_writable(path);
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes every folder under `path` writable by its owner, so that a non-root caller can
/// remove a tree holding read-only folders.
pub fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(
            path,
            fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        );
    }
    if let Ok(children) = fs::read_dir(path) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&child.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    /// One tar entry: name (written raw, so `..` gets through), type, content or link.
    fn entry(name: &str, kind: tar::EntryType, data: &str) -> (tar::Header, Vec<u8>) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            h.set_link_name(data).unwrap();
            h.set_size(0);
        } else {
            h.set_size(data.len() as u64);
        }
        h.set_cksum();
        let body = if kind.is_file() {
            data.as_bytes().to_vec()
        } else {
            Vec::new()
        };
        (h, body)
    }

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let (h, body) = entry(name, *kind, data);
            b.append(&h, body.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn scratch(tag: &str) -> (Scratch, PathBuf) {
        let dir = Scratch::new(tag);
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        // As `ferry import` makes it: private.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        (dir, root)
    }

    use tar::EntryType as T;

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let (scratch, root) = scratch("escape");
        let mut u = Unpacker::new(root.clone(), false);
        u.apply_layer(
            layer(&[
                ("top", T::Symlink, "/"),
                ("up", T::Symlink, "../../../../.."),
                ("top/etc/", T::Directory, ""),
                ("top/etc/written", T::Regular, "a"),
                ("up/beside", T::Regular, "b"),
            ])
            .as_slice(),
        )
        .unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/written")).unwrap(), "a");
        assert_eq!(fs::read_to_string(root.join("beside")).unwrap(), "b");
        assert!(!scratch.join("beside").exists());
        // `..` in a name and hard links out of the image are refused.
        let e = u
            .apply_layer(layer(&[("../out", T::Regular, "x")]).as_slice())
            .unwrap_err();
        assert!(matches!(e, LayerError::LeavesImage(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "entry ../out: the path leaves the image ('..'); the layer is unsafe"
        );
        let e = u
            .apply_layer(layer(&[("hl", T::Link, "../../etc/passwd")]).as_slice())
            .unwrap_err();
        assert!(e.to_string().contains("leaves the image"), "{e}");
        assert!(!scratch.join("out").exists());
    }

    #[test]
    fn whiteouts_opaque_folders_and_replacements() {
        let (_scratch, root) = scratch("layers");
        let mut u = Unpacker::new(root.clone(), false);
        u.apply_layer(
            layer(&[
                ("a/", T::Directory, ""),
                ("a/gone", T::Regular, "1"),
                ("a/kept", T::Regular, "1"),
                ("o/", T::Directory, ""),
                ("o/lower", T::Regular, "1"),
                ("f", T::Regular, "file"),
                ("d/", T::Directory, ""),
                ("d/inner", T::Regular, "1"),
                ("link", T::Symlink, "a/kept"),
            ])
            .as_slice(),
        )
        .unwrap();
        u.apply_layer(
            layer(&[
                ("a/.wh.gone", T::Regular, ""),
                ("o/upper", T::Regular, "2"),
                ("o/.wh..wh..opq", T::Regular, ""),
                ("f/", T::Directory, ""),
                ("f/x", T::Regular, "2"),
                ("d", T::Regular, "now a file"),
                ("link", T::Regular, "not a link"),
            ])
            .as_slice(),
        )
        .unwrap();
        u.finish().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&root), 0o755, "the root without a ./ entry");
        assert_eq!(mode(&root.join("f")), 0o755);
        assert!(!root.join("a/gone").exists());
        assert!(root.join("a/kept").exists());
        let mut o: Vec<String> = fs::read_dir(root.join("o"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        o.sort();
        assert_eq!(o, vec!["upper"]);
        assert_eq!(fs::read_to_string(root.join("f/x")).unwrap(), "2");
        assert_eq!(fs::read_to_string(root.join("d")).unwrap(), "now a file");
        // Writing over a symlink replaces it; the file it pointed to is untouched.
        assert_eq!(fs::read_to_string(root.join("a/kept")).unwrap(), "1");
        assert_eq!(fs::read_to_string(root.join("link")).unwrap(), "not a link");
    }

    #[test]
    fn names_are_cleaned_and_dotdot_refused() {
        assert_eq!(normalize(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(normalize(Path::new("/etc/x")), Some(PathBuf::from("etc/x")));
        assert_eq!(normalize(Path::new("./")), Some(PathBuf::new()));
        assert_eq!(normalize(Path::new("a/../../etc")), None);
    }
}
