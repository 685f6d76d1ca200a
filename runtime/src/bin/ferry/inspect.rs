//! `ferry inspect`: what an image is (format found by content, size, SquashFS
//! compression, SIF descriptors, ext superblock, folder contents) and the image config
//! stored in it, as text or JSON. Needs no root: it reads only what the caller can read,
//! and looks inside image files with unsquashfs and debugfs, never by mounting.
//!
//! Whether the image is runnable is `ferry run`'s own verdict: the library's
//! `image::examine` (format and mountability) and `ImageConfig::check_stored` (the
//! stored config), with run's words.

use ferry_runtime::image::{self, Magic};
use ferry_runtime::image_config::{ImageConfig, CONFIG_PATH, MAX_CONFIG_SIZE};
use ferry_runtime::save::{ParentImage, PARENT_PATH};
use ferry_runtime::{sif, superblock};
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

/// Bytes of a stored config read at most (one more than any valid config).
const MAX_CONFIG: usize = MAX_CONFIG_SIZE as usize;
const NOT_VERIFIED: &str = "signed (signature not verified by ferry)";

#[derive(Serialize)]
struct Report {
    path: String,
    format: &'static str,
    /// File size in bytes (absent for folders).
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// Whether `ferry run`/`--container` accept it, and if not, why.
    runnable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    squashfs: Option<superblock::Squashfs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sif: Option<SifReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ext: Option<superblock::Ext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    folder: Option<FolderReport>,
    /// The stored image config (`/.ferry/image.json`), when the image has one.
    config: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    /// The image this one was saved from (`/.ferry/parent.json`, see `save`).
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<ParentImage>,
}

#[derive(Serialize)]
struct SifReport {
    header: sif::Header,
    /// "signed (signature not verified by ferry)" or "unsigned".
    signature: &'static str,
    /// Id of the descriptor ferry mounts as the root filesystem.
    root_partition: Option<u32>,
    descriptors: Vec<DescriptorReport>,
}

#[derive(Serialize)]
struct DescriptorReport {
    id: u32,
    data_type: String,
    type_name: &'static str,
    offset: u64,
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fs: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signs: Option<u32>,
}

#[derive(Serialize)]
struct FolderReport {
    /// Top-level entries, sorted.
    entries: Vec<String>,
    /// Has bin/ or usr/bin/ (what ferry requires of a root folder).
    root_filesystem: bool,
}

pub fn inspect(path: &Path, json: bool) -> Result<(), String> {
    let report = examine(path)?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn examine(path: &Path) -> Result<Report, String> {
    let shown = path.display().to_string();
    // Opened as `ferry run` opens it: a FIFO or a device does not block the open.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(image::OPEN_FLAGS & !libc::O_ACCMODE)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("image {shown}: not found; check the path"),
            _ => format!("image {shown}: cannot read it ({e}); make it readable to you"),
        })?;
    let meta = file.metadata().map_err(|e| format!("image {shown}: {e}"))?;
    let mut report = Report {
        path: shown.clone(),
        format: "",
        size: None,
        runnable: true,
        problem: None,
        squashfs: None,
        sif: None,
        ext: None,
        folder: None,
        config: None,
        config_error: None,
        parent: None,
    };
    // What `ferry run` would say about it (the same code).
    let verdict = file
        .try_clone()
        .map(Into::into)
        .map_err(|e| format!("image {shown}: {e}"))
        .map(|fd| image::examine(path, Ok(fd), ""))?;
    if let Err(e) = &verdict {
        report.runnable = false;
        report.problem = Some(e.to_string());
    }
    if meta.is_dir() {
        report.format = "directory";
        report.folder = Some(folder_report(path)?);
        set_config(&mut report, path, file_in_folder(path, CONFIG_PATH));
        report.parent = parent(file_in_folder(path, PARENT_PATH));
        return Ok(report);
    }
    if !meta.is_file() {
        return Err(format!(
            "image {shown}: not a regular file or folder; ferry accepts SquashFS, SIF and ext2/3/4 image files and root-filesystem folders"
        ));
    }
    report.size = Some(meta.len());
    let head = image::read_head(&file, image::PROBE_LEN)
        .map_err(|e| format!("image {shown}: reading it: {e}"))?;
    match image::identify(&head) {
        Some(Magic::Sif) => {
            let parsed = image::read_sif(&file, meta.len(), &head).map_err(|e| {
                format!("image {shown}: broken SIF file ({e}); copy or build it again")
            })?;
            report.format = "sif";
            let root = match parsed.root() {
                sif::Root::Squashfs { offset, .. } => Some(offset),
                _ => None,
            };
            report.squashfs = root.and_then(|offset| {
                let mut sb = vec![0u8; 96];
                file.read_exact_at(&mut sb, offset).ok()?;
                superblock::squashfs(&sb)
            });
            report.sif = Some(sif_report(&parsed));
            if let Ok(image::OpenedImage {
                format: image::Format::Sif { offset, .. },
                ..
            }) = &verdict
            {
                set_config(
                    &mut report,
                    path,
                    file_in_squashfs(path, *offset, CONFIG_PATH),
                );
                report.parent = parent(file_in_squashfs(path, *offset, PARENT_PATH));
            }
        }
        Some(Magic::Squashfs) => {
            report.format = "squashfs";
            report.squashfs = superblock::squashfs(&head);
            set_config(&mut report, path, file_in_squashfs(path, 0, CONFIG_PATH));
            report.parent = parent(file_in_squashfs(path, 0, PARENT_PATH));
        }
        Some(Magic::Ext) => {
            report.format = "ext";
            report.ext = superblock::ext(&head);
            set_config(&mut report, path, file_in_ext(path, CONFIG_PATH));
            report.parent = parent(file_in_ext(path, PARENT_PATH));
        }
        None => {
            return Err(verdict
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| format!("image {shown}: not a container image")))
        }
    }
    Ok(report)
}

