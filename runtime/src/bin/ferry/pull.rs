//! `ferry pull REF [OUT.sqfs]` and `ferry resolve IMAGE`: images from OCI registries,
//! with no root and no daemon. The library resolves a reference to its manifests, then
//! downloads and applies the layers onto a private staging folder; the library's
//! `squash` packs the result, reproducibly. Without OUT the image goes into a
//! content-addressed store (`ferry_runtime::store`), where a manifest already stored
//! downloads nothing. `resolve` is what srun and sbatch run, as the user, for
//! `--container=docker://REF` and `--container=sha256:HEX`: it answers with a stored
//! file and its SHA-256, which the job then carries as a pinned image.

use crate::cli::Compression;
use ferry_runtime::digest::Digest;
use ferry_runtime::registry::{self, pull::INSECURE_ENV, PullOptions, Resolved};
use ferry_runtime::site::{Site, DEFAULT_SITE_CONFIG};
use ferry_runtime::squash;
use ferry_runtime::store::{self, Entry, Resolution, Store};
use ferry_runtime::User;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub struct PullArgs {
    pub reference: String,
    pub out: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub site_config: Option<PathBuf>,
    pub force: bool,
    pub compression: Compression,
    pub platform: Option<String>,
    pub insecure_registries: Vec<String>,
}

pub fn pull_command(args: PullArgs) -> Result<(), String> {
    let options = pull_options(args.platform.as_deref(), &args.insecure_registries, true)?;
    ferry_runtime::interrupt::catch_interrupts()
        .map_err(|e| format!("cannot set up interrupt handling: {e}"))?;
    let outcome = match &args.out {
        Some(out) => {
            squash::check_output(out, args.force).map_err(|e| e.to_string())?;
            pull_to_file(&args.reference, out, args.force, args.compression, &options)
                .map(|()| out.display().to_string())
        }
        None => {
            let site = load_site(args.site_config.as_deref())?;
            let root = match &args.store {
                Some(dir) => dir.clone(),
                None => user_store_root(&site)?,
            };
            let store = Store::open(&root).map_err(|e| e.to_string())?;
            let resolved =
                registry::resolve(&args.reference, &options).map_err(|e| e.to_string())?;
            stored_or_pulled(&store, &resolved, args.compression)
                .map(|entry| entry.path.display().to_string())
        }
    };
    let shown = outcome.map_err(|e| {
        if ferry_runtime::interrupt::interrupted() {
            "interrupted; nothing was stored or written".to_string()
        } else {
            e
        }
    })?;
    println!("{shown}");
    Ok(())
}

fn pull_options(
    platform: Option<&str>,
    insecure_registries: &[String],
    progress: bool,
) -> Result<PullOptions, String> {
    let env = std::env::var(INSECURE_ENV).ok();
    Ok(PullOptions {
        platform: platform
            .map(PullOptions::parse_platform)
            .transpose()
            .map_err(|e| e.to_string())?,
        insecure_registries: PullOptions::insecure_registries(insecure_registries, env.as_deref())
            .map_err(|e| e.to_string())?,
        progress,
    })
}

fn pull_to_file(
    reference: &str,
    out: &Path,
    force: bool,
    compression: Compression,
    options: &PullOptions,
) -> Result<(), String> {
    let resolved = registry::resolve(reference, options).map_err(|e| e.to_string())?;
    let staging_folder = squash::StagingFolder::next_to(out, "pull")?;
    let staging = staging_folder.path();
    let rootfs = registry::fetch_and_unpack(&resolved, staging).map_err(|e| e.to_string())?;
    // Without root the files are ours, not the image's owners: store them as root's.
    squash::squash(
        &rootfs,
        out,
        force,
        !ferry_runtime::is_root(),
        crate::build::compression(compression),
    )
    .map_err(|e| e.to_string())
}

/// The store's entry for `resolved`: the one already there, or a new one pulled now.
/// Two pulls of the same manifest (two jobs, two users of a site store) take the
/// entry's lock in turn; the second finds what the first stored.
fn stored_or_pulled(
    store: &Store,
    resolved: &Resolved,
    compression: Compression,
) -> Result<Entry, String> {
    if let Some(entry) = stored(store, resolved)? {
        store.touch(&entry);
        return Ok(entry);
    }
    let lock = store
        .lock(&resolved.manifest_digest)
        .map_err(|e| e.to_string())?;
    if let Some(entry) = stored(store, resolved)? {
        return Ok(entry);
    }
    let staging = store.staging().map_err(|e| e.to_string())?;
    let work = staging.path().join("pull");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .map_err(|e| format!("cannot create the staging folder {} ({e})", work.display()))?;
    let rootfs = registry::fetch_and_unpack(resolved, &work).map_err(|e| e.to_string())?;
    let image = staging.path().join("image.sqfs");
    squash::squash(
        &rootfs,
        &image,
        false,
        !ferry_runtime::is_root(),
        crate::build::compression(compression),
    )
    .map_err(|e| e.to_string())?;
    store
        .insert(
            &lock,
            &resolved.reference,
            &resolved.manifest_digest,
            Some(&resolved.platform_manifest_digest),
            &image,
        )
        .map_err(|e| e.to_string())
}

