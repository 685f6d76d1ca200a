//! What srun, sbatch and salloc check before a job exists, so that a bad image or
//! option fails on the user's terminal instead of after the queue. The clients run as
//! the user on the submit host: everything here is a plain open with the user's own
//! rights, and only what is cheap and certain there is judged. The node checks it all
//! again (nothing here is believed there).
//!
//! - The image: opened and recognised as the node recognises it (`image::examine`), its
//!   superblock checked against the file's size, a pinned digest compared (answered by
//!   a digest cache the user can read, else hashed). An unpinned image is never hashed.
//!   A path missing on this host may exist only on the compute nodes: a warning, or an
//!   error where the site says `"submit_check": "strict"`.
//! - `--container-mounts` sources that exist here but the user cannot read: an error
//!   (one that does not exist here may exist on the nodes).
//! - `--container-save=FILE` whose folder is missing or not writable here: a warning.

use crate::digest::{self, Cache, Digest, DigestError, FileVersion};
use crate::error::Error;
use crate::image::{self, Format, ImageError, OpenedImage};
use crate::step_request::NO_CONTAINER;
use crate::superblock;
use crate::sys;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The site's `submit_check`: how much the clients check of the image at submission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SubmitCheck {
    /// No image check at submission (the options' syntax is still checked).
    Off,
    /// A path missing on the submit host is a warning; anything else wrong, an error.
    #[default]
    Warn,
    /// A path missing on the submit host is an error too (images on shared file systems).
    Strict,
}

impl SubmitCheck {
    pub fn parse(text: &str) -> Option<SubmitCheck> {
        match text {
            "off" => Some(SubmitCheck::Off),
            "warn" => Some(SubmitCheck::Warn),
            "strict" => Some(SubmitCheck::Strict),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SubmitCheck::Off => "off",
            SubmitCheck::Warn => "warn",
            SubmitCheck::Strict => "strict",
        }
    }

    /// What the mode does, for `ferry check-config`.
    pub fn meaning(self) -> &'static str {
        match self {
            SubmitCheck::Off => "images are checked on the nodes only",
            SubmitCheck::Warn => {
                "srun/sbatch refuse a bad image; one missing on the submit host is a warning"
            }
            SubmitCheck::Strict => {
                "srun/sbatch refuse a bad image and one missing on the submit host"
            }
        }
    }
}

/// A line for the user's terminal that does not stop the submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning(pub String);

/// Where a pinned image's digest may already be known, as far as the user can read.
#[derive(Default)]
pub struct DigestCaches {
    /// The node's root-owned cache: its entries answer only where the site lets users
    /// read them (or root submits).
    pub node: Option<Cache>,
    /// The user's own, written after hashing at submission so that the next submission
    /// of the same file version does not hash again. A false entry there fools only the
    /// user's own check: the nodes never read it.
    pub user: Option<Cache>,
}

impl DigestCaches {
    /// The node's cache folder and the user's own (`$XDG_CACHE_HOME/ferry/digests`,
    /// else `~/.cache/ferry/digests`) for the user running this process.
    pub fn for_caller(node_dir: &Path) -> DigestCaches {
        let uid = nix::unistd::getuid().as_raw();
        DigestCaches {
            node: Some(Cache::new(node_dir)),
            user: digest::user_cache_dir().map(|dir| Cache::of_user(dir, uid)),
        }
    }

    fn lookup(&self, version: &FileVersion) -> Option<Digest> {
        [&self.node, &self.user]
            .into_iter()
            .flatten()
            .find_map(|c| c.lookup(version))
    }
}

