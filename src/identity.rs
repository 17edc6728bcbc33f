//! Who a Keystone token is (`[auth] keystone_url`): the identity grants are keyed by, so a
//! renewed token of the same identity keeps them and a revoked one loses them.
//!
//! A token not yet resolved is validated once against Keystone (`GET /v3/auth/tokens`, the
//! token as both `X-Auth-Token` and `X-Subject-Token`: Keystone lets a token validate itself,
//! no service credentials), through `Upstream::call_service`. `interpret` (pure) says what the
//! answer means: 200 an identity (user, project, user and project domains, domain scope,
//! system scope, `is_admin_project`, sorted roles, as oslo.context sees them) with its
//! `expires_at`; 404 (an invalid or expired subject) and 401 (the token revoked or expired)
//! a refusal; anything else, or no answer, unavailable. Identities and refusals are cached
//! by the token's SHA-256 (never the token itself), bounded in bytes, each for
//! `identity_cache_ttl` and never past the token's `expires_at`. With a service token
//! (`X-Service-Token`), it is resolved too and is part of the identity.
//! `Resolved::Exact` (no URL, no token, or Keystone unavailable) keys grants by the exact
//! credentials, as without a URL: never wider.
//!
//! Concurrent requests with a token not yet resolved wait for one validation (`Keystone::board`:
//! a boot storm sends one token for every instance). Keystone unreachable, failing (5xx) or
//! silent past `[auth] keystone_timeout` is not asked again for `RETRY_AFTER`: meanwhile
//! unresolved tokens fall back at once.
//!
//! An identity says whether Keystone gave it during this request (`fresh`) or it came from
//! the cache (up to `identity_cache_ttl` old, while Glance decides with its own fresh
//! validation): a grant is kept under an identity only when fresh (`grants::Who::keeps`);
//! `revalidate` asks Keystone again, bypassing (and updating) the cache, when Glance said yes
//! to a cached one (`image::Context::confirm`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::IdentityConfig;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// The most of Keystone's answer read (a token without its catalog is a few KiB).
const MAX_ANSWER: usize = 1 << 20;
/// How long Keystone is not asked again after it could not be reached or failed (no answer,
/// a 5xx): meanwhile a token not yet resolved is keyed by its exact credentials at once (a
/// `fallback`), rather than every request waiting on Keystone's connect or timeout.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The cache's bound: some 50,000 tokens of a few hundred bytes of identity each.
const MAX_CACHE_BYTES: u64 = 16 << 20;

/// The headers that carry a token to Keystone's validation.
const TOKEN_HEADERS: [&str; 3] = ["x-auth-token", "x-storage-token", "x-service-token"];

/// Whose grants a request may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Keystone says the token is this identity (canonical text, for `Grants::caller_identity`);
    /// `fresh`: Keystone said so during this request (every token of it), not the cache.
    Identity { identity: Arc<str>, fresh: bool },
    /// Keystone refused the token (or its service token): no grant is used.
    Refused,
    /// Grants keyed by the exact credentials: no Keystone URL, no token, or Keystone
    /// unreachable or failing.
    Exact,
}

/// What Keystone's answer about one token means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The token's identity (canonical text) and when it expires (unix ms), if it says.
    Valid {
        identity: String,
        expires_ms: Option<u64>,
    },
    Refused,
    /// No answer that says either (5xx, 403 from a policy, an unreadable 200, no answer).
    Unavailable,
}

/// What Keystone's `status` and `body` to a token's self-validation mean.
pub fn interpret(status: StatusCode, body: &[u8]) -> Answer {
    match status {
        StatusCode::OK => match identity_of(body) {
            Some((identity, expires_ms)) => Answer::Valid {
                identity,
                expires_ms,
            },
            None => Answer::Unavailable,
        },
        StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => Answer::Refused,
        // A policy that forbids a token validating itself is the deployment's, not the
        // caller's: Keystone cannot say, as when it is down (and the alert should fire).
        StatusCode::FORBIDDEN => Answer::Unavailable,
        // Any other refusal of the request (400, 413, 414, 431: a token Keystone will not
        // even read) is the caller's own doing: no grant, and no "Keystone unreachable".
        s if s.is_client_error() => Answer::Refused,
        _ => Answer::Unavailable,
    }
}

