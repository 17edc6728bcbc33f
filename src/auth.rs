//! Who is asking: the headers that make a caller's identity (`side_headers`, the only ones
//! of the client's that go on the proxy's own questions to Glance) and a key for it
//! (`CallerKey`, what `grants` remembers Glance's decisions by).
//!
//! The proxy never decides access itself; Glance does, with the caller's own headers (see
//! `image`), and `grants` remembers only its recent "yes" for the windows the operator sets.

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Headers that identify a caller to Glance: tokens, and the identity headers a no-auth
/// Glance (or a trusted front) reads into its request context (oslo.context's
/// `from_environ`: user, project, domains, roles, scope). Anything else in the request does not
/// change who it is. The proxy's own questions to Glance carry these and nothing else of the
/// client's (`side_headers`), and the caller's key is their hash (`CallerKey`).
const IDENTITY_HEADERS: [&str; 27] = [
    "x-auth-token",
    "x-service-token",
    "x-subject-token",
    "authorization",
    "cookie",
    "x-user-id",
    "x-user",
    "x-user-name",
    "x-user-domain-id",
    "x-user-domain-name",
    "x-project-id",
    "x-project-name",
    "x-project-domain-id",
    "x-project-domain-name",
    "x-tenant-id",
    "x-tenant",
    "x-tenant-name",
    "x-domain-id",
    "x-domain-name",
    "x-roles",
    "x-service-roles",
    "x-service-user-id",
    "x-service-project-id",
    "x-system-scope",
    "x-is-admin-project",
    "x-identity-status",
    "x-service-identity-status",
];

/// What the proxy adds about the request itself (set by `upstream::headers`, never the
/// client's own copies): kept on side requests so Glance logs and links see the same.
const CONTEXT_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-openstack-request-id",
];

/// The headers of the proxy's own questions to Glance for a caller (the record, the probe, the
/// download of a miss, the policy): the caller's identity and the forwarding context, nothing
/// else. A client cannot change how Glance routes or answers them (an `Accept` naming a
/// version, a `Range`, conditionals...), so a side request means the same for every client.
pub fn side_headers(caller: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in IDENTITY_HEADERS.iter().chain(CONTEXT_HEADERS.iter()) {
        for value in caller.get_all(*name) {
            out.append(*name, value.clone());
        }
    }
    out
}

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

    /// Lower-case hex, as the grants journal stores it (a hash: no credential on disk).
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<CallerKey> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text, &mut key).ok()?;
        Some(CallerKey(key))
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
    fn side_headers_keep_identity_and_context_only() {
        let caller = headers(&[
            ("x-auth-token", "t1"),
            ("x-roles", "member"),
            ("x-roles", "reader"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "application/vnd.openstack.images-v2.1"),
            ("range", "bytes=0-9"),
            ("if-none-match", "x"),
            ("user-agent", "curl"),
        ]);
        let side = side_headers(&caller);
        let names: Vec<&str> = side.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-auth-token", "x-roles", "x-forwarded-for"]);
        assert_eq!(side.get_all("x-roles").iter().count(), 2);
        assert_eq!(CallerKey::of(&side), CallerKey::of(&caller));
    }

    #[test]
    fn caller_keys_round_trip_as_hex() {
        let a = CallerKey::of(&headers(&[("x-auth-token", "t1")]));
        assert_eq!(CallerKey::from_hex(&a.to_hex()), Some(a));
        assert_eq!(CallerKey::from_hex("zz"), None);
        assert_eq!(CallerKey::from_hex(&"0".repeat(63)), None);
    }
}