fn sif_report(parsed: &sif::Sif) -> SifReport {
    let root = parsed.descriptors.iter().find(|d| {
        matches!(d.extra, sif::Extra::Partition { part, .. } if part == sif::PART_PRIMARY_SYSTEM)
    });
    SifReport {
        header: parsed.header.clone(),
        signature: if parsed.is_signed() {
            NOT_VERIFIED
        } else {
            "unsigned"
        },
        root_partition: root.map(|d| d.id),
        descriptors: parsed
            .descriptors
            .iter()
            .map(|d| {
                let mut r = DescriptorReport {
                    id: d.id,
                    data_type: format!("{:#06x}", d.data_type),
                    type_name: sif::data_type_name(d.data_type),
                    offset: d.offset,
                    size: d.size,
                    name: d.name.clone(),
                    fs: None,
                    partition: None,
                    arch: None,
                    hash: None,
                    signs: None,
                };
                match &d.extra {
                    sif::Extra::Partition { fs, part, arch } => {
                        r.fs = Some(sif::fs_name(*fs));
                        r.partition = Some(sif::part_name(*part));
                        r.arch = Some(arch.clone());
                    }
                    sif::Extra::Signature { hash, .. } => {
                        r.hash = Some(sif::hash_name(*hash));
                        r.signs = Some(d.linked_id);
                    }
                    sif::Extra::Other => {}
                }
                r
            })
            .collect(),
    }
}

fn folder_report(path: &Path) -> Result<FolderReport, String> {
    let mut entries: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| format!("image {}: cannot list it ({e})", path.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let root_filesystem = ["bin", "usr/bin"].iter().any(|p| path.join(p).is_dir());
    Ok(FolderReport {
        entries,
        root_filesystem,
    })
}

/// The stored config's bytes, if the image has the file; Err: it could not be read.
type Config = Result<Option<Vec<u8>>, String>;

/// Shows the stored config, and judges it as `ferry run` does: a config run refuses
/// makes the image not runnable, for run's reason.
fn set_config(report: &mut Report, image: &Path, found: Config) {
    let bytes = match found {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return,
        Err(e) => {
            report.config_error = Some(e);
            return;
        }
    };
    report.config = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object);
    if let Err(why) = ImageConfig::check_stored(&bytes, image) {
        let why = why.to_string();
        report.config_error = Some(why.clone());
        if report.runnable {
            report.runnable = false;
            report.problem = Some(why);
        }
    }
}

/// The parent record of a saved image; one that does not parse is not shown.
fn parent(found: Config) -> Option<ParentImage> {
    serde_json::from_slice(&found.ok()??).ok()
}

/// In a root folder: the file `/.ferry/NAME` itself, never through a symlink (the
/// folder is user data).
fn file_in_folder(root: &Path, wanted: &str) -> Config {
    let dir = root.join(".ferry");
    match std::fs::symlink_metadata(&dir) {
        Err(_) => return Ok(None),
        Ok(m) if !m.is_dir() => return Ok(None),
        Ok(_) => {}
    }
    let name = Path::new(wanted).file_name().unwrap_or_default();
    let file = dir.join(name);
    match std::fs::symlink_metadata(&file) {
        Err(_) => Ok(None),
        Ok(m) if !m.is_file() => Err(format!("{wanted} is not a regular file")),
        Ok(_) => {
            let mut bytes = Vec::new();
            File::open(&file)
                .and_then(|f| f.take(MAX_CONFIG as u64 + 1).read_to_end(&mut bytes))
                .map_err(|e| format!("reading {wanted}: {e}"))?;
            Ok(Some(bytes))
        }
    }
}

