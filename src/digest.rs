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
}
