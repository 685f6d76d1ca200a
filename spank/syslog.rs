//! One line to the system log for the admins, tagged `ferry[PID]`, facility daemon.
//!
//! Written straight to /dev/log rather than through openlog(3)/syslog(3): openlog sets
//! the ident of the whole process, and slurmstepd's own syslog lines would then carry
//! our tag.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};

const FACILITY_DAEMON: u8 = 3;
pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const INFO: u8 = 6;
pub const DEBUG: u8 = 7;

/// The least important severity still written (the site's `log_level`).
static MAX_SEVERITY: AtomicU8 = AtomicU8::new(INFO);

pub fn set_max_severity(severity: u8) {
    MAX_SEVERITY.store(severity, Ordering::Relaxed);
}

pub fn log(severity: u8, message: &str) {
    if severity > MAX_SEVERITY.load(Ordering::Relaxed) {
        return;
    }
    let line = format!(
        "<{}>ferry[{}]: {}",
        FACILITY_DAEMON * 8 + severity,
        std::process::id(),
        message.replace('\n', " ")
    );
    if let Ok(socket) = UnixDatagram::unbound() {
        let _ = socket.send_to(line.as_bytes(), "/dev/log"); // no syslog daemon: nothing to do
    }
}