/// The identity in a token body, as one canonical text (a JSON array: unambiguous), and its
/// expiry; `None` without a user id.
fn identity_of(body: &[u8]) -> Option<(String, Option<u64>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let token = value.get("token")?;
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let user = token.get("user")?.get("id")?.as_str()?.to_string();
    let system = match token.get("system") {
        Some(Value::Object(scopes)) => {
            let mut on: Vec<&str> = scopes
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.as_str())
                .collect();
            on.sort_unstable();
            on.join(",")
        }
        _ => String::new(),
    };
    let mut roles: Vec<String> = token
        .get("roles")
        .and_then(Value::as_array)
        .map(|roles| {
            roles
                .iter()
                .filter_map(|r| r.get("name")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    roles.sort_unstable();
    roles.dedup();
    let is_admin_project = match token.get("is_admin_project") {
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    };
    let identity = serde_json::json!([
        user,
        text(&token["user"]["domain"]["id"]),
        text(&token["project"]["id"]),
        text(&token["project"]["domain"]["id"]),
        text(&token["domain"]["id"]),
        system,
        is_admin_project,
        roles,
    ])
    .to_string();
    let expires_ms = token
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Some((identity, expires_ms))
}

/// A cached answer: an identity or a refusal, standing until `until_ms`.
#[derive(Clone)]
struct Entry {
    identity: Option<Arc<str>>,
    until_ms: u64,
}

/// Resolves callers' tokens with Keystone, when a URL is set.
pub struct Resolver {
    keystone: Option<Keystone>,
    metrics: Option<Arc<Metrics>>,
}

struct Keystone {
    /// `<keystone_url>/v3/auth/tokens?nocatalog`.
    tokens_url: String,
    upstream: Arc<Upstream>,
    ttl: Duration,
    /// `[auth] keystone_timeout`: how long an answer is waited for (else
    /// `upstream.response_timeout`, minutes, for every request with a new token).
    timeout: Duration,
    cache: moka::sync::Cache<[u8; 32], Entry>,
    /// Validations under way, by token hash: concurrent requests with the same token wait for
    /// one answer (a boot storm sends one token for every instance). An entry goes when its
    /// answer is in (then in `cache`, when it says something) or nobody waits for it any more.
    flights: std::sync::Mutex<HashMap<[u8; 32], Arc<Flight>>>,
    /// Until when (unix ms) Keystone is not asked: it could not be reached or failed
    /// (`RETRY_AFTER`).
    down_until_ms: AtomicU64,
}

/// One validation under way: its answer, once in.
type Flight = tokio::sync::OnceCell<Answer>;

/// A request's hold on a validation under way (`Keystone::board`); dropped, it leaves the
/// board when nobody needs it any more (`Keystone::land`), also when the request went away.
struct Boarding<'a> {
    keystone: &'a Keystone,
    key: [u8; 32],
    flight: Arc<Flight>,
}

impl Drop for Boarding<'_> {
    fn drop(&mut self) {
        self.keystone.land(&self.key, &self.flight);
    }
}

