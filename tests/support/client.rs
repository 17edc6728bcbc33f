//! Raw HTTP/1 client helpers: one request on a fresh connection (`send`, `get`, `try_get`),
//! a response read to its end (`Got`, `read`), and keep-alive connections (`connection`,
//! `get_on`).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A response read completely (or as far as the connection allowed).
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The body ended with an error (aborted connection) rather than cleanly.
    pub body_error: Option<String>,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Send one request on a fresh connection and read the whole response.
pub async fn send(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Got {
    try_send(url, method, headers, body)
        .await
        .unwrap_or_else(|e| panic!("response head: {e}"))
}

/// As `send`; Err when the connection ended before a whole response head arrived.
pub async fn try_send(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Got, String> {
    let uri: http::Uri = url.parse().expect("test URL");
    let authority = uri.authority().expect("authority").to_string();
    let stream = TcpStream::connect(&authority).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(read(resp).await)
}

pub async fn get(url: &str) -> Got {
    send(url, "GET", &[], Bytes::new()).await
}

/// A GET; Err when the connection ended before a whole response head arrived.
pub async fn try_get(url: &str) -> Result<Got, String> {
    try_send(url, "GET", &[], Bytes::new()).await
}

pub async fn read(resp: Response<Incoming>) -> Got {
    let (parts, mut body) = resp.into_parts();
    let mut buf = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    buf.extend_from_slice(d);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Got {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(buf),
        body_error,
    }
}

/// A keep-alive HTTP/1 client connection to `addr` (its connection task is spawned).
pub async fn connection(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `GET path` on `sender` once the connection is ready for it (fails if the server closed it).
pub async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    sender
        .ready()
        .await
        .expect("the connection stays open for the next request");
    let mut req = Request::get(path).header("host", "p");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(http_body_util::Empty::new()).expect("request"))
        .await
        .expect("response head")
}

/// The value of `series` (a metric name with its labels, as the page prints them) on the
/// `/metrics` page of the listener at `admin` (a base URL); 0 when the page does not show it.
pub async fn metric(admin: &str, series: &str) -> f64 {
    let page = get(&format!("{admin}/metrics")).await;
    String::from_utf8_lossy(&page.body)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Wait until `series` on `admin`'s `/metrics` is at least `value`, polling every 10 ms, for
/// at most 10 s (then fail).
pub async fn until_metric(admin: &str, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(admin, series).await < value {
        assert!(
            std::time::Instant::now() < deadline,
            "{series} did not reach {value} within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
