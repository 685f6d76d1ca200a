//! `ferry digest`: an image file's SHA-256, or a check against a pinned one.

use crate::progress::Progress;
use ferry_runtime::digest::{self, Cache, Digest};
use std::path::PathBuf;
use std::process::ExitCode;

pub fn digest_command(check: Option<&str>, image: &PathBuf) -> Result<ExitCode, String> {
    let file = std::fs::File::open(image).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("image {}: not found; check the path", image.display())
        }
        _ => format!("image {}: cannot read it ({e})", image.display()),
    })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("image {}: {e}", image.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "image {}: not a file; only image files have a digest (a root folder cannot be pinned)",
            image.display()
        ));
    }
    let size = meta.len();
    let cache = ferry_runtime::is_root().then(|| Cache::new(digest::DEFAULT_CACHE_DIR));
    if let Some(expected) = check {
        let expected = Digest::parse(expected)
            .ok_or_else(|| format!("--check {expected}: expected sha256: and 64 hex digits"))?;
        let (found, source, _) = digest::digest_of(&file, cache.as_ref())
            .map_err(|e| format!("image {}: {e}", image.display()))?;
        let source = match source {
            digest::Source::Cache => "cached",
            digest::Source::Computed => "hashed",
        };
        if found == expected {
            println!("{}: OK ({source})", image.display());
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{}: MISMATCH: expected {expected}, found {found} ({source})",
            image.display()
        );
        return Ok(ExitCode::from(1));
    }
    let before =
        digest::FileVersion::of(&file).map_err(|e| format!("image {}: {e}", image.display()))?;
    let mut bar = Progress::new(image, size);
    let found = digest::hash_file(&file, &mut |done| bar.show(done))
        .map_err(|e| format!("image {}: {e}", image.display()))?;
    bar.finish();
    digest::remember(cache.as_ref(), &file, &before, &found);
    println!("{found}  {}", image.display());
    Ok(ExitCode::SUCCESS)
}