impl Resolver {
    pub fn new(
        config: &IdentityConfig,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Resolver {
        let keystone = config.keystone_url.as_ref().map(|url| {
            let base = url.as_str().trim_end_matches('/');
            let tokens_url = match base.ends_with("/v3") {
                true => format!("{base}/auth/tokens?nocatalog"),
                false => format!("{base}/v3/auth/tokens?nocatalog"),
            };
            Keystone {
                tokens_url,
                upstream,
                ttl: config.cache_ttl,
                timeout: config.keystone_timeout,
                cache: moka::sync::Cache::builder()
                    .max_capacity(MAX_CACHE_BYTES)
                    .weigher(|_, e: &Entry| {
                        u32::try_from(e.identity.as_ref().map_or(0, |i| i.len()) + 96)
                            .unwrap_or(u32::MAX)
                    })
                    .time_to_live(config.cache_ttl.max(Duration::from_millis(1)))
                    .build(),
                flights: std::sync::Mutex::new(HashMap::new()),
                down_until_ms: AtomicU64::new(0),
            }
        });
        Resolver {
            keystone,
            metrics: Some(metrics),
        }
    }

    /// No Keystone: every caller is its exact credentials.
    pub fn exact() -> Resolver {
        Resolver {
            keystone: None,
            metrics: None,
        }
    }

    /// Whose grants a caller sending these identity headers may use (counted in
    /// `identity_resolutions_total` when Keystone is set).
    pub async fn resolve(&self, caller: &HeaderMap) -> Resolved {
        let Some(keystone) = &self.keystone else {
            return Resolved::Exact;
        };
        let (resolved, cached) = self.resolve_with(keystone, caller, Lookup::Cached).await;
        self.count(&resolved, cached);
        resolved
    }

    /// `resolve`, asking Keystone again for every token of the request (no cache, no
    /// validation under way joined; the cache updated with the answers): what Keystone says
    /// now, after Glance said yes to a token whose identity came from the cache.
    pub async fn revalidate(&self, caller: &HeaderMap) -> Resolved {
        let Some(keystone) = &self.keystone else {
            return Resolved::Exact;
        };
        let (resolved, cached) = self.resolve_with(keystone, caller, Lookup::Fresh).await;
        self.count(&resolved, cached);
        resolved
    }

    /// `identity_resolutions_total{result}`; `cached` is `None` when there was nothing to
    /// resolve (no token, or an ambiguous one: not Keystone's to answer, and not counted, so
    /// that no client can make Keystone look unreachable).
    fn count(&self, resolved: &Resolved, cached: Option<bool>) {
        let Some(cached) = cached else {
            return;
        };
        let result = match (resolved, cached) {
            (Resolved::Identity { .. }, true) => "cached",
            (Resolved::Identity { .. }, false) => "keystone",
            (Resolved::Refused, _) => "invalid",
            (Resolved::Exact, _) => "fallback",
        };
        if let Some(metrics) = &self.metrics {
            metrics.identity_resolved(result);
        }
    }

    /// `resolve` with Keystone, and whether every answer was cached (or another request's);
    /// `None` when the request has no token to resolve or an ambiguous one.
    async fn resolve_with(
        &self,
        keystone: &Keystone,
        caller: &HeaderMap,
        lookup: Lookup,
    ) -> (Resolved, Option<bool>) {
        // Two values of a token header reach Glance joined into one (which it refuses);
        // resolving either one alone would be another caller's answer. The exact
        // credentials (every value) key such a request.
        if TOKEN_HEADERS
            .iter()
            .any(|name| caller.get_all(*name).iter().nth(1).is_some())
        {
            return (Resolved::Exact, None);
        }
        let Some(token) = caller
            .get("x-auth-token")
            .or_else(|| caller.get("x-storage-token"))
        else {
            return (Resolved::Exact, None);
        };
        let (user, said) = match self.identity(keystone, token, lookup).await {
            (Answer::Valid { identity, .. }, said) => (identity, said),
            (Answer::Refused, said) => return (Resolved::Refused, Some(said.cached())),
            (Answer::Unavailable, _) => return (Resolved::Exact, Some(false)),
        };
        let Some(service) = caller.get("x-service-token") else {
            let resolved = Resolved::Identity {
                identity: user.into(),
                fresh: said.fresh(),
            };
            return (resolved, Some(said.cached()));
        };
        match self.identity(keystone, service, lookup).await {
            (Answer::Valid { identity, .. }, both) => (
                Resolved::Identity {
                    identity: format!("{user} service {identity}").into(),
                    fresh: said.fresh() && both.fresh(),
                },
                Some(said.cached() && both.cached()),
            ),
            (Answer::Refused, both) => (Resolved::Refused, Some(said.cached() && both.cached())),
            (Answer::Unavailable, _) => (Resolved::Exact, Some(false)),
        }
    }

    /// `Keystone::identity`, timed when Keystone is asked.
    async fn identity(
        &self,
        keystone: &Keystone,
        token: &HeaderValue,
        lookup: Lookup,
    ) -> (Answer, Said) {
        let started = std::time::Instant::now();
        let (answer, said) = keystone.identity(token, lookup).await;
        if let (Said::Asked, Some(metrics)) = (said, &self.metrics) {
            metrics.keystone_response(started.elapsed().as_secs_f64());
        }
        (answer, said)
    }
}

/// Whether a token's answer may come from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The cache, else a validation (joined if under way).
    Cached,
    /// Keystone, asked by this request (the cache updated with its answer).
    Fresh,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// The cache (or, unavailable, the rest after Keystone went down).
    Cache,
    /// Another request's validation, joined while under way: Keystone's answer came during
    /// this request too (a boot storm's requests with one new token keep their grants under
    /// its identity without asking again).
    Joined,
    /// Keystone, asked by this request.
    Asked,
}