/// The name of the user running this process, for messages (the uid if it has none).
pub fn caller_name() -> String {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Checks the `--container` value (absolute, maybe `@sha256:` pinned, or `none`) as
/// `user` on this host. Ok(Some): submit, after showing the warning; Err: one line,
/// and no job.
pub fn check_image(
    image: &str,
    mode: SubmitCheck,
    user: &str,
    caches: &DigestCaches,
) -> Result<Option<Warning>, String> {
    if mode == SubmitCheck::Off || image == NO_CONTAINER {
        return Ok(None);
    }
    let (path, pin) = digest::split_pinned(image).map_err(|e| format!("--container={e}"))?;
    let path = Path::new(path);
    let opened = sys::open_path(path, image::OPEN_FLAGS);
    check_opened(path, opened, pin.as_ref(), mode, user, caches)
}

/// `check_image` for an image `user` already tried to open (`opened`): the result of
/// the open decides missing and unreadable, as on the node.
pub fn check_opened(
    path: &Path,
    opened: io::Result<OwnedFd>,
    pin: Option<&Digest>,
    mode: SubmitCheck,
    user: &str,
    caches: &DigestCaches,
) -> Result<Option<Warning>, String> {
    let image = match image::examine(path, opened, user) {
        Ok(image) => image,
        Err(Error::Image(ImageError::NotFound { .. })) => return missing(path, mode),
        Err(e) => return Err(e.to_string()),
    };
    check_superblock(&image)?;
    if let Some(expected) = pin {
        check_pin(&image, expected, caches)?;
    }
    Ok(None)
}

fn missing(path: &Path, mode: SubmitCheck) -> Result<Option<Warning>, String> {
    let path = path.display();
    match mode {
        SubmitCheck::Strict => Err(format!(
            "image {path}: not found on this host, and this site checks images at submission (submit_check: strict); check the path, or put the image where the submit hosts see it too"
        )),
        _ => Ok(Some(Warning(format!(
            "image {path}: not found on this host; submitting anyway, in case it exists on the compute nodes (check the path if it should be here)"
        )))),
    }
}

/// The image's own description of its size against the file: a copy cut short or a
/// damaged superblock would otherwise fail only when a node mounts it (the kernel and
/// squashfuse refuse the same). Reads at most 2 KiB.
fn check_superblock(image: &OpenedImage) -> Result<(), String> {
    let (start, room) = match image.format {
        Format::Directory => return Ok(()),
        Format::Sif { offset, size } => (offset, size),
        Format::Squashfs | Format::Ext => (0, u64::MAX),
    };
    let file = File::from(image.fd.try_clone().map_err(|e| image_error(image, e))?);
    let file_size = file.metadata().map_err(|e| image_error(image, e))?.len();
    let room = room.min(file_size.saturating_sub(start));
    let head = read_at(&file, start, superblock::PROBE_LEN).map_err(|e| image_error(image, e))?;
    let problem = match image.format {
        Format::Ext => ext_problem(&head, room),
        _ => squashfs_problem(&head, room),
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "image {}: {problem}; the file is not a complete image: copy or build it again",
            image.path.display()
        )),
    }
}

/// What is wrong with a SquashFS superblock at the start of `head`, in a space of
/// `room` bytes, as the kernel judges it (version 4.0, a block size of 4 KiB to 1 MiB,
/// a known compressor, the filesystem inside its space).
fn squashfs_problem(head: &[u8], room: u64) -> Option<String> {
    let Some(sb) = superblock::squashfs(head) else {
        return Some("its SquashFS superblock is cut short".into());
    };
    if sb.version != "4.0" {
        return Some(format!(
            "its SquashFS superblock says version {}, not 4.0 (damaged, or made by a very old mksquashfs)",
            sb.version
        ));
    }
    if !sb.block_size.is_power_of_two() || !(4096..=1 << 20).contains(&sb.block_size) {
        return Some(format!(
            "its SquashFS superblock is damaged (block size {})",
            sb.block_size
        ));
    }
    if sb.compression == "unknown" {
        return Some("its SquashFS superblock is damaged (unknown compressor)".into());
    }
    if sb.bytes_used < 96 || sb.bytes_used > room {
        return Some(format!(
            "its SquashFS says it is {} bytes long but the file holds {room}",
            sb.bytes_used
        ));
    }
    None
}

