//! Whose grants a request reads and writes (`Who`): the key its grant is read by, and every
//! key what Glance says to it is kept under. With `[auth] keystone_url`, a grant Glance gives
//! a token Keystone vouched for is kept under the identity (what its renewed tokens share)
//! and under the token's exact credentials (what that very token is keyed by when Keystone
//! cannot be asked); a refusal ends both. Only an identity Keystone gave during the request
//! keeps a grant (`fresh`): one from the identity cache may be up to `identity_cache_ttl` old
//! (the token's roles changed since), while Glance decided with its own fresh validation.

use crate::auth::CallerKey;

/// Whose grants a request reads and writes (built by `image::Context::who` from what Keystone
/// said about the caller's token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Keyed by the exact credentials: no Keystone URL, no token, or Keystone unavailable.
    Exact(CallerKey),
    /// Keystone says the token is this identity (`Grants::caller_identity`); `exact` is the
    /// token's own credentials (`Grants::caller`); `fresh`: Keystone said so during this
    /// request (else the identity cache did, and a "yes" is kept under `exact` alone until
    /// `image::Context::confirm` has asked Keystone again).
    Identity {
        identity: CallerKey,
        exact: CallerKey,
        fresh: bool,
    },
    /// Keystone refused the token: no grant is read or kept, and its exact credentials' grant
    /// ends (`Grants::standing`), so that it is not served once Keystone cannot be asked.
    Refused { exact: CallerKey },
}

impl Who {
    /// The key the request's grant is read by; `None`: it has none.
    pub fn reads(self) -> Option<CallerKey> {
        match self {
            Who::Exact(key) => Some(key),
            Who::Identity { identity, .. } => Some(identity),
            Who::Refused { .. } => None,
        }
    }

    /// Every key a "yes" Glance gives the request is kept under: an identity's only when
    /// Keystone gave it during the request.
    pub fn keeps(self) -> impl Iterator<Item = CallerKey> {
        let (a, b) = match self {
            Who::Exact(key) => (Some(key), None),
            Who::Identity {
                identity,
                exact,
                fresh,
            } => (fresh.then_some(identity), Some(exact)),
            Who::Refused { .. } => (None, None),
        };
        a.into_iter().chain(b)
    }

    /// Every key a refusal Glance gives the request ends the grant of.
    pub fn ends(self) -> impl Iterator<Item = CallerKey> {
        let (a, b) = match self {
            Who::Exact(key) | Who::Refused { exact: key } => (Some(key), None),
            Who::Identity {
                identity, exact, ..
            } => (Some(identity), Some(exact)),
        };
        a.into_iter().chain(b)
    }

    /// Whether what a "yes" keeps waits on Keystone being asked again: an identity from the
    /// cache.
    pub fn stale(self) -> bool {
        matches!(self, Who::Identity { fresh: false, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;

    fn keys() -> (CallerKey, CallerKey) {
        let secret = Secret::from_bytes(&[7; crate::auth::SECRET_LEN]);
        (
            CallerKey::of_identity(&secret, "alice"),
            CallerKey::of_identity(&secret, "token"),
        )
    }

    fn check(who: Who, reads: Option<CallerKey>, keeps: &[CallerKey], ends: &[CallerKey]) {
        assert_eq!(who.reads(), reads, "{who:?}");
        assert_eq!(who.keeps().collect::<Vec<_>>(), keeps, "{who:?}");
        assert_eq!(who.ends().collect::<Vec<_>>(), ends, "{who:?}");
    }

    #[test]
    fn an_identity_keeps_and_ends_under_both_keys_a_refused_token_keeps_nothing() {
        let (identity, exact) = keys();
        check(Who::Exact(exact), Some(exact), &[exact], &[exact]);
        let fresh = Who::Identity {
            identity,
            exact,
            fresh: true,
        };
        check(
            fresh,
            Some(identity),
            &[identity, exact],
            &[identity, exact],
        );
        assert!(!fresh.stale());
        // An identity from the cache (issue 29, hostile probe A): read by, ended, but a "yes"
        // is kept under the exact credentials only.
        let cached = Who::Identity {
            identity,
            exact,
            fresh: false,
        };
        check(cached, Some(identity), &[exact], &[identity, exact]);
        assert!(cached.stale());
        check(Who::Refused { exact }, None, &[], &[exact]);
    }
}
