//! The only outbound HTTP: a pooled hyper client over the configured Glance upstreams (`http`
//! or `https`, certificates verified against `upstream.ca_file` or the system's roots, with an
//! optional client certificate), with preference order, failover, backoff and timeouts, plus
//! response post-processing (hop-by-hop headers, link rewriting, body idle timeout).

pub mod body;
mod connect;
pub mod glance;
pub mod headers;
pub mod health;
pub mod rewrite;
mod uri;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{request, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use crate::body::{full, BoxError, IdleTimeout, ProxyBody};
use crate::config::{Cidr, UpstreamConfig};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::tls::{Identity, TlsError};
use body::{read_whole, request_body, BodySlot, RequestBody};
use connect::{connector, reused, Connector};
use headers::ForwardedFor;
use health::Health;
use rewrite::LinkRewriter;
use uri::build_request;

/// Version documents are small (about 2 KB); anything far larger is not one.
const MAX_REWRITTEN_BODY: usize = 1 << 20;

/// Request bodies up to this size (with a `Content-Length`) are read whole before the
/// request goes upstream: JSON creates, updates, tasks. Larger ones, and those without a
/// length, stream as uploads (bounded per upstream by `upstream.max_uploads`).
pub const MAX_BUFFERED_BODY: u64 = 64 << 10;

type OutBody = crate::body::BytesBody;

/// One configured Glance endpoint.
#[derive(Debug)]
struct Target {
    base: Url,
    /// `Host` header value for requests to it.
    host: HeaderValue,
    /// Uploads streaming to it (`upstream.max_uploads`); `None`: no bound.
    uploads: Option<tokio::sync::Semaphore>,
}

/// What `forward` needs to know about the client side of a request.
pub struct Downstream<'a> {
    pub client_ip: IpAddr,
    /// Base URL at which clients reach the proxy; links are rewritten to it.
    pub public_url: &'a Url,
    /// Rewrite JSON links in the response body (version documents).
    pub rewrite_body: bool,
    /// The proxy serves the cache API: version documents list v2.14 and up.
    pub cache_api: bool,
}

/// A response for the client, with the upstream that answered for it: the one that sent it,
/// or for an answer the proxy made itself (a hit, a cache-API call), the one that authorized
/// it; `None` when no upstream was asked.
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    pub upstream: Option<usize>,
}

impl Forwarded {
    pub fn new(response: Response<ProxyBody>, upstream: impl Into<Option<usize>>) -> Forwarded {
        Forwarded {
            response,
            upstream: upstream.into(),
        }
    }
}

/// The upstream Glance pool.
pub struct Upstream {
    client: Client<Connector, OutBody>,
    /// The same client without a pool: every request on a new connection (the one retry of a
    /// request whose pooled connection broke).
    fresh: Client<Connector, OutBody>,
    /// The client certificate for `https` upstreams (reloaded on SIGHUP).
    identity: Option<Arc<Identity>>,
    targets: Vec<Target>,
    /// std Mutex: held for a few instructions, never across an await.
    health: Mutex<Health>,
    links: LinkRewriter,
    /// `server.trusted_proxies`: peers whose `X-Forwarded-For` goes on to Glance.
    trusted_proxies: Vec<Cidr>,
    response_timeout: Duration,
    pub(crate) body_idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Requests moved on to the next upstream (for metrics).
    failovers: AtomicU64,
    /// `server.client_body_timeout`: the longest a client's body may send nothing.
    client_body_timeout: Duration,
    /// `upstream.max_age`, as the `Cache-Control` value sent with the proxy's questions.
    max_age: Option<HeaderValue>,
    /// Uploads that had to wait for one of `upstream.max_uploads`, and those waiting now.
    upload_waits: AtomicU64,
    uploads_waiting: AtomicU64,
}

/// Why one attempt failed.
enum AttemptError {
    /// No connection: refused, unresolvable, connect timeout, TLS handshake.
    Connect(String),
    /// No response head within `response_timeout` of the last request byte.
    Timeout,
    /// The client's part failed (its body broke: a 400; or it stopped sending it: a 408),
    /// and the upstream's health unchanged.
    Client(Error),
    /// The connection broke before a response head; `reused`: it had carried a request
    /// before (so it may just have been closed by the upstream while idle).
    Broken { error: String, reused: bool },
    /// The request cannot be sent at all (the proxy's answer).
    Request(Error),
}

