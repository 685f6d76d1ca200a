//! Progress on a terminal for long operations; silent in scripts and pipes.

use std::io::{IsTerminal, Write};

/// A one-line progress display on a terminal for files worth waiting for; silent in scripts.
pub struct Progress {
    label: String,
    size: u64,
    shown: Option<u64>,
    enabled: bool,
}

impl Progress {
    pub fn new(image: &std::path::Path, size: u64) -> Progress {
        let enabled = std::io::stderr().is_terminal() && size >= 256 << 20;
        Progress {
            label: image.display().to_string(),
            size,
            shown: None,
            enabled,
        }
    }

    pub fn show(&mut self, done: u64) {
        if !self.enabled || self.size == 0 {
            return;
        }
        let percent = done * 100 / self.size;
        if self.shown != Some(percent) {
            self.shown = Some(percent);
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            eprint!(
                "\rhashing {}: {percent:3}% ({:.1} of {:.1} GiB)",
                self.label,
                gib(done),
                gib(self.size)
            );
            let _ = std::io::stderr().flush();
        }
    }

    pub fn finish(&self) {
        if self.enabled && self.shown.is_some() {
            eprintln!();
        }
    }
}
