//! Who is asking: the headers that make a caller's identity (`side_headers`, the only ones
//! of the client's that go on the proxy's own questions to Glance) and a key for it
//! (`CallerKey`, what `grants` remembers Glance's decisions by).
//!
//! The proxy never decides access itself; Glance does, with the caller's own headers (see
//! `image`), and `grants` remembers only its recent "yes" for the windows the operator sets.
//! A key is an HMAC with a per-install secret (`Secret`): the grants journal on disk holds
//! keys, and with noauth's low-entropy headers a bare hash would show who downloaded what.

use http::{HeaderMap, HeaderValue};
use ring::hmac;

/// Headers that identify a caller to Glance: every header oslo.context's `from_environ`
/// (6.5: `_ENVIRON_HEADERS`, roles, service roles, `is_admin_project`) and keystonemiddleware's
/// auth_token (13.0: `_all_auth_headers`, the token headers, `OpenStack-System-Scope`) read,
/// what Glance's context middleware reads besides (`X-Identity-Status`, `X-Service-Catalog`),
/// and a few that a front or an older release may read (`Authorization`, `Cookie`,
/// `X-Subject-Token`, `X-System-Scope`).
/// Anything else in the request does not change who it is. The proxy's own questions to
/// Glance carry these and nothing else of the client's (`side_headers`), and the caller's key
/// is their hash (`CallerKey`). Names are matched exactly: a spelling with `_` (`X_Auth_Token`)
/// never reaches Glance (`is_identity_alias`, dropped by `upstream::headers`), since a WSGI
/// server may drop it (gunicorn 22 and later, Apache) or read it as the header itself
/// (`HTTP_X_AUTH_TOKEN`), and the proxy cannot know which.
/// `tests/e2e/test_decision.py` checks the list against the installed oslo.context and
/// keystonemiddleware.
pub const IDENTITY_HEADERS: [&str; 39] = [
    "authorization",
    "cookie",
    "openstack-system-scope",
    "x-auth-token",
    "x-domain-id",
    "x-domain-name",
    "x-identity-status",
    "x-is-admin-project",
    "x-project-domain-id",
    "x-project-domain-name",
    "x-project-id",
    "x-project-name",
    "x-role",
    "x-roles",
    "x-service-catalog",
    "x-service-domain-id",
    "x-service-domain-name",
    "x-service-identity-status",
    "x-service-project-domain-id",
    "x-service-project-domain-name",
    "x-service-project-id",
    "x-service-project-name",
    "x-service-roles",
    "x-service-token",
    "x-service-user-domain-id",
    "x-service-user-domain-name",
    "x-service-user-id",
    "x-service-user-name",
    "x-storage-token",
    "x-subject-token",
    "x-system-scope",
    "x-tenant",
    "x-tenant-id",
    "x-tenant-name",
    "x-user",
    "x-user-domain-id",
    "x-user-domain-name",
    "x-user-id",
    "x-user-name",
];

/// Whether `name` (lower case) is one of the identity headers.
fn is_identity(name: &str) -> bool {
    IDENTITY_HEADERS.binary_search(&name).is_ok()
}

/// Whether `name` (lower case) is an identity header spelled with `_` for `-`
/// (`x_auth_token`): such a header is dropped from every request before it goes upstream, as
/// nginx does by default (`underscores_in_headers off`), so that Glance and the caller's key
/// never disagree on who is asking.
pub fn is_identity_alias(name: &str) -> bool {
    name.contains('_') && is_identity(&name.replace('_', "-"))
}

