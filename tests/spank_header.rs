//! Our own SPANK declarations (slurm-headers/spank.h) must agree with the installed
//! Slurm's <slurm/spank.h>: every enum value, the option struct's layout, and every
//! function prototype. Needs gcc and Slurm's headers (libslurm-dev).
//! FERRY_TEST_SLURM_INCLUDE names another release's include folder (tests/slurm26/suite
//! checks 26.05's this way; not FERRY_SLURM_INCLUDE, which would rebuild the plugin);
//! only its `slurm/` folder is used, the C library's headers stay the host's.

use std::path::{Path, PathBuf};
use std::process::Command;
use test_support::{missing_tools, require};

/// The include folder holding Slurm's `slurm/spank.h`.
fn slurm_include() -> PathBuf {
    std::env::var_os("FERRY_TEST_SLURM_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"))
}

/// Fails the test unless gcc and Slurm's headers are here.
#[track_caller]
fn require_gcc_and_slurm_headers() {
    let mut missing = missing_tools(&["gcc"]);
    let header = slurm_include().join("slurm/spank.h");
    if !header.exists() {
        missing.push(format!(
            "{}: Slurm's headers (libslurm-dev)",
            header.display()
        ));
    }
    require(&missing);
}

/// An include folder in `dir` with only Slurm's `slurm/` folder in it (a link), for -I.
fn slurm_only_include(dir: &Path) -> String {
    let inc = dir.join("include");
    std::fs::create_dir_all(&inc).unwrap();
    std::os::unix::fs::symlink(slurm_include().join("slurm"), inc.join("slurm")).unwrap();
    inc.display().to_string()
}

fn names_in_our_header(header: &str) -> Vec<String> {
    header
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let name = l.split([',', ' ', '\t', '=']).next()?;
            (name.starts_with("S_") || name.starts_with("ESPANK_")).then(|| name.to_string())
        })
        .collect()
}

fn dump_program(names: &[String], include: &str) -> String {
    let mut c = format!("#include <stdio.h>\n#include <stddef.h>\n{include}\nint main(void) {{\n");
    for n in names {
        c.push_str(&format!("  printf(\"{n}=%d\\n\", (int){n});\n"));
    }
    c.push_str("  printf(\"sizeof=%zu\\n\", sizeof(struct spank_option));\n");
    for f in ["name", "arginfo", "usage", "has_arg", "val", "cb"] {
        c.push_str(&format!(
            "  printf(\"{f}=%zu\\n\", offsetof(struct spank_option, {f}));\n"
        ));
    }
    c.push_str("  return 0;\n}\n");
    c
}

fn compile_and_run(dir: &Path, name: &str, source: &str, flags: &[&str]) -> String {
    let src = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let out = Command::new("gcc")
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}.c did not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    String::from_utf8(run.stdout).unwrap()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-header-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
#[ignore = "needs gcc and Slurm's headers (libslurm-dev, tests/prepare-host): run tests/run, or cargo test -- --include-ignored"]
fn enum_values_and_option_layout_match_the_system_header() {
    require_gcc_and_slurm_headers();
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm-headers");
    let header = std::fs::read_to_string(ours.join("spank.h")).unwrap();
    let names = names_in_our_header(&header);
    assert!(
        names.len() > 40,
        "found only {} names in our header",
        names.len()
    );
    let dir = scratch("values");
    let inc = slurm_only_include(&dir);
    let system = compile_and_run(
        &dir,
        "system",
        &dump_program(&names, "#include <slurm/spank.h>"),
        &["-I", &inc],
    );
    let mine = compile_and_run(
        &dir,
        "ours",
        &dump_program(&names, "#include \"spank.h\""),
        &[
            "-I",
            ours.to_str().unwrap(),
            "-I",
            &inc,
            "-include",
            "slurm/slurm_version.h",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(mine, system);
}

#[test]
#[ignore = "needs gcc and Slurm's headers (libslurm-dev, tests/prepare-host): run tests/run, or cargo test -- --include-ignored"]
fn function_prototypes_match_the_system_header() {
    require_gcc_and_slurm_headers();
    // Redeclaring a function with a different signature is a compile error in C.
    let header = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm-headers/spank.h"),
    )
    .unwrap();
    let prototypes: Vec<&str> = header
        .lines()
        .filter(|l| {
            l.contains('(')
                && l.trim_end().ends_with(");")
                && !l.starts_with('\t')
                && !l.starts_with(' ')
        })
        .filter(|l| l.contains("spank_") || l.contains("slurm_"))
        .collect();
    assert!(prototypes.len() >= 9, "found {prototypes:?}");
    let dir = scratch("prototypes");
    let source = format!(
        "#include <slurm/spank.h>\n{}\nint main(void) {{ return 0; }}\n",
        prototypes.join("\n")
    );
    let src = dir.join("protos.c");
    std::fs::write(&src, source).unwrap();
    let inc = slurm_only_include(&dir);
    let out = Command::new("gcc")
        .args(["-fsyntax-only", "-Werror", "-I", &inc])
        .arg(&src)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "prototypes differ:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
