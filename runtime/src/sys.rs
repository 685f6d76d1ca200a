//! The syscall seam: every privileged or raw system call the runtime makes lives here,
//! behind small typed functions. This is the only module of the runtime with `unsafe`.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Turns a `-1` return into the thread's errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cstr_os(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// The path through which the kernel reaches an open file: mount(2) and overlayfs take
/// paths, and this one names exactly the object we opened (no re-lookup by name).
pub fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

// ---------------------------------------------------------------------------
// Opening files relative to a directory.

pub fn openat(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let name = cstr_os(name)?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is a valid NUL-terminated string, `dirfd` is AT_FDCWD or a live fd
    // borrowed for the call; a non-negative return is a new fd that we own.
    let fd = check(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: `fd` was just returned by openat and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open_path(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    openat(None, path.as_os_str(), flags, 0)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cstr_os(name)?;
    // SAFETY: valid fd and NUL-terminated name for the duration of the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, remove_dir: bool) -> io::Result<()> {
    let name = cstr_os(name)?;
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name for the duration of the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub fn symlinkat(target: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = cstring(target)?;
    let name = cstr_os(name)?;
    // SAFETY: both strings are NUL-terminated and live for the call; `dir` is a live fd.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// Reads the target of the symlink that `fd` (opened with O_PATH|O_NOFOLLOW) names.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let empty = c"";
    // SAFETY: an empty path with an O_PATH symlink fd reads that link (readlinkat(2));
    // `buf` is writable for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsStr::from_bytes(&buf)))
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    let empty = c"";
    // SAFETY: `st` is writable; AT_EMPTY_PATH stats the fd itself, which works for O_PATH fds.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })?;
    // SAFETY: fstatat succeeded and filled the struct.
    Ok(unsafe { st.assume_init() })
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

// ---------------------------------------------------------------------------
// Credentials.

/// Drops to the user for good: groups, gid, then uid (order matters: after setuid we
/// could no longer change groups).
pub fn become_user(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    become_ids(uid, gid, &groups)
}

/// Groups, gid, uid, for good. Allocates nothing: usable in a child forked from a
/// multi-threaded process.
///
/// Inside ferry's own user namespace (`ferry run` without root, see `userns`) the
/// groups cannot be changed (setgroups is denied there, so that no one drops a group
/// that denies them access) and stay the caller's; a process that is not root inside
/// then drops every capability it has in the namespace, as a non-root process outside
/// has none.
pub(crate) fn become_ids(uid: u32, gid: u32, groups: &[nix::unistd::Gid]) -> io::Result<()> {
    let in_own_namespace = crate::userns::entered();
    if !in_own_namespace {
        nix::unistd::setgroups(groups)?;
    }
    nix::unistd::setresgid(gid.into(), gid.into(), gid.into())?;
    nix::unistd::setresuid(uid.into(), uid.into(), uid.into())?;
    if in_own_namespace && uid != 0 {
        drop_capabilities()?;
    }
    Ok(())
}

/// The kernel's capability header and sets (linux/capability.h, version 3: two sets of
/// 32 bits each).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets.
#[derive(Clone, Copy)]
pub(crate) struct Capabilities([CapData; 2]);

impl Capabilities {
    /// The same sets with nothing effective: permission checks as if unprivileged,
    /// until the effective set is raised again from the permitted one.
    pub(crate) fn lowered(self) -> Capabilities {
        Capabilities(self.0.map(|d| CapData { effective: 0, ..d }))
    }
}

pub(crate) fn capabilities() -> io::Result<Capabilities> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes a version-3 header and two data structs, laid out as the
    // kernel's (repr(C)), which live until the call returns.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check(ret as libc::c_int)?;
    Ok(Capabilities(data))
}

pub(crate) fn set_capabilities(caps: &Capabilities) -> io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a version-3 header and two data structs, laid out as the
    // kernel's (repr(C)), which live until the call returns.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, caps.0.as_ptr()) } as libc::c_int)?;
    Ok(())
}

/// Clears the effective, permitted and inheritable capability sets.
pub(crate) fn drop_capabilities() -> io::Result<()> {
    set_capabilities(&Capabilities([CapData::default(); 2]))
}

/// A new user namespace for the calling (single-threaded) process, which gets every
/// capability inside it and none outside.
pub fn unshare_user_namespace() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)?;
    Ok(())
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// For a child that just became the user: die with the parent (a helper killed at its
/// deadline takes its user child along), and be out of the user's reach meanwhile (not
/// dumpable: the user cannot ptrace it or open its descriptors through /proc). Changing
/// ids clears the parent-death signal, so this comes after. Fails when the parent is
/// already gone.
pub fn tie_to_parent(parent: nix::unistd::Pid) -> io::Result<()> {
    die_with_parent(parent)?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) })?;
    Ok(())
}

