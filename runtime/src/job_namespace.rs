//! Slurm's private /tmp per job: with `namespace/tmpfs` (Slurm 25.11 on) or
//! `job_container/tmpfs` (before), slurmstepd gives a job's tasks a mount namespace of
//! its own, with a private /tmp, /dev/shm and the other `Dirs=` of job_container.conf,
//! and names it by a bind mount of its namespace file at `BASE/JOB/.ns` (`BASE` is
//! `BasePath` with `%h`/`%n` expanded, followed by `/NODE` in Slurm builds with
//! multiple slurmd support, such as Debian's). The setup helper enters that namespace
//! before it makes the container's, so a container sees the job's /tmp, exactly as a
//! `--container=none` step does.
//!
//! Only root's files decide where the namespace is: slurm.conf and job_container.conf
//! (Slurm's configuration, refused unless root's and closed to others), the job number
//! slurmstepd gives, and a path whose every folder is root's and closed to others;
//! the file found there must be a namespace file (nsfs), and the kernel's `setns`
//! then accepts only a mount namespace. `namespace/linux` keeps its namespaces in
//! another layout (a folder of namespace files, maybe with a user namespace) and is
//! not entered.

use crate::sys;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// Where Slurm's configuration is read when slurmd's environment names no other.
const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";
const TMPFS_PLUGINS: [&str; 2] = ["namespace/tmpfs", "job_container/tmpfs"];
const NS_FILE: &str = ".ns";

/// The file Slurm names job `job`'s private namespace by on this node, when Slurm's
/// configuration gives jobs one here (None: it does not). Runs in slurmstepd, as root.
pub fn locate(job: u32) -> Result<Option<PathBuf>, String> {
    // slurmd's own environment (root's), never the job's.
    let slurm_conf = std::env::var_os("SLURM_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_SLURM_CONF.into());
    let Some(text) = read_root_file(&slurm_conf)? else {
        return Ok(None);
    };
    if !uses_tmpfs_plugin(&text) {
        return Ok(None);
    }
    let jc_conf = slurm_conf.with_file_name("job_container.conf");
    let Some(jc_text) = read_root_file(&jc_conf)? else {
        return Ok(None);
    };
    let host = nix::unistd::gethostname()
        .map_err(|e| format!("reading the host name: {e}"))?
        .to_string_lossy()
        .into_owned();
    let node = host.split('.').next().unwrap_or(&host).to_string();
    let Some(base) = base_path(&jc_text, &node, &host) else {
        return Ok(None);
    };
    Ok(Some(find_holder(Path::new(&base), job, &node)))
}

/// The holder that exists: `BASE/JOB/.ns`, `BASE/NODE/JOB/.ns`, else the one
/// `BASE/*/JOB/.ns` (a Slurm node name that is not the host's short name); else the
/// first, which the helper then reports missing. `enter` checks whatever is chosen.
fn find_holder(base: &Path, job: u32, node: &str) -> PathBuf {
    let candidates = holder_candidates(base, job, node);
    if let Some(found) = candidates.iter().find(|p| p.symlink_metadata().is_ok()) {
        return found.clone();
    }
    let job = job.to_string();
    let others: Vec<PathBuf> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join(&job).join(NS_FILE))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    match <[PathBuf; 1]>::try_from(others) {
        Ok([only]) => only,
        Err(_) => candidates[0].clone(),
    }
}

/// Enters the job's namespace named at `holder` (a path `locate` gave). Runs in the
/// setup helper, as root, before it makes the container's namespace.
pub(crate) fn enter(holder: &Path) -> io::Result<()> {
    let ns = open_holder(holder)?;
    if !sys::is_nsfs(ns.as_fd()) {
        return Err(io::Error::other(
            "not a namespace file (Slurm has not made the job's namespace, or it ended)",
        ));
    }
    // setns checks the rest: only a mount namespace is accepted for CLONE_NEWNS.
    sys::setns_mount(ns.as_fd())
}

