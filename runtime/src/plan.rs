//! The pure part of assembling a root: from the request (the site's policy included)
//! and what the opened image is, the whole list of mount operations, in order, with
//! every flag that makes the container safe decided here, where a reader and the unit
//! tests can see it. No system calls: `assemble` performs the list through the closed
//! set of privileged calls in `privileged`.
//!
//! The rules the list keeps (each test below checks one):
//! - every mount is `nosuid`; every one is `nodev` but the bind of the host's `/dev`;
//! - the image is mounted read-only, and the root is remounted read-only before pivot
//!   unless the request asks for a writable root (then only `nosuid,nodev`: its writes
//!   go to the tmpfs upper layer, whose size bounds them);
//! - attributes apply to a bind and every mount below it (recursive binds);
//! - sources are named by who opens them: the user's inputs as the user, the site's and
//!   ferry's as root;
//! - binds go parents first (site and ferry binds before the user's at equal depth, so
//!   a user's bind may cover a site's, never the other way round), then the root goes
//!   read-only, and the pivot is last.

use crate::error::Result;
use crate::image::{Format, Method};
use crate::mount_error::MountError;
use crate::request::{Request, RootAccess, BIN_DIR, HOST_ROOT};
use crate::share::SHARED_IMAGE;
use std::path::{Path, PathBuf};

/// Where a bind's source comes from, and so whose rights open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// User input (home, working folder, `--container-mounts`): opened by a process
    /// that is the user, so it grants nothing the user could not reach.
    AsUser(PathBuf),
    /// Chosen by ferry or the admin (/proc, /dev, Slurm's folders): opened as root.
    Host(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::AsUser(p) | Source::Host(p) => p,
        }
    }

    pub fn as_user(&self) -> bool {
        matches!(self, Source::AsUser(_))
    }
}

/// Per-mount flags. Only ever added: a host mount's own `ro` or `noexec` stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

impl Attrs {
    /// What every mount gets: no setuid programs, no device nodes.
    pub const SAFE: Attrs = Attrs {
        readonly: false,
        nosuid: true,
        nodev: true,
    };
    pub const READ_ONLY: Attrs = Attrs {
        readonly: true,
        ..Attrs::SAFE
    };
    /// The host's /dev only: its device nodes must work (GPUs, /dev/null).
    pub const DEVICES: Attrs = Attrs {
        nodev: false,
        ..Attrs::SAFE
    };
}

/// How the image's file system gets mounted (from its format and the site's method).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageMount {
    /// A kernel driver on a read-only loop device over `size` bytes from `offset`
    /// (0: to the end).
    Kernel {
        fstype: &'static str,
        options: Option<&'static str>,
        offset: u64,
        size: u64,
        /// For the error message: "mounting the SquashFS".
        what: &'static str,
    },
    /// squashfuse, as the user, reading the SquashFS that starts at `offset`; or a copy
    /// of the job's batch step's mount of the same file.
    Fuse { offset: u64 },
    /// A root folder, bound.
    Folder,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileContent {
    /// Copy of a host file read as root (/etc/hosts, /etc/resolv.conf).
    HostCopy(PathBuf),
    /// The image's file with the user's entry added.
    Passwd,
    Group,
}