/// For a child just forked from `parent`: be killed when the parent (precisely: the
/// thread that forked) dies, so a root helper never outlives a killed slurmstepd, still
/// hashing or mounting for a step that is gone. Fails when the parent died before the
/// signal was armed (then the child was already handed to another parent). A change of
/// effective or file-system ids disarms it: call it again after one.
pub fn die_with_parent(parent: nix::unistd::Pid) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    if nix::unistd::getppid() != parent {
        return Err(io::Error::other("the parent exited"));
    }
    Ok(())
}

/// Undoes `die_with_parent`.
pub fn clear_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) })?;
    Ok(())
}

/// Closes every descriptor from 3 up except `keep`.
pub fn close_all_but(keep: BorrowedFd<'_>) {
    let keep = keep.as_raw_fd() as u32;
    for (first, last) in [(3, keep.saturating_sub(1)), (keep + 1, u32::MAX)] {
        if first > last {
            continue;
        }
        // SAFETY: close_range takes plain integers and only closes descriptors; the
        // caller owns nothing in these ranges that it still uses.
        if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
            for fd in first..last.min(4096) {
                // SAFETY: closing a descriptor number we no longer use; EBADF is harmless.
                unsafe { libc::close(fd as libc::c_int) };
            }
        }
    }
}

/// Waits until `fd` is readable (or its writer closed it) for at most `timeout`.
/// False: the time ran out.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one pollfd that lives for the call.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            n => return Ok(n > 0),
        }
    }
}

/// Makes the calling process the leader of a process group of its own, named `name`
/// (what `ps` and process trackers show instead of the parent's name).
pub fn own_process_group(name: &std::ffi::CStr) -> io::Result<()> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (at most 16 bytes are kept).
    check(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) })?;
    Ok(())
}

/// SIGKILL to every process of the process group `leader` leads.
pub fn kill_process_group(leader: nix::unistd::Pid) {
    let _ = nix::sys::signal::killpg(leader, nix::sys::signal::Signal::SIGKILL);
}

/// Kills the calling process with SIGALRM after `seconds` unless `disarm_deadline`
/// comes first. For the few steps of a task before it execs, which Slurm cannot
/// kill under every process tracker: SIGALRM at its default action is fatal even to a
/// process waiting on a FUSE server that does not answer.
pub fn arm_deadline(seconds: u32) -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: restoring the default action installs no handler.
    unsafe { sigaction(Signal::SIGALRM, &default) }?;
    let mut alarm = SigSet::empty();
    alarm.add(Signal::SIGALRM);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&alarm), None)?;
    nix::unistd::alarm::set(seconds.max(1));
    Ok(())
}

pub fn disarm_deadline() {
    nix::unistd::alarm::cancel();
}

/// The inode of a namespace file (nsfs): what /proc/PID/ns/mnt links name as `mnt:[INO]`.
pub fn namespace_inode(ns: BorrowedFd<'_>) -> io::Result<u64> {
    Ok(fstat(ns)?.st_ino)
}

/// SIGKILLs the process `pid` if it is still in the mount namespace `ns_inode` once a
/// pidfd holds it (so a reused pid is never hit). True when it was signalled.
pub fn kill_if_in_namespace(pid: u32, ns_inode: u64) -> bool {
    let link = format!("mnt:[{ns_inode}]");
    kill_if_still(pid, || {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .is_ok_and(|l| l.as_os_str() == OsStr::new(&link))
    })
}

