//! Temporary folders named after the test process, so host snapshots can tell its loop
//! devices from anyone else's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::user::test_user;

/// A fresh folder, removed with everything in it when dropped. Names carry the test
/// process's pid (`ferry-test-PID-...`).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A world-traversable (0755) folder under /tmp, so that the test user can reach
    /// what the test puts in it.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(Path::new("/tmp"), tag)
    }

    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        let template = base.join(format!("{}{tag}-XXXXXX", pid_tag()));
        let path = nix::unistd::mkdtemp(&template)
            .unwrap_or_else(|e| panic!("mkdtemp {}: {e}", template.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Gives the folder to the test user (for a working directory they write in).
    pub fn give_to_test_user(&self) {
        let u = test_user();
        std::os::unix::fs::chown(&self.path, Some(u.uid), Some(u.gid)).unwrap();
    }

    /// Keeps the folder until the test process exits (for what a static holds).
    pub fn keep_until_exit(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        crate::at_exit::remove_at_exit(path.clone());
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The prefix of every temporary path this test process creates.
pub fn pid_tag() -> String {
    format!("ferry-test-{}-", std::process::id())
}
