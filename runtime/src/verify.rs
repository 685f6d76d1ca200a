//! The opened image's digest, settled before anything is mounted. A pinned image is
//! verified: hashed once per version of the file (the node's digest cache answers after
//! that), bounded by the file's real size. An unpinned image is never hashed: nobody
//! asked the step to wait for its digest, so the record takes it from the cache when
//! the cache knows this very version of the file, and says it is unknown otherwise
//! (`digest::Status`).

use crate::container::ImageFacts;
use crate::digest::{self, Cache, DigestError, FileVersion, Source, Status};
use crate::error::Result;
use crate::image::{Format, ImageError, OpenedImage};
use crate::privileged::{image_err, image_file};
use crate::request::Request;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Holes a pinned image may have (and still more than its data) before it is refused:
/// hashing then takes at most about twice as long as reading the file's data.
const MAX_HOLES: u64 = 1 << 30;

/// The image's facts for the record, with its digest when it is known; for a pinned
/// image, an error unless its bytes are the pinned ones. Also returns the file version
/// the digest belongs to, which the caller checks again once the image is mounted.
pub(crate) fn verify_image(
    req: &Request,
    image: &OpenedImage,
) -> Result<(ImageFacts, Option<FileVersion>)> {
    let cache = req
        .digest_cache
        .as_ref()
        .map(|dir| Cache::of_user(dir, req.digest_cache_owner));
    verify(req, image, cache.as_ref())
}

fn verify(
    req: &Request,
    image: &OpenedImage,
    cache: Option<&Cache>,
) -> Result<(ImageFacts, Option<FileVersion>)> {
    let file = image_file(image).map_err(ImageError::Duplicate)?;
    let stat_failed = |source| DigestError::Stat {
        path: req.image.clone(),
        source,
    };
    let meta = file.metadata().map_err(stat_failed)?;
    let mut facts = ImageFacts {
        format: image.format.name().into(),
        size: meta.size(),
        mtime_unix: meta.mtime(),
        ..Default::default()
    };
    match (&req.pinned, image.format) {
        (Some(_), Format::Directory) => Err(DigestError::PinnedFolder {
            path: req.image.clone(),
        }
        .into()),
        (None, Format::Directory) => {
            facts.digest_status = Status::Folder;
            Ok((facts, None))
        }
        (None, _) => {
            let known = digest::cached_digest(&file, cache).map_err(stat_failed)?;
            let Some((found, version)) = known else {
                facts.digest_status = Status::UnknownUnpinned;
                return Ok((facts, None));
            };
            facts.digest = Some(found);
            facts.digest_source = Some(Source::Cache);
            facts.digest_status = Status::Cached;
            Ok((facts, Some(version)))
        }
        (Some(expected), _) => {
            refuse_sparse(req, &meta)?;
            let (found, source, version) = digest::digest_of(&file, cache)
                .map_err(|e| image_err(image, "reading the image to verify its digest", e))?;
            if *expected != found {
                return Err(DigestError::Mismatch {
                    path: req.image.clone(),
                    expected: expected.to_string(),
                    actual: found.to_string(),
                }
                .into());
            }
            facts.digest = Some(found);
            facts.digest_source = Some(source);
            facts.digest_status = Status::Verified;
            Ok((facts, Some(version)))
        }
    }
}

/// Holes read as zeros at the speed of the CPU: a sparse file of terabytes would keep
/// root hashing for hours. A real image's data is on disk.
fn refuse_sparse(req: &Request, meta: &Metadata) -> Result<()> {
    match sparse_problem(&req.image, meta) {
        Some(problem) => Err(problem.into()),
        None => Ok(()),
    }
}

