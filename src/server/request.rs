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

use crate::app::App;
use crate::body::{BoxError, Chunk, ProxyBody};
use crate::error;
use crate::route::{self, Route};
use crate::serve;
use crate::serve::sendfile;
use crate::server::kernel_tls::Transport;
use crate::upstream::glance::Api;
use crate::upstream::Downstream;

const REQUEST_ID: &str = "x-openstack-request-id";

/// What a request knows of its connection.
pub struct Connection {
    pub peer: SocketAddr,
    /// Hits go out with sendfile (`None`: TLS in user space).
    pub zero_copy: Option<Arc<sendfile::Conn>>,
    pub transport: Transport,
    /// The connection counts as busy until the request's access record drops.
    pub busy: super::slots::Busy,
}

pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    conn: Connection,
) -> Result<Response<ProxyBody>, Infallible> {
    let Connection {
        peer,
        zero_copy,
        transport,
        busy,
    } = conn;
    // sendfile needs HTTP/1.x framing on a socket that sends file bytes as they are.
    let zero_copy = zero_copy.filter(|_| req.version() <= http::Version::HTTP_11);
    let started = Instant::now();
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let route = route::classify(req.method(), req.uri().path(), accept);
    let mut record = AccessRecord {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        route: route.as_str(),
        status: 0,
        bytes: 0,
        upstream: String::from("-"),
        request_id: header_str(req.headers(), REQUEST_ID).unwrap_or_default(),
        error: None,
        complete: false,
        expected_len: None,
        cache: "",
        cache_reason: "",
        started,
        ttfb: 0.0,
        tls: transport.tls_label(),
        metrics: Arc::clone(&app.metrics),
        _busy: busy,
    };
    let public_url = public_url(&app, req.headers());
    let down = Downstream {
        client_ip: peer.ip(),
        public_url: &public_url,
        rewrite_body: route == Route::Versions,
        cache_api: app.cache.is_some(),
    };
    let result = match &route {
        Route::ImageData { image_id } | Route::V1ImageData { image_id } => {
            let api = match route {
                Route::V1ImageData { .. } => Api::V1,
                _ => Api::V2,
            };
            serve::image_data(&app, req, api, image_id, &down, zero_copy.as_ref())
                .await
                .map(|served| {
                    record.cache = served.outcome.as_str();
                    record.cache_reason = served.outcome.reason();
                    served.forwarded
                })
        }
        Route::ImageDelete { image_id } | Route::V1ImageDelete { image_id } => {
            let result = app.upstream.forward(req, &down).await;
            if let (Ok(f), Some(cache)) = (&result, &app.cache) {
                if f.response.status().is_success() {
                    cache.remove(image_id);
                }
            }
            result
        }
        Route::Cache(op) => crate::manage::handle(&app, req, op.clone(), &down).await,
        Route::Versions | Route::Passthrough => app.upstream.forward(req, &down).await,
    };
    let response = match result {
        Ok(forwarded) => {
            record.upstream = app.upstream.label(forwarded.upstream).to_string();
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
    if let Some(id) = header_str(response.headers(), REQUEST_ID) {
        record.request_id = id;
    }
    record.status = response.status().as_u16();
    record.ttfb = started.elapsed().as_secs_f64();
    record.expected_len = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if response.status() == StatusCode::NO_CONTENT || response.body().is_end_stream() {
        record.complete = true;
    }
    Ok(response.map(|body| {
        Logged {
            inner: body,
            record,
        }
        .boxed_unsync()
    }))
}

/// The URL clients reach the proxy at: configured, or `http://` + the request's Host.
fn public_url(app: &App, headers: &HeaderMap) -> Url {
    if let Some(url) = &app.config.server.public_url {
        return url.clone();
    }
    header_str(headers, "host")
        .and_then(|host| {
            let scheme = if app.tls.is_some() { "https" } else { "http" };
            Url::parse(&format!("{scheme}://{host}")).ok()
        })
        .filter(|url| url.path() == "/" && url.host_str().is_some())
        .unwrap_or_else(|| app.listen_url.clone())
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
    route: &'static str,
    status: u16,
    bytes: u64,
    upstream: String,
    request_id: String,
    error: Option<String>,
    complete: bool,
    /// The response's Content-Length: reaching it completes the body.
    expected_len: Option<u64>,
    /// Cache outcome for image data (hit, miss, coalesced, bypass, denied), else empty.
    cache: &'static str,
    cache_reason: &'static str,
    started: Instant,
    /// Seconds to the response head.
    ttfb: f64,
    /// How hits on this connection are encrypted ("ktls", "userspace"; "" for plain HTTP).
    tls: &'static str,
    metrics: Arc<crate::metrics::Metrics>,
    /// The connection counts as busy (not closable to make room) until this record drops.
    _busy: super::slots::Busy,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        self.metrics.finished(&crate::metrics::Finished {
            route: self.route,
            status: self.status,
            outcome: self.cache,
            reason: self.cache_reason,
            bytes: self.bytes,
            ttfb: self.ttfb,
            tls: self.tls,
        });
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            upstream = %self.upstream,
            request_id = %self.request_id,
            route = self.route,
            cache = self.cache,
            cache_reason = self.cache_reason,
            tls = self.tls,
            outcome = if self.complete { "complete" } else { "aborted" },
            error = self.error.as_deref().unwrap_or(""),
        );
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
