//! Pure verification of image bytes: streaming digests (md5 plus the image's `os_hash_algo`)
//! and the comparison against what Glance's image record promises.
//!
//! An entry may be published only when its length equals `size` and every digest the record
//! names matches (glance-cache-spec §6.3); Glance's own cache checks md5 alone.

use md5::Md5;
use sha2::{Digest, Sha256, Sha384, Sha512};

pub use crate::digest::{Expected, HashAlgo};
use crate::outcome::MismatchKind;

/// Why bytes are not the image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("length {actual} differs from the image size {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("{algo} digest {actual} differs from the recorded {expected}")]
    Digest {
        algo: &'static str,
        expected: String,
        actual: String,
    },
}

impl Mismatch {
    /// Its kind, for logs and metrics.
    pub fn kind(&self) -> MismatchKind {
        match self {
            Mismatch::Length { actual, expected } if actual < expected => MismatchKind::Short,
            Mismatch::Length { .. } => MismatchKind::Long,
            Mismatch::Digest { .. } => MismatchKind::HashMismatch,
        }
    }
}

enum OsHasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

/// Streaming digests over image bytes, fed chunk by chunk.
pub struct Digests {
    len: u64,
    md5: Option<Md5>,
    os: Option<(HashAlgo, OsHasher)>,
}

impl Digests {
    /// Digests for what `expected` names (nothing is computed that cannot be compared).
    pub fn for_expected(expected: &Expected) -> Digests {
        Digests {
            len: 0,
            md5: expected.md5.as_ref().map(|_| Md5::new()),
            os: expected.os_hash.as_ref().map(|(algo, _)| {
                let h = match algo {
                    HashAlgo::Sha256 => OsHasher::Sha256(Sha256::new()),
                    HashAlgo::Sha384 => OsHasher::Sha384(Sha384::new()),
                    HashAlgo::Sha512 => OsHasher::Sha512(Sha512::new()),
                };
                (*algo, h)
            }),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
        match &mut self.os {
            Some((_, OsHasher::Sha256(h))) => h.update(chunk),
            Some((_, OsHasher::Sha384(h))) => h.update(chunk),
            Some((_, OsHasher::Sha512(h))) => h.update(chunk),
            None => {}
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finish and compare: `Ok` only if the length and every named digest match.
    pub fn verify(self, expected: &Expected) -> Result<(), Mismatch> {
        if self.len != expected.size {
            return Err(Mismatch::Length {
                expected: expected.size,
                actual: self.len,
            });
        }
        if let (Some(md5), Some(want)) = (self.md5, &expected.md5) {
            compare("md5", want, &hex::encode(md5.finalize()))?;
        }
        if let (Some((algo, h)), Some((_, want))) = (self.os, &expected.os_hash) {
            let actual = match h {
                OsHasher::Sha256(h) => hex::encode(h.finalize()),
                OsHasher::Sha384(h) => hex::encode(h.finalize()),
                OsHasher::Sha512(h) => hex::encode(h.finalize()),
            };
            compare(algo.as_str(), want, &actual)?;
        }
        Ok(())
    }
}

fn compare(algo: &'static str, expected: &str, actual: &str) -> Result<(), Mismatch> {
    if expected.eq_ignore_ascii_case(actual) {
        Ok(())
    } else {
        Err(Mismatch::Digest {
            algo,
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of b"hello world" (from md5sum, sha512sum, sha256sum).
    const MD5: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3";
    const SHA512: &str = "309ecc489c12d6eb4cc40f50c902f2b4d0ed77ee511a7c7a9bcd3ca86d4cd86f989dd35bc5ff499670da34255b45b0cfd830e81f605dcf7dc5542e93ae9cd76f";
    const SHA256: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    fn expected(size: u64, md5: Option<&str>, os: Option<(HashAlgo, &str)>) -> Expected {
        Expected {
            size,
            md5: md5.map(str::to_string),
            os_hash: os.map(|(a, v)| (a, v.to_string())),
        }
    }

    fn check(data: &[&[u8]], exp: &Expected) -> Result<(), Mismatch> {
        let mut d = Digests::for_expected(exp);
        for chunk in data {
            d.update(chunk);
        }
        d.verify(exp)
    }

    #[test]
    fn verification() {
        let good = expected(11, Some(MD5), Some((HashAlgo::Sha512, SHA512)));
        assert_eq!(check(&[b"hello", b" world"], &good), Ok(()));
        assert_eq!(
            check(
                &[b"hello world"],
                &expected(11, None, Some((HashAlgo::Sha256, SHA256)))
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &[b"hello world"],
                &expected(11, Some(&MD5.to_uppercase()), None)
            ),
            Ok(())
        );

        let short = check(&[b"hello"], &good).expect_err("short");
        assert_eq!(short.kind(), MismatchKind::Short);
        let flipped = check(&[b"hello worle"], &good).expect_err("flipped byte");
        assert_eq!(flipped.kind(), MismatchKind::HashMismatch);
        // md5 right but sha512 wrong (a changed image with a stale checksum): still refused.
        let bad_os = expected(
            11,
            Some(MD5),
            Some((HashAlgo::Sha512, &SHA512.replace('3', "4"))),
        );
        assert!(matches!(
            check(&[b"hello world"], &bad_os),
            Err(Mismatch::Digest { algo: "sha512", .. })
        ));
        assert!(!expected(11, None, None).has_digest());
        assert_eq!(HashAlgo::parse("SHA512"), Some(HashAlgo::Sha512));
        assert_eq!(HashAlgo::parse("md5"), None);
    }
}