/// One step of building the container, in the order `assemble` performs them. Paths
/// of `Tmpfs` to `OpenRoot` are host paths of the staging area; later ones are inside
/// the new root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The staging tmpfs, which is also the writable layer (`size` bytes).
    Tmpfs {
        target: PathBuf,
        size: u64,
        attrs: Attrs,
    },
    /// A folder in the staging tmpfs.
    Mkdir {
        path: PathBuf,
    },
    MountImage {
        how: ImageMount,
        target: PathBuf,
        attrs: Attrs,
    },
    /// The writable layer over the image: the container's root.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
        attrs: Attrs,
    },
    /// Recursive binds of / or /tmp skip what is below (the staging tree), instead of
    /// copying the container into itself. After the overlay, which clones its layers'
    /// mounts.
    MakeUnbindable {
        target: PathBuf,
    },
    /// From here on, destinations resolve inside this root (never by host names).
    OpenRoot {
        path: PathBuf,
    },
    /// The image's `/.ferry/image.json`, read before any bind: only the image answers.
    ReadImageConfig,
    /// Keeps the image mount at `dest` in the root for the job's other steps (`share`);
    /// done only when this container started its own squashfuse.
    ShareImageMount {
        source: PathBuf,
        dest: PathBuf,
        attrs: Attrs,
    },
    WriteFile {
        dest: PathBuf,
        content: FileContent,
    },
    Symlink {
        dest: PathBuf,
        target: PathBuf,
    },
    Bind(Bind),
    /// The user's home folder in a writable root without a home bind: made (with any
    /// missing folders above it, root's) and given to the user when the image has none.
    HomeFolder {
        dest: PathBuf,
    },
    /// Remounts the root with `attrs` (read-only unless asked for a writable root: then
    /// only the binds and the writable layer take writes).
    RemountRoot {
        attrs: Attrs,
    },
    /// Makes the root `/` and detaches the host's.
    Pivot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: Source,
    pub dest: PathBuf,
    /// With the mounts below the source, each restricted by `attrs` too.
    pub recursive: bool,
    pub attrs: Attrs,
    /// Skipped, not fatal, when its source cannot be opened.
    pub optional: bool,
    /// The user chose the destination (`--container-mounts`): the site's allowed
    /// destinations apply to where it resolves inside the image, not to its text.
    pub user_destination: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    /// Where the command starts unless the image's configuration says otherwise.
    pub workdir: PathBuf,
}

impl Plan {
    pub fn binds(&self) -> impl Iterator<Item = &Bind> {
        self.ops.iter().filter_map(|op| match op {
            Op::Bind(b) => Some(b),
            _ => None,
        })
    }
}

/// The staging folder. Mounting a tmpfs over it in the new namespace hides nothing the
/// container needs: every host source, /tmp included, is opened before that.
pub const STAGING: &str = "/tmp";
const SYSTEM_BINDS: &[&str] = &["/proc", "/sys", "/dev", "/tmp"];
const HOST_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];
const LAUNCHER_NAME: &str = "ferry-host-exec";

/// The whole list for `req` and an image of `format` mounted by `method` (as
/// `image::method_for` chose).
pub fn plan(req: &Request, format: Format, method: Method) -> Result<Plan> {
    let staging = Path::new(STAGING);
    let image = staging.join("image");
    let root = staging.join("root");
    let mut ops = vec![Op::Tmpfs {
        target: staging.into(),
        size: req.writable_layer_size,
        attrs: Attrs::SAFE,
    }];
    ops.extend(["image", "upper", "work", "root"].map(|d| Op::Mkdir {
        path: staging.join(d),
    }));
    let how = image_mount(format, method).ok_or_else(|| MountError::NoImageMount {
        path: req.image.clone(),
        format: format.name(),
        method,
    })?;
    let fuse = matches!(how, ImageMount::Fuse { .. });
    ops.push(Op::MountImage {
        how,
        target: image.clone(),
        attrs: Attrs::READ_ONLY,
    });
    ops.push(Op::Overlay {
        lower: image.clone(),
        upper: staging.join("upper"),
        work: staging.join("work"),
        target: root.clone(),
        attrs: Attrs::SAFE,
    });
    ops.push(Op::MakeUnbindable {
        target: staging.into(),
    });
    ops.push(Op::OpenRoot { path: root });
    ops.push(Op::ReadImageConfig);
    if fuse {
        ops.push(Op::ShareImageMount {
            source: image,
            dest: SHARED_IMAGE.into(),
            attrs: Attrs::READ_ONLY,
        });
    }
    ops.extend(
        files()
            .into_iter()
            .map(|(dest, content)| Op::WriteFile { dest, content }),
    );
    if let Some(clients) = &req.slurm_clients {
        ops.extend(clients.commands.iter().map(|c| Op::Symlink {
            dest: Path::new(BIN_DIR).join(c),
            target: LAUNCHER_NAME.into(),
        }));
    }
    // The CDI libraries' SONAME links (libcuda.so.1 -> libcuda.so.550.54.15), in the
    // writable layer before any bind: never written through a bind into a host folder.
    ops.extend(req.devices.links.iter().map(|l| Op::Symlink {
        dest: l.dest.clone(),
        target: l.target.clone(),
    }));
    if req.root == RootAccess::Writable && !req.mount_home {
        // The user's home in the writable layer (made when the image has none), so
        // `pip install --user` and the like land in the container.
        ops.push(Op::HomeFolder {
            dest: req.user.home.clone(),
        });
    }
    ops.extend(binds(req).into_iter().map(Op::Bind));
    ops.push(Op::RemountRoot {
        attrs: match req.root {
            RootAccess::ReadOnly => Attrs::READ_ONLY,
            RootAccess::Writable => Attrs::SAFE,
        },
    });
    ops.push(Op::Pivot);
    Ok(Plan {
        ops,
        workdir: default_workdir(req),
    })
}

