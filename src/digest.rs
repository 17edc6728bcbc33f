//! What Glance's image record promises about an image's bytes: its size and digests
//! (`Expected`, with the `HashAlgo` of its `os_hash_value`). A pure leaf: the upstream module
//! parses records into it and the cache verifies bytes against it.

/// The `os_hash_algo` values Glance may record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgo {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgo {
    pub fn parse(name: &str) -> Option<HashAlgo> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Some(HashAlgo::Sha256),
            "sha384" => Some(HashAlgo::Sha384),
            "sha512" => Some(HashAlgo::Sha512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
        }
    }
}

/// What the image record says the bytes must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    /// Glance's `checksum`, lower-case hex md5.
    pub md5: Option<String>,
    /// `os_hash_algo` and `os_hash_value` (lower-case hex).
    pub os_hash: Option<(HashAlgo, String)>,
}

impl Expected {
    /// Whether the record names any digest at all (an image without one is not cacheable
    /// unless size-only caching is allowed).
    pub fn has_digest(&self) -> bool {
        self.md5.is_some() || self.os_hash.is_some()
    }

    /// What to verify: with `os_hash` (SHA-2) named, that alone proves the bytes are Glance's,
    /// so md5 is dropped unless `verify_md5`; without it (v1, old images), md5. Hash once.
    pub fn to_verify(&self, verify_md5: bool) -> Expected {
        match (&self.os_hash, verify_md5) {
            (Some(_), false) => Expected {
                md5: None,
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// One `Expected` per digest it names (each hashed on a thread of its own), in order md5,
    /// os_hash; empty when it names none.
    pub fn parts(&self) -> Vec<Expected> {
        let md5 = self.md5.as_ref().map(|_| Expected {
            os_hash: None,
            ..self.clone()
        });
        let os = self.os_hash.as_ref().map(|_| Expected {
            md5: None,
            ..self.clone()
        });
        md5.into_iter().chain(os).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(md5: bool, os: bool) -> Expected {
        Expected {
            size: 3,
            md5: md5.then(|| "m".to_string()),
            os_hash: os.then(|| (HashAlgo::Sha512, "s".to_string())),
        }
    }

    #[test]
    fn hash_once_with_the_strongest_digest() {
        let names = |e: &Expected| (e.md5.is_some(), e.os_hash.is_some());
        // (record has md5, has os_hash, verify_md5) -> (md5 checked, os_hash checked)
        for (md5, os, verify_md5, want) in [
            (true, true, false, (false, true)),
            (true, true, true, (true, true)),
            (true, false, false, (true, false)),
            (false, true, false, (false, true)),
            (false, false, false, (false, false)),
        ] {
            let checked = expected(md5, os).to_verify(verify_md5);
            assert_eq!(names(&checked), want, "{md5} {os} {verify_md5}");
            assert_eq!(checked.size, 3);
            let parts: Vec<_> = checked.parts().iter().map(names).collect();
            let mut want_parts = Vec::new();
            if want.0 {
                want_parts.push((true, false));
            }
            if want.1 {
                want_parts.push((false, true));
            }
            assert_eq!(parts, want_parts);
        }
    }
}