impl Said {
    /// Whether this request did not ask Keystone itself (the metric's "cached").
    fn cached(self) -> bool {
        self != Said::Asked
    }

    /// Whether Keystone gave the answer during this request.
    fn fresh(self) -> bool {
        self != Said::Cache
    }
}

impl Keystone {
    /// The token's identity: cached, or Keystone's answer (cached when it says), asked once
    /// for every request with this token meanwhile (`Lookup::Fresh`: asked by this request,
    /// whatever the cache holds); where the answer came from.
    async fn identity(&self, token: &HeaderValue, lookup: Lookup) -> (Answer, Said) {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if lookup == Lookup::Cached {
            if let Some(answer) = self.cached(&key) {
                return (answer, Said::Cache);
            }
        }
        if now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return (Answer::Unavailable, Said::Cache);
        }
        if lookup == Lookup::Fresh {
            return (self.ask_and_remember(key, token).await, Said::Asked);
        }
        let boarding = self.board(key);
        if boarding.flight.initialized() {
            // Answered before this request came (about to leave the board): as the cache.
            let answer = boarding
                .flight
                .get()
                .cloned()
                .unwrap_or(Answer::Unavailable);
            return (answer, Said::Cache);
        }
        let mut asked = false;
        let answer = boarding
            .flight
            .get_or_init(|| async {
                asked = true;
                self.ask_and_remember(key, token).await
            })
            .await
            .clone();
        drop(boarding);
        (answer, if asked { Said::Asked } else { Said::Joined })
    }

    /// Keystone's answer, remembered; Keystone rests for `RETRY_AFTER` when it is down.
    async fn ask_and_remember(&self, key: [u8; 32], token: &HeaderValue) -> Answer {
        let (answer, down) = self.ask(token).await;
        if down {
            let until = now_ms().saturating_add(millis(RETRY_AFTER));
            self.down_until_ms.fetch_max(until, Ordering::Relaxed);
        }
        self.remember(key, &answer);
        answer
    }

    /// The answer cached for this token hash, while it stands.
    fn cached(&self, key: &[u8; 32]) -> Option<Answer> {
        let entry = self.cache.get(key)?;
        if now_ms() >= entry.until_ms {
            self.cache.invalidate(key);
            return None;
        }
        Some(match entry.identity {
            Some(identity) => Answer::Valid {
                identity: identity.to_string(),
                expires_ms: Some(entry.until_ms),
            },
            None => Answer::Refused,
        })
    }

    /// The validation of this token hash under way, joined (or begun: the first to call
    /// `get_or_init` asks; if it goes away before the answer, the next waiting asks). The
    /// hold ends when the `Boarding` is dropped, answered or not.
    fn board(&self, key: [u8; 32]) -> Boarding<'_> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        let flight = Arc::clone(flights.entry(key).or_default());
        Boarding {
            keystone: self,
            key,
            flight,
        }
    }

    /// A request is done with `flight`: it goes from the board when its answer is in, or
    /// when nobody else holds it (the last request waiting for it went away).
    fn land(&self, key: &[u8; 32], flight: &Arc<Flight>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        let ours = flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight));
        // Under the lock no one else can take a new hold: the board's and ours are the last.
        if ours && (flight.initialized() || Arc::strong_count(flight) <= 2) {
            flights.remove(key);
        }
    }

    #[cfg(test)]
    fn boarded(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Cache an answer that says something: an identity until `identity_cache_ttl` or its
    /// `expires_at`, whichever is first; a refusal for `identity_cache_ttl`.
    fn remember(&self, key: [u8; 32], answer: &Answer) {
        let now = now_ms();
        let ttl_until = now.saturating_add(millis(self.ttl));
        let entry = match answer {
            Answer::Valid {
                identity,
                expires_ms,
            } => Entry {
                identity: Some(Arc::from(identity.as_str())),
                until_ms: expires_ms.map_or(ttl_until, |e| e.min(ttl_until)),
            },
            Answer::Refused => Entry {
                identity: None,
                until_ms: ttl_until,
            },
            Answer::Unavailable => return,
        };
        if entry.until_ms > now {
            self.cache.insert(key, entry);
        }
    }

    /// Keystone's answer about `token`, validating itself; whether Keystone is down (no
    /// answer, none within `keystone_timeout`, or a 5xx: not asked again for `RETRY_AFTER`).
    async fn ask(&self, token: &HeaderValue) -> (Answer, bool) {
        let req = match Request::builder()
            .method(Method::GET)
            .uri(&self.tokens_url)
            .header("x-auth-token", token.clone())
            .header("x-subject-token", token.clone())
            .body(Bytes::new())
        {
            Ok(req) => req,
            Err(e) => {
                tracing::warn!(url = %self.tokens_url, error = %e, "cannot ask Keystone about a token");
                return (Answer::Unavailable, false);
            }
        };
        let call = self.upstream.call_service(req, MAX_ANSWER);
        let Ok(answered) = tokio::time::timeout(self.timeout, call).await else {
            tracing::warn!(url = %self.tokens_url, timeout_ms = millis(self.timeout), retry_after_s = RETRY_AFTER.as_secs(), "Keystone did not answer within auth.keystone_timeout; grants keyed by the exact credentials");
            return (Answer::Unavailable, true);
        };
        match answered {
            Ok((status, _, body)) => {
                let answer = interpret(status, &body);
                if answer == Answer::Unavailable {
                    tracing::warn!(url = %self.tokens_url, %status, "Keystone did not say who a token is; grants keyed by the exact credentials");
                }
                (answer, status.is_server_error())
            }
            Err(e) => {
                tracing::warn!(url = %self.tokens_url, error = %e, retry_after_s = RETRY_AFTER.as_secs(), "Keystone unreachable; grants keyed by the exact credentials");
                (Answer::Unavailable, true)
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    crate::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(extra: &str, roles: &[&str]) -> Vec<u8> {
        let roles: Vec<Value> = roles
            .iter()
            .map(|r| serde_json::json!({"id": format!("id-{r}"), "name": r}))
            .collect();
        format!(
            r#"{{"token": {{"user": {{"id": "u1", "domain": {{"id": "default"}}}},
            "project": {{"id": "p1", "domain": {{"id": "default"}}}},
            "roles": {}, "expires_at": "2026-12-07T15:00:00.000000Z"{extra}}}}}"#,
            Value::from(roles)
        )
        .into_bytes()
    }

    fn identity(answer: Answer) -> String {
        match answer {
            Answer::Valid { identity, .. } => identity,
            other => panic!("not valid: {other:?}"),
        }
    }

    /// A resolver whose Keystone accepts connections and never answers.
    async fn silent_keystone() -> (Resolver, tokio::net::TcpListener) {
        silent_keystone_with("").await
    }

    /// `silent_keystone` with these `[auth]` lines.
    async fn silent_keystone_with(auth: &str) -> (Resolver, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let text = format!(
            "[upstream]\nurls = [\"http://127.0.0.1:9\"]\n[auth]\nkeystone_url = \"http://{addr}/v3\"\n{auth}"
        );
        let config = crate::config::Config::from_toml_str(&text, "test").expect("config");
        let metrics = Arc::new(Metrics::new());
        let upstream = Upstream::new(&config.upstream, Arc::clone(&metrics)).expect("upstream");
        let resolver = Resolver::new(&config.identity, Arc::new(upstream), metrics);
        (resolver, listener)
    }

    #[tokio::test]
    async fn a_validation_nobody_waits_for_any_more_leaves_the_board() {
        let (resolver, _listener) = silent_keystone().await;
        let resolver = Arc::new(resolver);
        let mut caller = HeaderMap::new();
        caller.insert("x-auth-token", HeaderValue::from_static("t1"));
        let keystone = || resolver.keystone.as_ref().expect("keystone");
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let (resolver, caller) = (Arc::clone(&resolver), caller.clone());
            waiting.push(tokio::spawn(async move { resolver.resolve(&caller).await }));
        }
        let started = std::time::Instant::now();
        while keystone().boarded() == 0 {
            assert!(started.elapsed() < Duration::from_secs(5), "never boarded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(keystone().boarded(), 1, "one validation for the three");
        let last = waiting.pop().expect("three");
        for request in waiting {
            request.abort();
            let _ = request.await;
        }
        assert_eq!(keystone().boarded(), 1, "one still waits");
        last.abort();
        let _ = last.await;
        assert_eq!(keystone().boarded(), 0, "nobody waits: gone");
    }

    /// Issue 29, hostile probe B: a Keystone that never answers holds a resolution up for
    /// `keystone_timeout` (not `upstream.response_timeout`), then the exact credentials; and
    /// it rests for `RETRY_AFTER`: the next token falls back at once, a revalidation too.
    #[tokio::test]
    async fn a_silent_keystone_is_waited_for_keystone_timeout_then_rests() {
        let (resolver, _listener) = silent_keystone_with("keystone_timeout = \"200ms\"\n").await;
        let mut caller = HeaderMap::new();
        caller.insert("x-auth-token", HeaderValue::from_static("t1"));
        let started = std::time::Instant::now();
        assert_eq!(resolver.resolve(&caller).await, Resolved::Exact);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        caller.insert("x-auth-token", HeaderValue::from_static("t2"));
        let started = std::time::Instant::now();
        assert_eq!(resolver.resolve(&caller).await, Resolved::Exact);
        assert_eq!(resolver.revalidate(&caller).await, Resolved::Exact);
        assert!(started.elapsed() < Duration::from_millis(100), "resting");
    }

    #[test]
    fn an_answer_means_an_identity_a_refusal_or_nothing() {
        let a = interpret(StatusCode::OK, &token("", &["reader", "member"]));
        let Answer::Valid { expires_ms, .. } = &a else {
            panic!("{a:?}");
        };
        assert_eq!(*expires_ms, Some(1_796_655_600_000));
        let same = interpret(StatusCode::OK, &token("", &["member", "reader", "member"]));
        assert_eq!(
            identity(a.clone()),
            identity(same),
            "roles sorted, once each"
        );
        let fewer = interpret(StatusCode::OK, &token("", &["reader"]));
        assert_ne!(identity(a.clone()), identity(fewer), "roles are identity");
        let system = interpret(
            StatusCode::OK,
            &token(r#", "system": {"all": true}"#, &["reader", "member"]),
        );
        assert_ne!(
            identity(a.clone()),
            identity(system),
            "system scope is identity"
        );
        assert_eq!(interpret(StatusCode::NOT_FOUND, b""), Answer::Refused);
        assert_eq!(interpret(StatusCode::UNAUTHORIZED, b"{}"), Answer::Refused);
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ] {
            assert_eq!(interpret(status, b""), Answer::Refused, "{status}");
        }
        for status in [
            StatusCode::FORBIDDEN,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(interpret(status, b""), Answer::Unavailable, "{status}");
        }
        assert_eq!(interpret(StatusCode::OK, b"not json"), Answer::Unavailable);
        assert_eq!(
            interpret(StatusCode::OK, br#"{"token": {"project": {"id": "p1"}}}"#),
            Answer::Unavailable,
            "no user: no identity"
        );
    }
}