/// RFC 9110 §9.2.2: a request that may be sent twice to the same effect.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

impl Upstream {
    /// One of an upstream's upload slots, waiting for it if all are taken (counted).
    async fn upload_permit<'s>(
        &self,
        uploads: &'s tokio::sync::Semaphore,
    ) -> Result<tokio::sync::SemaphorePermit<'s>, Error> {
        if let Ok(permit) = uploads.try_acquire() {
            return Ok(permit);
        }
        /// Counts a waiting upload while it waits (a client that leaves stops waiting).
        struct Waiting<'a>(&'a AtomicU64);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.upload_waits.fetch_add(1, Ordering::Relaxed);
        self.uploads_waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.uploads_waiting);
        uploads
            .acquire()
            .await
            .map_err(|_| Error::Internal("upload slots closed".into()))
    }

    /// Fails only on the TLS settings: a CA bundle or client certificate that does not load.
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let (connector, identity) = connector(cfg)?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout);
        let fresh = builder
            .clone()
            .pool_max_idle_per_host(0)
            .build(connector.clone());
        let client = builder
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);
        let targets = cfg
            .urls
            .iter()
            .filter_map(|url| {
                let host = url.host_str()?;
                let value = match url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_string(),
                };
                Some(Target {
                    base: url.clone(),
                    host: HeaderValue::from_str(&value).ok()?,
                    uploads: (cfg.max_uploads > 0)
                        .then(|| tokio::sync::Semaphore::new(cfg.max_uploads)),
                })
            })
            .collect();
        Ok(Upstream {
            client,
            fresh,
            identity,
            targets,
            health: Mutex::new(Health::new(cfg.urls.len(), cfg.failure_backoff)),
            links: LinkRewriter::new(cfg.urls.iter().chain(cfg.rewrite_origins.iter())),
            trusted_proxies: Vec::new(),
            response_timeout: cfg.response_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            metrics,
            failovers: AtomicU64::new(0),
            client_body_timeout: Duration::from_secs(60),
            max_age: cfg
                .max_age
                .and_then(|a| HeaderValue::from_str(&format!("max-age={}", a.as_secs())).ok()),
            upload_waits: AtomicU64::new(0),
            uploads_waiting: AtomicU64::new(0),
        })
    }

    /// `server.client_body_timeout` (default 60 s).
    pub fn with_client_body_timeout(mut self, timeout: Duration) -> Self {
        self.client_body_timeout = timeout;
        self
    }

    /// Uploads that waited for a slot (`upstream.max_uploads`), and how many wait now.
    pub fn upload_waits(&self) -> (u64, u64) {
        (
            self.upload_waits.load(Ordering::Relaxed),
            self.uploads_waiting.load(Ordering::Relaxed),
        )
    }

    /// Put `upstream.max_age` on the proxy's own question (unless the client's own
    /// `Cache-Control` asks for something already).
    pub(crate) fn ask_max_age(&self, headers: &mut http::HeaderMap) {
        if let Some(v) = &self.max_age {
            if !headers.contains_key(http::header::CACHE_CONTROL) {
                headers.insert(http::header::CACHE_CONTROL, v.clone());
            }
        }
    }

    /// Believe the `X-Forwarded-For` of these peers (`server.trusted_proxies`); by default no
    /// one's.
    pub fn with_trusted_proxies(mut self, proxies: Vec<Cidr>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// The client certificate presented to `https` upstreams, if one is configured.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref()
    }

    /// Each upstream's URL and whether it takes requests now (not in failure backoff).
    pub fn health(&self) -> Vec<(String, bool)> {
        let health = self.lock_health();
        let now = Instant::now();
        self.targets
            .iter()
            .enumerate()
            .map(|(i, t)| (t.base.to_string(), health.is_healthy(i, now)))
            .collect()
    }

    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Whether some upstream answers `GET /versions` (any status below 500) within `wait`:
    /// the readiness check.
    pub async fn reachable(&self, wait: Duration) -> bool {
        for target in &self.targets {
            let base = target.base.as_str().trim_end_matches('/');
            let Ok(req) = Request::get(format!("{base}/versions"))
                .header(http::header::HOST, target.host.clone())
                .body(Bytes::new())
            else {
                continue;
            };
            let (parts, body) = req.into_parts();
            let body: OutBody = http_body_util::Full::new(body)
                .map_err(|never| -> BoxError { match never {} })
                .boxed_unsync();
            let answer =
                tokio::time::timeout(wait, self.client.request(Request::from_parts(parts, body)))
                    .await;
            if let Ok(Ok(resp)) = answer {
                if resp.status().as_u16() < 500 {
                    return true;
                }
            }
        }
        false
    }

    /// Whether health tracking holds every upstream down (each failed, and in backoff).
    pub fn all_held_down(&self) -> bool {
        self.lock_health().all_down(Instant::now())
    }

    /// The label of upstream `index` for logs ("-" for none).
    pub fn label(&self, index: impl Into<Option<usize>>) -> &str {
        index
            .into()
            .and_then(|i| self.targets.get(i))
            .map(|t| t.base.as_str().trim_end_matches('/'))
            .unwrap_or("-")
    }

    /// Forward a client request upstream and prepare the response for the client.
    pub async fn forward<B>(
        &self,
        req: Request<B>,
        down: &Downstream<'_>,
    ) -> Result<Forwarded, Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        parts.headers = self.caller_headers(&parts.headers, down);
        self.ask_max_age(&mut parts.headers);
        let (response, upstream) = match request_body(&parts, &body) {
            RequestBody::None => self.send(parts, body).await?,
            RequestBody::Small => {
                // Read whole first: a client that stalls mid-body never reaches Glance.
                let bytes = read_whole(body, self.client_body_timeout).await?;
                let body = http_body_util::Full::new(bytes)
                    .map_err(|never| -> BoxError { match never {} });
                self.send(parts, body).await?
            }
            RequestBody::Upload => {
                let body = Box::pin(IdleTimeout::new(body, self.client_body_timeout));
                self.send_body(parts, body, true).await?
            }
        };
        let response = self.prepare_response(response, down).await?;
        Ok(Forwarded::new(response, upstream))
    }

    /// The client's headers as they go upstream: hop-by-hop fields out, the forwarding headers
    /// the proxy's own (`headers::prepare_request`).
    /// `Host` is set per attempt.
    pub fn caller_headers(
        &self,
        client: &http::HeaderMap,
        down: &Downstream<'_>,
    ) -> http::HeaderMap {
        let mut headers = client.clone();
        let fwd_host = match down.public_url.host_str() {
            Some(host) => match down.public_url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            },
            None => String::new(),
        };
        let fwd = ForwardedFor {
            client_ip: down.client_ip,
            trusted_proxies: &self.trusted_proxies,
            host: (!fwd_host.is_empty()).then_some(fwd_host.as_str()),
            proto: down.public_url.scheme(),
        };
        headers::prepare_request(&mut headers, &HeaderValue::from_static(""), &fwd);
        headers
    }

    /// Send with failover: a refused connection, or a 502/503 answer, moves on to the next
    /// upstream while the request can still be replayed (no body, or body not yet sent); so
    /// do, for GET, HEAD and OPTIONS, no answer within `response_timeout` and a 504 (which
    /// say nothing about whether another upstream can answer, and leave health as it was).
    /// An error or a 502/503/504 therefore means no upstream answered the request in time;
    /// which of those is an outage is `image::decide::Reply::of`'s call.
    /// A failure of the client's own (its body) is a 400 and leaves every upstream's health
    /// as it was.
    pub async fn send<B>(
        &self,
        parts: request::Parts,
        body: B,
    ) -> Result<(Response<Incoming>, usize), Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        self.send_body(parts, body, false).await
    }

    /// `send`; an `upload` holds one of the upstream's `upstream.max_uploads` slots while it
    /// is sent (waiting in the proxy for one, counted), so that slow uploaders cannot hold
    /// every one of Glance's worker threads.
    async fn send_body<B>(
        &self,
        parts: request::Parts,
        body: B,
        upload: bool,
    ) -> Result<(Response<Incoming>, usize), Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let slot = BodySlot::new(body);
        let order = self.lock_health().order(Instant::now());
        let failover_safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let mut last_error = String::from("no upstream configured");
        for (n, &index) in order.iter().enumerate() {
            let Some(target) = self.targets.get(index) else {
                continue;
            };
            let more = n + 1 < order.len();
            let _permit = match (&target.uploads, upload) {
                (Some(uploads), true) => Some(self.upload_permit(uploads).await?),
                _ => None,
            };
            match self.try_target(target, &parts, &slot).await {
                Ok(resp) => {
                    let status = resp.status();
                    let unavailable = matches!(
                        status,
                        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                    );
                    let timed_out = status == StatusCode::GATEWAY_TIMEOUT && failover_safe;
                    if timed_out && more && slot.replayable() {
                        tracing::warn!(upstream = self.label(index), %status, "upstream timed out, trying the next one");
                        self.failovers.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if unavailable {
                        self.lock_health().failed(index, Instant::now());
                        if more && slot.replayable() {
                            tracing::warn!(upstream = self.label(index), %status, "upstream unavailable, trying the next one");
                            self.failovers.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    } else {
                        self.lock_health().succeeded(index);
                    }
                    return Ok((resp, index));
                }
                Err(AttemptError::Connect(e)) => {
                    self.lock_health().failed(index, Instant::now());
                    tracing::warn!(upstream = self.label(index), error = %e, "upstream connection failed");
                    last_error = format!("{}: {e}", self.label(index));
                    if !(more && slot.replayable()) {
                        break;
                    }
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
                Err(AttemptError::Timeout) => {
                    if !(more && failover_safe && slot.replayable()) {
                        return Err(Error::Timeout(self.response_timeout));
                    }
                    tracing::warn!(
                        upstream = self.label(index),
                        "upstream did not answer in time, trying the next one"
                    );
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
                Err(AttemptError::Client(e)) => return Err(e),
                Err(AttemptError::Request(e)) => return Err(e),
                Err(AttemptError::Broken { error, reused }) => {
                    // A reused connection that broke says little about the upstream: it may
                    // have closed it while idle as the request went out.
                    if !reused {
                        self.lock_health().failed(index, Instant::now());
                    }
                    tracing::warn!(upstream = self.label(index), error = %error, reused, "upstream request failed");
                    last_error = format!("{}: {error}", self.label(index));
                    if !(more && failover_safe && slot.replayable()) {
                        break;
                    }
                    self.failovers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(Error::Unreachable(last_error))
    }

    /// One upstream's answer: an attempt on a pooled connection and, when that connection
    /// had carried requests before and broke before any answer, one more on a new connection
    /// for a request that can be sent again (idempotent, its body not sent): an upstream
    /// closes idle keep-alive connections on its own schedule (gunicorn after 2 s), and a
    /// request can go out on one just as it does.
    async fn try_target<B>(
        &self,
        target: &Target,
        parts: &request::Parts,
        slot: &BodySlot<B>,
    ) -> Result<Response<Incoming>, AttemptError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let req = build_request(target, parts, slot.attempt().boxed_unsync())
            .map_err(AttemptError::Request)?;
        match self.attempt(&self.client, req, slot).await {
            Err(AttemptError::Broken {
                error,
                reused: true,
            }) if idempotent(&parts.method) && slot.replayable() => {
                tracing::debug!(upstream = %target.base, %error, "reused upstream connection broke, retrying on a new one");
                let req = build_request(target, parts, slot.attempt().boxed_unsync())
                    .map_err(AttemptError::Request)?;
                self.attempt(&self.fresh, req, slot).await
            }
            answer => answer,
        }
    }

    /// A request to another service than Glance (Keystone, for the prefetcher's token) on the
    /// same client: `url` absolute, the answer read whole (at most `limit` bytes), everything
    /// bounded by the response timeout.
    pub async fn call_service(
        &self,
        req: Request<Bytes>,
        limit: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), Error> {
        let (parts, body) = req.into_parts();
        let body: OutBody = http_body_util::Full::new(body)
            .map_err(|never| -> BoxError { match never {} })
            .boxed_unsync();
        let fut = async {
            let resp = self
                .client
                .request(Request::from_parts(parts, body))
                .await
                .map_err(|e| Error::Unreachable(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| Error::BadUpstream(e.to_string()))?
                .to_bytes();
            Ok((parts.status, parts.headers, bytes))
        };
        tokio::time::timeout(self.response_timeout, fut)
            .await
            .map_err(|_| Error::Timeout(self.response_timeout))?
    }

    /// One attempt on `client`: wait for the response head. The clock restarts whenever
    /// request body bytes move, so only `response_timeout` of silence after the last byte
    /// times out; silence while the proxy waits for the client's next bytes is the client's.
    async fn attempt<B: Body>(
        &self,
        client: &Client<Connector, OutBody>,
        mut req: Request<OutBody>,
        slot: &BodySlot<B>,
    ) -> Result<Response<Incoming>, AttemptError> {
        let captured = capture_connection(&mut req);
        let fut = client.request(req);
        tokio::pin!(fut);
        let mut seen = slot.bytes_sent();
        let sent = Instant::now();
        loop {
            match tokio::time::timeout(self.response_timeout, &mut fut).await {
                Ok(Ok(resp)) => {
                    reused(&captured);
                    self.metrics.upstream_response(sent.elapsed().as_secs_f64());
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    let reused = reused(&captured);
                    return Err(match slot.client_error() {
                        Some(why) if slot.client_stalled() => AttemptError::Client(
                            Error::ClientTimeout(format!("request body: {why}")),
                        ),
                        Some(why) => {
                            AttemptError::Client(Error::BadRequest(format!("request body: {why}")))
                        }
                        None if e.is_connect() => AttemptError::Connect(error_chain(&e)),
                        None => AttemptError::Broken {
                            error: error_chain(&e),
                            reused,
                        },
                    });
                }
                Err(_) => {
                    let now = slot.bytes_sent();
                    if now == seen {
                        if slot.waiting_for_client() {
                            return Err(AttemptError::Client(Error::ClientTimeout(format!(
                                "request body: no data for {:?}",
                                self.response_timeout
                            ))));
                        }
                        return Err(AttemptError::Timeout);
                    }
                    seen = now;
                }
            }
        }
    }

    async fn prepare_response(
        &self,
        resp: Response<Incoming>,
        down: &Downstream<'_>,
    ) -> Result<Response<ProxyBody>, Error> {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let rewritten = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| self.links.rewrite(v, down.public_url))
                .and_then(|v| HeaderValue::from_str(&v).ok());
            if let Some(v) = rewritten {
                parts.headers.insert(name, v);
            }
        }
        let is_version_doc = down.rewrite_body || parts.status == StatusCode::MULTIPLE_CHOICES;
        let is_json = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        if !(is_version_doc && is_json && !parts.headers.contains_key(CONTENT_ENCODING)) {
            return Ok(self.relay(Response::from_parts(parts, body)));
        }
        let collected = tokio::time::timeout(
            self.body_idle_timeout,
            Limited::new(body, MAX_REWRITTEN_BODY).collect(),
        )
        .await
        .map_err(|_| Error::Timeout(self.body_idle_timeout))?
        .map_err(|e| Error::BadUpstream(format!("version document: {e}")))?
        .to_bytes();
        let extra: &[&str] = if down.cache_api {
            &rewrite::CACHE_API_VERSIONS
        } else {
            &[]
        };
        let bytes = match self
            .links
            .rewrite_version_document(&collected, down.public_url, extra)
        {
            Some(rewritten) => Bytes::from(rewritten),
            None => collected,
        };
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Ok(Response::from_parts(parts, full(bytes)))
    }

    /// An upstream response as it goes to the client: hop-by-hop fields out, and a body that
    /// fails (never ends cleanly) if it stalls for `body_idle_timeout`.
    pub fn relay<B>(&self, resp: Response<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let body = crate::body::boxed(IdleTimeout::new(body, self.body_idle_timeout));
        Response::from_parts(parts, body)
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        // A panic while holding this lock cannot leave Health inconsistent (plain stores).
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// "outer: inner: innermost", for logs.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