/// SIGKILLs process `pid` if `still_the_one` says so once a pidfd holds the process:
/// what the check reads about `pid` is then about the process signalled, never about
/// another that reused the number. True when it was signalled.
fn kill_if_still(pid: u32, still_the_one: impl FnOnce() -> bool) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; a non-negative return is a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) };
    if !still_the_one() {
        return false;
    }
    // SAFETY: a live pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    rc == 0
}

pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

// ---------------------------------------------------------------------------
// Namespaces and mounts.

pub fn unshare_mount_namespace() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    Ok(())
}

/// NS_GET_MNTNS_ID of linux/nsfs.h: _IOR(0xb7, 5, __u64).
const NS_GET_MNTNS_ID: libc::c_ulong = 0x8008_b705;

/// The kernel's id of the mount namespace file `ns` (Linux 6.8 and later; None before).
pub fn mount_namespace_id(ns: BorrowedFd<'_>) -> Option<u64> {
    let mut id: u64 = 0;
    // SAFETY: the ioctl writes one u64 through the pointer, which is valid for it.
    let rc = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_MNTNS_ID, &mut id as *mut u64) };
    (rc == 0).then_some(id)
}

/// Keeps this process on the CPU it runs on now.
pub fn stay_on_this_cpu() -> io::Result<()> {
    // SAFETY: sched_getcpu takes no arguments.
    let cpu = check(unsafe { libc::sched_getcpu() })?;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu as usize)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Makes `count` UTS namespaces one after the other (each replacing the last): the
/// cheapest way to draw namespace ids.
pub fn draw_namespace_ids(count: usize) -> io::Result<()> {
    for _ in 0..count {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)?;
    }
    Ok(())
}

pub fn setns_mount(ns: BorrowedFd<'_>) -> io::Result<()> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
    Ok(())
}

use nix::mount::MsFlags;

/// Receive host mount events, send none back: nothing we mount is seen by the host.
pub fn make_tree_slave(path: &Path) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    Ok(())
}

pub fn make_unbindable(path: &Path) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_UNBINDABLE,
        None::<&str>,
    )?;
    Ok(())
}

pub fn mount_fs(
    source: &Path,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, data)?;
    Ok(())
}

pub fn mount_bind(source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>)?;
    Ok(())
}

/// Changes the per-mount flags of a bind mount (ro, nosuid, nodev).
pub fn remount_bind(target: &Path, flags: MsFlags) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )?;
    Ok(())
}

/// Flags to add to a mount and every mount below it.
#[derive(Clone, Copy, Debug)]
pub struct MountAttrs {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

// The kernel reads exactly its own layout: checked when this file compiles.
const _: () = assert!(std::mem::size_of::<MountAttr>() == 32); // MOUNT_ATTR_SIZE_VER0

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// mount_setattr(2) on the mount `fd` is the root of (and every mount below it when
/// `recursive`): the flags are only added, never cleared (a host `ro` or `noexec` stays).
pub fn set_mount_attrs(fd: BorrowedFd<'_>, attrs: MountAttrs, recursive: bool) -> io::Result<()> {
    let mut set = 0;
    if attrs.readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    if attrs.nosuid {
        set |= MOUNT_ATTR_NOSUID;
    }
    if attrs.nodev {
        set |= MOUNT_ATTR_NODEV;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: mount_setattr reads `size` bytes of `attr`, which lives for the call; the
    // empty path with AT_EMPTY_PATH names the mount of `fd` itself.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret as libc::c_int).map(drop)
}

/// A bind made through descriptors only (Linux 5.12+): a detached copy of the mount
/// tree at the open `source`, restricted by `attrs` before anyone can see it, then
/// attached onto the open `dest`. No path is looked up again, so nothing can swap the
/// destination between the bind and the restriction. ENOSYS on older kernels.
pub fn bind_through_fds(
    source: BorrowedFd<'_>,
    dest: BorrowedFd<'_>,
    recursive: bool,
    attrs: MountAttrs,
) -> io::Result<()> {
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let empty = c"";
    // SAFETY: a live descriptor, an empty C string with AT_EMPTY_PATH, and flags;
    // open_tree has no libc wrapper.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            source.as_raw_fd(),
            empty.as_ptr(),
            flags,
        )
    };
    check(fd as libc::c_int)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) };
    set_mount_attrs(tree.as_fd(), attrs, recursive)?;
    // SAFETY: two live descriptors and empty C strings with the EMPTY_PATH flags;
    // move_mount has no libc wrapper.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            dest.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        ) as libc::c_int
    })?;
    Ok(())
}

