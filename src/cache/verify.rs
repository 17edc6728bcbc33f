//! Pure verification of image bytes: streaming digests (md5 plus the image's `os_hash_algo`)
//! and the comparison against what Glance's image record promises.
//!
//! An entry may be published only when its length equals `size` and every digest the record
//! names matches (glance-cache-spec §6.3); Glance's own cache checks md5 alone.
//!
//! The digests are OpenSSL's libcrypto (the system's, through the `openssl` crate): on this
//! project's machine it hashes SHA-512 about 30 % faster than RustCrypto's `sha2` (its AVX2 +
//! BMI2 assembly; ring and aws-lc run scalar code for SHA-512 on AMD), md5 about 30 % faster
//! than `md-5`, and SHA-256 as fast as the others (SHA-NI); `cargo bench --bench hashrate`
//! and bench/RESULTS.md, "Hashing implementations (issue 16)". Where libcrypto refuses an
//! algorithm (md5 under a FIPS-only provider) the digest is RustCrypto's instead.

use std::sync::atomic::{AtomicBool, Ordering};

use md5::Md5;
use openssl::hash::MessageDigest;
use sha2::digest::DynDigest;
use sha2::{Sha256, Sha384, Sha512};

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

/// An algorithm `Digests` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Md5,
    Os(HashAlgo),
}

impl Algo {
    fn name(self) -> &'static str {
        match self {
            Algo::Md5 => "md5",
            Algo::Os(a) => a.as_str(),
        }
    }

    fn openssl(self) -> MessageDigest {
        match self {
            Algo::Md5 => MessageDigest::md5(),
            Algo::Os(HashAlgo::Sha256) => MessageDigest::sha256(),
            Algo::Os(HashAlgo::Sha384) => MessageDigest::sha384(),
            Algo::Os(HashAlgo::Sha512) => MessageDigest::sha512(),
        }
    }

    fn rust(self) -> Box<dyn DynDigest + Send> {
        match self {
            Algo::Md5 => Box::new(Md5::default()),
            Algo::Os(HashAlgo::Sha256) => Box::new(Sha256::default()),
            Algo::Os(HashAlgo::Sha384) => Box::new(Sha384::default()),
            Algo::Os(HashAlgo::Sha512) => Box::new(Sha512::default()),
        }
    }
}

/// One streaming digest.
enum Hasher {
    /// libcrypto's: the fastest here (see the module's doc).
    OpenSsl(openssl::hash::Hasher),
    /// RustCrypto's, where libcrypto refused the algorithm.
    Rust(Box<dyn DynDigest + Send>),
    /// libcrypto failed part-way: the bytes were not all hashed, so they are not verified.
    Failed(String),
}

/// Whether the fallback to RustCrypto has been logged (once per process).
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);

impl Hasher {
    fn new(algo: Algo) -> Hasher {
        match openssl::hash::Hasher::new(algo.openssl()) {
            Ok(h) => Hasher::OpenSsl(h),
            Err(e) => {
                if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        algo = algo.name(),
                        error = %e,
                        "libcrypto refuses this digest; using RustCrypto's (slower) instead"
                    );
                }
                Hasher::Rust(algo.rust())
            }
        }
    }

    fn update(&mut self, chunk: &[u8]) {
        match self {
            Hasher::OpenSsl(h) => {
                if let Err(e) = h.update(chunk) {
                    *self = Hasher::Failed(e.to_string());
                }
            }
            Hasher::Rust(h) => h.update(chunk),
            Hasher::Failed(_) => {}
        }
    }

    /// The digest as lower-case hex, or why there is none.
    fn finish(self) -> Result<String, String> {
        match self {
            Hasher::OpenSsl(mut h) => h.finish().map(hex::encode).map_err(|e| e.to_string()),
            Hasher::Rust(h) => Ok(hex::encode(h.finalize())),
            Hasher::Failed(e) => Err(e),
        }
    }
}

/// Streaming digests over image bytes, fed chunk by chunk.
pub struct Digests {
    len: u64,
    md5: Option<Hasher>,
    os: Option<(HashAlgo, Hasher)>,
}

