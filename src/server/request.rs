//! One request: classify, dispatch, turn errors into responses, and write one access-log line
//! when the response body is finished (or abandoned).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use url::Url;

use super::access::{capped, AccessLog, Line, MAX_FIELD, MAX_TARGET};
use super::kernel_tls::Transport;
use super::Server;
use crate::body::{BoxError, Chunk, ProxyBody};
use crate::outcome::{Decision, Outcome, TlsPath};
use crate::route::{self, Route};
use crate::sendfile;
use crate::state::Shared;
use crate::upstream::glance::Api;
use crate::upstream::{Downstream, Forwarded};
use crate::{error, image, manage};

const REQUEST_ID: &str = "x-openstack-request-id";

/// The longest request line served (nginx's default `large_client_header_buffers`; Glance's
/// own limit is lower): a longer one gets 414, within the head's bound
/// (`server::MAX_QUEUED`).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The length of the request line as the client sent it: method, target, version.
fn request_line_len(req: &Request<Incoming>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    req.method().as_str().len() + 1 + target + " HTTP/1.1".len()
}

/// What a request knows of its connection.
pub struct Connection {
    pub peer: SocketAddr,
    /// Hits go out with sendfile (`None`: TLS in user space).
    pub zero_copy: Option<Arc<sendfile::Conn>>,
    pub transport: Transport,
    /// The connection counts as busy until the request's access record drops.
    pub busy: super::slots::Busy,
}

/// Answer one request: classify, dispatch, turn an error into its response, and attach the
/// access record, which logs and counts the request when the response body ends or drops.
pub async fn handle(
    server: Arc<Server>,
    req: Request<Incoming>,
    conn: Connection,
) -> Result<Response<ProxyBody>, Infallible> {
    // sendfile needs HTTP/1.x framing on a socket that sends file bytes as they are.
    let zero_copy = conn
        .zero_copy
        .clone()
        .filter(|_| req.version() <= http::Version::HTTP_11);
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let route = route::classify(req.method(), req.uri().path(), accept);
    let mut record = AccessRecord::start(&server, &req, &route, conn);
    if request_line_len(&req) > MAX_REQUEST_LINE {
        // Glance refuses long request lines (414) before it reads anything else.
        let request_id = format!("req-{}", uuid::Uuid::new_v4());
        let response = error::error_response(
            StatusCode::URI_TOO_LONG,
            "The request line is too long.",
            &request_id,
        );
        record.request_id = request_id;
        record.responded(&response);
        return Ok(response.map(|body| {
            Logged {
                inner: body,
                record,
            }
            .boxed_unsync()
        }));
    }
    let public_url = public_url(&server, req.headers());
    let down = Downstream {
        client_ip: record.peer.ip(),
        public_url: &public_url,
        rewrite_body: route == Route::Versions,
        cache_api: server.shared.cache.is_some(),
    };
    let result = dispatch(&server.shared, req, &route, &down, zero_copy.as_ref()).await;
    let response = match result {
        Ok(answered) => {
            record.outcome = answered.outcome;
            record.decision = answered.decision;
            let forwarded = answered.forwarded;
            record.upstream = server.shared.upstream.label(forwarded.upstream).to_string();
            forwarded.response
        }
        Err(e) => {
            if record.request_id.is_empty() {
                record.request_id = format!("req-{}", uuid::Uuid::new_v4());
            }
            record.error = Some(format!("{} ({}): {e}", e.reason(), e.side().as_str()));
            error::respond(&e, &record.request_id)
        }
    };
    record.responded(&response);
    Ok(response.map(|body| {
        Logged {
            inner: body,
            record,
        }
        .boxed_unsync()
    }))
}

/// What `dispatch` answered and, for image data, how and on whose word.
struct Answered {
    forwarded: Forwarded,
    outcome: Option<Outcome>,
    decision: Option<Decision>,
}

impl From<Forwarded> for Answered {
    fn from(forwarded: Forwarded) -> Self {
        Answered {
            forwarded,
            outcome: None,
            decision: None,
        }
    }
}

impl From<image::Served> for Answered {
    fn from(served: image::Served) -> Self {
        Answered {
            forwarded: served.forwarded,
            outcome: Some(served.outcome),
            decision: served.decision,
        }
    }
}

/// The feature that answers `route`: image data through the cache, the cache API, an image
/// delete (which also drops the cached copy), or Glance itself.
async fn dispatch(
    shared: &Shared,
    req: Request<Incoming>,
    route: &Route,
    down: &Downstream<'_>,
    zero_copy: Option<&Arc<sendfile::Conn>>,
) -> Result<Answered, error::Error> {
    let upstream = &shared.upstream;
    // Only origin-form targets (a path) are served: `*` and authority forms never reach an
    // upstream, so no target can change where the proxy connects.
    if !req.uri().path().starts_with('/') {
        return Err(error::Error::BadRequest(
            "The request target must be a path: asterisk and authority forms are not served."
                .into(),
        ));
    }
    match route {
        Route::ImageData { image_id } | Route::V1ImageData { image_id } => {
            let api = match route {
                Route::V1ImageData { .. } => Api::V1,
                _ => Api::V2,
            };
            let ctx = image_context(shared);
            Ok(image::serve(&ctx, req, api, image_id, down, zero_copy)
                .await?
                .into())
        }
        Route::ImageRecord { image_id } => {
            let ctx = image_context(shared);
            let (forwarded, decision) = image::record(&ctx, req, image_id, down).await?;
            Ok(Answered {
                forwarded,
                outcome: None,
                decision,
            })
        }
        Route::ImageDelete { image_id } | Route::V1ImageDelete { image_id } => {
            let forwarded = upstream.forward(req, down).await?;
            if let (true, Some(cache)) = (forwarded.response.status().is_success(), &shared.cache) {
                cache.remove(image_id).await;
            }
            Ok(forwarded.into())
        }
        Route::Cache(op) => {
            let ctx = manage::Context {
                upstream,
                cache: shared.cache.as_ref().zip(shared.prefetch.as_ref()),
            };
            Ok(manage::handle(&ctx, req, op.clone(), down).await?.into())
        }
        Route::Versions | Route::Passthrough => Ok(upstream.forward(req, down).await?.into()),
    }
}

