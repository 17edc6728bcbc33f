//! The prefetcher's own identity towards Glance: nothing, a fixed token, or a Keystone v3
//! password-authenticated token that is renewed before it expires and whenever Glance answers
//! 401 (a revoked token).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::json;

use crate::config::{KeystoneAuth, ServiceCredentials};
use crate::upstream::Upstream;

/// Renew a token this long before Keystone says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Bound on a Keystone answer we read (a token with its catalog).
const MAX_TOKEN_BODY: usize = 4 << 20;

pub struct Credentials {
    kind: ServiceCredentials,
    upstream: Arc<Upstream>,
    token: tokio::sync::Mutex<Option<Token>>,
}

#[derive(Clone)]
struct Token {
    value: HeaderValue,
    issued: SystemTime,
    expires: Option<SystemTime>,
}

/// Whether a token issued at `issued` and expiring at `expires` should be replaced at `now`:
/// within `RENEW_BEFORE` of expiry, or past half its life for tokens shorter than that.
pub fn needs_renewal(now: SystemTime, issued: SystemTime, expires: Option<SystemTime>) -> bool {
    let Some(expires) = expires else {
        return false;
    };
    let life = expires.duration_since(issued).unwrap_or(Duration::ZERO);
    let margin = RENEW_BEFORE.min(life / 2);
    match expires.checked_sub(margin) {
        Some(renew_at) => now >= renew_at,
        None => true,
    }
}

impl Credentials {
    pub fn new(kind: &ServiceCredentials, upstream: Arc<Upstream>) -> Credentials {
        Credentials {
            kind: kind.clone(),
            upstream,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The headers that carry the proxy's identity (`X-Auth-Token`, or none).
    pub async fn headers(&self) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        match &self.kind {
            ServiceCredentials::None => {}
            ServiceCredentials::Token(t) => {
                let v = HeaderValue::from_str(t)
                    .map_err(|_| "prefetch.token is not a valid header value".to_string())?;
                headers.insert("x-auth-token", v);
            }
            ServiceCredentials::Keystone(auth) => {
                let mut cached = self.token.lock().await;
                let fresh = cached
                    .as_ref()
                    .is_some_and(|t| !needs_renewal(crate::clock::now(), t.issued, t.expires));
                if !fresh {
                    let token = self.issue(auth).await?;
                    tracing::info!(
                        user = %auth.username,
                        project = %auth.project_name,
                        expires = ?token.expires.map(humantime::format_rfc3339_seconds),
                        "prefetch: obtained a Keystone token"
                    );
                    *cached = Some(token);
                }
                if let Some(t) = cached.as_ref() {
                    headers.insert("x-auth-token", t.value.clone());
                }
            }
        }
        Ok(headers)
    }

    /// Glance refused the token (401): forget it, so the next call obtains a new one.
    /// Returns whether a new token can be obtained at all.
    pub async fn rejected(&self) -> bool {
        *self.token.lock().await = None;
        matches!(self.kind, ServiceCredentials::Keystone(_))
    }

    async fn issue(&self, auth: &KeystoneAuth) -> Result<Token, String> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": auth.username,
                "domain": {"name": auth.user_domain_name},
                "password": auth.password,
            }}},
            "scope": {"project": {
                "name": auth.project_name,
                "domain": {"name": auth.project_domain_name},
            }},
        }});
        let base = auth.auth_url.as_str().trim_end_matches('/');
        let url = if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(body.to_string()))
            .map_err(|e| format!("Keystone request to {url}: {e}"))?;
        let issued = crate::clock::now();
        let (status, headers, body) = self
            .upstream
            .call_service(req, MAX_TOKEN_BODY)
            .await
            .map_err(|e| format!("Keystone at {url}: {e}"))?;
        let value = headers.get("x-subject-token").cloned();
        if status != StatusCode::CREATED && status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            return Err(format!("Keystone at {url} answered {status}: {text}"));
        }
        let value = value.ok_or_else(|| format!("Keystone at {url}: no X-Subject-Token"))?;
        let expires = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["token"]["expires_at"].as_str().map(str::to_string))
            .and_then(|s| humantime::parse_rfc3339_weak(&s).ok());
        Ok(Token {
            value,
            issued,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_before_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let exp = Some(t0 + hour);
        assert!(!needs_renewal(t0, t0, exp));
        assert!(!needs_renewal(
            t0 + hour - RENEW_BEFORE - Duration::from_secs(1),
            t0,
            exp
        ));
        assert!(needs_renewal(t0 + hour - RENEW_BEFORE, t0, exp));
        assert!(needs_renewal(t0 + 2 * hour, t0, exp));
        // A 2-minute token is renewed after half its life.
        let short = Some(t0 + Duration::from_secs(120));
        assert!(!needs_renewal(t0 + Duration::from_secs(59), t0, short));
        assert!(needs_renewal(t0 + Duration::from_secs(60), t0, short));
        // Unknown expiry: renewed only when Glance refuses it.
        assert!(!needs_renewal(t0 + 100 * hour, t0, None));
    }

    #[test]
    fn keystone_expiry_format_parses() {
        assert!(humantime::parse_rfc3339_weak("2026-11-25T05:26:23.000000Z").is_ok());
    }
}
