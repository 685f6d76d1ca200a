//! The test image of the runtime tests: busybox and its applets, a file and a command
//! only it has, and a setuid-root program, as a folder and as a SquashFS file. Built
//! once per test process, on first use.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::files::{mkdir_mode, mksquashfs, write_mode};
use crate::tempdir::TempDir;

/// Where the test finds busybox; Debian's busybox-static puts it here.
pub const BUSYBOX: &str = "/bin/busybox";
/// Content of the file that exists only in the test image.
pub const ONLY_IN_IMAGE: &str = "this file exists only in the test image\n";

pub struct Fixture {
    /// Holds the image and the root folder; removed when the test process exits.
    pub dir: PathBuf,
    /// The SquashFS image (root-owned, mode 0644).
    pub image: PathBuf,
    /// The root folder the image was made from, usable as a folder image.
    pub rootfs: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// The test image, built on first use (once per test process) and removed when the
/// process exits.
pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = TempDir::new("image");
        let fixture = build_fixture(dir.path());
        dir.keep_until_exit();
        fixture
    })
}

fn build_fixture(dir: &Path) -> Fixture {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "data", "etc", "root"] {
        mkdir_mode(&rootfs.join(sub), 0o755);
    }
    // busybox and its applets.
    let busybox = rootfs.join("bin/busybox");
    fs::copy(BUSYBOX, &busybox).unwrap();
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755)).unwrap();
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    write_mode(
        &rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    write_mode(&rootfs.join("etc/group"), "root:x:0:\n", 0o644);
    // What exists only in the image.
    write_mode(&rootfs.join("data/only-in-image"), ONLY_IN_IMAGE, 0o644);
    write_mode(
        &rootfs.join("bin/image-only"),
        "#!/bin/sh\necho \"image-only command ran as $(id -un) with args: $*\"\n",
        0o755,
    );
    // A setuid-root program that reports its effective uid.
    let source = dir.join("show-euid.c");
    write_mode(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf(\"%u\\n\", (unsigned)geteuid()); return 0; }\n",
        0o644,
    );
    let show_euid = rootfs.join("bin/show-euid");
    let gcc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&show_euid)
        .arg(&source)
        .output()
        .expect("running gcc");
    assert!(
        gcc.status.success(),
        "gcc -static failed (is libc6-dev installed? run tests/prepare-host): {}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    std::os::unix::fs::chown(&show_euid, Some(0), Some(0)).unwrap();
    fs::set_permissions(&show_euid, fs::Permissions::from_mode(0o4755)).unwrap();

    let image = dir.join("image.sqfs");
    mksquashfs(&rootfs, &image, &[]);
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).unwrap();
    Fixture {
        dir: dir.to_path_buf(),
        image,
        rootfs,
    }
}
