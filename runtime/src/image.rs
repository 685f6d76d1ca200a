//! Opening an image with the user's rights and telling what it is, by content.

use crate::error::{Error, Result};
use crate::policy::PolicyError;
use crate::site::{ImagePolicy, Untrusted};
use crate::{sif, superblock, sys};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What is wrong with an image itself: missing, unreadable, or not one ferry runs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {path}: not found; check the path (it must exist on the compute node)")]
    NotFound { path: PathBuf },
    #[error("image {path}: {user} cannot read it ({source}); make it readable (chmod o+r, or a group you are in)")]
    Unreadable {
        path: PathBuf,
        user: String,
        source: std::io::Error,
    },
    #[error("image {path}: not a container image; ferry accepts SquashFS files, Apptainer/Singularity SIF files, ext2/3/4 image files and root-filesystem folders (make one with mksquashfs ROOTFS IMAGE.sqfs)")]
    NotAnImage { path: PathBuf },
    #[error("image {path}: broken SIF file ({reason}); copy or build it again (apptainer build)")]
    SifBroken {
        path: PathBuf,
        reason: sif::SifError,
    },
    #[error("image {path}: SIF file has no primary system partition (no root filesystem to run); build a runnable image (apptainer build) or use a SquashFS image")]
    SifNoRoot { path: PathBuf },
    #[error("image {path}: the SIF's root partition ends the file without padding to 4096 bytes, which the kernel needs to mount it; pad the file (truncate -s %4096 {path}) or build it again")]
    SifPartitionTail { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is encrypted, which ferry does not support; build an unencrypted SIF (apptainer build without --encrypt)")]
    SifEncrypted { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is ext3, which ferry does not run from a SIF; rebuild it as SquashFS (apptainer build new.sif {path})")]
    SifExt3 { path: PathBuf },
    #[error("image {path}: the SIF root filesystem is {fs}, which ferry does not run; rebuild it with a SquashFS root (apptainer build)")]
    SifUnsupportedFs { path: PathBuf, fs: &'static str },
    #[error("image {path}: folder is not a root filesystem (no bin/ or usr/bin/ in it); point to the folder that holds bin, etc and usr")]
    NotARootfs { path: PathBuf },
    #[error("image {path}: stat: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image {path}: reading it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("duplicating the image descriptor: {0}")]
    Duplicate(std::io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Squashfs,
    /// An Apptainer/Singularity SIF file: its root SquashFS lies at `offset`, `size` long.
    Sif {
        offset: u64,
        size: u64,
    },
    /// An ext2/3/4 filesystem image (Singularity 2's `.img`).
    Ext,
    Directory,
}

impl Format {
    pub fn name(&self) -> &'static str {
        match self {
            Format::Squashfs => "squashfs",
            Format::Sif { .. } => "sif",
            Format::Ext => "ext",
            Format::Directory => "directory",
        }
    }
}

#[derive(Debug)]
pub struct OpenedImage {
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub format: Format,
}

/// How an image is opened: for reading, never waiting (a FIFO or a device does not
/// block the open), never becoming a controlling terminal.
pub const OPEN_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK;

/// Opens `path` with the credentials currently in force and detects its format from
/// its first bytes.
pub fn open(path: &Path, user_name: &str) -> Result<OpenedImage> {
    examine(path, sys::open_path(path, OPEN_FLAGS), user_name)
}

/// Detects the format of an image `user_name` opened (see `as_user`), or says why the
/// open failed.
pub fn examine(
    path: &Path,
    opened: std::io::Result<OwnedFd>,
    user_name: &str,
) -> Result<OpenedImage> {
    let fd = opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => ImageError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ImageError::Unreadable {
            path: path.to_path_buf(),
            user: user_name.to_string(),
            source: e,
        },
    })?;
    let st = sys::fstat(fd.as_fd()).map_err(|source| ImageError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    let format = if sys::is_dir(&st) {
        if !looks_like_rootfs(&fd) {
            return Err(ImageError::NotARootfs {
                path: path.to_path_buf(),
            }
            .into());
        }
        Format::Directory
    } else if sys::is_regular(&st) {
        let file = std::fs::File::from(fd.try_clone().map_err(ImageError::Duplicate)?);
        probe(&file, path)?
    } else {
        return Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
        }
        .into());
    };
    Ok(OpenedImage {
        path: path.to_path_buf(),
        fd,
        format,
    })
}