impl Digests {
    /// Digests for what `expected` names (nothing is computed that cannot be compared).
    pub fn for_expected(expected: &Expected) -> Digests {
        Digests {
            len: 0,
            md5: expected.md5.as_ref().map(|_| Hasher::new(Algo::Md5)),
            os: expected
                .os_hash
                .as_ref()
                .map(|(algo, _)| (*algo, Hasher::new(Algo::Os(*algo)))),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        if let Some(md5) = &mut self.md5 {
            md5.update(chunk);
        }
        if let Some((_, h)) = &mut self.os {
            h.update(chunk);
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
            compare("md5", want, md5.finish())?;
        }
        if let (Some((algo, h)), Some((_, want))) = (self.os, &expected.os_hash) {
            compare(algo.as_str(), want, h.finish())?;
        }
        Ok(())
    }
}

/// `actual` is the computed digest, or why none could be computed (then the bytes are refused:
/// what was not hashed is not verified).
fn compare(
    algo: &'static str,
    expected: &str,
    actual: Result<String, String>,
) -> Result<(), Mismatch> {
    match actual {
        Ok(actual) if expected.eq_ignore_ascii_case(&actual) => Ok(()),
        Ok(actual) => Err(Mismatch::Digest {
            algo,
            expected: expected.to_string(),
            actual,
        }),
        Err(e) => Err(Mismatch::Digest {
            algo,
            expected: expected.to_string(),
            actual: format!("(not computed: {e})"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests of b"hello world" (from md5sum, sha512sum, sha256sum).
    const MD5: &str = "5eb63bbbe01eeed093cb22bb8f5acdc3";
    const SHA512: &str = "309ecc489c12d6eb4cc40f50c902f2b4d0ed77ee511a7c7a9bcd3ca86d4cd86f989dd35bc5ff499670da34255b45b0cfd830e81f605dcf7dc5542e93ae9cd76f";
    const SHA256: &str = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
    const SHA384: &str = "fdbd8e75a67f29f701a4e040385e2e23986303ea10239211af907fcbb83578b3e417cb71ce646efd0819dd8c088de1bd";
    const ALGOS: [Algo; 4] = [
        Algo::Md5,
        Algo::Os(HashAlgo::Sha256),
        Algo::Os(HashAlgo::Sha384),
        Algo::Os(HashAlgo::Sha512),
    ];

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

    /// What `Digests` computes (libcrypto's) is what RustCrypto's `md-5`/`sha2` compute: the
    /// known digests of "hello world", and a 10 MiB pattern fed in odd-sized chunks (so that
    /// chunks end everywhere within a block) against RustCrypto's over the whole at once.
    #[test]
    fn libcrypto_digests_match_rustcrypto() {
        for (algo, want) in ALGOS.into_iter().zip([MD5, SHA256, SHA384, SHA512]) {
            let mut h = Hasher::new(algo);
            assert!(
                matches!(h, Hasher::OpenSsl(_)),
                "{} by libcrypto",
                algo.name()
            );
            h.update(b"hello");
            h.update(b" world");
            assert_eq!(h.finish().as_deref(), Ok(want), "{}", algo.name());
        }

        let data: Vec<u8> = (0..10usize << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        let sizes = [
            1,
            3,
            7,
            63,
            65,
            111,
            127,
            129,
            1000,
            4093,
            65_537,
            (1 << 20) + 1,
        ];
        let mut wants = Vec::new();
        for algo in ALGOS {
            let mut whole = algo.rust();
            whole.update(&data);
            let want = hex::encode(whole.finalize());
            let (mut ours, mut theirs) = (Hasher::new(algo), Hasher::Rust(algo.rust()));
            assert!(matches!(ours, Hasher::OpenSsl(_)));
            let mut rest = &data[..];
            for n in sizes.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*n).min(rest.len()));
                ours.update(chunk);
                theirs.update(chunk);
                rest = tail;
            }
            assert_eq!(ours.finish().as_ref(), Ok(&want), "{}", algo.name());
            assert_eq!(theirs.finish().as_ref(), Ok(&want), "{}", algo.name());
            wants.push(want);
        }

        // And through `Digests`, md5 with each os_hash.
        for (i, algo) in [HashAlgo::Sha256, HashAlgo::Sha384, HashAlgo::Sha512]
            .into_iter()
            .enumerate()
        {
            let exp = expected(
                data.len() as u64,
                Some(&wants[0]),
                Some((algo, &wants[i + 1])),
            );
            let chunks: Vec<&[u8]> = data.chunks(4093).collect();
            assert_eq!(check(&chunks, &exp), Ok(()), "{}", algo.as_str());
        }
    }

    /// A digest that libcrypto could not finish refuses the bytes.
    #[test]
    fn a_failed_digest_refuses() {
        assert_eq!(compare("md5", MD5, Ok(MD5.to_string())), Ok(()));
        let err = compare("md5", MD5, Err("libcrypto failed".into())).expect_err("refused");
        assert_eq!(err.kind(), MismatchKind::HashMismatch);
        let mut d = Digests::for_expected(&expected(11, Some(MD5), None));
        d.md5 = Some(Hasher::Failed("libcrypto failed".into()));
        d.update(b"hello world");
        assert!(matches!(
            d.verify(&expected(11, Some(MD5), None)),
            Err(Mismatch::Digest { algo: "md5", .. })
        ));
    }
}