/// Makes the directory `root` the new `/` of this mount namespace and detaches the old
/// root (pivot_root(".", ".") as in pivot_root(2)), so no host path stays reachable.
pub fn pivot_into(root: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fchdir(root.as_raw_fd())?;
    let dot = c".";
    // SAFETY: both arguments are valid NUL-terminated strings; pivot_root has no libc
    // wrapper, hence the raw syscall.
    check(unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    })?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Loop devices.

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// struct loop_info64 and struct loop_config (linux/loop.h), checked at compile time.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// A loop device bound read-only to an open image file; the device frees itself when
/// its last user (our mount) goes away (LO_FLAGS_AUTOCLEAR), so nothing outlives the step.
pub struct LoopDevice {
    /// Held until the image is mounted: an unreferenced autoclear device may be freed.
    pub _device: File,
    pub path: PathBuf,
}

/// The name ferry gives a loop device (`lo_file_name`, settable by root only): it says
/// which version of the file the device was made from (see `digest::FileVersion`).
pub type LoopStamp = [u8; LO_NAME_SIZE];

/// Finds a loop device that another step already bound read-only to the same file
/// (same device and inode, same offset and size limit) and stamped with the same file
/// version, and holds it open so it cannot be released before we mount it. Mounting
/// the same device again reuses the mounted SquashFS and its page cache: a step of a
/// job whose batch step runs in the same image starts warm. A device made from another
/// version of the file (rewritten in place since) is never shared: its mounted
/// superblock may still hold the old content.
pub fn find_shared_loop(
    backing: BorrowedFd<'_>,
    offset: u64,
    size_limit: u64,
    stamp: &LoopStamp,
) -> Option<LoopDevice> {
    let st = fstat(backing).ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("loop") || !entry.path().join("loop").is_dir() {
            continue; // not a loop device, or not bound to a file
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(device) = open_path(&path, libc::O_RDONLY) else {
            continue;
        };
        let mut info = std::mem::MaybeUninit::<LoopInfo64>::zeroed();
        // SAFETY: LOOP_GET_STATUS64 fills a `struct loop_info64`, which `info` has room for.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: the ioctl succeeded and filled the struct (it was zeroed before).
        let info = unsafe { info.assume_init() };
        let same_file = info.lo_device == st.st_dev && info.lo_inode == st.st_ino;
        let same_range_read_only = info.lo_offset == offset
            && info.lo_sizelimit == size_limit
            && info.lo_flags & LO_FLAGS_READ_ONLY != 0;
        if same_file && same_range_read_only && info.lo_file_name == *stamp {
            return Some(LoopDevice {
                _device: File::from(device),
                path,
            });
        }
    }
    None
}

