//! The site's policy file (`site_config=/etc/ferry/site.json` in plugstack.conf):
//! trusted image folders, what to do with other images, site-wide mounts, the writable
//! layer's size, where users may mount, how long a step's setup may take, log level,
//! how srun and sbatch check an image at submission.
//!
//! Parsing and validation are pure (no file system access) so that the plugin, the
//! `ferry check-config` command and the fuzz targets share them. Checking that a
//! trusted folder really is root-owned happens on use (`image::is_trusted`), because
//! the host can change after the file was read.

use crate::policy::join_paths;
pub use crate::submit_check::SubmitCheck;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

// The values a site file sets live in `policy`, which `request` shares; these keep the
// names under `site` that callers already use.
pub use crate::policy::{
    destination_allowed, CachePolicy, ImagePolicy, MemoryLimit, SiteMount, Untrusted,
    DEFAULT_FUSE_HELPER, DEFAULT_IMAGE_CACHE_MAX_IMAGES, DEFAULT_IMAGE_CACHE_MAX_MEMORY_PERCENT,
    DEFAULT_IMAGE_CACHE_TTL, DEFAULT_SETUP_TIMEOUT, DEFAULT_WRITABLE_LAYER,
    DEFAULT_WRITABLE_LAYER_MAX,
};

/// Where the plugin reads the site file when plugstack.conf names none.
pub const DEFAULT_SITE_CONFIG: &str = "/etc/ferry/site.json";
const MIN_WRITABLE_LAYER: u64 = 1 << 20;
const MAX_WRITABLE_LAYER: u64 = 64 << 30;
/// Longest path or list the file may hold: a typo'd or hostile file fails clearly.
const MAX_PATH_LEN: usize = 4096;
const MAX_LIST_LEN: usize = 256;
const MAX_FILE_LEN: usize = 1 << 20;
const MIN_SETUP_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_SETUP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MAX_IMAGE_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_IMAGE_CACHE_IMAGES: u64 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub images: ImagePolicy,
    pub site_mounts: Vec<SiteMount>,
    pub writable_layer_size: u64,
    /// The largest writable layer a step may ask for (`--container-writable=SIZE`).
    pub writable_layer_max: u64,
    /// Prefixes a user's `--container-mounts` destination must be under (None: any).
    pub user_mount_destinations: Option<Vec<PathBuf>>,
    /// Longest a step's setup may take (see `DEFAULT_SETUP_TIMEOUT`).
    pub setup_timeout: Duration,
    pub log_level: LogLevel,
    /// Read-only image stores the admins fill (`ferry pull --store DIR`), searched
    /// before the user's own for a pulled reference or a `sha256:` image.
    pub image_stores: Vec<PathBuf>,
    /// Where each user's own store is, as a template with `{user}` and `{home}` (a
    /// folder the compute nodes see); None: the user's cache folder, which must then be
    /// on a shared file system.
    pub user_image_store: Option<String>,
    /// The node image cache (`image_cache`): how long a kept mount outlives its last
    /// step (zero: no cache), how many images, how much of the node's memory.
    pub image_cache_ttl: Duration,
    pub image_cache_max_images: usize,
    pub image_cache_max_memory: MemoryLimit,
    /// Whether containers get the user's home bound in unless the user says not
    /// (`--no-container-mount-home`).
    pub mount_home: bool,
    /// What srun, sbatch and salloc check of the image before a job exists
    /// (`submit_check`).
    pub submit_check: SubmitCheck,
    /// The CDI spec folders, lowest priority first (None: /etc/cdi, /var/run/cdi).
    pub cdi_spec_dirs: Option<Vec<PathBuf>>,
    /// GRES name and the CDI kind its devices are (`cdi_gres`: only `gpu`).
    pub cdi_gres: Vec<(String, String)>,
}

