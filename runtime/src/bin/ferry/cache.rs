//! `ferry cache`: this node's kept image mounts as a table (or JSON), `ferry cache drop
//! KEY|IMAGE... | --all`, and the janitor the plugin starts. The cache itself is the
//! library's `image_cache`; it is root's, so every action needs root.

use crate::cli::CacheAction;
use crate::images::{ago, human_size, now, print_table};
use ferry_runtime::image_cache::{self, Dropped, Entry, Key, CACHE_DIR};
use ferry_runtime::site::CachePolicy;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

pub fn cache(action: Option<CacheAction>, json: bool) -> Result<ExitCode, String> {
    if !ferry_runtime::is_root() {
        return Err(format!(
            "ferry cache needs root: the node's image cache ({CACHE_DIR}) is root's"
        ));
    }
    match action {
        None => list(json),
        Some(CacheAction::Drop { all, what }) => drop(all, &what),
        Some(CacheAction::Janitor {
            ttl,
            max_images,
            max_bytes,
        }) => {
            let policy = CachePolicy {
                ttl: Duration::from_secs(ttl),
                max_images,
                max_bytes,
            };
            image_cache::run_janitor(&policy).map_err(|e| format!("image cache janitor: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn entries() -> Result<Vec<Entry>, String> {
    image_cache::list().map_err(|e| format!("reading the image cache {CACHE_DIR}: {e}"))
}

fn list(json: bool) -> Result<ExitCode, String> {
    let entries = entries()?;
    if json {
        let values: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
        let text = serde_json::to_string_pretty(&values)
            .map_err(|e| format!("cannot write the list as JSON: {e}"))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now();
    let mut rows = vec![[
        "KEY".to_string(),
        "IMAGE".to_string(),
        "USER".to_string(),
        "MOUNT".to_string(),
        "SIZE".to_string(),
        "KEPT".to_string(),
        "STATE".to_string(),
    ]];
    for e in &entries {
        let (image, user, mount, kept) = match &e.record {
            Some(r) => (
                r.image.display().to_string(),
                r.user.clone(),
                r.mount.clone(),
                ago(now, r.kept_unix),
            ),
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        rows.push([
            e.key.as_str()[..12].to_string(),
            image,
            user,
            mount,
            human_size(e.size()),
            kept,
            state(e, now),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

/// In use, idle since when, or what is wrong with it.
fn state(e: &Entry, now: u64) -> String {
    if !e.complete {
        "being made".into()
    } else if e.broken() {
        "broken (its server is gone)".into()
    } else if e.in_use {
        "in use".into()
    } else {
        format!("idle since {}", ago(now, unix(e.idle_since)))
    }
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "key": e.key.as_str(),
        "image": e.record.as_ref().map(|r| r.image.display().to_string()),
        "user": e.record.as_ref().map(|r| r.user.clone()),
        "uid": e.record.as_ref().map(|r| r.uid),
        "mount": e.record.as_ref().map(|r| r.mount.clone()),
        "size": e.size(),
        "kept_unix": e.record.as_ref().map(|r| r.kept_unix),
        "idle_since_unix": unix(e.idle_since),
        "in_use": e.in_use,
        "complete": e.complete,
        "broken": e.broken(),
        "server_pid": e.record.as_ref().and_then(|r| r.server.as_ref()).map(|s| s.pid),
    })
}

fn drop(all: bool, what: &[String]) -> Result<ExitCode, String> {
    let entries = entries()?;
    let mut chosen: Vec<&Entry> = Vec::new();
    let mut unmatched = Vec::new();
    if all {
        chosen.extend(&entries);
    }
    for one in what {
        let matching: Vec<&Entry> = entries.iter().filter(|e| names(e, one)).collect();
        if matching.is_empty() {
            unmatched.push(one.as_str());
        }
        chosen.extend(matching);
    }
    let mut failed = false;
    for e in chosen {
        let image = e
            .record
            .as_ref()
            .map_or("?".into(), |r| r.image.display().to_string());
        match image_cache::drop_entry(e) {
            Ok(Dropped::Gone) => println!("dropped {} ({image})", &e.key.as_str()[..12]),
            Ok(Dropped::StillInUse) => println!(
                "dropped {} ({image}); a running step still uses its mount, which goes when that step ends",
                &e.key.as_str()[..12]
            ),
            Err(err) => {
                crate::say::error(&format!(
                    "dropping {} ({image}): {err}",
                    &e.key.as_str()[..12]
                ));
                failed = true;
            }
        }
    }
    if all {
        image_cache::stop_janitor();
        let strays = image_cache::end_strays();
        if strays > 0 {
            println!("ended {strays} process(es) left in the cache's cgroup that no entry names");
        }
    }
    if !unmatched.is_empty() {
        return Err(format!(
            "no kept mount matches {}; see ferry cache",
            unmatched.join(", ")
        ));
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Whether `what` (a key or its first 12 or more characters, or an image's path)
/// names `e`.
fn names(e: &Entry, what: &str) -> bool {
    let key = e.key.as_str();
    let by_key = what.len() >= 12 && key.starts_with(what);
    let by_image = e.record.as_ref().is_some_and(|r| {
        r.image == Path::new(what) || Key::parse(what).is_some_and(|k| k == e.key)
    });
    by_key || by_image
}