/// Context about the request itself, kept on side requests so Glance logs and links see the
/// same: the `x-forwarded-*` fields `upstream::headers` sets (never the client's own copies),
/// and the client's `x-openstack-request-id` as it was forwarded (oslo's request-id middleware
/// takes a well-formed one as the global request id).
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
    for (name, value) in caller {
        if is_identity(name.as_str()) || CONTEXT_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The bytes of a `Secret`.
pub const SECRET_LEN: usize = 32;

/// The per-install secret caller keys are HMAC-SHA256s with (ring's `hmac`): kept beside the
/// grants journal (`grants::journal`), or made up for the process when nothing persists.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl Secret {
    pub fn from_bytes(bytes: &[u8; SECRET_LEN]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// New secret bytes from the system's randomness.
    pub fn random_bytes() -> Result<[u8; SECRET_LEN], ring::error::Unspecified> {
        let mut bytes = [0u8; SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(bytes)
    }

    /// A secret for this process only (nothing keyed by it outlives it), from the same
    /// randomness as the instance's ids (uuid v4: 2 x 122 random bits).
    pub fn ephemeral() -> Secret {
        let mut bytes = [0u8; SECRET_LEN];
        bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Secret::from_bytes(&bytes)
    }

    /// Names the secret without showing it (an HMAC of a fixed text, hex): the grants
    /// journal's first line carries it, so a journal keyed with another secret is known.
    pub fn fingerprint(&self) -> String {
        let tag = hmac::sign(&self.0, b"glance-cache-proxy grants journal");
        hex::encode(&tag.as_ref()[..16])
    }
}

impl Secret {
    /// The MAC of one line of the grants journal (hex; an HMAC under its own prefix, never
    /// equal to a caller key or the fingerprint): a line copied from a journal of another
    /// install, or edited, does not verify.
    pub fn line_mac(&self, line: &str) -> String {
        hex::encode(hmac::sign(&self.0, &Secret::line_data(line)).as_ref())
    }

    /// Whether `mac` (hex) is `line_mac(line)`, compared in constant time.
    pub fn verifies_line(&self, line: &str, mac: &str) -> bool {
        let mut tag = [0u8; 32];
        hex::decode_to_slice(mac, &mut tag).is_ok()
            && hmac::verify(&self.0, &Secret::line_data(line), &tag).is_ok()
    }

    fn line_data(line: &str) -> Vec<u8> {
        let mut data = b"grants journal line\0".to_vec();
        data.extend_from_slice(line.as_bytes());
        data
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// An HMAC of a caller's identity headers: equal only for the same token and identity (and
/// the same `Secret`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallerKey([u8; 32]);

impl CallerKey {
    pub fn of(secret: &Secret, headers: &HeaderMap) -> CallerKey {
        // The request's headers walked once (not a lookup per name: this runs on every image
        // request), taken in `IDENTITY_HEADERS` order, each name's values in their order.
        let mut picked: Vec<(usize, &str, &HeaderValue)> = headers
            .iter()
            .filter_map(|(name, value)| {
                let at = IDENTITY_HEADERS.binary_search(&name.as_str()).ok()?;
                Some((at, name.as_str(), value))
            })
            .collect();
        picked.sort_by_key(|(at, _, _)| *at);
        let mut h = hmac::Context::with_key(&secret.0);
        for (_, name, value) in picked {
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(value.as_bytes());
            h.update(&[0]);
        }
        CallerKey::from_tag(h.sign())
    }

    /// The key of an identity Keystone resolved a token to (`identity::Resolved`): what
    /// its renewed tokens share. Never equal to a key of headers (another prefix).
    pub fn of_identity(secret: &Secret, identity: &str) -> CallerKey {
        let mut h = hmac::Context::with_key(&secret.0);
        h.update(b"keystone identity\0");
        h.update(identity.as_bytes());
        CallerKey::from_tag(h.sign())
    }

    fn from_tag(tag: hmac::Tag) -> CallerKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(tag.as_ref());
        CallerKey(key)
    }

    /// Lower-case hex, as the grants journal stores it (an HMAC: no credential on disk).
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

    fn secret() -> Secret {
        Secret::from_bytes(&[7; SECRET_LEN])
    }

    /// Issue 29: keys are HMACs with the install's secret, not a hash anyone can recompute
    /// from guessed headers; the secret never shows in a log.
    #[test]
    fn caller_keys_need_the_secret() {
        let h = headers(&[("x-user-id", "alice"), ("x-project-id", "p1")]);
        let other = Secret::from_bytes(&[8; SECRET_LEN]);
        assert_ne!(CallerKey::of(&secret(), &h), CallerKey::of(&other, &h));
        assert_eq!(CallerKey::of(&secret(), &h), CallerKey::of(&secret(), &h));
        use sha2::{Digest, Sha256};
        let bare: [u8; 32] = Sha256::digest(b"x-project-id\0p1\0x-user-id\0alice\0").into();
        assert_ne!(CallerKey::of(&secret(), &h).to_hex(), hex::encode(bare));
        assert_ne!(secret().fingerprint(), other.fingerprint());
        assert_eq!(format!("{:?}", secret()), "Secret(..)");
        let random = Secret::random_bytes().expect("randomness");
        assert_ne!(random, Secret::random_bytes().expect("randomness"));
    }

    #[test]
    fn caller_keys() {
        let a = CallerKey::of(
            &secret(),
            &headers(&[("x-auth-token", "t1"), ("x-openstack-request-id", "req-1")]),
        );
        let a2 = CallerKey::of(
            &secret(),
            &headers(&[("x-auth-token", "t1"), ("x-openstack-request-id", "req-2")]),
        );
        let b = CallerKey::of(&secret(), &headers(&[("x-auth-token", "t2")]));
        let forged = CallerKey::of(
            &secret(),
            &headers(&[("x-auth-token", "t1"), ("x-roles", "admin")]),
        );
        assert_eq!(a, a2, "the request id does not change who is asking");
        assert_ne!(a, b);
        assert_ne!(a, forged, "identity headers are part of the key");
    }

    /// The key is computed in one walk of the request's headers; it is the HMAC of the
    /// identity headers in `IDENTITY_HEADERS` order, each name's values in their order,
    /// whatever order the request sent the names in (journals written before keep matching).
    #[test]
    fn a_caller_key_follows_the_identity_headers_order_not_the_requests() {
        let sent = [
            ("x-roles", "member"),
            ("user-agent", "curl"),
            ("x-auth-token", "t1"),
            ("x-roles", "reader"),
            ("openstack-system-scope", "all"),
        ];
        let mut reversed = sent;
        reversed.reverse();
        // The same names, x-roles' values kept in their order.
        let reordered = [sent[4], sent[2], sent[0], sent[1], sent[3]];
        let mut h = hmac::Context::with_key(&secret().0);
        for (name, value) in [
            ("openstack-system-scope", "all"),
            ("x-auth-token", "t1"),
            ("x-roles", "member"),
            ("x-roles", "reader"),
        ] {
            let parts: [&[u8]; 4] = [name.as_bytes(), &[0], value.as_bytes(), &[0]];
            for part in parts {
                h.update(part);
            }
        }
        let expected = CallerKey::from_tag(h.sign());
        assert_eq!(CallerKey::of(&secret(), &headers(&sent)), expected);
        assert_eq!(CallerKey::of(&secret(), &headers(&reordered)), expected);
        assert_ne!(
            CallerKey::of(&secret(), &headers(&reversed)),
            expected,
            "the order of one name's values is part of the key"
        );
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
        assert_eq!(
            CallerKey::of(&secret(), &side),
            CallerKey::of(&secret(), &caller)
        );
    }

    /// The headers oslo.context 6.5 (`_ENVIRON_HEADERS`, roles, service roles,
    /// `is_admin_project`) and keystonemiddleware 13.0 (`_all_auth_headers`, the tokens,
    /// `OpenStack-System-Scope`) read, as their source names them (WSGI environ keys and
    /// header names). `tests/e2e/test_decision.py` reads the installed packages themselves.
    const OSLO_CONTEXT_ENVIRON: [&str; 30] = [
        "HTTP_X_AUTH_TOKEN",
        "HTTP_X_STORAGE_TOKEN",
        "HTTP_X_USER_ID",
        "HTTP_X_USER",
        "HTTP_X_PROJECT_ID",
        "HTTP_X_TENANT_ID",
        "HTTP_X_TENANT",
        "HTTP_X_DOMAIN_ID",
        "HTTP_X_DOMAIN_NAME",
        "HTTP_OPENSTACK_SYSTEM_SCOPE",
        "HTTP_X_USER_DOMAIN_ID",
        "HTTP_X_PROJECT_DOMAIN_ID",
        "HTTP_X_USER_NAME",
        "HTTP_X_PROJECT_NAME",
        "HTTP_X_TENANT_NAME",
        "HTTP_X_USER_DOMAIN_NAME",
        "HTTP_X_PROJECT_DOMAIN_NAME",
        "HTTP_X_SERVICE_TOKEN",
        "HTTP_X_SERVICE_USER_ID",
        "HTTP_X_SERVICE_USER_NAME",
        "HTTP_X_SERVICE_USER_DOMAIN_ID",
        "HTTP_X_SERVICE_USER_DOMAIN_NAME",
        "HTTP_X_SERVICE_PROJECT_ID",
        "HTTP_X_SERVICE_PROJECT_NAME",
        "HTTP_X_SERVICE_PROJECT_DOMAIN_ID",
        "HTTP_X_SERVICE_PROJECT_DOMAIN_NAME",
        "HTTP_X_ROLES",
        "HTTP_X_ROLE",
        "HTTP_X_SERVICE_ROLES",
        "HTTP_X_IS_ADMIN_PROJECT",
    ];
    const KEYSTONEMIDDLEWARE: [&str; 34] = [
        "X-Service-Catalog",
        "X-Identity-Status",
        "X-Service-Identity-Status",
        "X-Is-Admin-Project",
        "OpenStack-System-Scope",
        "X-Auth-Token",
        "X-Storage-Token",
        "X-Service-Token",
        "X-Role",
        "X-User",
        "X-Tenant-Id",
        "X-Tenant-Name",
        "X-Tenant",
        "X-Domain-Id",
        "X-Domain-Name",
        "X-Project-Id",
        "X-Project-Name",
        "X-Project-Domain-Id",
        "X-Project-Domain-Name",
        "X-User-Id",
        "X-User-Name",
        "X-User-Domain-Id",
        "X-User-Domain-Name",
        "X-Service-Domain-Id",
        "X-Service-Domain-Name",
        "X-Service-Project-Id",
        "X-Service-Project-Name",
        "X-Service-Project-Domain-Id",
        "X-Service-Project-Domain-Name",
        "X-Service-User-Id",
        "X-Service-User-Name",
        "X-Service-User-Domain-Id",
        "X-Service-User-Domain-Name",
        "X-Roles",
    ];

    #[test]
    fn every_header_oslo_context_and_keystonemiddleware_read_is_identity() {
        for environ in OSLO_CONTEXT_ENVIRON {
            let Some(name) = environ.strip_prefix("HTTP_") else {
                panic!("{environ} is not a header");
            };
            let header = name.to_ascii_lowercase().replace('_', "-");
            assert!(is_identity(&header), "{environ} missing");
        }
        for header in KEYSTONEMIDDLEWARE {
            let lower = header.to_ascii_lowercase();
            assert!(is_identity(&lower), "{header} missing");
        }
        // Each listed once, in lower case, sorted (for the binary search).
        let mut sorted = IDENTITY_HEADERS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, IDENTITY_HEADERS);
        assert!(IDENTITY_HEADERS
            .iter()
            .all(|h| *h == h.to_ascii_lowercase()));
    }

    #[test]
    fn system_scope_and_storage_token_are_part_of_the_key_and_the_side_headers() {
        let base = headers(&[("x-auth-token", "t1")]);
        for extra in [
            "openstack-system-scope",
            "x-storage-token",
            "x-service-catalog",
        ] {
            let mut h = base.clone();
            h.insert(extra, HeaderValue::from_static("all"));
            assert_ne!(
                CallerKey::of(&secret(), &h),
                CallerKey::of(&secret(), &base),
                "{extra}"
            );
            assert!(side_headers(&h).contains_key(extra), "{extra}");
        }
        // `X_Roles` is an alias (dropped before anything goes upstream), not an identity.
        assert!(is_identity_alias("x_roles") && is_identity_alias("x_auth_token"));
        assert!(!is_identity_alias("x-roles") && !is_identity_alias("x_custom"));
        let dashed = headers(&[("x-auth-token", "t1"), ("x-roles", "admin")]);
        let swapped = headers(&[("x-roles", "admin"), ("x-auth-token", "t1")]);
        assert_eq!(
            CallerKey::of(&secret(), &dashed),
            CallerKey::of(&secret(), &swapped),
            "order of headers"
        );
    }

    #[test]
    fn caller_keys_round_trip_as_hex() {
        let a = CallerKey::of(&secret(), &headers(&[("x-auth-token", "t1")]));
        assert_eq!(CallerKey::from_hex(&a.to_hex()), Some(a));
        assert_eq!(CallerKey::from_hex("zz"), None);
        assert_eq!(CallerKey::from_hex(&"0".repeat(63)), None);
    }
}