/// Where the command starts without an image configuration's say: the explicit
/// request, else the caller's folder, else home.
pub fn default_workdir(req: &Request) -> PathBuf {
    req.workdir
        .clone()
        .or_else(|| req.cwd.clone())
        .unwrap_or_else(|| req.user.home.clone())
}

/// How each format is mounted by each method; None for the pairs `image::method_for`
/// never makes.
fn image_mount(format: Format, method: Method) -> Option<ImageMount> {
    let kernel = |fstype, options, offset, size, what| ImageMount::Kernel {
        fstype,
        options,
        offset,
        size,
        what,
    };
    Some(match (method, format) {
        (Method::Fuse, Format::Squashfs) => ImageMount::Fuse { offset: 0 },
        // squashfuse reads the root partition straight from the file.
        (Method::Fuse, Format::Sif { offset, .. }) => ImageMount::Fuse { offset },
        (Method::Bind, Format::Directory) => ImageMount::Folder,
        (Method::Kernel, Format::Squashfs) => {
            kernel("squashfs", None, 0, 0, "mounting the SquashFS")
        }
        // The root partition straight from the file: the loop device shows only it.
        (Method::Kernel, Format::Sif { offset, size }) => kernel(
            "squashfs",
            None,
            offset,
            size,
            "mounting the SIF's SquashFS partition",
        ),
        // The ext4 driver reads ext2 and ext3 too. `noload`: never replay the journal
        // of an image that was not unmounted cleanly (the device is read-only: replaying
        // would fail the mount, and root must not write into a user's file).
        (Method::Kernel, Format::Ext) => {
            kernel("ext4", Some("noload"), 0, 0, "mounting the ext image")
        }
        _ => return None,
    })
}

/// Files written into the writable layer before any bind.
fn files() -> Vec<(PathBuf, FileContent)> {
    let mut files = vec![
        ("/etc/passwd".into(), FileContent::Passwd),
        ("/etc/group".into(), FileContent::Group),
    ];
    files.extend(
        HOST_FILES
            .iter()
            .map(|p| (PathBuf::from(p), FileContent::HostCopy(p.into()))),
    );
    files
}

/// Every bind, in mount order: a parent before anything mounted below it.
fn binds(req: &Request) -> Vec<Bind> {
    let host = |source: &Path, dest: &Path, readonly: bool| Bind {
        source: Source::Host(source.into()),
        dest: dest.into(),
        recursive: true,
        attrs: if readonly {
            Attrs::READ_ONLY
        } else {
            Attrs::SAFE
        },
        optional: false,
        user_destination: false,
    };
    let mut binds: Vec<Bind> = SYSTEM_BINDS
        .iter()
        .map(|p| Bind {
            attrs: if *p == "/dev" {
                Attrs::DEVICES
            } else {
                Attrs::SAFE
            },
            ..host(Path::new(p), Path::new(p), false)
        })
        .collect();
    if let Some(clients) = &req.slurm_clients {
        binds.push(host(Path::new("/"), Path::new(HOST_ROOT), true));
        binds.push(Bind {
            recursive: false,
            ..host(
                &clients.launcher,
                &Path::new(BIN_DIR).join(LAUNCHER_NAME),
                true,
            )
        });
    }
    binds.extend(req.host_binds.iter().map(|m| Bind {
        optional: true,
        ..host(&m.source, &m.dest, m.readonly)
    }));
    binds.extend(req.site_mounts.iter().map(|m| Bind {
        optional: m.optional,
        ..host(&m.source, &m.dest, m.readonly)
    }));
    // A CDI device node shown at another path under /dev: the host's node (checked
    // to be one when the device was resolved), the only binds besides /dev itself
    // that keep device nodes working.
    binds.extend(req.devices.node_binds.iter().map(|n| Bind {
        recursive: false,
        attrs: Attrs::DEVICES,
        ..host(&n.host, &n.container, false)
    }));
    let users = |source: &Path, readonly: bool| Bind {
        source: Source::AsUser(source.into()),
        dest: source.into(),
        recursive: true,
        attrs: if readonly {
            Attrs::READ_ONLY
        } else {
            Attrs::SAFE
        },
        optional: true,
        user_destination: false,
    };
    if req.mount_home {
        binds.push(users(&req.user.home, false));
    }
    if let Some(cwd) = &req.cwd {
        if !visible_through(&binds, cwd) {
            binds.push(users(cwd, false));
        }
    }
    // A CDI spec's mounts (driver libraries, tools): root's spec, but the files are
    // opened as the user, like the user's own binds, and always read-only.
    binds.extend(req.devices.mounts.iter().map(|m| Bind {
        dest: m.container_path.clone(),
        optional: false,
        ..users(&m.host_path, true)
    }));
    binds.extend(req.mounts.iter().map(|m| Bind {
        dest: m.dest.clone(),
        optional: false,
        user_destination: true,
        ..users(&m.source, m.readonly)
    }));
    // Parents first; equal depth keeps the order above (later wins over earlier).
    binds.sort_by_key(|b| b.dest.components().count());
    binds
}

