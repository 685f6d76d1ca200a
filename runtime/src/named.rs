//! Named containers (`--container-name=NAME`): the first step of a job that names one
//! on a node creates it, and later steps of the same job join it, writes included.

/// The longest name: it becomes one folder name on the node.
const MAX_NAME: usize = 64;

/// A name is 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit: it names a
/// folder on each node, so no `/`, no `..`, nothing a shell or a log would misread.
pub fn check_name(name: &str) -> Result<(), String> {
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if starts_well && allowed && name.len() <= MAX_NAME {
        return Ok(());
    }
    Err(format!(
        "--container-name={name}: give 1 to {MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_folder_names() {
        for good in ["a", "build-env", "py3.11_env", "0", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\n",
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("--container-name={bad}: give 1 to 64")),
                "{err}"
            );
        }
    }
}
