//! The operations listener (`metrics.listen`, loopback by default, apart from the API):
//! `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (the cache
//! index is loaded, which `app::build` guarantees; the cache's writes go through, see `ready`;
//! and an upstream Glance answers). A 503 from `/readyz` says why in its body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Server;

/// How long `/readyz` waits for an upstream.
const READY_WAIT: Duration = Duration::from_secs(2);

pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (/metrics, /healthz, /readyz)");
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(Arc::clone(&server), req));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What keeps the proxy from being ready, one line each; none when ready. The cache disk:
/// while its writes fail (`writable::DiskHealth`), the directories are probed again on the
/// blocking pool, and a pass clears the failures. Then an upstream must answer.
async fn ready(server: &Server) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(cache) = &server.shared.cache {
        if cache.disk_health().failing().is_some() {
            let disk = Arc::clone(cache.disk_health());
            match crate::disk::blocking(move || disk.recheck()).await {
                Ok(None) => {}
                Ok(Some(why)) => problems.push(format!("cache disk not writable: {why}")),
                Err(e) => problems.push(format!("cache disk not writable: the probe failed: {e}")),
            }
        }
    }
    if !server.shared.upstream.reachable(READY_WAIT).await {
        problems.push("no upstream Glance answers GET /versions".to_string());
    }
    problems
}

async fn answer(
    server: Arc<Server>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String, kind: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        resp
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".into(),
            PLAIN,
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            server.shared.metrics.render(&server.snapshot()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" => {
            let problems = ready(&server).await;
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into(), PLAIN)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problems.join("\n") + "\n",
                    PLAIN,
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "/metrics, /healthz, /readyz\n".into(),
            PLAIN,
        ),
    })
}