/// True when `path` already shows at the same place through a bind of a host folder
/// onto itself (the working directory inside the home folder, or in /tmp).
fn visible_through(binds: &[Bind], path: &Path) -> bool {
    path == Path::new("/")
        || binds.iter().any(|b| {
            b.source.path() == b.dest
                && b.recursive
                && path.starts_with(&b.dest)
                && b.dest != Path::new("/")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MountSpec, SlurmClients};
    use crate::site::SiteMount;

    fn request() -> Request {
        Request::example()
    }

    fn squashfs(req: &Request) -> Plan {
        plan(req, Format::Squashfs, Method::Kernel).unwrap()
    }

    fn with_clients(mut req: Request) -> Request {
        req.slurm_clients = Some(SlurmClients {
            launcher: "/usr/libexec/ferry/ferry-host-exec".into(),
            commands: vec!["srun".into(), "sbatch".into()],
        });
        req
    }

    /// A request with every kind of bind: system, Slurm's, the site's, host binds,
    /// home, a working folder outside home, the user's.
    fn everything() -> Request {
        let mut req = with_clients(request());
        req.cwd = Some("/scratch/alice/run".into());
        req.host_binds = vec![MountSpec {
            source: "/var/spool/slurm".into(),
            dest: "/var/spool/slurm".into(),
            readonly: true,
        }];
        req.site_mounts = vec![SiteMount {
            source: "/apps".into(),
            dest: "/apps".into(),
            readonly: true,
            optional: true,
        }];
        req.mounts = vec![
            MountSpec {
                source: "/data/x".into(),
                dest: "/in/deep/x".into(),
                readonly: true,
            },
            MountSpec {
                source: "/data".into(),
                dest: "/in".into(),
                readonly: false,
            },
        ];
        req
    }

    fn dests(plan: &Plan) -> Vec<String> {
        plan.binds().map(|b| b.dest.display().to_string()).collect()
    }

    fn bind<'p>(plan: &'p Plan, dest: &str) -> &'p Bind {
        plan.binds()
            .find(|b| b.dest == Path::new(dest))
            .unwrap_or_else(|| panic!("no bind at {dest}"))
    }

    /// Every flag set an operation gives a mount.
    fn all_attrs(plan: &Plan) -> Vec<(String, Attrs)> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                Op::Tmpfs { target, attrs, .. }
                | Op::MountImage { target, attrs, .. }
                | Op::Overlay { target, attrs, .. } => Some((target.display().to_string(), *attrs)),
                Op::ShareImageMount { dest, attrs, .. } => {
                    Some((dest.display().to_string(), *attrs))
                }
                Op::Bind(b) => Some((b.dest.display().to_string(), b.attrs)),
                Op::RemountRoot { attrs } => Some(("/".into(), *attrs)),
                _ => None,
            })
            .collect()
    }

    fn position(plan: &Plan, wanted: impl Fn(&Op) -> bool) -> usize {
        plan.ops.iter().position(wanted).expect("an operation")
    }

    #[test]
    fn every_mount_is_nosuid() {
        for (format, method) in [
            (Format::Squashfs, Method::Kernel),
            (Format::Squashfs, Method::Fuse),
            (Format::Directory, Method::Bind),
        ] {
            let plan = plan(&everything(), format, method).unwrap();
            let attrs = all_attrs(&plan);
            assert!(attrs.len() > 10, "{attrs:?}");
            for (dest, attrs) in attrs {
                assert!(attrs.nosuid, "{dest} allows setuid programs");
            }
        }
    }

    #[test]
    fn only_the_hosts_dev_keeps_device_nodes() {
        let mut req = everything();
        // The user's bind at /dev is theirs: no device nodes through it.
        req.mounts.push(MountSpec {
            source: "/home/alice/devs".into(),
            dest: "/dev".into(),
            readonly: false,
        });
        let plan = plan(&req, Format::Squashfs, Method::Fuse).unwrap();
        let with_devices: Vec<&Bind> = plan.binds().filter(|b| !b.attrs.nodev).collect();
        assert_eq!(with_devices.len(), 1, "{with_devices:?}");
        assert_eq!(with_devices[0].source, Source::Host("/dev".into()));
        assert_eq!(with_devices[0].dest, Path::new("/dev"));
        let nodev = all_attrs(&plan).iter().filter(|(_, a)| a.nodev).count();
        assert_eq!(nodev, all_attrs(&plan).len() - 1);
    }

    #[test]
    fn cdi_mounts_are_the_users_read_only_and_only_device_node_binds_keep_devices() {
        use crate::cdi::{Applied, DeviceMount, Link, NodeBind};
        let mut req = everything();
        req.devices = Applied {
            devices: vec!["example.com/gpu=0".into()],
            node_binds: vec![NodeBind {
                host: "/dev/fake1".into(),
                container: "/dev/gpu0".into(),
            }],
            mounts: vec![DeviceMount {
                host_path: "/usr/lib/libfake.so.1".into(),
                container_path: "/usr/lib64/libfake.so.1".into(),
                from: "CDI device example.com/gpu=0 (spec /etc/cdi/x.json)".into(),
            }],
            links: vec![Link {
                dest: "/usr/lib64/libfake.so.0".into(),
                target: "libfake.so.1".into(),
            }],
            ..Applied::default()
        };
        let plan = squashfs(&req);
        let lib = bind(&plan, "/usr/lib64/libfake.so.1");
        assert_eq!(lib.source, Source::AsUser("/usr/lib/libfake.so.1".into()));
        assert_eq!(lib.attrs, Attrs::READ_ONLY);
        assert!(!lib.optional && !lib.user_destination);
        let node = bind(&plan, "/dev/gpu0");
        assert_eq!(node.source, Source::Host("/dev/fake1".into()));
        assert_eq!(node.attrs, Attrs::DEVICES);
        assert!(!node.recursive && !node.optional);
        let with_devices: Vec<String> = plan
            .binds()
            .filter(|b| !b.attrs.nodev)
            .map(|b| b.dest.display().to_string())
            .collect();
        assert_eq!(with_devices, ["/dev", "/dev/gpu0"]);
        // The device node goes on top of the host's /dev, after it.
        let d = dests(&plan);
        let at = |x: &str| d.iter().position(|p| p == x).unwrap();
        assert!(at("/dev") < at("/dev/gpu0"));
        // The SONAME link is made in the writable layer before any bind (a bind could
        // put a host folder there) and before the root goes read-only.
        let link = plan
            .ops
            .iter()
            .position(|op| {
                *op == Op::Symlink {
                    dest: "/usr/lib64/libfake.so.0".into(),
                    target: "libfake.so.1".into(),
                }
            })
            .expect("the SONAME link");
        let first_bind = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::Bind(_)))
            .unwrap();
        assert!(link < first_bind);
    }

    #[test]
    fn the_image_is_read_only_and_so_is_the_root_before_the_pivot() {
        let plan = squashfs(&request());
        let Some(Op::MountImage { attrs, .. }) = plan
            .ops
            .iter()
            .find(|op| matches!(op, Op::MountImage { .. }))
        else {
            panic!("no image mount");
        };
        assert_eq!(*attrs, Attrs::READ_ONLY);
        let n = plan.ops.len();
        assert_eq!(
            plan.ops[n - 2],
            Op::RemountRoot {
                attrs: Attrs::READ_ONLY
            }
        );
        assert_eq!(plan.ops[n - 1], Op::Pivot);
        let last_bind = plan
            .ops
            .iter()
            .rposition(|op| matches!(op, Op::Bind(_)))
            .unwrap();
        assert!(last_bind < n - 2);
    }

    #[test]
    fn a_writable_root_stays_nosuid_nodev_over_a_read_only_image_of_the_asked_size() {
        let mut req = everything();
        req.root = RootAccess::Writable;
        req.writable_layer_size = 3 << 30;
        for (format, method) in [
            (Format::Squashfs, Method::Kernel),
            (Format::Squashfs, Method::Fuse),
            (Format::Directory, Method::Bind),
        ] {
            let plan = plan(&req, format, method).unwrap();
            let n = plan.ops.len();
            assert_eq!(
                plan.ops[n - 2..],
                [Op::RemountRoot { attrs: Attrs::SAFE }, Op::Pivot]
            );
            assert_eq!(
                plan.ops[0],
                Op::Tmpfs {
                    target: STAGING.into(),
                    size: 3 << 30,
                    attrs: Attrs::SAFE
                }
            );
            // The image under it stays read-only, and so do the read-only binds.
            assert!(plan.ops.iter().any(|op| matches!(
                op,
                Op::MountImage {
                    attrs: Attrs::READ_ONLY,
                    ..
                }
            )));
            assert_eq!(bind(&plan, "/apps").attrs, Attrs::READ_ONLY);
            for (dest, attrs) in all_attrs(&plan) {
                assert!(attrs.nosuid, "{dest}");
            }
        }
        // Everything else is the read-only plan's.
        let read_only = squashfs(&everything());
        let writable = squashfs(&req);
        let n = writable.ops.len();
        assert_eq!(read_only.ops[1..n - 2], writable.ops[1..n - 2]);
    }

    #[test]
    fn read_only_host_and_site_binds_stay_read_only() {
        let plan = squashfs(&everything());
        assert_eq!(bind(&plan, "/var/spool/slurm").attrs, Attrs::READ_ONLY);
        assert_eq!(bind(&plan, "/apps").attrs, Attrs::READ_ONLY);
        assert_eq!(bind(&plan, "/in/deep/x").attrs, Attrs::READ_ONLY);
        assert_eq!(bind(&plan, "/in").attrs, Attrs::SAFE);
        assert_eq!(bind(&plan, "/home/alice").attrs, Attrs::SAFE);
        assert_eq!(bind(&plan, HOST_ROOT).attrs, Attrs::READ_ONLY);
    }

    #[test]
    fn binds_carry_their_submounts_but_the_launcher_file() {
        let plan = squashfs(&everything());
        for b in plan.binds() {
            let launcher = b.dest == Path::new(BIN_DIR).join(LAUNCHER_NAME);
            assert_eq!(b.recursive, !launcher, "{b:?}");
        }
    }

    #[test]
    fn binds_go_parents_first_then_site_before_user_at_equal_depth() {
        let mut req = everything();
        // The same destination from the site and from the user: the user's goes on top.
        req.mounts.push(MountSpec {
            source: "/home/alice/apps".into(),
            dest: "/apps".into(),
            readonly: false,
        });
        let plan = squashfs(&req);
        let d = dests(&plan);
        let depths: Vec<usize> = plan.binds().map(|b| b.dest.components().count()).collect();
        assert!(depths.windows(2).all(|w| w[0] <= w[1]), "{d:?}");
        let at_apps: Vec<&Source> = plan
            .binds()
            .filter(|b| b.dest == Path::new("/apps"))
            .map(|b| &b.source)
            .collect();
        assert_eq!(
            at_apps,
            [
                &Source::Host("/apps".into()),
                &Source::AsUser("/home/alice/apps".into())
            ]
        );
        assert_eq!(&d[..4], ["/proc", "/sys", "/dev", "/tmp"]);
        let parent = d.iter().position(|x| x == "/in").unwrap();
        let child = d.iter().position(|x| x == "/in/deep/x").unwrap();
        assert!(parent < child);
    }

    #[test]
    fn without_mount_home_the_home_folder_is_not_bound() {
        let mut req = everything();
        let home = req.user.home.clone();
        assert!(squashfs(&req).binds().any(|b| b.dest == home));
        req.mount_home = false;
        assert!(!squashfs(&req).binds().any(|b| b.dest == home));
    }

    #[test]
    fn the_users_sources_are_opened_as_the_user_and_the_sites_as_root() {
        let plan = squashfs(&everything());
        for dest in ["/home/alice", "/scratch/alice/run", "/in", "/in/deep/x"] {
            assert!(bind(&plan, dest).source.as_user(), "{dest}");
        }
        for dest in ["/proc", "/dev", "/apps", "/var/spool/slurm", HOST_ROOT] {
            assert!(!bind(&plan, dest).source.as_user(), "{dest}");
        }
    }

    #[test]
    fn only_the_users_own_destinations_are_checked_and_required() {
        let plan = squashfs(&everything());
        for b in plan.binds() {
            let users = b.dest.starts_with("/in");
            assert_eq!(b.user_destination, users, "{b:?}");
            if users {
                assert!(!b.optional, "{b:?}");
            }
        }
        assert!(bind(&plan, "/apps").optional); // the site said so
        assert!(!bind(&plan, "/proc").optional);
        assert!(bind(&plan, "/home/alice").optional);
    }

    #[test]
    fn a_working_folder_inside_home_is_not_bound_again() {
        let plan = squashfs(&request());
        assert_eq!(
            dests(&plan),
            ["/proc", "/sys", "/dev", "/tmp", "/home/alice"]
        );
        assert_eq!(plan.workdir, PathBuf::from("/home/alice/project"));
        let mut req = request();
        req.cwd = Some("/tmp/job".into());
        assert!(!dests(&squashfs(&req)).contains(&"/tmp/job".to_string()));
        req.cwd = Some("/scratch/alice/run".into());
        let outside = squashfs(&req);
        let cwd = bind(&outside, "/scratch/alice/run");
        assert!(cwd.source.as_user() && cwd.optional);
    }

    #[test]
    fn slurm_clients_only_when_asked() {
        let without = squashfs(&request());
        assert!(without.binds().all(|b| !b.dest.starts_with("/.ferry")));
        assert!(!without
            .ops
            .iter()
            .any(|op| matches!(op, Op::Symlink { .. })));

        let with = squashfs(&with_clients(request()));
        let host_root = bind(&with, HOST_ROOT);
        assert_eq!(host_root.source, Source::Host("/".into()));
        let launcher = bind(&with, "/.ferry/bin/ferry-host-exec");
        assert_eq!(
            launcher.source,
            Source::Host("/usr/libexec/ferry/ferry-host-exec".into())
        );
        let links: Vec<&Op> = with
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Symlink { .. }))
            .collect();
        assert_eq!(
            links,
            [
                &Op::Symlink {
                    dest: "/.ferry/bin/srun".into(),
                    target: "ferry-host-exec".into()
                },
                &Op::Symlink {
                    dest: "/.ferry/bin/sbatch".into(),
                    target: "ferry-host-exec".into()
                },
            ]
        );
    }

    #[test]
    fn kernel_mounts_by_format() {
        let how = |format| match plan(&request(), format, Method::Kernel)
            .unwrap()
            .ops
            .into_iter()
            .find(|op| matches!(op, Op::MountImage { .. }))
        {
            Some(Op::MountImage { how, .. }) => how,
            _ => panic!("no image mount"),
        };
        assert!(matches!(
            how(Format::Squashfs),
            ImageMount::Kernel {
                fstype: "squashfs",
                options: None,
                offset: 0,
                size: 0,
                ..
            }
        ));
        assert!(matches!(
            how(Format::Sif {
                offset: 4096,
                size: 1 << 20
            }),
            ImageMount::Kernel {
                fstype: "squashfs",
                offset: 4096,
                size: 1048576,
                ..
            }
        ));
        // Never replay an ext journal into a user's file.
        assert!(matches!(
            how(Format::Ext),
            ImageMount::Kernel {
                fstype: "ext4",
                options: Some("noload"),
                ..
            }
        ));
    }

    #[test]
    fn fuse_images_are_shared_and_folders_bound() {
        let fuse = plan(
            &request(),
            Format::Sif {
                offset: 512,
                size: 9,
            },
            Method::Fuse,
        )
        .unwrap();
        assert!(fuse.ops.contains(&Op::MountImage {
            how: ImageMount::Fuse { offset: 512 },
            target: "/tmp/image".into(),
            attrs: Attrs::READ_ONLY,
        }));
        let share = position(&fuse, |op| matches!(op, Op::ShareImageMount { .. }));
        // Kept before the image's own files are changed and anything is bound.
        assert!(share < position(&fuse, |op| matches!(op, Op::WriteFile { .. })));
        assert_eq!(
            fuse.ops[share],
            Op::ShareImageMount {
                source: "/tmp/image".into(),
                dest: SHARED_IMAGE.into(),
                attrs: Attrs::READ_ONLY
            }
        );

        let folder = plan(&request(), Format::Directory, Method::Bind).unwrap();
        assert!(folder.ops.iter().any(|op| matches!(
            op,
            Op::MountImage {
                how: ImageMount::Folder,
                attrs: Attrs::READ_ONLY,
                ..
            }
        )));
        for other in [folder, squashfs(&request())] {
            assert!(!other
                .ops
                .iter()
                .any(|op| matches!(op, Op::ShareImageMount { .. })));
        }
    }

    #[test]
    fn impossible_pairs_are_refused() {
        for (format, method) in [
            (Format::Ext, Method::Fuse),
            (Format::Squashfs, Method::Bind),
            (Format::Directory, Method::Kernel),
        ] {
            let err = plan(&request(), format, method).unwrap_err().to_string();
            assert!(err.contains("no way to mount"), "{err}");
        }
    }

    #[test]
    fn staging_comes_first_and_the_config_is_read_before_anything_is_written() {
        let mut req = request();
        req.writable_layer_size = 64 << 20;
        let plan = squashfs(&req);
        assert_eq!(
            plan.ops[..9],
            [
                Op::Tmpfs {
                    target: "/tmp".into(),
                    size: 64 << 20,
                    attrs: Attrs::SAFE
                },
                Op::Mkdir {
                    path: "/tmp/image".into()
                },
                Op::Mkdir {
                    path: "/tmp/upper".into()
                },
                Op::Mkdir {
                    path: "/tmp/work".into()
                },
                Op::Mkdir {
                    path: "/tmp/root".into()
                },
                plan.ops[5].clone(),
                Op::Overlay {
                    lower: "/tmp/image".into(),
                    upper: "/tmp/upper".into(),
                    work: "/tmp/work".into(),
                    target: "/tmp/root".into(),
                    attrs: Attrs::SAFE,
                },
                Op::MakeUnbindable {
                    target: "/tmp".into()
                },
                Op::OpenRoot {
                    path: "/tmp/root".into()
                },
            ]
        );
        assert!(matches!(plan.ops[5], Op::MountImage { .. }));
        assert_eq!(plan.ops[9], Op::ReadImageConfig);
    }

    #[test]
    fn account_and_host_files_are_written_before_any_bind() {
        let plan = squashfs(&with_clients(request()));
        let written: Vec<(String, &FileContent)> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::WriteFile { dest, content } => Some((dest.display().to_string(), content)),
                _ => None,
            })
            .collect();
        assert_eq!(
            written,
            [
                ("/etc/passwd".into(), &FileContent::Passwd),
                ("/etc/group".into(), &FileContent::Group),
                (
                    "/etc/hosts".into(),
                    &FileContent::HostCopy("/etc/hosts".into())
                ),
                (
                    "/etc/resolv.conf".into(),
                    &FileContent::HostCopy("/etc/resolv.conf".into())
                ),
            ]
        );
        let last_write = plan
            .ops
            .iter()
            .rposition(|op| matches!(op, Op::WriteFile { .. } | Op::Symlink { .. }))
            .unwrap();
        assert!(last_write < position(&plan, |op| matches!(op, Op::Bind(_))));
    }

    #[test]
    fn the_working_folder_is_asked_for_else_the_callers_else_home() {
        let mut req = request();
        req.workdir = Some("/opt/app".into());
        assert_eq!(squashfs(&req).workdir, PathBuf::from("/opt/app"));
        req.workdir = None;
        assert_eq!(squashfs(&req).workdir, PathBuf::from("/home/alice/project"));
        req.cwd = None;
        assert_eq!(squashfs(&req).workdir, PathBuf::from("/home/alice"));
    }
}
