//! Folders that live as long as the test process (a fixture built once and kept in a
//! static, which is never dropped) are removed when it exits: libtest returns from main
//! or calls exit, and both run atexit hooks.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

static FOLDERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes `folder`, with everything in it, when the test process exits.
pub fn remove_at_exit(folder: PathBuf) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        #[allow(unsafe_code)] // test clean-up at exit
        // SAFETY: registers a plain extern "C" function with no arguments, which
        // neither unwinds nor touches state the exit path tears down first.
        unsafe {
            libc::atexit(remove_folders)
        };
    });
    FOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(folder);
}

extern "C" fn remove_folders() {
    let folders = FOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    for folder in folders.iter() {
        let _ = std::fs::remove_dir_all(folder);
    }
}