/// What is wrong with an ext2/3/4 superblock (1 KiB into `head`) for a file of `room`
/// bytes: a block size the kernel does not know, or more blocks than the file holds.
fn ext_problem(head: &[u8], room: u64) -> Option<String> {
    let Some(sb) = superblock::ext(head) else {
        return Some("its ext superblock is cut short".into());
    };
    if !(1024..=65536).contains(&sb.block_size) {
        return Some(format!(
            "its ext superblock is damaged (block size {})",
            sb.block_size
        ));
    }
    let size = sb.blocks.saturating_mul(sb.block_size);
    if sb.blocks == 0 || size > room {
        return Some(format!(
            "its ext filesystem says it is {size} bytes long but the file holds {room}"
        ));
    }
    None
}

/// A pinned image's bytes are the pinned ones: from a cache that knows this very
/// version of the file, else hashed now (the user asked for exactly these bytes; the
/// user's cache then remembers it for the next submission).
fn check_pin(image: &OpenedImage, expected: &Digest, caches: &DigestCaches) -> Result<(), String> {
    if image.format == Format::Directory {
        return Err(DigestError::PinnedFolder {
            path: image.path.clone(),
        }
        .to_string());
    }
    let file = File::from(image.fd.try_clone().map_err(|e| image_error(image, e))?);
    let version = FileVersion::of(&file).map_err(|e| image_error(image, e))?;
    let found = match caches.lookup(&version) {
        Some(known) => known,
        None => {
            let meta = file.metadata().map_err(|e| image_error(image, e))?;
            if let Some(problem) = crate::verify::sparse_problem(&image.path, &meta) {
                return Err(problem.to_string());
            }
            let hashed = digest::hash_file(&file, &mut |_| {}).map_err(|e| {
                format!(
                    "image {}: reading it to verify its digest: {e}",
                    image.path.display()
                )
            })?;
            digest::remember(caches.user.as_ref(), &file, &version, &hashed);
            hashed
        }
    };
    if found != *expected {
        return Err(DigestError::Mismatch {
            path: image.path.clone(),
            expected: expected.to_string(),
            actual: found.to_string(),
        }
        .to_string());
    }
    Ok(())
}

fn image_error(image: &OpenedImage, e: io::Error) -> String {
    ImageError::Read {
        path: image.path.clone(),
        source: e,
    }
    .to_string()
}

/// Up to `len` bytes at `offset` (fewer at the end of the file).
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// A `--container-mounts` source (absolute) that exists here but the user cannot read
/// is an error: the node opens it the same way, as the user. One that does not exist
/// here (or behind a folder the user cannot search) is left to the node: sources may
/// exist only on compute nodes.
pub fn check_mount_source(source: &Path) -> Result<(), String> {
    check_mount_source_opened(source, sys::open_path(source, image::OPEN_FLAGS).map(drop))
}

fn check_mount_source_opened(source: &Path, opened: io::Result<()>) -> Result<(), String> {
    match opened {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) && source_exists(source) => Err(format!(
            "--container-mounts: mount source {}: you cannot read it ({e}); make it readable to you, or leave it out",
            source.display()
        )),
        _ => Ok(()),
    }
}

/// True when the path itself can be looked up (its folders are searchable), whatever
/// its own mode: then a refused open is about the source, not a folder above it.
fn source_exists(source: &Path) -> bool {
    std::fs::symlink_metadata(source).is_ok()
}