/// Binds a free loop device to `backing` (read-only, autoclear). Retries when another
/// process takes the same free device first, as happens with many steps per node.
///
/// The device stays buffered (no `LO_FLAGS_DIRECT_IO`), with the kernel's block size
/// and read-ahead: measured with bench/bulk-read, none of direct I/O, 4096-byte blocks,
/// read-ahead from 0 to 16 MiB or `POSIX_FADV_SEQUENTIAL` on `backing` changes a cold
/// read, since SquashFS reads one block at a time in the reader; direct I/O makes a
/// mount of an image already in the page cache (the next step's) read from disk again.
pub fn attach_loop(
    backing: BorrowedFd<'_>,
    offset: u64,
    size_limit: u64,
    stamp: &LoopStamp,
) -> io::Result<LoopDevice> {
    let control = open_path(Path::new("/dev/loop-control"), libc::O_RDWR)?;
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match open_path(&path, libc::O_RDONLY) {
            Ok(fd) => File::from(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: size_limit,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: *stamp,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 { ..info },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` that lives for the call.
        let ret = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if ret == 0 {
            return Ok(LoopDevice {
                _device: device,
                path,
            });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) => continue, // someone else took it: ask for another
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {}
            _ => return Err(err),
        }
        // Kernels before 5.8 have no LOOP_CONFIGURE: bind, then set the flags.
        // SAFETY: LOOP_SET_FD takes the backing fd as an integer argument.
        if unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_FD, backing.as_raw_fd()) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(err);
        }
        info.lo_flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64` that lives for the call.
        if unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_SET_STATUS64,
                &info as *const LoopInfo64,
            )
        } != 0
        {
            let err = io::Error::last_os_error();
            // SAFETY: LOOP_CLR_FD takes no argument; undo the half-made binding.
            unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD, 0) };
            return Err(err);
        }
        return Ok(LoopDevice {
            _device: device,
            path,
        });
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        "no free loop device after 64 tries",
    ))
}

// ---------------------------------------------------------------------------
// Processes.

pub enum Forked {
    Child,
    Parent(nix::unistd::Pid),
}

/// Forks the current process. The child must only run the single-threaded helper and
/// then call `exit_now`.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the child only runs the runtime's helper code, which takes no locks that
    // another thread of the parent could hold except malloc's, which glibc resets in the
    // child, and leaves with `_exit`.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// Leaves the helper without running the parent's atexit handlers or destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is always safe to call.
    unsafe { libc::_exit(code) }
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

pub fn execvp(argv: &[CString]) -> io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `ptrs` is a NULL-terminated array of valid C strings that outlive the call.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    io::Error::last_os_error()
}

fn execve(path: &CStr, argv: &[CString], env: &[CString]) -> io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated arrays of valid C strings that outlive
    // the call; `path` is a valid C string.
    unsafe { libc::execve(path.as_ptr(), ptrs.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

pub fn execv(path: &CStr, argv: &[CString]) -> io::Error {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: as in `execvp`; `path` is a valid C string.
    unsafe { libc::execv(path.as_ptr(), ptrs.as_ptr()) };
    io::Error::last_os_error()
}

// ---------------------------------------------------------------------------
// The FUSE server of an untrusted image.

/// Mounts a FUSE filesystem on `target` served through `fuse` (an open /dev/fuse):
/// read-only, nosuid, nodev, checked by the kernel against the files' own modes
/// (`default_permissions`), usable by root in the namespace too (`allow_other`; only
/// this container's processes can see the mount).
pub fn mount_fuse(fuse: BorrowedFd<'_>, target: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let options = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},allow_other,default_permissions",
        fuse.as_raw_fd()
    );
    mount_fs(
        Path::new("ferry"),
        target,
        "fuse.squashfuse",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&options),
    )
}

/// What the FUSE server child runs and as whom.
pub struct FuseServer<'a> {
    pub fuse: BorrowedFd<'a>,
    pub image: BorrowedFd<'a>,
    /// Where the SquashFS starts in the image file (a SIF's root partition), or 0.
    pub offset: u64,
    pub helper: &'a CStr,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [u32],
}

/// Forks the server: the child keeps only the FUSE device (fd 3) and the image (fd 4),
/// becomes the user for good with no_new_privs and runs `HELPER -f [-o offset=N]
/// /dev/fd/4 /dev/fd/3` (libfuse takes an already-mounted device as `/dev/fd/N`). Forked by the
/// caller of `prepare` (in the host's mount namespace, so it does not keep the
/// container's alive), which can reap it. It exits when the mount goes away (the
/// device then reads ENODEV), that is when the container's namespace is freed.
pub fn spawn_fuse_server(server: &FuseServer) -> io::Result<nix::unistd::Pid> {
    // Everything the child needs is made before fork: it only makes system calls.
    let argv = fuse_server_argv(server)?;
    let groups: Vec<nix::unistd::Gid> = server
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // Nothing of slurmd's environment reaches a process the user can read.
    let env = [CString::from(c"PATH=/usr/sbin:/usr/bin:/sbin:/bin")];
    let null = open_path(Path::new("/dev/null"), libc::O_RDWR)?;
    match fork()? {
        Forked::Parent(pid) => Ok(pid),
        Forked::Child => {
            let _ = become_fuse_server(server, null.as_raw_fd(), &groups);
            let _ = execve(server.helper, &argv, &env);
            exit_now(127)
        }
    }
}