/// The store's entry for `resolved` when it holds the same platform's image. An index
/// has one entry per store: a pull of another platform from it replaces the entry.
fn stored(store: &Store, resolved: &Resolved) -> Result<Option<Entry>, String> {
    let entry = store
        .by_manifest(&resolved.manifest_digest)
        .map_err(|e| e.to_string())?;
    Ok(entry.filter(|e| {
        e.platform_manifest_digest
            .as_ref()
            .unwrap_or(&e.manifest_digest)
            == &resolved.platform_manifest_digest
    }))
}

/// The site file `ferry` acts on for stores: the one named, else the default when it
/// exists, else none (the defaults).
fn load_site(named: Option<&Path>) -> Result<Site, String> {
    match named {
        Some(file) => Site::load(file),
        None if Path::new(DEFAULT_SITE_CONFIG).exists() => {
            Site::load(Path::new(DEFAULT_SITE_CONFIG))
        }
        None => Ok(Site::default()),
    }
}

/// The caller's own store: where the site places it, else the cache folder.
fn user_store_root(site: &Site) -> Result<PathBuf, String> {
    let me = caller()?;
    if let Some(dir) = site.user_image_store_for(&me.name, &me.home) {
        return Ok(dir);
    }
    Store::user_default().ok_or_else(|| {
        "no image store: neither XDG_CACHE_HOME nor a home folder is known; give one with --store DIR".to_string()
    })
}

fn caller() -> Result<ferry_runtime::User, String> {
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    ferry_runtime::User::by_uid(uid, gid, Vec::new()).map_err(|e| e.to_string())
}

pub struct ResolveArgs {
    pub image: String,
    pub json: bool,
    /// For this machine only (`ferry run`): the store need not be shared with nodes.
    pub local: bool,
    pub site_config: Option<PathBuf>,
    pub platform: Option<String>,
    pub insecure_registries: Vec<String>,
}

/// What `resolve` found: a stored image file, its SHA-256, and where it came from.
struct Answer {
    entry: Entry,
    reference: Option<String>,
}

pub fn resolve_command(args: ResolveArgs) -> std::process::ExitCode {
    let outcome = resolve(&args).map(Answer::resolution);
    match (outcome, args.json) {
        (Ok(resolution), true) => {
            println!("{}", serde_json::json!(resolution));
            std::process::ExitCode::SUCCESS
        }
        (Ok(resolution), false) => {
            println!("{}", resolution.pinned());
            std::process::ExitCode::SUCCESS
        }
        (Err(message), true) => {
            println!(
                "{}",
                serde_json::json!({ "error": ferry_runtime::error::one_line(&message) })
            );
            std::process::ExitCode::from(1)
        }
        (Err(message), false) => crate::say::fail(&message, 1),
    }
}

impl Answer {
    fn resolution(self) -> Resolution {
        Resolution {
            path: self.entry.path,
            image_digest: self.entry.image_digest.to_string(),
            reference: self.reference,
            manifest_digest: Some(self.entry.manifest_digest.to_string()),
        }
    }
}