/// `--container-save=FILE` (absolute): a warning when FILE's folder is missing or not
/// writable by the user here. The file is written on a compute node, which may see
/// another file system, so this never stops the job.
pub fn check_save_target(file: &Path) -> Option<Warning> {
    let folder = file.parent().filter(|f| !f.as_os_str().is_empty())?;
    let problem = match nix::unistd::access(
        folder,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    ) {
        Ok(()) => return None,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
            "does not exist on this host"
        }
        Err(_) => "is not writable by you on this host",
    };
    Some(Warning(format!(
        "--container-save={}: the folder {} {problem}; the image is written on the compute node at the end of the step, so make sure the folder exists and is writable there",
        file.display(),
        folder.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::hash_file;
    use crate::scratch::Scratch;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    const USER: &str = "alice";

    /// A folder with a SquashFS image (`image.sqfs`) and a digest cache of this user.
    struct Setup {
        dir: Scratch,
        image: PathBuf,
    }

    impl Setup {
        fn new(tag: &str) -> Setup {
            let dir = Scratch::new(tag);
            let root = dir.join("rootfs");
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::write(root.join("bin/hello"), "hello\n").unwrap();
            // Bytes that do not compress: the image is about 64 KiB, beyond its padding.
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let noise: Vec<u8> = (0..1 << 16)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(root.join("noise"), noise).unwrap();
            let image = dir.join("image.sqfs");
            test_support::mksquashfs(&root, &image, &["-all-root"]);
            let cache = dir.join("cache");
            std::fs::create_dir(&cache).unwrap();
            std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
            Setup { dir, image }
        }

        fn caches(&self) -> DigestCaches {
            DigestCaches {
                node: None,
                user: Some(Cache::of_this_user(self.dir.join("cache"))),
            }
        }

        fn check(&self, path: &Path, pin: Option<&Digest>, mode: SubmitCheck) -> CheckResult {
            let image = match pin {
                Some(pin) => format!("{}@{pin}", path.display()),
                None => path.display().to_string(),
            };
            check_image(&image, mode, USER, &self.caches())
        }

        fn digest(&self) -> Digest {
            hash_file(&File::open(&self.image).unwrap(), &mut |_| {}).unwrap()
        }

        fn version(&self) -> FileVersion {
            FileVersion::of(&File::open(&self.image).unwrap()).unwrap()
        }
    }

    type CheckResult = Result<Option<Warning>, String>;

    #[track_caller]
    fn refused(result: CheckResult, says: &[&str]) -> String {
        let line = result.expect_err("the check refuses it");
        assert!(!line.contains('\n'), "one line: {line}");
        for s in says {
            assert!(line.contains(s), "says {s:?}: {line}");
        }
        line
    }

    fn other_digest() -> Digest {
        Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap()
    }

    #[test]
    fn a_good_image_passes_in_every_mode() {
        let setup = Setup::new("submit-good");
        for mode in [SubmitCheck::Warn, SubmitCheck::Strict, SubmitCheck::Off] {
            assert_eq!(setup.check(&setup.image, None, mode), Ok(None));
        }
        assert_eq!(
            check_image("none", SubmitCheck::Strict, USER, &setup.caches()),
            Ok(None)
        );
    }

    #[test]
    fn a_missing_path_warns_is_refused_under_strict_and_skipped_when_off() {
        let setup = Setup::new("submit-missing");
        let missing = setup.dir.join("no/such.sqfs");
        let Ok(Some(Warning(line))) = setup.check(&missing, None, SubmitCheck::Warn) else {
            panic!("a warning for {}", missing.display());
        };
        assert!(line.contains(&missing.display().to_string()), "{line}");
        assert!(line.contains("not found on this host"), "{line}");
        refused(
            setup.check(&missing, None, SubmitCheck::Strict),
            &[&missing.display().to_string(), "submit_check: strict"],
        );
        assert_eq!(setup.check(&missing, None, SubmitCheck::Off), Ok(None));
        // Off skips everything about the image, a wrong pin included.
        assert_eq!(
            setup.check(&setup.image, Some(&other_digest()), SubmitCheck::Off),
            Ok(None)
        );
    }

    #[test]
    fn an_image_the_user_cannot_open_is_refused() {
        let setup = Setup::new("submit-unreadable");
        let denied = Err(io::Error::from_raw_os_error(libc::EACCES));
        let result = check_opened(
            &setup.image,
            denied,
            None,
            SubmitCheck::Warn,
            USER,
            &setup.caches(),
        );
        refused(result, &["image.sqfs", "alice cannot read it", "chmod"]);
    }

    #[test]
    fn files_that_are_not_images_are_refused() {
        let setup = Setup::new("submit-not-image");
        let text = setup.dir.join("job.sh");
        std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
        let empty = setup.dir.join("empty.sqfs");
        std::fs::write(&empty, "").unwrap();
        for file in [&text, &empty] {
            refused(
                setup.check(file, None, SubmitCheck::Warn),
                &[&file.display().to_string(), "not a container image"],
            );
        }
        // A folder that is not a root filesystem, and a FIFO (never waited on).
        let folder = setup.dir.join("folder");
        std::fs::create_dir(&folder).unwrap();
        refused(
            setup.check(&folder, None, SubmitCheck::Warn),
            &["not a root filesystem"],
        );
        let fifo = setup.dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused(
            setup.check(&fifo, None, SubmitCheck::Warn),
            &["not a container image"],
        );
    }

    #[test]
    fn a_squashfs_cut_short_or_with_a_damaged_superblock_is_refused() {
        let setup = Setup::new("submit-corrupt");
        let bytes = std::fs::read(&setup.image).unwrap();
        let cut = setup.dir.join("cut.sqfs");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        refused(
            setup.check(&cut, None, SubmitCheck::Warn),
            &[
                "cut.sqfs",
                "bytes long but the file holds",
                "copy or build it again",
            ],
        );
        let header_only = setup.dir.join("header.sqfs");
        std::fs::write(&header_only, &bytes[..40]).unwrap();
        refused(
            setup.check(&header_only, None, SubmitCheck::Warn),
            &["superblock is cut short"],
        );
        let mut damaged = bytes.clone();
        damaged[12..16].copy_from_slice(&12345u32.to_le_bytes());
        let bad_block = setup.dir.join("block.sqfs");
        std::fs::write(&bad_block, &damaged).unwrap();
        refused(
            setup.check(&bad_block, None, SubmitCheck::Warn),
            &["damaged (block size 12345)"],
        );
        let mut old = bytes.clone();
        old[28..30].copy_from_slice(&3u16.to_le_bytes());
        let old_version = setup.dir.join("v3.sqfs");
        std::fs::write(&old_version, &old).unwrap();
        refused(
            setup.check(&old_version, None, SubmitCheck::Warn),
            &["version 3.0"],
        );
    }

    #[test]
    fn a_sif_whose_squashfs_is_cut_short_is_refused() {
        use test_support::sif_builder::{build, partition, FS_SQUASHFS, PART_PRIMARY_SYSTEM};
        let setup = Setup::new("submit-sif");
        let bytes = std::fs::read(&setup.image).unwrap();
        let whole = setup.dir.join("whole.sif");
        std::fs::write(
            &whole,
            build(&[partition(FS_SQUASHFS, PART_PRIMARY_SYSTEM, bytes.clone())]),
        )
        .unwrap();
        assert_eq!(setup.check(&whole, None, SubmitCheck::Warn), Ok(None));
        let cut = setup.dir.join("cut.sif");
        // Whole 4 KiB blocks, as the kernel needs: only the SquashFS inside is short.
        let half = bytes[..bytes.len() / 2 / 4096 * 4096].to_vec();
        std::fs::write(
            &cut,
            build(&[partition(FS_SQUASHFS, PART_PRIMARY_SYSTEM, half)]),
        )
        .unwrap();
        refused(
            setup.check(&cut, None, SubmitCheck::Warn),
            &["cut.sif", "bytes long but the file holds"],
        );
    }

    #[test]
    fn an_ext_image_larger_than_its_file_is_refused() {
        let setup = Setup::new("submit-ext");
        let image = setup.dir.join("fs.img");
        let mkfs = test_support::find_tool("mkfs.ext4")
            .unwrap_or_else(|| test_support::missing_prerequisite("mkfs.ext4 (e2fsprogs)"));
        let out = std::process::Command::new(mkfs)
            .args(["-q", "-F"])
            .arg(&image)
            .arg("4M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(setup.check(&image, None, SubmitCheck::Warn), Ok(None));
        File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        refused(
            setup.check(&image, None, SubmitCheck::Warn),
            &["fs.img", "ext filesystem says it is 4194304 bytes long"],
        );
    }

    #[test]
    fn a_pinned_image_is_hashed_once_then_answered_by_the_cache() {
        let setup = Setup::new("submit-pinned");
        let right = setup.digest();
        assert_eq!(
            setup.check(&setup.image, Some(&right), SubmitCheck::Warn),
            Ok(None)
        );
        // The user's cache remembered this version of the file.
        let caches = setup.caches();
        assert_eq!(caches.lookup(&setup.version()), Some(right.clone()));
        refused(
            setup.check(&setup.image, Some(&other_digest()), SubmitCheck::Warn),
            &["digest mismatch", &right.to_string()],
        );
        // What the cache says is what counts: a digest the bytes do not have, stored
        // for this version, is accepted (so nothing was hashed), and the real one is not.
        let stored = other_digest();
        caches
            .user
            .as_ref()
            .unwrap()
            .store(&setup.version(), &stored)
            .unwrap();
        assert_eq!(
            setup.check(&setup.image, Some(&stored), SubmitCheck::Warn),
            Ok(None)
        );
        refused(
            setup.check(&setup.image, Some(&right), SubmitCheck::Warn),
            &["digest mismatch"],
        );
    }

    #[test]
    fn a_wrong_pin_is_refused_without_a_cache() {
        let setup = Setup::new("submit-wrong-pin");
        let image = format!("{}@{}", setup.image.display(), other_digest());
        refused(
            check_image(&image, SubmitCheck::Warn, USER, &DigestCaches::default()),
            &["image.sqfs", "digest mismatch", "expected sha256:0000"],
        );
        refused(
            check_image(
                &format!("{}@sha256:abc", setup.image.display()),
                SubmitCheck::Warn,
                USER,
                &DigestCaches::default(),
            ),
            &["--container=", "64 hex digits"],
        );
    }

    #[test]
    fn an_unpinned_image_is_never_hashed() {
        let setup = Setup::new("submit-unpinned");
        // 4 TiB, nearly all holes: hashing it would take hours.
        File::options()
            .write(true)
            .open(&setup.image)
            .unwrap()
            .set_len(4 << 40)
            .unwrap();
        let start = Instant::now();
        assert_eq!(setup.check(&setup.image, None, SubmitCheck::Warn), Ok(None));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(setup.caches().lookup(&setup.version()), None);
        // Pinned, the same file is refused at once as too sparse to verify.
        refused(
            setup.check(&setup.image, Some(&other_digest()), SubmitCheck::Warn),
            &["sparse file"],
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_root_folder_passes_and_cannot_be_pinned() {
        let setup = Setup::new("submit-folder");
        let root = setup.dir.join("rootfs");
        assert_eq!(setup.check(&root, None, SubmitCheck::Strict), Ok(None));
        refused(
            setup.check(&root, Some(&other_digest()), SubmitCheck::Warn),
            &["a root folder has no digest to pin"],
        );
    }

    #[test]
    fn a_mount_source_that_exists_but_is_unreadable_is_refused() {
        let setup = Setup::new("submit-mounts");
        let denied = || Err(io::Error::from_raw_os_error(libc::EACCES));
        let line = check_mount_source_opened(&setup.image, denied()).unwrap_err();
        assert!(
            line.starts_with("--container-mounts: ") && line.contains("you cannot read it"),
            "{line}"
        );
        // Refused behind a folder the user cannot search, or missing here: the node says.
        let elsewhere = setup.dir.join("only-on-nodes/data");
        assert_eq!(check_mount_source_opened(&elsewhere, denied()), Ok(()));
        assert_eq!(check_mount_source(&elsewhere), Ok(()));
        assert_eq!(check_mount_source(&setup.image), Ok(()));
        assert_eq!(check_mount_source(&setup.dir), Ok(()));
    }

    #[test]
    fn a_save_target_in_a_missing_folder_is_a_warning() {
        let setup = Setup::new("submit-save");
        assert_eq!(check_save_target(&setup.dir.join("out.sqfs")), None);
        let Some(Warning(line)) = check_save_target(&setup.dir.join("no/out.sqfs")) else {
            panic!("a warning");
        };
        assert!(
            line.starts_with("--container-save=") && line.contains("does not exist on this host"),
            "{line}"
        );
    }
}