/// `spawn_fuse_server` without the fork: this process (a child forked for it) becomes
/// the server. Returns only when that fails.
pub fn exec_fuse_server(server: &FuseServer) -> io::Error {
    let argv = match fuse_server_argv(server) {
        Ok(argv) => argv,
        Err(e) => return e,
    };
    let groups: Vec<nix::unistd::Gid> = server
        .groups
        .iter()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    // A plain number: `become_fuse_server` closes it (after making it 0, 1 and 2).
    let null = match open_path(Path::new("/dev/null"), libc::O_RDWR) {
        Ok(null) => null.into_raw_fd(),
        Err(e) => return e,
    };
    if let Err(e) = become_fuse_server(server, null, &groups) {
        return e;
    }
    execve(
        server.helper,
        &argv,
        &[CString::from(c"PATH=/usr/sbin:/usr/bin:/sbin:/bin")],
    )
}

/// `HELPER -f [-o offset=N] /dev/fd/4 /dev/fd/3` (see `spawn_fuse_server`).
fn fuse_server_argv(server: &FuseServer) -> io::Result<Vec<CString>> {
    let mut argv = vec![server.helper.to_owned(), CString::from(c"-f")];
    if server.offset != 0 {
        argv.push(CString::from(c"-o"));
        argv.push(CString::new(format!("offset={}", server.offset)).map_err(io::Error::other)?);
    }
    argv.extend([CString::from(c"/dev/fd/4"), CString::from(c"/dev/fd/3")]);
    Ok(argv)
}

fn become_fuse_server(
    server: &FuseServer,
    null: libc::c_int,
    groups: &[nix::unistd::Gid],
) -> io::Result<()> {
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )?;
    nix::unistd::chdir("/")?;
    // Out of the way of 3 and 4 first, then into place (dup2 clears close-on-exec).
    let fuse = nix::fcntl::fcntl(
        server.fuse.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(16),
    )?;
    let image = nix::fcntl::fcntl(
        server.image.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(16),
    )?;
    // Its complaints would be a second, vaguer line next to ferry's own error.
    for (from, to) in [(null, 0), (null, 1), (null, 2), (fuse, 3), (image, 4)] {
        // SAFETY: dup2 on descriptors this process owns; the targets are fixed numbers
        // this child hands to the program it is about to run.
        check(unsafe { libc::dup2(from, to) })?;
    }
    // Nothing else of slurmstepd's reaches the user's process. The child never returns
    // to Rust code that could close these numbers again: it execs or _exits.
    // SAFETY: close_range takes plain integers; it only closes descriptors.
    if unsafe { libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) } != 0 {
        for fd in 5..4096 {
            // SAFETY: closing a descriptor number we no longer use; EBADF is harmless.
            unsafe { libc::close(fd) };
        }
    }
    become_ids(server.uid, server.gid, groups)?;
    set_no_new_privs()
}

/// Sends one descriptor and a number over a Unix socket (SCM_RIGHTS).
pub fn send_fd(channel: BorrowedFd<'_>, fd: BorrowedFd<'_>, value: u64) -> io::Result<()> {
    send_message(channel, value, Some(fd))
}

/// Receives one descriptor and its number sent by `send_fd`; None when the sender
/// closed the socket.
pub fn recv_fd(channel: BorrowedFd<'_>) -> io::Result<Option<(OwnedFd, u64)>> {
    Ok(match recv_message(channel)? {
        Some((value, Some(fd))) => Some((fd, value)),
        _ => None,
    })
}