/// What the image path is given of the shared state.
fn image_context(shared: &Shared) -> image::Context<'_> {
    image::Context {
        upstream: &shared.upstream,
        cache: shared.cache.as_ref(),
        grants: &shared.grants,
        identity: &shared.identity,
    }
}

/// The URL clients reach the proxy at: configured, or `http://` + the request's Host.
fn public_url(server: &Server, headers: &HeaderMap) -> Url {
    if let Some(url) = &server.config.public_url {
        return url.clone();
    }
    let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) else {
        return server.listen_url.clone();
    };
    let last = || server.last_host.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((seen, url)) = last().as_ref() {
        if seen == host {
            return url.clone();
        }
    }
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    match Url::parse(&format!("{scheme}://{host}"))
        .ok()
        .filter(|url| url.path() == "/" && url.host_str().is_some())
    {
        Some(url) => {
            *last() = Some((host.to_string(), url.clone()));
            url
        }
        None => server.listen_url.clone(),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Everything the access-log line says about one request.
struct AccessRecord {
    method: String,
    path: String,
    peer: SocketAddr,
    route: &'static str,
    cache_api: bool,
    status: u16,
    bytes: u64,
    upstream: String,
    request_id: String,
    error: Option<String>,
    complete: bool,
    /// The response's Content-Length: reaching it completes the body.
    expected_len: Option<u64>,
    /// How image data was answered (`None` for other routes).
    outcome: Option<Outcome>,
    /// On whose word a cached image went out or was refused.
    decision: Option<Decision>,
    started: Instant,
    /// Seconds to the response head.
    ttfb: f64,
    /// How hits on this connection are encrypted (`None` for plain HTTP).
    tls: Option<TlsPath>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where the line goes: this instance's access log.
    access: Arc<AccessLog>,
    /// The connection counts as busy (not closable to make room) until this record drops.
    _busy: super::slots::Busy,
}

impl AccessRecord {
    fn start(server: &Server, req: &Request<Incoming>, route: &Route, conn: Connection) -> Self {
        AccessRecord {
            method: capped(req.method().as_str(), MAX_FIELD),
            path: capped(req.uri().path(), MAX_TARGET),
            peer: conn.peer,
            route: route.as_str(),
            cache_api: matches!(route, Route::Cache(_)),
            status: 0,
            bytes: 0,
            upstream: String::from("-"),
            request_id: header_str(req.headers(), REQUEST_ID)
                .map(|id| capped(&id, MAX_FIELD))
                .unwrap_or_default(),
            error: None,
            complete: false,
            expected_len: None,
            outcome: None,
            decision: None,
            started: Instant::now(),
            ttfb: 0.0,
            tls: conn.transport.tls_path(),
            metrics: Arc::clone(&server.shared.metrics),
            access: Arc::clone(&server.access),
            _busy: conn.busy,
        }
    }

    /// The response head is ready: its status, length and request id.
    fn responded(&mut self, response: &Response<ProxyBody>) {
        if let Some(id) = header_str(response.headers(), REQUEST_ID) {
            self.request_id = capped(&id, MAX_FIELD);
        }
        self.status = response.status().as_u16();
        self.ttfb = self.started.elapsed().as_secs_f64();
        self.expected_len = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if response.status() == StatusCode::NO_CONTENT || response.body().is_end_stream() {
            self.complete = true;
        }
    }
}

/// Milliseconds rounded to the microsecond, for log fields.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        self.metrics.finished(&crate::metrics::Finished {
            route: self.route,
            cache_api: self.cache_api,
            status: self.status,
            outcome: self.outcome,
            decision: self.decision,
            bytes: self.bytes,
            ttfb: self.ttfb,
            tls: self.tls,
        });
        let outcome = self.outcome;
        self.access.log(Line {
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status: self.status,
            bytes: self.bytes,
            duration_ms: millis(self.started.elapsed()),
            upstream: std::mem::take(&mut self.upstream),
            request_id: std::mem::take(&mut self.request_id),
            route: self.route,
            cache: outcome.map_or("", Outcome::as_str),
            cache_reason: outcome.map_or("", Outcome::reason),
            authorized: self.decision.map_or("", Decision::as_str),
            tls: self.tls.map_or("", TlsPath::as_str),
            complete: self.complete,
            error: self.error.take().map(|e| capped(&e, MAX_TARGET)),
        });
    }
}

/// Response body wrapper that counts bytes and logs the request when it is done or dropped.
struct Logged {
    inner: ProxyBody,
    record: AccessRecord,
}

impl Body for Logged {
    type Data = Chunk;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.record.bytes += bytes::Buf::remaining(data) as u64;
                }
                // hyper stops polling once a sized body has delivered its length.
                if this.inner.is_end_stream() || this.record.expected_len == Some(this.record.bytes)
                {
                    this.record.complete = true;
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.record.error = Some(format!("response body failed: {e}"));
            }
            Poll::Ready(None) => this.record.complete = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
