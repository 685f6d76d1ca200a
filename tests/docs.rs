//! The examples in the docs are run, so they stay true. A fenced block whose info
//! string is `sh tested-as-root` runs with bash as root; `sh tested-as-user` runs as
//! the unprivileged test user in a fresh folder of its own. Each must exit 0. A block
//! `text expected-output` right after one lists lines that its output must contain.
//! Needs the installed package and the test cluster (tests/run).

use std::path::Path;
use std::process::Command;
use test_support::{find_tool, is_root, require, slurm_node_problem, PLUGIN_CONF, TEST_USER};

const DOCS: &[&str] = &["README.md", "docs/admin.md"];

struct Example {
    doc: &'static str,
    line: usize,
    as_root: bool,
    script: String,
    expected: Vec<String>,
}

fn examples() -> Vec<Example> {
    let mut found = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
            .unwrap_or_else(|e| panic!("{doc}: {e}"));
        let mut lines = text.lines().enumerate().peekable();
        let mut last: Option<usize> = None; // index in `found` of the last example
        while let Some((n, line)) = lines.next() {
            let Some(info) = line.strip_prefix("```") else {
                // Only blank lines may separate an example from its output block.
                if !line.trim().is_empty() {
                    last = None;
                }
                continue;
            };
            let body: Vec<String> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| !l.starts_with("```"))
                .map(str::to_string)
                .collect();
            match info.trim() {
                "sh tested-as-root" | "sh tested-as-user" => {
                    found.push(Example {
                        doc,
                        line: n + 1,
                        as_root: info.trim().ends_with("root"),
                        script: body.join("\n") + "\n",
                        expected: Vec::new(),
                    });
                    last = Some(found.len() - 1);
                }
                "text expected-output" => {
                    let i = last.unwrap_or_else(|| {
                        panic!(
                            "{doc}:{}: expected-output without an example before it",
                            n + 1
                        )
                    });
                    found[i].expected = body;
                    last = None;
                }
                _ => last = None,
            }
        }
    }
    found
}

#[test]
fn the_docs_have_tested_examples() {
    let all = examples();
    for doc in DOCS {
        assert!(
            all.iter().any(|e| e.doc == *doc),
            "{doc} has no tested example"
        );
    }
}

#[test]
#[ignore = "needs root, the installed package and the Slurm cluster: run tests/run, or on a prepared host cargo test -- --include-ignored"]
fn every_tested_example_in_the_docs_works() {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    if find_tool("ferry").is_none() || !Path::new(PLUGIN_CONF).exists() {
        missing.push("the installed ferry package (deploy/install)".to_string());
    }
    missing.extend(slurm_node_problem());
    require(&missing);
    let work = std::env::temp_dir().join(format!("ferry-docs-{}", std::process::id()));
    let mut failures = Vec::new();
    for example in examples() {
        let mut cmd = if example.as_root {
            let mut c = Command::new("bash");
            c.args(["-euo", "pipefail", "-c", &example.script]);
            c
        } else {
            std::fs::create_dir_all(&work).unwrap();
            Command::new("chown")
                .args([TEST_USER, work.to_str().unwrap()])
                .status()
                .unwrap();
            let mut c = Command::new("runuser");
            c.args(["-u", TEST_USER, "--", "bash", "-euo", "pipefail", "-c"])
                .arg(&example.script)
                .current_dir(&work);
            c
        };
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let absent: Vec<&String> = example
            .expected
            .iter()
            .filter(|l| !stdout.lines().any(|o| o.trim_end() == l.trim_end()))
            .collect();
        if !out.status.success() || !absent.is_empty() {
            failures.push(format!(
                "{}:{}: {}\n--- script\n{}--- status {}\n--- stdout\n{stdout}--- stderr\n{stderr}--- expected lines not in the output: {absent:?}",
                example.doc,
                example.line,
                if example.as_root { "as root" } else { "as the test user" },
                example.script,
                out.status
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