/// Sends a number and, optionally, a descriptor (SCM_RIGHTS) as one message.
pub fn send_message(
    channel: BorrowedFd<'_>,
    value: u64,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let bytes = value.to_le_bytes();
    let iov = [std::io::IoSlice::new(&bytes)];
    let control: Vec<ControlMessage> = fds
        .as_ref()
        .map(|f| ControlMessage::ScmRights(f))
        .into_iter()
        .collect();
    sendmsg::<()>(channel.as_raw_fd(), &iov, &control, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one message of `send_message`; None when the sender closed the socket.
pub fn recv_message(channel: BorrowedFd<'_>) -> io::Result<Option<(u64, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut bytes = [0u8; 8];
    let mut iov = [std::io::IoSliceMut::new(&mut bytes)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let complete = msg.bytes == 8;
    let mut received = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in our table for us.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                received.get_or_insert(fd);
            }
        }
    }
    // A short message is not ours (the socket is private: never expected).
    Ok(complete.then(|| (u64::from_le_bytes(bytes), received)))
}

/// Sends one message of plain bytes.
pub fn send_bytes(channel: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    nix::sys::socket::send(
        channel.as_raw_fd(),
        bytes,
        nix::sys::socket::MsgFlags::empty(),
    )?;
    Ok(())
}

/// Receives one message of plain bytes (0: the other end is gone).
pub fn recv_bytes(channel: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::sys::socket::recv(
            channel.as_raw_fd(),
            buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return Ok(other?),
        }
    }
}

/// Ends both directions of a socket: the peer reads end-of-file.
pub fn shutdown(channel: BorrowedFd<'_>) -> io::Result<()> {
    nix::sys::socket::shutdown(channel.as_raw_fd(), nix::sys::socket::Shutdown::Both)?;
    Ok(())
}

/// A pair of connected sockets that keep message boundaries (close-on-exec).
pub fn message_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

// ---------------------------------------------------------------------------
// A mount taken from another mount namespace (open_tree/move_mount, Linux 5.2+).

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const FUSE_SUPER_MAGIC: libc::c_long = 0x6573_5546;

/// A detached copy of the mount at `path` (in the caller's current mount namespace).
pub fn clone_mount(path: &Path) -> io::Result<OwnedFd> {
    let path = cstring(path)?;
    // Not through a symlink: the mount's root is a folder.
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: a valid C string and flags; open_tree has no libc wrapper.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    check(fd as libc::c_int)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// Attaches a detached mount (from `clone_mount`) at `target`.
pub fn attach_mount(mount: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let target = cstring(target)?;
    let empty = c"";
    // SAFETY: valid descriptor and C strings; move_mount has no libc wrapper.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) as libc::c_int
    })?;
    Ok(())
}

/// Whether `fd` lies on a FUSE filesystem.
pub fn is_fuse(fd: BorrowedFd<'_>) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is writable for one statfs struct; read only when the call succeeds.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    // SAFETY: fstatfs filled it in.
    rc == 0 && unsafe { st.assume_init() }.f_type as libc::c_long == FUSE_SUPER_MAGIC
}

// ---------------------------------------------------------------------------
// The node image cache: kept mount namespaces, their locks and their servers.

const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Whether `fd` is a namespace file (a /proc/PID/ns link or a bind mount of one).
pub fn is_nsfs(fd: BorrowedFd<'_>) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is writable for one statfs struct; read only when the call succeeds.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    // SAFETY: fstatfs filled it in.
    rc == 0 && unsafe { st.assume_init() }.f_type as libc::c_long == NSFS_MAGIC
}

/// Whether the file system `fd` lies on answers (statfs reaches a FUSE server).
pub fn file_system_answers(fd: BorrowedFd<'_>) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: as in `is_nsfs`; the result is only the return code.
    unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) == 0 }
}

/// A lock on an open file (flock): shared or exclusive, never waiting. False: another
/// open file holds a lock that conflicts.
pub fn try_lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<bool> {
    let how = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor we hold, with flag bits only.
    match unsafe { libc::flock(fd.as_raw_fd(), how) } {
        0 => Ok(true),
        _ if io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(io::Error::last_os_error()),
    }
}

