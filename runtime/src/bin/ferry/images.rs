//! `ferry images`: the image store as a table (or JSON), `ferry images rm WHAT...` and
//! `ferry images prune --max-size SIZE`. The store itself is the library's `store`.

use crate::cli::ImagesAction;
use crate::say;
use ferry_runtime::site::parse_size;
use ferry_runtime::store::{Entry, Store, StoreError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn images(
    action: Option<ImagesAction>,
    store: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, String> {
    let named = store.is_some();
    let root = match store.or_else(Store::user_default) {
        Some(root) => root,
        None => {
            return Err(
                "no user image store: set HOME or XDG_CACHE_HOME, or name one with --store DIR"
                    .into(),
            )
        }
    };
    match action {
        None => list(&root, named, json),
        Some(ImagesAction::Rm { what }) => remove(&root, &what),
        Some(ImagesAction::Prune { max_size }) => {
            let max_bytes = parse_size(&max_size).ok_or_else(|| {
                format!("--max-size {max_size}: not a size; give bytes or a number with K, M, G or T (e.g. 20G)")
            })?;
            prune(&root, max_bytes)
        }
    }
}

/// Lists without writing anything; a user store not made yet is an empty one.
fn list(root: &Path, named: bool, json: bool) -> Result<ExitCode, String> {
    let (entries, broken) = match Store::open_read_only(root) {
        Ok(store) => store.scan().map_err(|e| e.to_string())?,
        Err(StoreError::NotFound { .. }) if !named => (Vec::new(), Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    for problem in &broken {
        say::warning(&problem.to_string());
    }
    if json {
        let text = serde_json::to_string_pretty(&entries)
            .map_err(|e| format!("cannot write the list as JSON: {e}"))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now();
    let mut rows = vec![[
        "REFERENCE".to_string(),
        "MANIFEST".to_string(),
        "IMAGE".to_string(),
        "SIZE".to_string(),
        "LAST USED".to_string(),
    ]];
    for entry in &entries {
        // One row per reference, as it was pulled.
        let references: Vec<&str> = if entry.reference.is_empty() {
            vec!["-"]
        } else {
            entry.reference.iter().map(String::as_str).collect()
        };
        for reference in references {
            rows.push([
                reference.to_string(),
                short(&entry.manifest_digest.to_string()),
                short(&entry.image_digest.to_string()),
                human_size(entry.size),
                ago(now, entry.last_used),
            ]);
        }
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn remove(root: &Path, what: &[String]) -> Result<ExitCode, String> {
    let store = Store::open(root).map_err(|e| e.to_string())?;
    let mut unmatched = Vec::new();
    for one in what {
        let removed = store.remove(one).map_err(|e| e.to_string())?;
        if removed.is_empty() {
            unmatched.push(one.as_str());
        }
        for entry in &removed {
            println!("removed {}", describe(entry));
        }
    }
    if unmatched.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(say::fail(
            &format!(
                "nothing in the image store {} matches {}; see ferry images",
                root.display(),
                unmatched.join(", ")
            ),
            1,
        ))
    }
}

fn prune(root: &Path, max_bytes: u64) -> Result<ExitCode, String> {
    let store = Store::open(root).map_err(|e| e.to_string())?;
    for entry in store.prune(max_bytes).map_err(|e| e.to_string())? {
        println!("removed {}", describe(&entry));
    }
    let left = store.list().map_err(|e| e.to_string())?;
    let mut images: Vec<(&str, u64)> = left
        .iter()
        .map(|e| (e.image_digest.hex(), e.size))
        .collect();
    images.sort();
    images.dedup();
    println!(
        "the store holds {} in {} images",
        human_size(images.iter().map(|(_, size)| size).sum()),
        images.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `REFERENCE, ... (IMAGE DIGEST, SIZE)`.
fn describe(entry: &Entry) -> String {
    let references = if entry.reference.is_empty() {
        entry.manifest_digest.to_string()
    } else {
        entry.reference.join(", ")
    };
    format!(
        "{references} ({}, {})",
        short(&entry.image_digest.to_string()),
        human_size(entry.size)
    )
}

/// `sha256:` and the first 12 hex digits.
fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Bytes in powers of 1024, with one decimal above a KiB: `512 B`, `1.5 MiB`.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// How long ago `then` was, in the largest whole unit.
pub(crate) fn ago(now: u64, then: u64) -> String {
    let seconds = now.saturating_sub(then);
    let (count, unit) = match seconds {
        0..60 => return "just now".into(),
        60..3600 => (seconds / 60, "minute"),
        3600..86400 => (seconds / 3600, "hour"),
        _ => (seconds / 86400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Columns padded to their widest cell, two spaces apart.
pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:width$}  "));
            }
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_as_people_say_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(300 << 20), "300.0 MiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        assert_eq!(ago(1000, 1000), "just now");
        assert_eq!(ago(1000, 2000), "just now");
        assert_eq!(ago(1000, 880), "2 minutes ago");
        assert_eq!(ago(10_000, 10_000 - 3600), "1 hour ago");
        assert_eq!(ago(1_000_000, 1_000_000 - 3 * 86400), "3 days ago");
        assert_eq!(
            short("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }
}