/// Why a pinned image file is too sparse to hash (see `refuse_sparse`), if it is; the
/// submission check (`submit_check`) refuses it the same way.
pub(crate) fn sparse_problem(path: &Path, meta: &Metadata) -> Option<DigestError> {
    let allocated = meta.blocks().saturating_mul(512);
    let holes = meta.size().saturating_sub(allocated);
    (holes > MAX_HOLES && holes > allocated).then(|| DigestError::Sparse {
        path: path.to_path_buf(),
        holes,
        size: meta.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::{hash_file, Digest};
    use crate::error::Error;
    use crate::scratch::Scratch;
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::time::{Duration, Instant};

    const BYTES: &[u8] = b"the image's bytes";

    fn digest_of_bytes(bytes: &[u8], dir: &Path) -> Digest {
        let path = dir.join("other");
        std::fs::write(&path, bytes).unwrap();
        hash_file(&File::open(&path).unwrap(), &mut |_| {}).unwrap()
    }

    /// A scratch folder with `image` (holding BYTES) and a cache folder of this user.
    struct Setup {
        dir: Scratch,
        image: std::path::PathBuf,
    }

    impl Setup {
        fn new(tag: &str) -> Setup {
            let dir = Scratch::new(tag);
            let image = dir.join("image.sqfs");
            std::fs::write(&image, BYTES).unwrap();
            let cache = dir.join("cache");
            std::fs::create_dir(&cache).unwrap();
            std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
            Setup { dir, image }
        }

        fn cache(&self) -> Cache {
            Cache::of_this_user(self.dir.join("cache"))
        }

        fn request(&self, pinned: Option<Digest>) -> Request {
            let mut req = Request::example();
            req.image = self.image.clone();
            req.pinned = pinned;
            req
        }

        /// The image opened for reading, as the setup helper opens it.
        fn readable(&self) -> OpenedImage {
            self.opened(File::open(&self.image).unwrap().into())
        }

        /// The image opened with O_PATH: its metadata can be read, its bytes cannot, so
        /// any attempt to hash it fails (EBADF).
        fn unreadable(&self) -> OpenedImage {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&self.image)
                .unwrap();
            self.opened(file.into())
        }

        fn opened(&self, fd: OwnedFd) -> OpenedImage {
            OpenedImage {
                path: self.image.clone(),
                fd,
                format: Format::Squashfs,
            }
        }

        fn version(&self) -> FileVersion {
            FileVersion::of(&File::open(&self.image).unwrap()).unwrap()
        }
    }

    #[test]
    fn an_unpinned_image_without_a_cache_entry_is_not_hashed() {
        let setup = Setup::new("verify-unpinned");
        let req = setup.request(None);
        // Unreadable bytes: a hash would fail the call.
        let (facts, version) = verify(&req, &setup.unreadable(), None).unwrap();
        assert_eq!(facts.digest, None);
        assert_eq!(facts.digest_source, None);
        assert_eq!(facts.digest_status, Status::UnknownUnpinned);
        assert_eq!(version, None);
        assert_eq!(facts.size, BYTES.len() as u64);
        // The same image pinned is read (and so fails here): the test can tell.
        let pinned = setup.request(Some(digest_of_bytes(BYTES, &setup.dir)));
        assert!(verify(&pinned, &setup.unreadable(), None).is_err());

        // Readable, with a cache that does not know it: still unknown, and nothing was
        // hashed to be remembered.
        let cache = setup.cache();
        let (facts, version) = verify(&req, &setup.readable(), Some(&cache)).unwrap();
        assert_eq!(
            (facts.digest, facts.digest_status, version),
            (None, Status::UnknownUnpinned, None)
        );
        assert_eq!(cache.lookup(&setup.version()), None);
    }

    #[test]
    fn an_unpinned_image_takes_the_digest_the_cache_knows_without_reading_it() {
        let setup = Setup::new("verify-cached");
        // A digest the bytes do not have: only the cache can have said it.
        let remembered = digest_of_bytes(b"not the image's bytes", &setup.dir);
        setup.cache().store(&setup.version(), &remembered).unwrap();
        let req = setup.request(None);
        let cache = setup.cache();
        let (facts, version) = verify(&req, &setup.unreadable(), Some(&cache)).unwrap();
        assert_eq!(facts.digest, Some(remembered));
        assert_eq!(facts.digest_source, Some(Source::Cache));
        assert_eq!(facts.digest_status, Status::Cached);
        assert_eq!(version, Some(setup.version()));

        // Another version of the file (any write changes its ctime): unknown again.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&setup.image, BYTES).unwrap();
        let (facts, version) = verify(&req, &setup.unreadable(), Some(&cache)).unwrap();
        assert_eq!(
            (facts.digest, facts.digest_status, version),
            (None, Status::UnknownUnpinned, None)
        );
    }

    #[test]
    fn a_pinned_image_is_verified_then_answered_by_the_cache() {
        let setup = Setup::new("verify-pinned");
        let digest = digest_of_bytes(BYTES, &setup.dir);
        let req = setup.request(Some(digest.clone()));
        let cache = setup.cache();
        let (facts, version) = verify(&req, &setup.readable(), Some(&cache)).unwrap();
        assert_eq!(facts.digest, Some(digest.clone()));
        assert_eq!(facts.digest_source, Some(Source::Computed));
        assert_eq!(facts.digest_status, Status::Verified);
        assert_eq!(version, Some(setup.version()));
        // Remembered: the next step does not read the file.
        let (facts, _) = verify(&req, &setup.unreadable(), Some(&cache)).unwrap();
        assert_eq!(facts.digest_source, Some(Source::Cache));
        assert_eq!(facts.digest_status, Status::Verified);
        // And an unpinned step of the same version now has the digest too.
        let (facts, _) = verify(&setup.request(None), &setup.unreadable(), Some(&cache)).unwrap();
        assert_eq!(
            (facts.digest, facts.digest_status),
            (Some(digest), Status::Cached)
        );
    }

    #[test]
    fn a_pinned_image_with_other_bytes_is_refused() {
        let setup = Setup::new("verify-mismatch");
        let wrong = digest_of_bytes(b"other bytes", &setup.dir);
        let req = setup.request(Some(wrong));
        let e = verify(&req, &setup.readable(), None).unwrap_err();
        assert!(
            matches!(e, Error::Digest(DigestError::Mismatch { .. })),
            "{e}"
        );
    }

    #[test]
    fn a_sparse_pinned_image_of_4_tib_is_refused_at_once() {
        let setup = Setup::new("verify-sparse");
        File::options()
            .write(true)
            .open(&setup.image)
            .unwrap()
            .set_len(4 << 40)
            .unwrap();
        let req = setup.request(Some(digest_of_bytes(b"anything", &setup.dir)));
        let start = Instant::now();
        let e = verify(&req, &setup.readable(), None).unwrap_err();
        assert!(
            matches!(e, Error::Digest(DigestError::Sparse { size, .. }) if size == 4 << 40),
            "{e}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        // Unpinned, the same file is not hashed either (unreadable here: a regression
        // fails at once instead of reading 4 TiB of holes).
        let (facts, _) = verify(&setup.request(None), &setup.unreadable(), None).unwrap();
        assert_eq!(facts.digest_status, Status::UnknownUnpinned);
    }

    #[test]
    fn a_root_folder_has_no_digest_and_cannot_be_pinned() {
        let setup = Setup::new("verify-folder");
        let folder = OpenedImage {
            path: setup.dir.to_path_buf(),
            fd: File::open(&*setup.dir).unwrap().into(),
            format: Format::Directory,
        };
        let (facts, version) = verify(&setup.request(None), &folder, None).unwrap();
        assert_eq!(
            (facts.digest, facts.digest_status, version),
            (None, Status::Folder, None)
        );
        let pinned = setup.request(Some(digest_of_bytes(BYTES, &setup.dir)));
        let e = verify(&pinned, &folder, None).unwrap_err();
        assert!(
            matches!(e, Error::Digest(DigestError::PinnedFolder { .. })),
            "{e}"
        );
    }
}