/// An exclusive lock on an open file (flock), waiting for it. Only for files no user
/// can open, whose holders hold them for a few system calls.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we hold, with flag bits only.
        match unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } {
            0 => return Ok(()),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// The id of the mount `fd` lies on (two equal ids: the same mount).
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::uninit();
    // SAFETY: `stx` is writable for one statx struct; AT_EMPTY_PATH asks about the fd
    // itself (O_PATH fds too).
    check(unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the struct.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::other(
            "the kernel gives no mount ids (Linux 5.8 or later needed)",
        ));
    }
    Ok(stx.stx_mnt_id)
}

/// Makes the mount at `path` private: mounts made below it are not propagated to
/// other namespaces, nor theirs to it.
pub fn make_private(path: &Path) -> io::Result<()> {
    nix::mount::mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    Ok(())
}

/// Gives the folder `dir` (an O_PATH descriptor will do) to `uid`:`gid` with `mode`.
pub fn give_folder(dir: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: a descriptor we hold and an empty path with AT_EMPTY_PATH: the folder itself.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH) })?;
    // chmod follows the descriptor's /proc link (fchmod refuses O_PATH descriptors).
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", dir.as_raw_fd()),
        std::os::unix::fs::PermissionsExt::from_mode(mode),
    )
}

/// Detaches the mount at `path` (lazily: whoever still uses it keeps it until done).
pub fn unmount_detached(path: &Path) -> io::Result<()> {
    nix::mount::umount2(
        path,
        nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
    )?;
    Ok(())
}

/// The ids of the processes now running (what /proc lists).
pub fn process_ids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// The kernel's start time of process `pid` (clock ticks after boot, field 22 of its
/// stat file): with the pid, what names one process for good.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// SIGKILLs process `pid` if it is still the one that started at `start_time` (checked
/// once a pidfd holds it, so a reused pid is never hit). True when it was signalled.
pub fn kill_if_started_at(pid: u32, start_time: u64) -> bool {
    kill_if_still(pid, || process_start_time(pid) == Some(start_time))
}

/// Starts `argv` (path first) as a daemon: in its own session, reparented away from
/// the caller (a double fork, so no process tracker that follows the caller's tree
/// finds it), with /dev/null as its standard streams. Safe in a multi-threaded caller:
/// the children only make system calls until exec.
pub fn spawn_detached(argv: &[CString]) -> io::Result<()> {
    spawn_detached_with(argv, &[c"PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()])
}

/// As `spawn_detached`, with exactly the environment `env` (`NAME=VALUE` each).
pub fn spawn_detached_with(argv: &[CString], env: &[CString]) -> io::Result<()> {
    let null = open_path(Path::new("/dev/null"), libc::O_RDWR)?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut env: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    match fork()? {
        Forked::Parent(pid) => {
            nix::sys::wait::waitpid(pid, None)?;
            Ok(())
        }
        Forked::Child => {
            // SAFETY: setsid, fork, dup2, close_range, execve and _exit are
            // async-signal-safe; every pointer was made before the first fork and
            // lives until exec.
            unsafe {
                libc::setsid();
                if libc::fork() != 0 {
                    libc::_exit(0);
                }
                for to in 0..3 {
                    libc::dup2(null.as_raw_fd(), to);
                }
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                libc::execve(ptrs[0], ptrs.as_ptr(), env.as_ptr());
                libc::_exit(127)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Interrupts (CLI only).

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP only set a flag (see `interrupted`), so a long
/// operation can stop at its next check and remove what it made. Child processes still
/// get the signal (same process group on a terminal) and end as usual.
pub fn catch_interrupts() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(note_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// SIGPIPE back to its default action (Rust starts programs with it ignored): a CLI
/// whose reader went away (`ferry inspect IMG | head -1`) ends quietly instead of
/// failing on EPIPE, and a command `ferry run` execs does not inherit it ignored.
pub fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: installing the default action runs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// True once SIGINT, SIGTERM or SIGHUP arrived after `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}
