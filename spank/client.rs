//! srun, sbatch and salloc (local and allocator contexts): settle which image the job
//! or step asked for, make its path absolute, and check our options and the image
//! before anything is submitted (`ferry_runtime::submit_check`, as the user), so a typo
//! or a broken image fails at once on the user's terminal, not after the queue.

use crate::options;
use crate::resolve;
use ferry_runtime::plugin_config::Config;
use ferry_runtime::site::Site;
use ferry_runtime::step_request::{check_pin_rule, NO_CONTAINER};
use ferry_runtime::submit_check::{self, DigestCaches, SubmitCheck, Warning};
use ferry_runtime::MountSpec;
use std::path::Path;
use std::sync::Mutex;

pub const CONTAINER_VAR: &str = "SLURM_CONTAINER";
/// The folder srun/sbatch ran in, for the step: relative image and mount paths are
/// taken from it and it is bound into the container. (SLURM_SUBMIT_DIR is the job's,
/// also for a step started from another folder inside the job.)
pub const CWD_VAR: &str = "FERRY_SUBMIT_DIR";
/// The `--container-mounts` value and the folder its relative sources are taken from.
pub const MOUNTS_SPEC_VAR: &str = "FERRY_MOUNTS_SPEC";
pub const MOUNTS_BASE_VAR: &str = "FERRY_MOUNTS_BASE";
/// The `--container-provenance` value and the absolute file it names.
pub const PROVENANCE_SPEC_VAR: &str = "FERRY_PROVENANCE_SPEC";
pub const PROVENANCE_FILE_VAR: &str = "FERRY_PROVENANCE_FILE";

static INHERITED: Mutex<Option<std::ffi::OsString>> = Mutex::new(None);

/// Slurm's clients never overwrite an inherited SLURM_CONTAINER, so inside
/// `sbatch --container=A` a `srun --container=B` would still carry A. Move the
/// inherited value aside; if the command line sets one, it shows up again by
/// `init_post_opt`.
pub fn init() {
    if let Some(value) = std::env::var_os(CONTAINER_VAR) {
        if let Ok(mut slot) = INHERITED.lock() {
            *slot = Some(value);
        }
        std::env::remove_var(CONTAINER_VAR);
    }
}

/// Image paths travel through the job's environment and logs as text: a path that is not
/// UTF-8 is refused here, where the user reads it, not misread on the node.
fn utf8_image(value: std::ffi::OsString) -> Result<String, String> {
    value.into_string().map_err(|raw| {
        format!(
            "--container={}: the path is not valid UTF-8; rename the file (or a folder above it) to a UTF-8 name",
            raw.to_string_lossy()
        )
    })
}

pub fn init_post_opt(config: &Config) -> Result<(), String> {
    let from_command_line = std::env::var_os(CONTAINER_VAR)
        .filter(|v| !v.is_empty())
        .map(utf8_image)
        .transpose()?;
    let inherited = INHERITED
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .map(utf8_image)
        .transpose()?;
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
    // An image inherited from the job (an srun in a batch script) was checked when the
    // job was submitted; the one given here is checked below.
    let given_here = from_command_line.is_some();
    let mut warnings = Vec::new();
    // The stored file `ferry resolve` pinned for a registry or `sha256:` image.
    let mut from_store = false;
    if let Some(image) = from_command_line.or(inherited) {
        let value = if resolve::needs_resolving(&image) {
            from_store = true;
            let site_config = (config.site_config_required || config.site_config.exists())
                .then_some(config.site_config.as_path());
            let resolved = resolve::resolve(&config.ferry, site_config, &image)?;
            set_or_remove(resolve::REFERENCE_VAR, resolved.reference.as_deref());
            set_or_remove(resolve::MANIFEST_VAR, resolved.manifest_digest.as_deref());
            std::env::set_var(resolve::RESOLVED_VAR, &resolved.pinned);
            resolved.pinned
        } else {
            absolute_image(&image, &cwd)
        };
        std::env::set_var(CONTAINER_VAR, value);
        std::env::set_var(CWD_VAR, &cwd);
    }
    if let Some(list) = options::mounts() {
        let specs =
            MountSpec::parse_list(&list, &cwd).map_err(|e| format!("--container-mounts: {e}"))?;
        // Relative sources are taken from where the option was given: an srun inside a
        // job that inherits sbatch's option keeps sbatch's folder as their base.
        let inherited = std::env::var(MOUNTS_SPEC_VAR).ok().as_deref() == Some(list.as_str())
            && std::env::var_os(MOUNTS_BASE_VAR).is_some();
        if !inherited {
            for spec in &specs {
                submit_check::check_mount_source(&spec.source)?;
            }
            std::env::set_var(MOUNTS_SPEC_VAR, &list);
            std::env::set_var(MOUNTS_BASE_VAR, &cwd);
        }
    }
    if let Some(file) = options::provenance() {
        // Like mount sources: a relative FILE is taken from where the option was given.
        if std::env::var(PROVENANCE_SPEC_VAR).ok().as_deref() != Some(file.as_str()) {
            std::env::set_var(PROVENANCE_SPEC_VAR, &file);
            std::env::set_var(PROVENANCE_FILE_VAR, cwd.join(&file));
        }
    }
    if let Ok(image) = std::env::var(CONTAINER_VAR) {
        let (path, pin) =
            ferry_runtime::digest::split_pinned(&image).map_err(|e| format!("--container={e}"))?;
        // The site's rule, checked before submission too (slurmstepd checks it again).
        if image != NO_CONTAINER {
            check_pin_rule(path, pin.as_ref(), config.require_digest)
                .map_err(|rule| rule.to_string())?;
        }
    }
    if let Some(name) = options::name() {
        ferry_runtime::named::check_name(&name)?;
    }
    if let Some(list) = options::devices() {
        // The syntax here; whether a node offers them, on the node.
        ferry_runtime::cdi::DeviceRef::parse_list(&list)
            .map_err(|e| format!("--container-devices: {e}"))?;
    }
    if let Some(dir) = options::workdir() {
        if !Path::new(&dir).is_absolute() {
            return Err(format!(
                "--container-workdir={dir}: give an absolute path inside the image"
            ));
        }
    }
    if let Some(Some(size)) = options::writable() {
        // The site's maximum is the nodes' to check; the syntax is checked here.
        if ferry_runtime::site::parse_size(&size).is_none() {
            return Err(format!(
                "--container-writable={size}: give a size such as 512M or 2G"
            ));
        }
    }
    if let Some(file) = options::save() {
        if options::writable().is_none() && options::name().is_none() {
            return Err(format!(
                "--container-save={file}: only a writable container has anything to save: add --container-writable"
            ));
        }
        warnings.extend(submit_check::check_save_target(&cwd.join(file)));
    }
    // Last: the syntax above costs nothing, a pinned image may be hashed here.
    match std::env::var(CONTAINER_VAR) {
        Ok(image) if given_here && image != NO_CONTAINER => {
            let caches = DigestCaches::for_caller(&config.digest_cache);
            let user = submit_check::caller_name();
            // A stored file's name is its digest, which the store checked when it took
            // the file: hashing it again here would cost seconds per GiB on every
            // first submission of a pulled image and prove nothing more (the nodes
            // verify the pin). Its format and superblock are checked like any image.
            let checked = if from_store {
                ferry_runtime::digest::split_pinned(&image)?.0.to_string()
            } else {
                image
            };
            warnings.extend(submit_check::check_image(
                &checked,
                site_submit_check(config)?,
                &user,
                &caches,
            )?);
        }
        _ => {}
    }
    // Only once nothing refused the submission: an error stays the one ferry line.
    for Warning(line) in warnings {
        eprintln!("ferry: warning: {}", ferry_runtime::error::one_line(&line));
    }
    Ok(())
}

