//! Who is asking: a key for the caller's identity, and the memory of which callers Glance let
//! download which images.
//!
//! The proxy never decides access itself; Glance does, per request, with the caller's own
//! headers (see `serve`). This module only remembers grants, so that a 404 on an image's
//! record evicts its entry only when Glance says it to a caller it had let download the image
//! (the image is gone), never when it says it to a caller who simply cannot see the image:
//! otherwise anyone could evict anyone's cached images.

use std::time::Duration;

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Headers that identify a caller to Glance: tokens, and the identity headers a no-auth
/// Glance (or a trusted front) reads. Anything else in the request does not change who it is.
const IDENTITY_HEADERS: [&str; 12] = [
    "x-auth-token",
    "x-service-token",
    "x-subject-token",
    "authorization",
    "cookie",
    "x-user-id",
    "x-user-name",
    "x-project-id",
    "x-tenant-id",
    "x-roles",
    "x-domain-id",
    "x-identity-status",
];

/// A digest of a caller's identity headers: equal only for the same token and identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallerKey([u8; 32]);

impl CallerKey {
    pub fn of(headers: &HeaderMap) -> CallerKey {
        let mut h = Sha256::new();
        for name in IDENTITY_HEADERS {
            for value in headers.get_all(name) {
                h.update(name.as_bytes());
                h.update([0]);
                h.update(value.as_bytes());
                h.update([0]);
            }
        }
        CallerKey(h.finalize().into())
    }
}

/// Which (caller, image) pairs Glance allowed to download, recently. Bounded in size and age.
pub struct Grants {
    seen: moka::sync::Cache<(CallerKey, String), ()>,
}

impl Grants {
    pub fn new(capacity: u64, idle: Duration) -> Self {
        Grants {
            seen: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
        }
    }

    pub fn granted(&self, caller: CallerKey, image_id: &str) {
        self.seen.insert((caller, image_id.to_string()), ());
    }

    /// Whether Glance let this caller download this image before.
    pub fn was_granted(&self, caller: CallerKey, image_id: &str) -> bool {
        self.seen.contains_key(&(caller, image_id.to_string()))
    }
}

impl Default for Grants {
    fn default() -> Self {
        // About 150 bytes an entry: at most a few MiB.
        Grants::new(20_000, Duration::from_secs(24 * 3600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn caller_keys() {
        let a = CallerKey::of(&headers(&[
            ("x-auth-token", "t1"),
            ("x-openstack-request-id", "req-1"),
        ]));
        let a2 = CallerKey::of(&headers(&[
            ("x-auth-token", "t1"),
            ("x-openstack-request-id", "req-2"),
        ]));
        let b = CallerKey::of(&headers(&[("x-auth-token", "t2")]));
        let forged = CallerKey::of(&headers(&[("x-auth-token", "t1"), ("x-roles", "admin")]));
        assert_eq!(a, a2, "the request id does not change who is asking");
        assert_ne!(a, b);
        assert_ne!(a, forged, "identity headers are part of the key");
    }

    #[test]
    fn grants_are_per_caller_and_image() {
        let g = Grants::default();
        let a = CallerKey::of(&headers(&[("x-auth-token", "t1")]));
        let b = CallerKey::of(&headers(&[("x-auth-token", "t2")]));
        g.granted(a, "img");
        assert!(g.was_granted(a, "img"));
        assert!(!g.was_granted(b, "img"));
        assert!(!g.was_granted(a, "other"));
    }
}
