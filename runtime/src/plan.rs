//! The pure part of assembling a root: from a request, decide which binds, files and
//! links the container gets and in which order. No system calls here, so the plan is
//! unit-tested without root; `assemble` carries it out.

use crate::request::{Request, BIN_DIR, HOST_ROOT};
use std::path::{Path, PathBuf};

/// Whose rights a bind source is opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opener {
    /// User input: opened with the user's credentials, so it grants nothing new.
    User,
    /// Chosen by ferry or the admin (/proc, /dev, Slurm's folders): opened as root.
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub opener: Opener,
    pub readonly: bool,
    pub recursive: bool,
    /// A bind that is skipped, not fatal, when its source cannot be opened.
    pub optional: bool,
    /// Device nodes work below it (only the host's /dev); every other bind is `nodev`.
    pub device_nodes: bool,
    /// The user chose the destination (`--container-mounts`): the site's allowed
    /// destinations apply to where it resolves inside the image, not to its text.
    pub user_destination: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileContent {
    /// Copy of a host file read as root (/etc/hosts, /etc/resolv.conf).
    HostCopy(PathBuf),
    /// The image's file with the user's entry added.
    Passwd,
    Group,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFile {
    pub dest: PathBuf,
    pub content: FileContent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub dest: PathBuf,
    pub target: PathBuf,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Files written into the writable layer before any bind.
    pub files: Vec<WriteFile>,
    pub links: Vec<Link>,
    /// Binds in mount order: a parent before anything mounted below it.
    pub binds: Vec<Bind>,
    /// Where the command starts.
    pub workdir: PathBuf,
}

const SYSTEM_BINDS: &[&str] = &["/proc", "/sys", "/dev", "/tmp"];
const HOST_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];
const LAUNCHER_NAME: &str = "ferry-host-exec";

pub fn plan(req: &Request) -> Plan {
    let mut binds: Vec<Bind> = SYSTEM_BINDS
        .iter()
        .map(|p| Bind {
            source: p.into(),
            dest: p.into(),
            opener: Opener::Host,
            readonly: false,
            recursive: true,
            optional: false,
            device_nodes: *p == "/dev",
            user_destination: false,
        })
        .collect();
    let mut links = Vec::new();
    if let Some(clients) = &req.slurm_clients {
        binds.push(Bind {
            source: "/".into(),
            dest: HOST_ROOT.into(),
            opener: Opener::Host,
            readonly: true,
            recursive: true,
            optional: false,
            device_nodes: false,
            user_destination: false,
        });
        let launcher = Path::new(BIN_DIR).join(LAUNCHER_NAME);
        binds.push(Bind {
            source: clients.launcher.clone(),
            dest: launcher.clone(),
            opener: Opener::Host,
            readonly: true,
            recursive: false,
            optional: false,
            device_nodes: false,
            user_destination: false,
        });
        links.extend(clients.commands.iter().map(|c| Link {
            dest: Path::new(BIN_DIR).join(c),
            target: LAUNCHER_NAME.into(),
        }));
    }
    binds.extend(req.host_binds.iter().map(|m| Bind {
        source: m.source.clone(),
        dest: m.dest.clone(),
        opener: Opener::Host,
        readonly: m.readonly,
        recursive: true,
        optional: true,
        device_nodes: false,
        user_destination: false,
    }));
    binds.extend(req.site_mounts.iter().map(|m| Bind {
        source: m.source.clone(),
        dest: m.dest.clone(),
        opener: Opener::Host,
        readonly: m.readonly,
        recursive: true,
        optional: m.optional,
        device_nodes: false,
        user_destination: false,
    }));
    binds.push(Bind {
        source: req.user.home.clone(),
        dest: req.user.home.clone(),
        opener: Opener::User,
        readonly: false,
        recursive: true,
        optional: true,
        device_nodes: false,
        user_destination: false,
    });
    if let Some(cwd) = &req.cwd {
        if !visible_through(&binds, cwd) {
            binds.push(Bind {
                source: cwd.clone(),
                dest: cwd.clone(),
                opener: Opener::User,
                readonly: false,
                recursive: true,
                optional: true,
                device_nodes: false,
                user_destination: false,
            });
        }
    }
    binds.extend(req.mounts.iter().map(|m| Bind {
        source: m.source.clone(),
        dest: m.dest.clone(),
        opener: Opener::User,
        readonly: m.readonly,
        recursive: true,
        optional: false,
        device_nodes: false,
        user_destination: true,
    }));
    // Parents first; equal depth keeps the order above (later wins over earlier).
    binds.sort_by_key(|b| b.dest.components().count());

    let mut files = vec![
        WriteFile {
            dest: "/etc/passwd".into(),
            content: FileContent::Passwd,
        },
        WriteFile {
            dest: "/etc/group".into(),
            content: FileContent::Group,
        },
    ];
    files.extend(HOST_FILES.iter().map(|p| WriteFile {
        dest: p.into(),
        content: FileContent::HostCopy(p.into()),
    }));

    let workdir = req
        .workdir
        .clone()
        .or_else(|| req.cwd.clone())
        .unwrap_or_else(|| req.user.home.clone());
    Plan {
        files,
        links,
        binds,
        workdir,
    }
}