/// The site's `submit_check`, from the site file the nodes read. Where this host has
/// none, or users may not read it, the default applies here (the nodes check anyway);
/// a file that is there but wrong is refused now, as every node would refuse it.
fn site_submit_check(config: &Config) -> Result<SubmitCheck, String> {
    let file = &config.site_config;
    match std::fs::File::open(file) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(SubmitCheck::default())
        }
        _ => {}
    }
    Site::load(file)
        .map(|site| site.submit_check)
        .map_err(|e| format!("{e}; ask the administrators (srun and sbatch read it too)"))
}

fn set_or_remove(var: &str, value: Option<&str>) {
    match value {
        Some(v) => std::env::set_var(var, v),
        None => std::env::remove_var(var),
    }
}

/// An image path relative to the folder the job was submitted from; `none` stays.
pub fn absolute_image(image: &str, base: &Path) -> String {
    // A pinned digest (`@sha256:...`) stays attached to the path it pins.
    let (path, pin) = match ferry_runtime::digest::split_pinned(image) {
        Ok((path, Some(pin))) => (path, format!("@{pin}")),
        _ => (image, String::new()),
    };
    if image == NO_CONTAINER || Path::new(path).is_absolute() {
        return image.to_string();
    }
    format!("{}{pin}", base.join(path).display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_submit_check_mode_comes_from_a_readable_site_file() {
        let dir = std::env::temp_dir().join(format!("ferry-client-site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = |file: &str| Config {
            site_config: dir.join(file),
            site_config_required: true,
            ..Config::default()
        };
        // None on this host (it may be on the nodes only): the default.
        assert_eq!(
            site_submit_check(&config("none.json")),
            Ok(SubmitCheck::Warn)
        );
        let strict = dir.join("strict.json");
        std::fs::write(&strict, r#"{"submit_check": "strict"}"#).unwrap();
        std::fs::set_permissions(&strict, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = site_submit_check(&config("strict.json"));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"submit_check": "always"}"#).unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = site_submit_check(&config("bad.json"));
        std::fs::remove_dir_all(&dir).unwrap();
        if ferry_runtime::is_root() {
            assert_eq!(mode, Ok(SubmitCheck::Strict));
        } else {
            // Site::load believes only root's files; as a user the test sees that refusal.
            assert!(mode.unwrap_err().contains("owned by root"));
        }
        let line = refused.unwrap_err();
        assert!(
            line.contains("bad.json") && line.contains("ask the administrators"),
            "{line}"
        );
    }

    #[test]
    fn relative_images_are_taken_from_the_submit_folder() {
        let base = Path::new("/home/alice/run");
        assert_eq!(absolute_image("img.sqfs", base), "/home/alice/run/img.sqfs");
        assert_eq!(
            absolute_image("../i/img.sqfs", base),
            "/home/alice/run/../i/img.sqfs"
        );
        assert_eq!(absolute_image("/images/x.sqfs", base), "/images/x.sqfs");
        assert_eq!(absolute_image("none", base), "none");
        let pin = format!("@sha256:{}", "0".repeat(64));
        assert_eq!(
            absolute_image(&format!("img.sqfs{pin}"), base),
            format!("/home/alice/run/img.sqfs{pin}")
        );
    }
}
