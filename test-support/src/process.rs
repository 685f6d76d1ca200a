//! Running a command with its output captured and a time limit.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Outcome {
    /// The exit status, or None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Panics, showing everything, unless the run exited 0.
    pub fn expect_success(&self, what: &str) -> &Self {
        assert_eq!(self.code, Some(0), "{what}: ferry failed: {self:#?}");
        self
    }

    /// The one line on stderr that a refusal of ferry's must be: it says it is ferry's
    /// (`ferry: ...`) and names each of `must_name`.
    #[track_caller]
    pub fn one_ferry_line(&self, must_name: &[&str]) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr: {self:#?}");
        let line = lines[0];
        assert!(
            line.starts_with("ferry: "),
            "the line says it is ferry's: {line:?}"
        );
        for name in must_name {
            assert!(line.contains(name), "the line names {name:?}: {line:?}");
        }
        line
    }
}

/// Runs `cmd` with captured stdout/stderr and a time limit (the child is killed and the
/// test fails when it is exceeded).
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Outcome {
    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out_reader = read_in_background(child.stdout.take().unwrap());
    let err_reader = read_in_background(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}; killed it");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Outcome {
        code: status.code(),
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Drains a pipe on its own thread, so a child that fills one pipe never blocks.
fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