impl Default for Site {
    /// The policy with no site file: untrusted images through FUSE (see SECURITY.md).
    fn default() -> Self {
        Site {
            images: ImagePolicy {
                untrusted: Untrusted::Fuse,
                ..ImagePolicy::kernel()
            },
            site_mounts: Vec::new(),
            writable_layer_size: DEFAULT_WRITABLE_LAYER,
            writable_layer_max: DEFAULT_WRITABLE_LAYER_MAX,
            user_mount_destinations: None,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            log_level: LogLevel::Info,
            image_stores: Vec::new(),
            user_image_store: None,
            image_cache_ttl: DEFAULT_IMAGE_CACHE_TTL,
            image_cache_max_images: DEFAULT_IMAGE_CACHE_MAX_IMAGES,
            image_cache_max_memory: MemoryLimit::Percent(DEFAULT_IMAGE_CACHE_MAX_MEMORY_PERCENT),
            mount_home: true,
            submit_check: SubmitCheck::default(),
            cdi_spec_dirs: None,
            cdi_gres: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    trusted_image_dirs: Option<Vec<String>>,
    untrusted_images: Option<String>,
    fuse_helper: Option<String>,
    site_mounts: Option<Vec<RawMount>>,
    writable_layer_size: Option<String>,
    writable_layer_max: Option<String>,
    user_mount_destinations: Option<Vec<String>>,
    setup_timeout: Option<String>,
    log_level: Option<String>,
    image_stores: Option<Vec<String>>,
    user_image_store: Option<String>,
    image_cache_ttl: Option<String>,
    image_cache_max_images: Option<u64>,
    image_cache_max_memory: Option<String>,
    mount_home: Option<bool>,
    submit_check: Option<String>,
    cdi_spec_dirs: Option<Vec<String>>,
    cdi_gres: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    source: String,
    dest: Option<String>,
    readonly: Option<bool>,
    optional: Option<bool>,
}

impl Site {
    /// Parses and checks a site file's text. Errors name the key and say what to write.
    pub fn parse(text: &[u8]) -> Result<Site, String> {
        if text.len() > MAX_FILE_LEN {
            return Err(format!(
                "the file is larger than {MAX_FILE_LEN} bytes; a site file is a few lines"
            ));
        }
        // The path of a wrongly typed value (`site_mounts[1].readonly: ...`) names the key.
        let mut json = serde_json::Deserializer::from_slice(text);
        let raw: RawSite = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                path => format!("{path}: {}", e.inner()),
            }
        })?;
        json.end().map_err(|e| e.to_string())?;
        let mut site = Site::default();
        if let Some(dirs) = raw.trusted_image_dirs {
            site.images.trusted_dirs = path_list("trusted_image_dirs", &dirs)?;
        }
        if let Some(policy) = raw.untrusted_images {
            site.images.untrusted = match policy.as_str() {
                "kernel" => Untrusted::Kernel,
                "fuse" => Untrusted::Fuse,
                "deny" => Untrusted::Deny,
                _ => {
                    return Err(format!(
                        "untrusted_images: {policy:?}: use \"fuse\", \"deny\" or \"kernel\""
                    ))
                }
            };
        }
        if let Some(helper) = raw.fuse_helper {
            site.images.fuse_helper = abs_path("fuse_helper", &helper)?;
        }
        if let Some(mounts) = raw.site_mounts {
            check_len("site_mounts", mounts.len())?;
            for (i, m) in mounts.iter().enumerate() {
                let key = format!("site_mounts[{i}]");
                let source = abs_path(&format!("{key}.source"), &m.source)?;
                let dest = match &m.dest {
                    Some(d) => abs_path(&format!("{key}.dest"), d)?,
                    None => source.clone(),
                };
                if dest == Path::new("/") {
                    return Err(format!(
                        "{key}.dest: cannot mount over the container's root"
                    ));
                }
                site.site_mounts.push(SiteMount {
                    source,
                    dest,
                    readonly: m.readonly.unwrap_or(false),
                    optional: m.optional.unwrap_or(false),
                });
            }
        }
        if let Some(size) = raw.writable_layer_size {
            site.writable_layer_size = parse_size(&size)
                .filter(|n| (MIN_WRITABLE_LAYER..=MAX_WRITABLE_LAYER).contains(n))
                .ok_or_else(|| {
                    format!("writable_layer_size: {size:?}: give a size from 1M to 64G, such as \"256M\"")
                })?;
        }
        // Unset: the default maximum, or the default size where the site made it larger.
        site.writable_layer_max = DEFAULT_WRITABLE_LAYER_MAX.max(site.writable_layer_size);
        if let Some(max) = raw.writable_layer_max {
            site.writable_layer_max = parse_size(&max)
                .filter(|n| (MIN_WRITABLE_LAYER..=MAX_WRITABLE_LAYER).contains(n))
                .ok_or_else(|| {
                    format!(
                        "writable_layer_max: {max:?}: give a size from 1M to 64G, such as \"4G\""
                    )
                })?;
            if site.writable_layer_max < site.writable_layer_size {
                return Err(format!(
                    "writable_layer_max: {max:?} is below writable_layer_size ({} MiB); give at least that",
                    site.writable_layer_size >> 20
                ));
            }
        }
        if let Some(prefixes) = raw.user_mount_destinations {
            site.user_mount_destinations = Some(path_list("user_mount_destinations", &prefixes)?);
        }
        if let Some(limit) = raw.setup_timeout {
            site.setup_timeout = parse_duration(&limit)
                .filter(|d| (MIN_SETUP_TIMEOUT..=MAX_SETUP_TIMEOUT).contains(d))
                .ok_or_else(|| {
                    format!("setup_timeout: {limit:?}: give a time from 1s to 24h, such as \"300s\" or \"5m\"")
                })?;
        }
        if let Some(dirs) = raw.image_stores {
            site.image_stores = path_list("image_stores", &dirs)?;
        }
        if let Some(template) = raw.user_image_store {
            // Checked as the path it makes for a user with a plain name and home.
            let example = fill_store_template(&template, "user", Path::new("/home/user"));
            abs_path("user_image_store", &example).map_err(|_| {
                format!("user_image_store: {template:?}: give an absolute folder, such as \"/shared/ferry/{{user}}\" or \"{{home}}/.cache/ferry/images\" (no '..', comma or colon)")
            })?;
            site.user_image_store = Some(template);
        }
        if let Some(ttl) = raw.image_cache_ttl {
            site.image_cache_ttl = parse_duration(&ttl)
                .filter(|d| *d <= MAX_IMAGE_CACHE_TTL)
                .ok_or_else(|| {
                    format!("image_cache_ttl: {ttl:?}: give a time up to 168h, such as \"10m\", or \"0\" to keep no image mounted after its steps")
                })?;
        }
        if let Some(n) = raw.image_cache_max_images {
            if n > MAX_IMAGE_CACHE_IMAGES {
                return Err(format!(
                    "image_cache_max_images: {n}: give a number from 0 (no cache) to {MAX_IMAGE_CACHE_IMAGES}"
                ));
            }
            site.image_cache_max_images = n as usize;
        }
        if let Some(limit) = raw.image_cache_max_memory {
            site.image_cache_max_memory = parse_memory_limit(&limit).ok_or_else(|| {
                format!("image_cache_max_memory: {limit:?}: give a share of the node's memory from 0% to 90%, such as \"25%\", or a size, such as \"16G\"")
            })?;
        }
        if let Some(home) = raw.mount_home {
            site.mount_home = home;
        }
        if let Some(mode) = raw.submit_check {
            site.submit_check = SubmitCheck::parse(&mode).ok_or_else(|| {
                format!("submit_check: {mode:?}: use \"warn\", \"strict\" or \"off\"")
            })?;
        }
        if let Some(dirs) = raw.cdi_spec_dirs {
            site.cdi_spec_dirs = Some(path_list("cdi_spec_dirs", &dirs)?);
        }
        for (gres, kind) in raw.cdi_gres.unwrap_or_default() {
            if gres != crate::cdi::gres::GPU {
                return Err(format!("cdi_gres: {gres:?}: only \"gpu\" can be mapped (Slurm names the devices of no other GRES in a step's environment)"));
            }
            crate::cdi::DeviceRef::parse(&format!("{kind}=0"))
                .map_err(|_| format!("cdi_gres.{gres}: {kind:?}: give a CDI kind, VENDOR/CLASS, such as \"nvidia.com/gpu\""))?;
            site.cdi_gres.push((gres, kind));
        }
        if let Some(level) = raw.log_level {
            site.log_level = match level.as_str() {
                "error" => LogLevel::Error,
                "warning" => LogLevel::Warning,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                _ => {
                    return Err(format!(
                        "log_level: {level:?}: use \"error\", \"warning\", \"info\" or \"debug\""
                    ))
                }
            };
        }
        Ok(site)
    }

    /// Reads the site file the plugin (or `ferry run` as root) acts on: as `load`, and
    /// every folder above it must be root's and writable by root only too, or someone
    /// else could put another file in its place.
    pub fn load_trusted(path: &Path) -> Result<Site, String> {
        let fail = |why: String| format!("site config {}: {why}", path.display());
        let real = std::fs::canonicalize(path).map_err(|e| fail(e.to_string()))?;
        if let Some(dir) = real
            .parent()
            .and_then(|d| crate::image::not_root_only(Path::new("/"), d))
        {
            return Err(fail(format!(
                "folder {} must be owned by root and writable by root only (chown root: and chmod go-w it, or move the file)",
                dir.display()
            )));
        }
        Site::load(path)
    }

    /// Reads and parses the site file. It decides what root does for users, so it must
    /// be root's alone: owned by root, writable by nobody else (the lesson of setuid
    /// runtimes broken through files users could edit).
    pub fn load(path: &Path) -> Result<Site, String> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let fail = |why: String| format!("site config {}: {why}", path.display());
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(fail(
                "must be owned by root and writable by root only (chown root: and chmod go-w it)"
                    .into(),
            ));
        }
        let mut text = Vec::new();
        file.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut text)
            .map_err(|e| fail(e.to_string()))?;
        Site::parse(&text).map_err(fail)
    }

    /// The effective policy, one setting a line, for `ferry check-config`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("{k:24} {v}\n"));
        line(&mut out, "trusted_image_dirs", self.images.trusted_list());
        line(
            &mut out,
            "untrusted_images",
            self.images.untrusted.name().into(),
        );
        line(
            &mut out,
            "fuse_helper",
            self.images.fuse_helper.display().to_string(),
        );
        if self.site_mounts.is_empty() {
            line(&mut out, "site_mounts", "(none)".into());
        }
        for m in &self.site_mounts {
            line(
                &mut out,
                "site_mounts",
                format!(
                    "{} -> {}{}{}",
                    m.source.display(),
                    m.dest.display(),
                    if m.readonly { " read-only" } else { "" },
                    if m.optional {
                        " (skipped where missing)"
                    } else {
                        " (required)"
                    }
                ),
            );
        }
        line(
            &mut out,
            "writable_layer_size",
            format!("{} MiB", self.writable_layer_size >> 20),
        );
        line(
            &mut out,
            "writable_layer_max",
            format!(
                "{} MiB (the most --container-writable=SIZE may ask for)",
                self.writable_layer_max >> 20
            ),
        );
        line(
            &mut out,
            "user_mount_destinations",
            match &self.user_mount_destinations {
                None => "(anywhere)".into(),
                Some(p) if p.is_empty() => "(none: user mounts refused)".into(),
                Some(p) => join_paths(p),
            },
        );
        line(
            &mut out,
            "setup_timeout",
            format!("{} s", self.setup_timeout.as_secs()),
        );
        line(
            &mut out,
            "log_level",
            format!("{:?}", self.log_level).to_lowercase(),
        );
        line(
            &mut out,
            "image_stores",
            if self.image_stores.is_empty() {
                "(none)".into()
            } else {
                join_paths(&self.image_stores)
            },
        );
        line(
            &mut out,
            "user_image_store",
            self.user_image_store
                .clone()
                .unwrap_or_else(|| "(the user's cache folder, on a shared file system)".into()),
        );
        line(
            &mut out,
            "image_cache",
            if self.image_cache(u64::MAX).enabled() {
                format!(
                    "kept {} s after the last step, at most {} images, {}",
                    self.image_cache_ttl.as_secs(),
                    self.image_cache_max_images,
                    match self.image_cache_max_memory {
                        MemoryLimit::Percent(p) => format!("{p}% of the node's memory"),
                        MemoryLimit::Bytes(n) => format!("{} MiB", n >> 20),
                    }
                )
            } else {
                "off (every step mounts its image afresh)".into()
            },
        );
        line(
            &mut out,
            "mount_home",
            if self.mount_home {
                "yes (a user can say --no-container-mount-home)".into()
            } else {
                "no".to_string()
            },
        );
        line(
            &mut out,
            "submit_check",
            format!(
                "{} ({})",
                self.submit_check.name(),
                self.submit_check.meaning()
            ),
        );
        line(
            &mut out,
            "cdi_spec_dirs",
            join_paths(&crate::cdi::spec_dirs(self.cdi_spec_dirs.as_deref())),
        );
        line(
            &mut out,
            "cdi_gres",
            if self.cdi_gres.is_empty() {
                "(none: steps get devices by --container-devices only)".into()
            } else {
                self.cdi_gres
                    .iter()
                    .map(|(g, k)| format!("{g} -> {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        out
    }

    /// The node image cache's limits on a node with `memory` bytes of memory.
    pub fn image_cache(&self, memory: u64) -> CachePolicy {
        CachePolicy {
            ttl: self.image_cache_ttl,
            max_images: self.image_cache_max_images,
            max_bytes: self.image_cache_max_memory.bytes(memory),
        }
    }

    /// The user's own image store as this site places it, if it does.
    pub fn user_image_store_for(&self, user: &str, home: &Path) -> Option<PathBuf> {
        self.user_image_store
            .as_ref()
            .map(|t| PathBuf::from(fill_store_template(t, user, home)))
    }
}

/// `{user}` and `{home}` replaced in a store template.
fn fill_store_template(template: &str, user: &str, home: &Path) -> String {
    template
        .replace("{user}", user)
        .replace("{home}", &home.to_string_lossy())
}

/// `90`, `90s`, `5m`, `1h`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let (n, unit) = number_and_unit(value)?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

fn check_len(key: &str, n: usize) -> Result<(), String> {
    if n > MAX_LIST_LEN {
        return Err(format!("{key}: more than {MAX_LIST_LEN} entries"));
    }
    Ok(())
}

fn path_list(key: &str, values: &[String]) -> Result<Vec<PathBuf>, String> {
    check_len(key, values.len())?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| abs_path(&format!("{key}[{i}]"), v))
        .collect()
}

/// An absolute, normal path: no `..`, no `.`, no NUL or newline, bounded length.
fn abs_path(key: &str, value: &str) -> Result<PathBuf, String> {
    let bad = |why: &str| Err(format!("{key}: {value:?}: {why}"));
    if value.len() > MAX_PATH_LEN {
        return Err(format!("{key}: path longer than {MAX_PATH_LEN} bytes"));
    }
    if !value.starts_with('/') {
        return bad("give an absolute path");
    }
    if value.contains(['\0', '\n', ',', ':']) {
        return bad("a path here must not contain NUL, newline, comma or colon");
    }
    let path = Path::new(value);
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return bad("'.' and '..' are not allowed");
    }
    // Drop trailing slashes and doubled ones: `/a//b/` is `/a/b`.
    Ok(path.components().collect())
}

