//! What the CLI tells the user on stderr: the one place its `ferry: ` prefix is added,
//! and every message kept to one line.

use std::process::ExitCode;

/// One line on stderr.
pub fn error(message: &str) {
    eprintln!("ferry: {}", ferry_runtime::error::one_line(message));
}

/// One line on stderr, marked as a warning.
pub fn warning(message: &str) {
    error(&format!("warning: {message}"));
}

/// `message` on stderr and the exit code `code`.
pub fn fail(message: &str, code: u8) -> ExitCode {
    error(message);
    ExitCode::from(code)
}
