//! A blob checked as it streams: its size and SHA-256 against what the manifest says,
//! so a corrupt, truncated or substituted download is never used.

use crate::digest::Digest;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

/// Why a blob's bytes are not the ones asked for.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the download broke off ({0}); retry")]
    Read(io::Error),
    #[error("cannot write it ({0})")]
    Write(io::Error),
    #[error("truncated ({got} of {expected} bytes); retry")]
    Truncated { got: u64, expected: u64 },
    #[error(
        "longer than the {expected} bytes the manifest gives; the registry served something else"
    )]
    TooLong { expected: u64 },
    #[error("digest mismatch (expected {expected}, found {found}); the registry served corrupt data: retry, and tell the registry's operator if it persists")]
    Mismatch { expected: Digest, found: String },
    #[error("interrupted")]
    Interrupted,
}

const CHUNK: usize = 1 << 20;

/// Copies `reader` to `writer`, hashing as it goes, and checks that exactly `size`
/// bytes with digest `expected` came. `progress` is told the bytes copied so far.
pub fn copy_verified(
    mut reader: impl Read,
    mut writer: impl Write,
    expected: &Digest,
    size: u64,
    mut progress: impl FnMut(u64),
) -> Result<(), BlobError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    loop {
        if crate::interrupt::interrupted() {
            return Err(BlobError::Interrupted);
        }
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BlobError::Read(e)),
        };
        done += n as u64;
        if done > size {
            return Err(BlobError::TooLong { expected: size });
        }
        hasher.update(&buffer[..n]);
        writer.write_all(&buffer[..n]).map_err(BlobError::Write)?;
        progress(done);
    }
    writer.flush().map_err(BlobError::Write)?;
    if done < size {
        return Err(BlobError::Truncated {
            got: done,
            expected: size,
        });
    }
    let found = format!("sha256:{:x}", hasher.finalize());
    if found != expected.to_string() {
        return Err(BlobError::Mismatch {
            expected: expected.clone(),
            found,
        });
    }
    Ok(())
}

/// The digest of bytes held in memory (a manifest), as `sha256:HEX`.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::parse(&format!("sha256:{:x}", Sha256::digest(bytes)))
        .expect("a SHA-256 in hex is a digest")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that fails after giving `good` bytes, as a dropped connection does.
    struct BreaksOff<'b> {
        data: &'b [u8],
        good: usize,
    }

    impl Read for BreaksOff<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
            }
            let n = buf.len().min(self.good).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn exact_bytes_pass_and_every_deviation_is_named() {
        let data = b"layer bytes".repeat(1000);
        let digest = digest_of(&data);
        let size = data.len() as u64;
        let mut out = Vec::new();
        let mut last = 0;
        copy_verified(data.as_slice(), &mut out, &digest, size, |n| last = n).unwrap();
        assert_eq!(out, data);
        assert_eq!(last, size);

        let check = |bytes: &[u8], size: u64| {
            copy_verified(bytes, io::sink(), &digest, size, |_| {}).unwrap_err()
        };
        assert!(matches!(
            check(&data[..100], size),
            BlobError::Truncated { got: 100, .. }
        ));
        let mut longer = data.clone();
        longer.push(b'!');
        assert!(matches!(check(&longer, size), BlobError::TooLong { .. }));
        let mut flipped = data.clone();
        flipped[5] ^= 1;
        let e = check(&flipped, size);
        assert!(matches!(e, BlobError::Mismatch { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!(
            "digest mismatch (expected {digest}, found sha256:"
        )));
        let broken = BreaksOff {
            data: &data,
            good: 50,
        };
        let e = copy_verified(broken, io::sink(), &digest, size, |_| {}).unwrap_err();
        assert!(matches!(e, BlobError::Read(_)), "{e}");
    }

    #[test]
    fn digest_of_known_bytes() {
        assert_eq!(
            digest_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