/// `ferry run docker://REF` and `ferry run sha256:HEX`: the image resolved as `user`
/// would resolve it at submission, with that user's rights, store and credentials
/// (root never reads them), as `PATH@sha256:HEX`.
pub fn resolve_for(user: &User, image: &str, site_config: Option<&Path>) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    if user.uid == nix::unistd::getuid().as_raw() {
        return resolve(&ResolveArgs {
            image: image.to_string(),
            json: false,
            local: true,
            site_config: site_config.map(Path::to_path_buf),
            platform: None,
            insecure_registries: Vec::new(),
        })
        .map(|a| a.resolution().pinned());
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the ferry command ({e})"))?;
    let mut command = std::process::Command::new(exe);
    command.arg("resolve").arg("--json").arg("--local");
    if let Some(file) = site_config {
        command.arg("--site-config").arg(file);
    }
    command
        .arg("--")
        .arg(image)
        .uid(user.uid)
        .gid(user.gid)
        .env_clear()
        .env("HOME", &user.home)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("PATH", "/usr/bin:/bin")
        .envs(
            ["FERRY_INSECURE_REGISTRIES", "SSL_CERT_FILE"]
                .iter()
                .filter_map(|v| std::env::var_os(v).map(|value| (*v, value))),
        )
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    let output = command.output().map_err(|e| {
        format!(
            "--container={image}: cannot resolve it as {} ({e})",
            user.name
        )
    })?;
    match Resolution::from_answer(&output.stdout) {
        Some(Ok(answer)) => Ok(answer.pinned()),
        Some(Err(error)) => Err(error),
        None => Err(format!(
            "{image}: resolving it as {} gave no answer (exit status {})",
            user.name, output.status
        )),
    }
}

fn resolve(args: &ResolveArgs) -> Result<Answer, String> {
    let image = args.image.as_str();
    let fail = |why: String| format!("--container={image}: {why}");
    let site = load_site(args.site_config.as_deref()).map_err(fail)?;
    let site_stores: Vec<Store> = site
        .image_stores
        .iter()
        .filter_map(|dir| Store::open_read_only(dir).ok())
        .collect();
    let me = caller().map_err(fail)?;
    let user_root = match site.user_image_store_for(&me.name, &me.home) {
        Some(dir) => dir,
        None => Store::user_default().ok_or_else(|| {
            fail("no image store: neither XDG_CACHE_HOME nor a home folder is known".into())
        })?,
    };
    if let Some(hex) = image.strip_prefix("sha256:") {
        let digest = Digest::parse(image).ok_or_else(|| {
            fail(format!(
                "{hex:?} is not a SHA-256 digest (64 hexadecimal digits)"
            ))
        })?;
        let user_store = Store::open_read_only(&user_root).ok();
        for store in site_stores.iter().chain(user_store.iter()) {
            if let Some(entry) = store.by_image(&digest).map_err(|e| fail(e.to_string()))? {
                if !args.local {
                    check_visible(store.root(), &site, &user_root).map_err(fail)?;
                }
                store.touch(&entry);
                return Ok(Answer {
                    reference: entry.reference.first().cloned(),
                    entry,
                });
            }
        }
        return Err(fail(format!(
            "no stored image has this digest (searched {}); pull it first (ferry pull docker://REF) or give the image file",
            searched(&site_stores, &user_root)
        )));
    }
    let options = pull_options(
        args.platform.as_deref(),
        &args.insecure_registries,
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
    )
    .map_err(fail)?;
    let resolved = registry::resolve(image, &options).map_err(|e| e.to_string())?;
    for store in &site_stores {
        if let Some(entry) = stored(store, &resolved).map_err(fail)? {
            return Ok(Answer {
                entry,
                reference: Some(resolved.reference.clone()),
            });
        }
    }
    if !args.local {
        check_visible(&user_root, &site, &user_root).map_err(fail)?;
    }
    let user_store = Store::open(&user_root).map_err(|e| fail(e.to_string()))?;
    let entry = stored_or_pulled(&user_store, &resolved, Compression::Gzip)?;
    Ok(Answer {
        entry,
        reference: Some(resolved.reference),
    })
}

/// An image resolved for a job must be where the compute nodes see it: a site store
/// (the admins chose it), the user's store where the site placed it, or a store on a
/// network or cluster file system.
fn check_visible(store: &Path, site: &Site, user_root: &Path) -> Result<(), String> {
    if site.image_stores.iter().any(|d| d == store) || site.user_image_store.is_some() {
        return Ok(());
    }
    // The store may not exist yet: judge the folder it will be made in.
    let existing = user_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let fs = store::file_system_of(existing).map_err(|e| {
        format!(
            "cannot tell where the image store {} lies ({e})",
            user_root.display()
        )
    })?;
    if fs.shared {
        return Ok(());
    }
    Err(format!(
        "your image store {} is on a local file system ({}) that the compute nodes may not see; ask the administrators to set user_image_store in the site file to a shared folder, or pull to a shared folder yourself (ferry pull REF /shared/path/image.sqfs) and use --container=/shared/path/image.sqfs",
        user_root.display(),
        fs.name
    ))
}

fn searched(site_stores: &[Store], user_root: &Path) -> String {
    site_stores
        .iter()
        .map(|s| s.root().display().to_string())
        .chain(std::iter::once(user_root.display().to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}