/// The leading decimal number of `value` and what follows it (`"64M"`: 64, `"M"`).
fn number_and_unit(value: &str) -> Option<(u64, &str)> {
    let (digits, unit) = match value.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => value.split_at(i),
        None => (value, ""),
    };
    Some((digits.parse().ok()?, unit))
}

/// `123`, `64K`, `512M`, `2G`, `1T` (powers of 1024).
/// `25%` (of the node's memory, at most 90) or a size (`16G`).
fn parse_memory_limit(value: &str) -> Option<MemoryLimit> {
    match value.strip_suffix('%') {
        Some(p) => p
            .parse::<u64>()
            .ok()
            .filter(|p| *p <= 90)
            .map(MemoryLimit::Percent),
        None => parse_size(value).map(MemoryLimit::Bytes),
    }
}

pub fn parse_size(value: &str) -> Option<u64> {
    let (n, unit) = number_and_unit(value)?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Site, String> {
        Site::parse(s.as_bytes())
    }

    #[test]
    fn empty_object_is_the_default_policy() {
        let site = parse("{}").unwrap();
        assert_eq!(site, Site::default());
        assert_eq!(site.images.untrusted, Untrusted::Fuse);
        assert_eq!(site.writable_layer_size, DEFAULT_WRITABLE_LAYER);
        assert_eq!(site.writable_layer_max, DEFAULT_WRITABLE_LAYER_MAX);
    }

    #[test]
    fn the_writable_layer_maximum_defaults_to_a_gigabyte_or_the_default_size() {
        let site = parse(r#"{"writable_layer_max": "4G"}"#).unwrap();
        assert_eq!(site.writable_layer_max, 4 << 30);
        assert!(site
            .describe()
            .contains("writable_layer_max       4096 MiB"));
        // A site default above the built-in maximum raises the maximum with it.
        let site = parse(r#"{"writable_layer_size": "2G"}"#).unwrap();
        assert_eq!(site.writable_layer_max, 2 << 30);
        let site = parse(r#"{"writable_layer_size": "128M"}"#).unwrap();
        assert_eq!(site.writable_layer_max, DEFAULT_WRITABLE_LAYER_MAX);
        let e = parse(r#"{"writable_layer_size": "2G", "writable_layer_max": "1G"}"#).unwrap_err();
        assert_eq!(
            e,
            "writable_layer_max: \"1G\" is below writable_layer_size (2048 MiB); give at least that"
        );
        for bad in ["lots", "10", "100G"] {
            let e = parse(&format!(r#"{{"writable_layer_max": "{bad}"}}"#)).unwrap_err();
            assert!(e.starts_with("writable_layer_max: "), "{bad}: {e}");
        }
    }

    #[test]
    fn a_full_file() {
        let site = parse(
            r#"{
              "trusted_image_dirs": ["/apps/images/", "/srv//containers"],
              "untrusted_images": "deny",
              "site_mounts": [
                {"source": "/scratch"},
                {"source": "/opt/apps", "dest": "/apps", "readonly": true, "optional": true}
              ],
              "writable_layer_size": "256M",
              "user_mount_destinations": ["/data", "/home"],
              "setup_timeout": "5m",
              "log_level": "debug"
            }"#,
        )
        .unwrap();
        assert_eq!(
            site.images.trusted_dirs,
            vec![
                PathBuf::from("/apps/images"),
                PathBuf::from("/srv/containers")
            ]
        );
        assert_eq!(site.images.untrusted, Untrusted::Deny);
        assert_eq!(
            site.site_mounts[1],
            SiteMount {
                source: "/opt/apps".into(),
                dest: "/apps".into(),
                readonly: true,
                optional: true
            }
        );
        assert!(!site.site_mounts[0].optional);
        assert_eq!(site.site_mounts[0].dest, PathBuf::from("/scratch"));
        assert_eq!(site.writable_layer_size, 256 << 20);
        assert_eq!(site.log_level, LogLevel::Debug);
        assert_eq!(site.setup_timeout, Duration::from_secs(300));
        assert!(site.describe().contains("deny"));
        assert!(site.images.where_trusted().contains("/apps/images"));
    }

    #[test]
    fn cdi_folders_and_the_gpu_mapping() {
        let site = parse(
            r#"{"cdi_spec_dirs": ["/etc/cdi", "/run/cdi"], "cdi_gres": {"gpu": "nvidia.com/gpu"}}"#,
        )
        .unwrap();
        assert_eq!(
            site.cdi_spec_dirs,
            Some(vec![PathBuf::from("/etc/cdi"), PathBuf::from("/run/cdi")])
        );
        assert_eq!(
            site.cdi_gres,
            [("gpu".to_string(), "nvidia.com/gpu".to_string())]
        );
        assert!(site.describe().contains("gpu -> nvidia.com/gpu"));
        let default = Site::default().describe();
        assert!(default.contains("/etc/cdi, /var/run/cdi"), "{default}");
        let err = parse(r#"{"cdi_gres": {"mps": "a.com/b"}}"#).unwrap_err();
        assert!(err.contains("only \"gpu\""), "{err}");
        let err = parse(r#"{"cdi_gres": {"gpu": "nvidia"}}"#).unwrap_err();
        assert!(err.contains("cdi_gres.gpu"), "{err}");
        let err = parse(r#"{"cdi_spec_dirs": ["cdi"]}"#).unwrap_err();
        assert!(err.contains("cdi_spec_dirs"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            (r#"{"colour": 1}"#, "colour"),
            (r#"{"untrusted_images": "maybe"}"#, "untrusted_images"),
            (r#"{"untrusted_images": 3}"#, "untrusted_images"),
            (
                r#"{"trusted_image_dirs": ["rel"]}"#,
                "trusted_image_dirs[0]",
            ),
            (
                r#"{"trusted_image_dirs": ["/a/../b"]}"#,
                "trusted_image_dirs[0]",
            ),
            (
                r#"{"trusted_image_dirs": ["/a\nb"]}"#,
                "trusted_image_dirs[0]",
            ),
            (
                r#"{"trusted_image_dirs": ["/a,b"]}"#,
                "trusted_image_dirs[0]",
            ),
            (r#"{"trusted_image_dirs": [""]}"#, "trusted_image_dirs[0]"),
            (r#"{"site_mounts": [{"source": "/a", "dst": "/b"}]}"#, "dst"),
            (
                r#"{"site_mounts": [{"source": "/a", "dest": "/"}]}"#,
                "site_mounts[0].dest",
            ),
            (
                r#"{"site_mounts": [{"source": "x"}]}"#,
                "site_mounts[0].source",
            ),
            (r#"{"writable_layer_size": "lots"}"#, "writable_layer_size"),
            (r#"{"writable_layer_size": "10"}"#, "writable_layer_size"),
            (
                r#"{"writable_layer_size": "99999999999999999999T"}"#,
                "writable_layer_size",
            ),
            (
                r#"{"user_mount_destinations": "/data"}"#,
                "user_mount_destinations",
            ),
            (r#"{"log_level": "loud"}"#, "log_level"),
            (r#"{"submit_check": "yes"}"#, "submit_check"),
            (r#"{"submit_check": true}"#, "submit_check"),
            (r#"{"fuse_helper": "squashfuse"}"#, "fuse_helper"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for text in [
            &b""[..],
            b"null",
            b"[]",
            b"{",
            b"\xff\xfe{}",
            b"{\"log_level\": \"\xff\"}",
        ] {
            assert!(Site::parse(text).is_err(), "{text:?}");
        }
        let huge = format!(r#"{{"trusted_image_dirs": ["/{}"]}}"#, "a".repeat(5000));
        assert!(parse(&huge).unwrap_err().contains("longer"));
        let many = format!(
            r#"{{"trusted_image_dirs": [{}]}}"#,
            vec!["\"/a\""; 300].join(",")
        );
        assert!(parse(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn the_image_cache_is_on_by_default_and_sized_by_the_site() {
        let site = Site::default();
        let policy = site.image_cache(64 << 30);
        assert!(policy.enabled());
        assert_eq!(policy.ttl, DEFAULT_IMAGE_CACHE_TTL);
        assert_eq!(policy.max_bytes, 16 << 30);
        let site = parse(
            r#"{"image_cache_ttl": "2m", "image_cache_max_images": 3, "image_cache_max_memory": "1G"}"#,
        )
        .unwrap();
        let policy = site.image_cache(64 << 30);
        assert_eq!(policy.ttl, Duration::from_secs(120));
        assert_eq!(policy.max_images, 3);
        assert_eq!(policy.max_bytes, 1 << 30);
        assert!(site.describe().contains("at most 3 images, 1024 MiB"));
        for off in [
            r#"{"image_cache_ttl": "0"}"#,
            r#"{"image_cache_max_images": 0}"#,
            r#"{"image_cache_max_memory": "0%"}"#,
        ] {
            let site = parse(off).unwrap();
            assert!(!site.image_cache(64 << 30).enabled(), "{off}");
            assert!(
                site.describe().contains("image_cache              off"),
                "{off}"
            );
        }
        for (bad, key) in [
            (r#"{"image_cache_ttl": "forever"}"#, "image_cache_ttl: "),
            (r#"{"image_cache_ttl": "200h"}"#, "image_cache_ttl: "),
            (
                r#"{"image_cache_max_images": 5000}"#,
                "image_cache_max_images: ",
            ),
            (
                r#"{"image_cache_max_memory": "95%"}"#,
                "image_cache_max_memory: ",
            ),
            (
                r#"{"image_cache_max_memory": "lots"}"#,
                "image_cache_max_memory: ",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with(key), "{bad}: {e}");
        }
    }

    #[test]
    fn setup_timeout_takes_seconds_minutes_and_hours_within_bounds() {
        assert_eq!(Site::default().setup_timeout, DEFAULT_SETUP_TIMEOUT);
        for (text, secs) in [("90", 90), ("90s", 90), ("2m", 120), ("1h", 3600)] {
            let site = parse(&format!(r#"{{"setup_timeout": "{text}"}}"#)).unwrap();
            assert_eq!(site.setup_timeout, Duration::from_secs(secs), "{text}");
        }
        for bad in [
            "0",
            "0s",
            "25h",
            "5 m",
            "-1",
            "",
            "1d",
            "99999999999999999999h",
        ] {
            let e = parse(&format!(r#"{{"setup_timeout": "{bad}"}}"#)).unwrap_err();
            assert!(e.starts_with("setup_timeout: "), "{bad}: {e}");
        }
    }

    #[test]
    fn image_stores_and_the_users_store_template() {
        let site = parse(
            r#"{"image_stores": ["/shared/ferry/site-images/"],
                "user_image_store": "/shared/ferry/{user}"}"#,
        )
        .unwrap();
        assert_eq!(
            site.image_stores,
            vec![PathBuf::from("/shared/ferry/site-images")]
        );
        assert_eq!(
            site.user_image_store_for("alice", Path::new("/home/alice")),
            Some(PathBuf::from("/shared/ferry/alice"))
        );
        let site = parse(r#"{"user_image_store": "{home}/.cache/ferry/images"}"#).unwrap();
        assert_eq!(
            site.user_image_store_for("bob", Path::new("/home/b/bob")),
            Some(PathBuf::from("/home/b/bob/.cache/ferry/images"))
        );
        assert_eq!(
            Site::default().user_image_store_for("bob", Path::new("/h")),
            None
        );
        for bad in ["relative/{user}", "/shared/../{user}", "/a:b/{user}"] {
            let e = parse(&format!(r#"{{"user_image_store": "{bad}"}}"#)).unwrap_err();
            assert!(e.starts_with("user_image_store: "), "{bad}: {e}");
        }
        let e = parse(r#"{"image_stores": ["rel"]}"#).unwrap_err();
        assert!(e.starts_with("image_stores[0]: "), "{e}");
    }

    #[test]
    fn submit_check_warns_by_default_and_takes_three_modes() {
        assert_eq!(Site::default().submit_check, SubmitCheck::Warn);
        assert!(Site::default()
            .describe()
            .contains("submit_check             warn"));
        for (text, mode) in [
            ("warn", SubmitCheck::Warn),
            ("strict", SubmitCheck::Strict),
            ("off", SubmitCheck::Off),
        ] {
            let site = parse(&format!(r#"{{"submit_check": "{text}"}}"#)).unwrap();
            assert_eq!(site.submit_check, mode);
            assert!(site
                .describe()
                .contains(&format!("submit_check             {text} (")));
        }
        let e = parse(r#"{"submit_check": "Strict"}"#).unwrap_err();
        assert!(e.contains(r#"use "warn", "strict" or "off""#), "{e}");
    }
}
