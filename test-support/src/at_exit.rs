//! What lives as long as the test process (a fixture built once and kept in a static,
//! which is never dropped) is cleaned up when it exits: folders are removed and child
//! processes (a test registry) are killed. libtest returns from main or calls exit, and
//! both run atexit hooks.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PROCESSES: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Removes `folder`, with everything in it (or the file `folder`), when the test
/// process exits.
pub fn remove_at_exit(folder: PathBuf) {
    register_hook();
    FOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(folder);
}

/// Kills the child `pid` when the test process exits, unless [`forget_process`] was
/// called for it first (its owner killed and reaped it, and the pid may be reused).
pub fn kill_at_exit(pid: u32) {
    register_hook();
    PROCESSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid);
}

/// The child `pid` is gone (killed and reaped by its owner): leave it alone at exit.
pub fn forget_process(pid: u32) {
    PROCESSES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

fn register_hook() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        #[allow(unsafe_code)] // test clean-up at exit
        // SAFETY: registers a plain extern "C" function with no arguments, which
        // neither unwinds nor touches state the exit path tears down first.
        unsafe {
            libc::atexit(clean_up)
        };
    });
}

extern "C" fn clean_up() {
    // Processes first: a registry still running would write into a folder being removed.
    let processes = PROCESSES.lock().unwrap_or_else(|e| e.into_inner());
    for &pid in processes.iter() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
    }
    let folders = FOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    for folder in folders.iter() {
        // A file registered here (a hook's evidence) is removed too.
        let _ = std::fs::remove_dir_all(folder).or_else(|_| std::fs::remove_file(folder));
    }
}