/// Opens `holder` walking from `/` without following links, every folder on the way
/// root's and not writable by others (a sticky folder such as /tmp only when the next
/// one is root's): nothing a user can change leads the walk.
fn open_holder(holder: &Path) -> io::Result<OwnedFd> {
    let mut dir = sys::open_path(
        Path::new("/"),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    let mut walked = PathBuf::from("/");
    let names: Vec<&OsStr> = holder
        .components()
        .map(|c| match c {
            Component::RootDir => Ok(None),
            Component::Normal(name) => Ok(Some(name)),
            _ => Err(refused(format!("{} is not a plain path", holder.display()))),
        })
        .filter_map(Result::transpose)
        .collect::<io::Result<_>>()?;
    let Some((last, folders)) = names.split_last() else {
        return Err(refused(format!("{} is not a file", holder.display())));
    };
    for (i, name) in folders.iter().enumerate() {
        // A sticky folder (/tmp) may be writable by others: they cannot replace the
        // root's folder in it that the walk checks next.
        check_root_folder(dir.as_fd(), &walked, true)?;
        dir = sys::openat(
            Some(dir.as_fd()),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        walked.push(name);
        if i + 1 == folders.len() {
            check_root_folder(dir.as_fd(), &walked, false)?;
        }
    }
    sys::openat(
        Some(dir.as_fd()),
        last,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        0,
    )
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why)
}

/// Refuses a folder that is not root's or that others may write (but for a sticky one
/// when `sticky_ok`).
fn check_root_folder(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    sticky_ok: bool,
) -> io::Result<()> {
    let st = sys::fstat(dir)?;
    let sticky = sticky_ok && st.st_mode & 0o1000 != 0;
    if st.st_uid != 0 || (st.st_mode & 0o022 != 0 && !sticky) {
        return Err(refused(format!(
            "{} must be root's and not writable by others",
            path.display()
        )));
    }
    Ok(())
}

/// The text of one of Slurm's configuration files, None when there is none; refused
/// unless root's and not writable by others.
fn read_root_file(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} must be root's and not writable by others",
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `KEY=VALUE` pairs of a Slurm configuration line, comments dropped, keys as written.
fn pairs(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split('#')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
}

/// Whether slurm.conf's (last) NamespaceType or JobContainerType is a tmpfs plugin.
fn uses_tmpfs_plugin(slurm_conf: &str) -> bool {
    let mut plugin = None;
    for (key, value) in slurm_conf.lines().flat_map(pairs) {
        if key.eq_ignore_ascii_case("NamespaceType") || key.eq_ignore_ascii_case("JobContainerType")
        {
            plugin = Some(value.to_ascii_lowercase());
        }
    }
    plugin.is_some_and(|p| TMPFS_PLUGINS.contains(&p.as_str()))
}

/// job_container.conf's BasePath for node `node` (host name `host`): the last global
/// `BasePath=` line or `NodeName=` line naming the node, `%n` and `%h` expanded, as
/// Slurm reads it. None: the plugin is off on this node (no BasePath, or `none`).
fn base_path(jc_conf: &str, node: &str, host: &str) -> Option<String> {
    let mut base = None;
    for line in jc_conf.lines() {
        let mut words = pairs(line);
        let Some((key, value)) = words.next() else {
            continue;
        };
        let applies = if key.eq_ignore_ascii_case("BasePath") {
            base = Some(value.to_string());
            continue;
        } else {
            key.eq_ignore_ascii_case("NodeName") && hostlist_has(value, node)
        };
        if applies {
            if let Some((_, path)) = words.find(|(k, _)| k.eq_ignore_ascii_case("BasePath")) {
                base = Some(path.to_string());
            }
        }
    }
    let base = base?;
    if base.len() >= 4 && base[..4].eq_ignore_ascii_case("none") {
        return None;
    }
    Some(base.replace("%n", node).replace("%h", host))
}

/// Where the namespace file can be: `BASE/JOB/.ns`, or `BASE/NODE/JOB/.ns` in Slurm
/// builds with multiple slurmd support (Debian's 26.05, measured).
fn holder_candidates(base: &Path, job: u32, node: &str) -> Vec<PathBuf> {
    let job = job.to_string();
    vec![
        base.join(&job).join(NS_FILE),
        base.join(node).join(&job).join(NS_FILE),
    ]
}

/// Whether Slurm's host list `list` (`a,b`, `node[01-04,7]`) names `name`.
fn hostlist_has(list: &str, name: &str) -> bool {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items.iter().any(|item| hostlist_item_has(item, name))
}

fn hostlist_item_has(item: &str, name: &str) -> bool {
    let (Some(open), Some(close)) = (item.find('['), item.find(']')) else {
        return item == name;
    };
    let (prefix, ranges, suffix) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    let Some(number) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix(suffix))
    else {
        return false;
    };
    ranges.split(',').any(|range| {
        let (low, high) = range.split_once('-').unwrap_or((range, range));
        // `[01-04]` names n01 to n04 (zero-padded to the low end's width); `[9]`, n9 alone.
        let width_ok = if low.len() > 1 && low.starts_with('0') {
            number.len() == low.len()
        } else {
            number.len() == 1 || !number.starts_with('0')
        };
        match (
            low.parse::<u64>(),
            high.parse::<u64>(),
            number.parse::<u64>(),
        ) {
            (Ok(l), Ok(h), Ok(n)) => width_ok && (l..=h).contains(&n),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tmpfs_plugins_give_a_namespace_to_enter() {
        assert!(uses_tmpfs_plugin("NamespaceType=namespace/tmpfs\n"));
        assert!(uses_tmpfs_plugin(
            "jobcontainertype=job_container/tmpfs # old\n"
        ));
        assert!(!uses_tmpfs_plugin("NamespaceType=namespace/linux\n"));
        assert!(!uses_tmpfs_plugin("#NamespaceType=namespace/tmpfs\n"));
        assert!(!uses_tmpfs_plugin(
            "NamespaceType=namespace/tmpfs\nNamespaceType=namespace/none\n"
        ));
        assert!(!uses_tmpfs_plugin("ProctrackType=proctrack/cgroup\n"));
    }

    #[test]
    fn the_base_path_is_the_nodes_as_slurm_reads_it() {
        let conf = "AutoBasePath=true\nBasePath=/var/lib/job-tmp\n";
        assert_eq!(
            base_path(conf, "vm", "vm.lan").as_deref(),
            Some("/var/lib/job-tmp")
        );
        let conf = "BasePath=/scratch/%n Dirs=/tmp,/dev/shm\n\
                    NodeName=gpu[01-04,9] BasePath=/nvme/%h AutoBasePath=true\n\
                    NodeName=login1 BasePath=none\n";
        assert_eq!(
            base_path(conf, "cpu7", "cpu7").as_deref(),
            Some("/scratch/cpu7")
        );
        assert_eq!(
            base_path(conf, "gpu03", "gpu03.lan").as_deref(),
            Some("/nvme/gpu03.lan")
        );
        assert_eq!(
            base_path(conf, "gpu09", "gpu09").as_deref(),
            Some("/scratch/gpu09")
        );
        assert_eq!(
            base_path(conf, "gpu9", "gpu9").as_deref(),
            Some("/nvme/gpu9")
        );
        assert_eq!(base_path(conf, "login1", "login1"), None);
        assert_eq!(base_path("Dirs=/tmp\n", "vm", "vm"), None);
    }

    #[test]
    fn host_lists_name_nodes_as_slurm_expands_them() {
        assert!(hostlist_has("a,b,node[1-3]", "node2"));
        assert!(hostlist_has("n[001-010]", "n007"));
        assert!(!hostlist_has("n[001-010]", "n7"));
        assert!(!hostlist_has("n[001-010]", "n011"));
        assert!(hostlist_has("rack[1,4]-x", "rack4-x"));
        assert!(!hostlist_has("node[1-3]", "nodeX"));
        assert!(!hostlist_has("a,b", "c"));
    }

    #[test]
    fn the_namespace_is_looked_for_with_and_without_the_node_level() {
        assert_eq!(
            holder_candidates(Path::new("/var/lib/job-tmp"), 42, "vm"),
            [
                PathBuf::from("/var/lib/job-tmp/42/.ns"),
                PathBuf::from("/var/lib/job-tmp/vm/42/.ns")
            ]
        );
    }

    #[test]
    fn the_holder_is_found_with_or_without_a_node_folder() {
        let base = crate::scratch::Scratch::new("jobns-find");
        let missing = base.join("7/.ns");
        assert_eq!(find_holder(&base, 7, "vm"), missing);
        std::fs::create_dir_all(base.join("slurm-node-1/7")).unwrap();
        std::fs::write(base.join("slurm-node-1/7/.ns"), "").unwrap();
        assert_eq!(find_holder(&base, 7, "vm"), base.join("slurm-node-1/7/.ns"));
        std::fs::create_dir_all(base.join("slurm-node-2/7")).unwrap();
        std::fs::write(base.join("slurm-node-2/7/.ns"), "").unwrap();
        assert_eq!(find_holder(&base, 7, "vm"), missing, "two are no answer");
        std::fs::create_dir_all(base.join("vm/7")).unwrap();
        std::fs::write(base.join("vm/7/.ns"), "").unwrap();
        assert_eq!(find_holder(&base, 7, "vm"), base.join("vm/7/.ns"));
        std::fs::create_dir_all(base.join("7")).unwrap();
        std::fs::write(base.join("7/.ns"), "").unwrap();
        assert_eq!(find_holder(&base, 7, "vm"), missing);
    }

    #[test]
    fn a_holder_below_a_folder_others_may_write_is_refused() {
        let dir = crate::scratch::Scratch::new("jobns");
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o777);
        std::fs::set_permissions(&open, mode).unwrap();
        std::fs::write(open.join(".ns"), "").unwrap();
        let e = open_holder(&open.join(".ns")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(open_holder(Path::new("/proc/../etc/passwd")).is_err());
    }

    #[test]
    fn a_plain_file_is_not_a_namespace() {
        if sys::euid() != 0 {
            return; // a user's scratch folder is not root's
        }
        let dir = crate::scratch::Scratch::new("jobns");
        let file = dir.join(".ns");
        std::fs::write(&file, "").unwrap();
        let e = enter(&file).unwrap_err();
        assert!(e.to_string().contains("not a namespace file"), "{e}");
    }
}