/// The kind of image file its first bytes (`PROBE_LEN` of them) announce, before
/// anything is checked: what `probe` then checks, and what `ferry inspect` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    Sif,
    Squashfs,
    Ext,
}

/// Tells the kind of an image file from its first bytes; None: not an image ferry knows.
pub fn identify(head: &[u8]) -> Option<Magic> {
    if sif::is_sif(head) {
        Some(Magic::Sif)
    } else if superblock::is_squashfs(head) {
        Some(Magic::Squashfs)
    } else if superblock::is_ext(head) {
        Some(Magic::Ext)
    } else {
        None
    }
}

/// Bytes `identify` and `probe` look at.
pub const PROBE_LEN: usize = superblock::PROBE_LEN;

/// Tells an image file's format from its content (never its name), and whether ferry
/// can mount it: the one verdict `ferry run`, the plugin and `ferry inspect` give.
pub fn probe(file: &File, path: &Path) -> Result<Format> {
    let file_size = file
        .metadata()
        .map_err(|source| ImageError::Stat {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let head = read_head(file, PROBE_LEN).map_err(|e| read_err(path, e))?;
    match identify(&head) {
        Some(Magic::Sif) => Ok(probe_sif(file, file_size, &head, path)?),
        Some(Magic::Squashfs) => Ok(Format::Squashfs),
        Some(Magic::Ext) => Ok(Format::Ext),
        None => Err(ImageError::NotAnImage {
            path: path.to_path_buf(),
        }
        .into()),
    }
}

/// A SIF file is runnable when its root partition is a SquashFS that the file holds
/// whole, to the kernel's last block.
fn probe_sif(
    file: &File,
    file_size: u64,
    head: &[u8],
    path: &Path,
) -> std::result::Result<Format, ImageError> {
    let found = read_sif(file, file_size, head).map_err(|e| sif_err(path, e))?;
    match found.root() {
        sif::Root::Squashfs { offset, size } => {
            // Inside the file (checked by the parser); the superblock is 96 bytes.
            let magic = read_at(file, offset, 4).unwrap_or_default();
            if size < 96 || !superblock::is_squashfs(&magic) {
                return Err(sif_err(
                    path,
                    sif::SifError::Corrupt(format!(
                        "the root partition at byte {offset} holds no SquashFS"
                    )),
                ));
            }
            // The kernel reads SquashFS in 4096-byte blocks (mksquashfs pads its
            // output to that); a device that ends mid-block fails with EIO. Round
            // up: SquashFS never uses bytes past its own end, so what follows
            // (padding, the next object) is never read as data. The file must hold
            // that last block.
            let padded_size = size.div_ceil(4096).saturating_mul(4096);
            if offset.saturating_add(padded_size) > file_size {
                return Err(ImageError::SifPartitionTail {
                    path: path.to_path_buf(),
                });
            }
            Ok(Format::Sif {
                offset,
                size: padded_size,
            })
        }
        sif::Root::Encrypted => Err(ImageError::SifEncrypted {
            path: path.to_path_buf(),
        }),
        sif::Root::Ext3 => Err(ImageError::SifExt3 {
            path: path.to_path_buf(),
        }),
        sif::Root::OtherFs(fs) => Err(ImageError::SifUnsupportedFs {
            path: path.to_path_buf(),
            fs: sif::fs_name(fs),
        }),
        sif::Root::Missing => Err(ImageError::SifNoRoot {
            path: path.to_path_buf(),
        }),
    }
}

/// Parses a SIF's header and descriptor table (`head`: the file's first bytes).
pub fn read_sif(
    file: &File,
    size: u64,
    head: &[u8],
) -> std::result::Result<sif::Sif, sif::SifError> {
    let end = sif::table_end(head, size)?;
    let table =
        read_at(file, 0, end as usize).map_err(|e| sif::SifError::Truncated(e.to_string()))?;
    sif::parse(&table, size)
}

/// Up to `len` bytes from the start (fewer when the file is shorter).
pub fn read_head(file: &File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn read_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

fn read_err(path: &Path, source: std::io::Error) -> ImageError {
    ImageError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn sif_err(path: &Path, reason: sif::SifError) -> ImageError {
    ImageError::SifBroken {
        path: path.to_path_buf(),
        reason,
    }
}

fn looks_like_rootfs(dir: &OwnedFd) -> bool {
    ["bin", "usr/bin"].iter().any(|p| {
        sys::openat(
            Some(dir.as_fd()),
            OsStr::new(p),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .is_ok()
    })
}

/// How an opened image becomes the container's lower layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The kernel's SquashFS driver on a loop device.
    Kernel,
    /// squashfuse, running with the user's rights.
    Fuse,
    /// A bind of a root folder (no filesystem code parses anything).
    Bind,
}

/// Applies the site's image policy to an opened image: trusted images and root folders
/// need no filesystem code of their own; other files follow `policy.untrusted`. Under
/// `fuse`, SquashFS (a SIF's too) goes to squashfuse; ext has no FUSE reader here, so
/// an untrusted ext image is refused with what to do instead.
pub fn method_for(image: &OpenedImage, policy: &ImagePolicy) -> Result<Method> {
    let trusted = || is_trusted(image, &policy.trusted_dirs);
    match (image.format, policy.untrusted) {
        (Format::Directory, Untrusted::Deny) if !trusted() => Err(denied(image, policy)),
        (Format::Directory, _) => Ok(Method::Bind),
        (_, Untrusted::Kernel) => Ok(Method::Kernel),
        _ if trusted() => Ok(Method::Kernel),
        (_, Untrusted::Deny) => Err(denied(image, policy)),
        (Format::Squashfs | Format::Sif { .. }, Untrusted::Fuse) => Ok(Method::Fuse),
        (Format::Ext, Untrusted::Fuse) => Err(PolicyError::ExtNeedsTrust {
            path: image.path.clone(),
            trusted: policy.trusted_list(),
        }
        .into()),
    }
}

fn denied(image: &OpenedImage, policy: &ImagePolicy) -> Error {
    PolicyError::ImageDenied {
        path: image.path.clone(),
        hint: policy.where_trusted(),
    }
    .into()
}

/// True when the open image lies in a trusted folder and nobody but root can change
/// it: the file (or folder) and every folder above it are owned by root and not
/// writable by group or others, and the path still names the very file we opened.
/// Checked on each use: an admin's mistake (a group-writable folder) or a later
/// chmod makes the images untrusted again.
pub fn is_trusted(image: &OpenedImage, trusted_dirs: &[PathBuf]) -> bool {
    let Ok(opened) = sys::fstat(image.fd.as_fd()) else {
        return false;
    };
    let Ok(real) = std::fs::read_link(sys::fd_path(image.fd.as_fd())) else {
        return false;
    };
    let inside = trusted_dirs
        .iter()
        .any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(&d) && real != d));
    inside
        && std::fs::symlink_metadata(&real)
            .is_ok_and(|m| m.dev() == opened.st_dev && m.ino() == opened.st_ino)
        && not_root_only(Path::new("/"), &real).is_none()
}

/// The first of `path` and the folders above it (as seen under `root`, the node's `/`)
/// that someone other than root could change: not owned by root, or writable by group
/// or others (a symlink's own mode means nothing: its owner counts). None: all root's.
pub fn not_root_only(root: &Path, path: &Path) -> Option<PathBuf> {
    path.ancestors().find_map(|p| {
        let at = crate::resolve::under(root, p);
        let safe = std::fs::symlink_metadata(at)
            .is_ok_and(|m| m.uid() == 0 && (m.file_type().is_symlink() || m.mode() & 0o022 == 0));
        (!safe).then(|| p.to_path_buf())
    })
}
