//! The command line definition, alone in this file so that `ferry-mangen` can build the
//! man pages from it (it includes this file): clap and std only.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Run a command inside a container image (SquashFS, SIF or ext image file, or root folder)",
    long_about = "Run a command inside a container image (SquashFS, SIF or ext image file, or root folder). \
                  On a Slurm cluster, jobs use images through the ferry SPANK plugin with \
                  `srun --container=IMAGE` and `sbatch --container=IMAGE` (see ferry-spank(8)); \
                  this command runs images outside Slurm, prints image digests and checks a node."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run CMD inside IMAGE (as root, or without root where user namespaces are allowed;
    /// --user runs it as that user, as a Slurm step would)
    Run {
        /// Bind SRC (a host path) at DST inside, read-only with :ro. Repeatable.
        #[arg(long = "mount", short = 'm', value_name = "SRC[:DST[:ro]]")]
        mounts: Vec<String>,
        /// Folder inside the container to start in (default: the current folder, bound from the host)
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Apply this site file's image policy, site mounts and limits, as the plugin does
        /// (default: none; the kernel mounts the image)
        #[arg(long, value_name = "FILE")]
        site_config: Option<PathBuf>,
        /// Run as this user (default: the caller)
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Make the container's root writable: writes go to a layer in memory of SIZE
        /// (default: the site's writable_layer_size, 64M without a site file; at most its
        /// writable_layer_max) and are gone when the command ends
        #[arg(long, value_name = "SIZE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
        writable: Option<String>,
        /// Keep the container's root read-only (the default)
        #[arg(long, conflicts_with = "writable")]
        readonly: bool,
        /// When the command exits with status 0, save the container's root (the image
        /// and what the command wrote) as a new SquashFS image FILE, written as the user
        #[arg(long, value_name = "FILE", requires = "writable")]
        save: Option<PathBuf>,
        /// Without root: be root (uid and gid 0) inside the container's user namespace,
        /// to install packages into a --writable root; outside you stay yourself
        #[arg(long)]
        fakeroot: bool,
        /// Apply these CDI devices (VENDOR/CLASS=NAME, such as nvidia.com/gpu=0; a
        /// comma-separated list or repeated): their device nodes, driver files,
        /// variables and hooks from the node's CDI specs (without root: only devices
        /// whose nodes are at their own paths and whose specs run no hooks)
        #[arg(long = "device", value_name = "VENDOR/CLASS=NAME")]
        devices: Vec<String>,
        /// Image file or root folder
        image: PathBuf,
        /// The command and its arguments (default: the image's Entrypoint and Cmd, from ferry import)
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the SHA-256 digest of an image file, to pin it as IMAGE@sha256:HEX
    Digest {
        /// Verify against this digest instead (uses the node's digest cache when root);
        /// exit 1 on a mismatch
        #[arg(long, value_name = "sha256:HEX")]
        check: Option<String>,
        /// Image file
        image: PathBuf,
    },
    /// Make a reproducible SquashFS image of a root folder (same folder, same bytes)
    Build {
        /// Replace OUT if it exists
        #[arg(long)]
        force: bool,
        /// Store every file as owned by root (default: the owners on disk)
        #[arg(long)]
        all_root: bool,
        /// SquashFS compression: gzip (default) mounts on every kernel; lz4 and zstd
        /// start programs faster (less to decompress) but need Linux 3.19/4.14 on the
        /// nodes (or their squashfuse built with them); xz is smallest and slowest
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compression: Compression,
        /// Root folder (the image's /)
        rootfs: PathBuf,
        /// SquashFS image to write
        out: PathBuf,
    },
    /// Make a SquashFS image from a docker/podman save archive or an OCI image layout
    Import {
        /// Replace OUT if it exists
        #[arg(long)]
        force: bool,
        /// SquashFS compression: gzip (default) mounts on every kernel; lz4 and zstd
        /// start programs faster (less to decompress) but need Linux 3.19/4.14 on the
        /// nodes (or their squashfuse built with them); xz is smallest and slowest
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compression: Compression,
        /// docker-archive tar, OCI archive tar, or OCI layout folder
        archive: PathBuf,
        /// SquashFS image to write
        out: PathBuf,
    },
    /// List the image store (reference, manifest and image digests, size, last use);
    /// `rm` and `prune` tidy it
    Images {
        #[command(subcommand)]
        action: Option<ImagesAction>,
        /// The store (default: $XDG_CACHE_HOME/ferry/images, else ~/.cache/ferry/images)
        #[arg(long, value_name = "DIR", global = true)]
        store: Option<PathBuf>,
        /// Print JSON: every field of every entry, full digests and the image's path
        #[arg(long)]
        json: bool,
    },
    /// List this node's kept image mounts (the image cache: image, user, age, size);
    /// `drop` removes them (needs root)
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
        /// Print JSON: every field of every entry
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from an OCI registry (docker://[HOST/]NAME[:TAG][@sha256:HEX]) into the
    /// image store, or into OUT.sqfs; a reference whose manifest is already stored
    /// downloads nothing
    Pull {
        /// The store to pull into (default: the site's user_image_store, else
        /// $XDG_CACHE_HOME/ferry/images, else ~/.cache/ferry/images); admins fill a
        /// site store with --store DIR
        #[arg(long, value_name = "DIR", conflicts_with = "out")]
        store: Option<PathBuf>,
        /// The site file that places the user's store (default /etc/ferry/site.json if it exists)
        #[arg(long, value_name = "FILE")]
        site_config: Option<PathBuf>,
        /// Replace OUT if it exists
        #[arg(long)]
        force: bool,
        /// SquashFS compression: gzip (default) mounts on every kernel; lz4 and zstd
        /// start programs faster (less to decompress) but need Linux 3.19/4.14 on the
        /// nodes (or their squashfuse built with them); xz is smallest and slowest
        #[arg(long, value_enum, default_value_t = Compression::Gzip)]
        compression: Compression,
        /// The platform to pick from a multi-platform image (default: this machine's)
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Reach this registry over plain HTTP instead of HTTPS. Repeatable; also
        /// FERRY_INSECURE_REGISTRIES (comma-separated)
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// docker://python:3.12, docker://quay.io/org/name:tag, docker://ghcr.io/org/app@sha256:HEX
        reference: String,
        /// Write this SquashFS file instead of storing the image
        out: Option<PathBuf>,
    },
    /// Resolve a registry reference (docker://...) or a stored image's digest (sha256:HEX)
    /// to a stored image file pinned by its SHA-256, pulling it if needed: what
    /// `--container=docker://REF` does at submission
    Resolve {
        /// Print the answer (or the error) as JSON on stdout
        #[arg(long)]
        json: bool,
        /// The site file that names the site stores and places the user's store
        /// (default /etc/ferry/site.json if it exists)
        #[arg(long, value_name = "FILE")]
        site_config: Option<PathBuf>,
        /// The platform to pick from a multi-platform image (default: this machine's)
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// Reach this registry over plain HTTP instead of HTTPS. Repeatable; also
        /// FERRY_INSECURE_REGISTRIES (comma-separated)
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        /// The image is used on this machine only (ferry run): the store need not be on a
        /// file system the compute nodes share
        #[arg(long)]
        local: bool,
        /// docker://REF or sha256:HEX
        image: String,
    },
    /// Show what an image is: format, size, SquashFS compression, SIF partitions, the stored config
    Inspect {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Image file or root folder
        image: PathBuf,
    },
    /// Validate a site file (default /etc/ferry/site.json) and print the effective policy;
    /// exit 1 on errors or when this host cannot apply it
    CheckConfig {
        /// The site file
        file: Option<PathBuf>,
    },
    /// Print ferry's version and the Slurm version its plugin is built for
    Version,
    /// Check that this node can run ferry jobs; one line per finding, with the fix.
    /// Exit status 0: ready; 1: something must be fixed
    Doctor {
        /// Check the node installed under DIR instead of / (a chroot, a node image);
        /// every file doctor reads is taken under DIR
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Slurm's plugstack.conf (under --root)
        #[arg(long, value_name = "FILE", default_value = "/etc/slurm/plugstack.conf")]
        plugstack: PathBuf,
        /// Check instead whether this machine lets you run images without root (ferry
        /// run as a user); the default when doctor is not run as root
        #[arg(long)]
        user: bool,
    },
    /// Keep a job's named container until the job ends on this node (started by the plugin)
    #[command(hide = true)]
    NamedWarden {
        #[arg(long)]
        job: u32,
        #[arg(long)]
        node: String,
        #[arg(long)]
        name: String,
        /// PID/FD: the process that has the container's namespace open, and the descriptor
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand)]
pub enum ImagesAction {
    /// Remove entries, each named by a reference as listed, a manifest digest or an
    /// image digest (sha256:HEX); an image file still named by another entry stays
    Rm {
        /// A reference as `ferry images` lists it, or sha256:HEX (a manifest or image digest)
        #[arg(required = true, value_name = "WHAT")]
        what: Vec<String>,
    },
    /// Remove the least recently used entries until the images take at most SIZE, plus
    /// image files no entry names and work left by interrupted pulls (older than a day)
    Prune {
        /// The most the store's images may take: bytes, or with K, M, G, T (powers of 1024)
        #[arg(long, value_name = "SIZE")]
        max_size: String,
    },
}

#[derive(Subcommand)]
pub enum CacheAction {
    /// Drop kept mounts, each named by its key or its image's path, or all of them
    /// (--all: a drained node left clean: no kept mount, loop device or server)
    Drop {
        /// Every entry
        #[arg(long, conflicts_with = "what")]
        all: bool,
        /// A key as `ferry cache` lists it, or an image's path
        #[arg(value_name = "KEY|IMAGE", required_unless_present = "all")]
        what: Vec<String>,
    },
    /// Expire kept mounts on time until none is left (started by the plugin; one at a time)
    #[command(hide = true)]
    Janitor {
        #[arg(long, value_name = "SECONDS")]
        ttl: u64,
        #[arg(long, value_name = "N")]
        max_images: usize,
        #[arg(long, value_name = "BYTES")]
        max_bytes: u64,
    },
}

/// mksquashfs's compressors that the kernel's SquashFS driver and squashfuse read
/// (`ferry_runtime::squash::Compression` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Gzip,
    Lzo,
    Lz4,
    Zstd,
    Xz,
}