/// True when `path` already shows at the same place through a bind of a host folder
/// onto itself (the working directory inside the home folder, or in /tmp).
fn visible_through(binds: &[Bind], path: &Path) -> bool {
    path == Path::new("/")
        || binds.iter().any(|b| {
            b.source == b.dest
                && b.recursive
                && path.starts_with(&b.dest)
                && b.dest != Path::new("/")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MountSpec, SlurmClients};
    use crate::users::User;

    fn request() -> Request {
        let alice = User {
            name: "alice".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![],
            home: "/home/alice".into(),
            gecos: String::new(),
        };
        let mut req = Request::new("/images/a.sqfs".into(), alice);
        req.cwd = Some("/home/alice/project".into());
        req
    }

    fn dests(plan: &Plan) -> Vec<String> {
        plan.binds
            .iter()
            .map(|b| b.dest.display().to_string())
            .collect()
    }

    #[test]
    fn system_folders_home_and_no_cwd_inside_home() {
        let plan = plan(&request());
        assert_eq!(
            dests(&plan),
            ["/proc", "/sys", "/dev", "/tmp", "/home/alice"]
        );
        assert_eq!(plan.workdir, PathBuf::from("/home/alice/project"));
        let home = plan
            .binds
            .iter()
            .find(|b| b.dest == Path::new("/home/alice"))
            .unwrap();
        assert_eq!(home.opener, Opener::User);
    }

    #[test]
    fn cwd_outside_home_is_bound_by_the_user() {
        let mut req = request();
        req.cwd = Some("/scratch/alice/run".into());
        let plan = plan(&req);
        let cwd = plan
            .binds
            .iter()
            .find(|b| b.dest == Path::new("/scratch/alice/run"))
            .unwrap();
        assert_eq!(cwd.opener, Opener::User);
        assert!(cwd.optional);
    }

    #[test]
    fn user_mounts_are_ordered_parent_first_and_opened_as_user() {
        let mut req = request();
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
        let plan = plan(&req);
        let d = dests(&plan);
        let parent = d.iter().position(|x| x == "/in").unwrap();
        let child = d.iter().position(|x| x == "/in/deep/x").unwrap();
        assert!(parent < child);
        assert!(plan
            .binds
            .iter()
            .filter(|b| b.dest.starts_with("/in"))
            .all(|b| b.opener == Opener::User && !b.optional));
    }

    #[test]
    fn slurm_clients_get_host_root_launcher_and_links() {
        let mut req = request();
        req.slurm_clients = Some(SlurmClients {
            launcher: "/usr/libexec/ferry/ferry-host-exec".into(),
            commands: vec!["srun".into()],
        });
        let plan = plan(&req);
        assert!(plan
            .binds
            .iter()
            .any(|b| b.dest == Path::new(HOST_ROOT) && b.readonly && b.opener == Opener::Host));
        assert_eq!(
            plan.links,
            vec![Link {
                dest: "/.ferry/bin/srun".into(),
                target: "ferry-host-exec".into()
            }]
        );
    }

    #[test]
    fn only_the_hosts_dev_keeps_device_nodes_and_user_destinations_are_marked() {
        let mut req = request();
        req.mounts = vec![MountSpec {
            source: "/home/alice/devs".into(),
            dest: "/dev".into(),
            readonly: false,
        }];
        let plan = plan(&req);
        let devs: Vec<&Bind> = plan
            .binds
            .iter()
            .filter(|b| b.dest == Path::new("/dev"))
            .collect();
        assert_eq!(devs.len(), 2);
        for bind in devs {
            let hosts = bind.opener == Opener::Host;
            assert_eq!(bind.device_nodes, hosts, "{bind:?}");
            assert_eq!(bind.user_destination, !hosts, "{bind:?}");
        }
        assert_eq!(plan.binds.iter().filter(|b| b.device_nodes).count(), 1);
    }

    #[test]
    fn explicit_workdir_wins() {
        let mut req = request();
        req.workdir = Some("/opt/app".into());
        assert_eq!(plan(&req).workdir, PathBuf::from("/opt/app"));
    }
}