/// In a SquashFS (at `offset` in the file: a SIF's partition) through unsquashfs.
fn file_in_squashfs(image: &Path, offset: u64, wanted: &str) -> Config {
    let mut cmd = Command::new(tool("unsquashfs"));
    cmd.args(["-o", &offset.to_string(), "-cat"])
        .arg(image)
        .arg(wanted);
    let out = bounded_output(cmd)
        .map_err(|e| format!("cannot run unsquashfs ({e}); install squashfs-tools"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || out.stdout.len() > MAX_CONFIG {
        return Ok(Some(out.stdout));
    }
    if stderr.contains("no matches for") {
        return Ok(None);
    }
    Err(format!("unsquashfs failed: {}", last_line(&stderr)))
}

/// In an ext image through debugfs (read-only unless -w, which is never given).
fn file_in_ext(image: &Path, wanted: &str) -> Config {
    let mut cmd = Command::new(tool("debugfs"));
    cmd.arg("-R").arg(format!("cat {wanted}")).arg(image);
    let out =
        bounded_output(cmd).map_err(|e| format!("cannot run debugfs ({e}); install e2fsprogs"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") {
        return Ok(None);
    }
    if out.stdout.len() > MAX_CONFIG {
        return Ok(Some(out.stdout));
    }
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!("debugfs failed: {}", last_line(&stderr)));
    }
    Ok(Some(out.stdout))
}

/// Runs `cmd` and keeps at most MAX_CONFIG + 1 bytes of its output (a huge file in an
/// image must not fill memory): past that, the tool is stopped.
fn bounded_output(mut cmd: Command) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let limit = MAX_CONFIG as u64 + 1;
    if let Some(out) = child.stdout.take() {
        out.take(limit).read_to_end(&mut stdout)?;
    }
    if stdout.len() as u64 >= limit {
        let _ = child.kill();
    }
    if let Some(err) = child.stderr.take() {
        err.take(limit).read_to_end(&mut stderr)?;
    }
    let status = child.wait()?;
    Ok(std::process::Output {
        status,
        stdout,
        stderr,
    })
}

/// A tool on PATH, else in the sbin folders a user's PATH often lacks (debugfs).
fn tool(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

fn print_text(r: &Report) {
    let row = |key: &str, value: String| println!("{:<14}{value}", format!("{key}:"));
    row("image", r.path.clone());
    let format = match r.format {
        "squashfs" => "SquashFS".to_string(),
        "sif" => "SIF (Apptainer/Singularity)".to_string(),
        "ext" => match &r.ext {
            Some(e) => format!("{} filesystem image", e.kind),
            None => "ext filesystem image".to_string(),
        },
        _ => "root folder".to_string(),
    };
    row("format", format);
    if let Some(size) = r.size {
        row("size", format!("{size} bytes ({})", human(size)));
    }
    row(
        "runnable",
        match &r.problem {
            None => "yes".to_string(),
            Some(p) => format!("no: {p}"),
        },
    );
    if let Some(s) = &r.sif {
        let h = &s.header;
        row(
            "sif version",
            format!(
                "{} (arch {} {}, uuid {})",
                h.version,
                h.arch,
                sif::arch_name(&h.arch),
                h.uuid
            ),
        );
        row(
            "descriptors",
            format!(
                "{} used of {} (table at {}, data at {}, {} bytes)",
                s.descriptors.len(),
                h.descriptors_total,
                h.descriptors_offset,
                h.data_offset,
                h.data_size
            ),
        );
        for d in &s.descriptors {
            let mut line = format!(
                "  id {:<3} {:<16} offset {:<10} size {:<10}",
                d.id, d.type_name, d.offset, d.size
            );
            if let (Some(fs), Some(part)) = (d.fs, d.partition) {
                line.push_str(&format!(" fs {fs}, {part} partition"));
                if let Some(arch) = &d.arch {
                    line.push_str(&format!(", {}", sif::arch_name(arch)));
                }
            }
            if let (Some(hash), Some(signs)) = (d.hash, d.signs) {
                line.push_str(&format!(" {hash}, signs id {signs}"));
            }
            if s.root_partition == Some(d.id) {
                line.push_str(" (root filesystem)");
            }
            if !d.name.is_empty() {
                line.push_str(&format!(" name {:?}", d.name));
            }
            println!("{}", line.trim_end());
        }
        row("signature", s.signature.to_string());
    }
    if let Some(sq) = &r.squashfs {
        row(
            "squashfs",
            format!(
                "version {}, compression {}, block size {}, {} inodes, {} bytes used",
                sq.version, sq.compression, sq.block_size, sq.inodes, sq.bytes_used
            ),
        );
    }
    if let Some(e) = &r.ext {
        row(
            "filesystem",
            format!(
                "{}, {} blocks of {} bytes ({}), label {:?}, uuid {}{}",
                e.kind,
                e.blocks,
                e.block_size,
                human(e.blocks.saturating_mul(e.block_size)),
                e.label,
                e.uuid,
                if e.needs_recovery {
                    ", journal not replayed (unclean unmount)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some(f) = &r.folder {
        row("entries", f.entries.join(" "));
    }
    match (&r.config, &r.config_error) {
        (None, Some(e)) => row("config", format!("unreadable: {e}")),
        (Some(serde_json::Value::Object(map)), error) => {
            match error {
                Some(e) => row("config", format!("invalid: {e}")),
                None => row("config", CONFIG_PATH.to_string()),
            }
            for (key, value) in map {
                let shown = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("  {key}: {shown}");
            }
        }
        _ => row("config", "none".to_string()),
    }
    if let Some(p) = &r.parent {
        row(
            "saved from",
            format!(
                "{} ({})",
                p.image.display(),
                p.digest
                    .as_ref()
                    .map_or("digest unknown".to_string(), |d| d.to_string())
            ),
        );
    }
}
