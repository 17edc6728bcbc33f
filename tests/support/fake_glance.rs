//! `FakeGlance`: an in-process Glance stand-in on 127.0.0.1:0 that records what it is sent
//! and injects faults (`Faults`: error statuses, stalls, drops, flipped bytes, slow drips,
//! policy refusals) into what it answers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FakeBody = BoxBody<Bytes, BoxError>;

/// Faults the fake applies to the requests it serves, until changed.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer this status (with a Glance-like JSON body) to the next N requests.
    pub status: Option<(u16, usize)>,
    /// Read the whole request body before answering `status`.
    pub status_after_body: bool,
    /// Wait this long before sending response headers.
    pub stall_head: Option<Duration>,
    /// Image downloads: stop with a broken connection after this many bytes.
    pub drop_after: Option<usize>,
    /// Image downloads: stop sending (but keep the connection) after this many bytes.
    pub stall_after: Option<usize>,
    /// Image downloads without Content-Length (chunked), as Glance's cache tee sends them.
    pub chunked: bool,
    /// Image downloads: pause between 64 KiB chunks.
    pub drip: Option<Duration>,
    /// Image downloads: flip one byte at this offset (the record keeps the true digests).
    pub flip_at: Option<usize>,
    /// Downloads (`/file`) answer this status; records still answer 200 (like a reader-only
    /// role: may see the image, may not download it).
    pub deny_download: Option<u16>,
    /// Images are invisible (404 on record and data) to requests with this X-Auth-Token.
    pub hidden_from_token: Option<String>,
    /// Records carry no checksum and no os_hash (as for images uploaded before Glance
    /// computed them).
    pub no_digests: bool,
    /// v2 records state this `checksum` (md5) instead of the data's; downloads keep the true
    /// `Content-MD5` (a record Glance got wrong, or a stale checksum).
    pub record_md5: Option<String>,
    /// v2 records state this `os_hash_value` instead of the data's.
    pub record_os_hash: Option<String>,
    /// `GET /v2/cache` as a Glance with its cache on (200 to admins) rather than off (404
    /// "Caching via API is not supported at this site." to admins). Either way the token
    /// `member` gets 403 there, as Glance's default `cache_*` policies say.
    pub upstream_cache_on: bool,
    /// A Glance before Yoga: `/v2/cache` is an unknown route (404 to everyone).
    pub no_cache_api: bool,
    /// This image's record says `deactivated`, and its v2 download is 403 to all but the
    /// token `admin` (as Glance's).
    pub inactive: Option<String>,
    /// Requests with this X-Auth-Token get 401 (a revoked or expired token).
    pub revoked_token: Option<String>,
    /// v2 records (`GET /v2/images/{id}`) answer this status (a database outage behind a
    /// Glance whose store still serves downloads).
    pub record_status: Option<u16>,
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
}

#[derive(Default)]
struct State {
    url: String,
    images: Mutex<HashMap<String, Bytes>>,
    /// Full (non-Range) downloads served, per image.
    downloads: Mutex<HashMap<String, usize>>,
    faults: Mutex<Faults>,
    seen: Mutex<Vec<Seen>>,
    /// Keep `seen` (off for long load runs).
    quiet: std::sync::atomic::AtomicBool,
    /// md5 and sha512 (hex) of each image's current bytes (kept with those bytes, so a
    /// replaced image is recognised).
    digests: Mutex<HashMap<String, (Bytes, String, String)>>,
    next_id: AtomicUsize,
    /// Requests whose head arrived, by method (those whose body never ends included).
    heads: Mutex<HashMap<String, usize>>,
}

impl State {
    /// Count a full (non-Range) download of `id`.
    fn count_download(&self, id: &str) {
        *self
            .downloads
            .lock()
            .expect("downloads lock")
            .entry(id.to_string())
            .or_default() += 1;
    }

    /// md5 and sha512 (hex) of image `id`'s bytes `data`, computed once per version.
    fn digests(&self, id: &str, data: &Bytes) -> (String, String) {
        if let Some((b, md5, sha)) = self.digests.lock().expect("digests lock").get(id) {
            if b.as_ptr() == data.as_ptr() && b.len() == data.len() {
                return (md5.clone(), sha.clone());
            }
        }
        let (md5, sha) = (
            hex::encode(Md5::digest(data)),
            hex::encode(sha2::Sha512::digest(data)),
        );
        self.digests
            .lock()
            .expect("digests lock")
            .insert(id.to_string(), (data.clone(), md5.clone(), sha.clone()));
        (md5, sha)
    }
}

/// An in-process Glance stand-in on 127.0.0.1:0.
///
/// Routes: `GET /` (300) and `GET /versions` (200) with absolute hrefs at its own URL,
/// `GET /v2` (302, absolute Location), `POST /v2/images` (201, absolute Location),
/// `PUT /v2/images/{id}/file` (204), `GET /v2/images/{id}/file` (data with `Content-MD5`),
/// `GET /v2/images/{id}`; any other request is echoed back as JSON (method, path, headers,
/// body length and sha256).
pub struct FakeGlance {
    pub addr: SocketAddr,
    pub url: String,
    state: Arc<State>,
    task: JoinHandle<()>,
    /// `true`: every connection ends (`stop`).
    down: tokio::sync::watch::Sender<bool>,
}

impl FakeGlance {
    pub async fn start() -> FakeGlance {
        FakeGlance::start_with(None).await
    }

    /// The fake behind HTTPS with `tls` (an `https://` URL); connections whose handshake fails
    /// are dropped before any request is seen.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> FakeGlance {
        FakeGlance::start_with(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> FakeGlance {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake glance");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let state = Arc::new(State {
            url: url.clone(),
            ..Default::default()
        });
        let task_state = Arc::clone(&state);
        let (down, down_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&task_state);
                let tls = tls.clone();
                let mut down = down_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(Arc::clone(&st), req));
                    let builder = http1::Builder::new();
                    let served = async move {
                        match tls {
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let _ =
                                        builder.serve_connection(TokioIo::new(stream), svc).await;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        _ = served => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FakeGlance {
            addr,
            url,
            state,
            task,
            down,
        }
    }

    /// Go down as a stopped Glance does: the port refuses connections and every open
    /// connection is closed.
    pub fn stop(&self) {
        self.task.abort();
        let _ = self.down.send(true);
    }

    /// Stop recording requests (`seen`, `requests`): for load runs of millions of requests.
    pub fn set_quiet(&self) {
        self.state
            .quiet
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults lock") = faults;
    }

    pub fn add_image(&self, id: &str, data: Bytes) {
        self.state
            .images
            .lock()
            .expect("images lock")
            .insert(id.to_string(), data);
    }

    pub fn image(&self, id: &str) -> Option<Bytes> {
        self.state
            .images
            .lock()
            .expect("images lock")
            .get(id)
            .cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    /// Requests seen about image `id` (records, probes, downloads) with `token` as their
    /// `X-Auth-Token`.
    pub fn asked(&self, id: &str, token: &str) -> usize {
        let about = format!("/v2/images/{id}");
        self.seen()
            .iter()
            .filter(|s| s.path_and_query.starts_with(&about))
            .filter(|s| s.headers.get("x-auth-token").is_some_and(|t| t == token))
            .count()
    }

    /// Requests of `method` whose head arrived (whether or not their body ever ended).
    pub fn heads(&self, method: &str) -> usize {
        let heads = self.state.heads.lock().expect("heads lock");
        heads.get(method).copied().unwrap_or(0)
    }

    pub fn requests(&self) -> usize {
        self.state.seen.lock().expect("seen lock").len()
    }

    /// Full downloads of `id` served so far (Range probes not counted).
    pub fn downloads(&self, id: &str) -> usize {
        self.state
            .downloads
            .lock()
            .expect("downloads lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn remove_image(&self, id: &str) {
        self.state.images.lock().expect("images lock").remove(id);
        self.state.digests.lock().expect("digests lock").remove(id);
    }
}

impl Drop for FakeGlance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<FakeBody>, Infallible> {
    let (parts, body) = req.into_parts();
    *state
        .heads
        .lock()
        .expect("heads lock")
        .entry(parts.method.to_string())
        .or_default() += 1;
    let faults = state.faults.lock().expect("faults lock").clone();
    let path = parts.uri.path().to_string();
    let mut seen = Seen {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body_len: 0,
        body_sha256: String::new(),
    };

    let injected = {
        let mut f = state.faults.lock().expect("faults lock");
        match f.status {
            Some((code, n)) if n > 0 => {
                f.status = Some((code, n - 1));
                Some(code)
            }
            _ => None,
        }
    };
    let body_bytes = if injected.is_some() && !faults.status_after_body {
        Bytes::new()
    } else {
        match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "body read failed")),
        }
    };
    if !state.quiet.load(std::sync::atomic::Ordering::Relaxed) {
        seen.body_len = body_bytes.len();
        seen.body_sha256 = hex::encode(Sha256::digest(&body_bytes));
        state.seen.lock().expect("seen lock").push(seen.clone());
    }

    if let Some(d) = faults.stall_head {
        tokio::time::sleep(d).await;
    }
    if let Some(code) = injected {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(status(code, "injected fault"));
    }

    let segments: Vec<&str> = path.split('/').collect();
    let method = parts.method.as_str();
    let token = parts
        .headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok());
    if faults.hidden_from_token.is_some()
        && token == faults.hidden_from_token.as_deref()
        && path.starts_with("/v2/images/")
    {
        return Ok(status(StatusCode::NOT_FOUND, "No image found"));
    }
    // Keystone's verdict on a token, then Glance's cache policy (admin only).
    let revoked = token.is_some() && token == faults.revoked_token.as_deref();
    if (token == Some("bad") || revoked) && path.starts_with("/v2/") {
        return Ok(status(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        ));
    }
    if path == "/v2/cache" && method == "GET" {
        return Ok(if faults.no_cache_api {
            status(StatusCode::NOT_FOUND, "The resource could not be found.")
        } else if token == Some("member") {
            status(
                StatusCode::FORBIDDEN,
                "You are not authorized to complete cache_list action.",
            )
        } else if faults.upstream_cache_on {
            json(
                StatusCode::OK,
                serde_json::json!({"cached_images": [], "queued_images": []}),
            )
        } else {
            status(
                StatusCode::NOT_FOUND,
                "Caching via API is not supported at this site.",
            )
        });
    }
    let resp = match (method, segments.as_slice()) {
        ("GET", ["", ""]) => versions(&state.url, StatusCode::MULTIPLE_CHOICES),
        ("GET", ["", "versions"]) => versions(&state.url, StatusCode::OK),
        // Legacy v1: HEAD gives the record as headers; GET gives data (Range is ignored, as
        // old Glance did) with the same headers.
        ("HEAD" | "GET", ["", "v1", "images", id])
            if state.images.lock().expect("images lock").contains_key(*id) =>
        {
            let data = state
                .images
                .lock()
                .expect("images lock")
                .get(*id)
                .cloned()
                .unwrap_or_default();
            let (md5, _) = state.digests(id, &data);
            let with_meta = |b: http::response::Builder| {
                b.header("x-image-meta-id", *id)
                    .header("x-image-meta-name", "v1-image")
                    .header("x-image-meta-status", "active")
                    .header("x-image-meta-size", data.len())
                    .header("x-image-meta-checksum", &md5)
                    .header("x-image-meta-disk_format", "raw")
                    .header("x-image-meta-property-foo", "bar")
                    .header("etag", &md5)
            };
            if method == "HEAD" {
                with_meta(Response::builder().status(StatusCode::OK))
                    .header("content-length", data.len())
                    .body(full(Bytes::new()))
                    .expect("valid response")
            } else if let Some(code) = faults.deny_download {
                status(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
                    "download refused",
                )
            } else {
                if !parts.headers.contains_key("range") {
                    state.count_download(id);
                }
                let md5 = state.digests(id, &data).0;
                let resp = image_data(data.clone(), md5, &faults, &parts.headers);
                let (mut p, b) = resp.into_parts();
                let meta = with_meta(Response::builder()).body(()).expect("headers");
                for (k, v) in meta.headers() {
                    p.headers.insert(k.clone(), v.clone());
                }
                p.headers.remove("content-md5");
                Response::from_parts(p, b)
            }
        }
        ("DELETE", ["", "v1", "images", id]) => {
            match state.images.lock().expect("images lock").remove(*id) {
                Some(_) => Response::builder()
                    .status(StatusCode::OK)
                    .body(full(Bytes::new()))
                    .expect("valid response"),
                None => status(StatusCode::NOT_FOUND, "No image found"),
            }
        }
        // Glance answers an unknown version prefix with the 300 document.
        (_, ["", "v1", ..]) => versions(&state.url, StatusCode::MULTIPLE_CHOICES),
        ("GET", ["", "v2"]) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("{}/v2/", state.url))
            .body(full(Bytes::new()))
            .expect("valid response"),
        ("POST", ["", "v2", "images"]) => {
            let id = format!("img-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
            Response::builder()
                .status(StatusCode::CREATED)
                .header("location", format!("{}/v2/images/{id}", state.url))
                .header("content-type", "application/json")
                .header("x-openstack-request-id", request_id(&parts.headers))
                .body(full(Bytes::from(format!(
                    "{{\"id\": \"{id}\", \"status\": \"queued\"}}"
                ))))
                .expect("valid response")
        }
        ("PUT", ["", "v2", "images", id, "file"]) => {
            state
                .images
                .lock()
                .expect("images lock")
                .insert(id.to_string(), body_bytes.clone());
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("x-openstack-request-id", request_id(&parts.headers))
                .body(full(Bytes::new()))
                .expect("valid response")
        }
        ("GET", ["", "v2", "images", id, "file"]) => {
            let data = state.images.lock().expect("images lock").get(*id).cloned();
            let range = parts.headers.get("range").and_then(|v| v.to_str().ok());
            // Glance lets only admins download a deactivated image.
            let token = parts
                .headers
                .get("x-auth-token")
                .and_then(|v| v.to_str().ok());
            let deactivated = faults.inactive.as_deref() == Some(*id) && token != Some("admin");
            let deny = faults.deny_download.or(deactivated.then_some(403));
            match (data, deny, range) {
                (None, _, _) => status(StatusCode::NOT_FOUND, "No image found"),
                (Some(_), Some(code), _) => status(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
                    "download refused",
                ),
                (Some(data), None, Some(range)) => {
                    let md5 = state.digests(id, &data).0;
                    ranged(&data, range, &md5)
                }
                (Some(data), None, None) => {
                    state.count_download(id);
                    let md5 = state.digests(id, &data).0;
                    image_data(data, md5, &faults, &parts.headers)
                }
            }
        }
        ("GET", ["", "v2", "images", id]) => {
            if let Some(code) = faults
                .record_status
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                return Ok(status(code, "injected record fault"));
            }
            let data = state.images.lock().expect("images lock").get(*id).cloned();
            match data {
                Some(data) => json(
                    StatusCode::OK,
                    serde_json::json!({
                        "id": id,
                        "status": if faults.inactive.as_deref() == Some(*id) { "deactivated" } else { "active" },
                        "size": data.len(),
                        "checksum": (!faults.no_digests).then(|| {
                            faults.record_md5.clone().unwrap_or_else(|| state.digests(id, &data).0)
                        }),
                        "os_hash_algo": (!faults.no_digests).then_some("sha512"),
                        "os_hash_value": (!faults.no_digests).then(|| {
                            faults
                                .record_os_hash
                                .clone()
                                .unwrap_or_else(|| state.digests(id, &data).1)
                        }),
                    }),
                ),
                None => status(StatusCode::NOT_FOUND, "No image found"),
            }
        }
        _ => {
            let headers: HashMap<String, Vec<String>> = seen
                .headers
                .keys()
                .map(|k| {
                    let vals = seen
                        .headers
                        .get_all(k)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    (k.as_str().to_string(), vals)
                })
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "method": seen.method,
                    "path": seen.path_and_query,
                    "headers": headers,
                    "body_len": seen.body_len,
                    "body_sha256": seen.body_sha256,
                }),
            )
        }
    };
    let mut resp = resp;
    // Like Glance: every v2 response carries a request id (the client's, if it sent one).
    if path.starts_with("/v2/") && !resp.headers().contains_key("x-openstack-request-id") {
        if let Ok(v) = http::HeaderValue::from_str(&request_id(&parts.headers)) {
            resp.headers_mut().insert("x-openstack-request-id", v);
        }
    }
    Ok(resp)
}

fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-openstack-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| "req-fake-0001".to_string())
}

/// `Range: bytes=A-B`, `bytes=A-` or `bytes=-N` on an image: 206, as Glance answers.
fn ranged(data: &Bytes, range: &str, md5: &str) -> Response<FakeBody> {
    let len = data.len();
    let spec = range.strip_prefix("bytes=").unwrap_or("");
    let (start, end) = match spec.split_once('-') {
        Some(("", n)) => (
            len.saturating_sub(n.parse().unwrap_or(0)),
            len.saturating_sub(1),
        ),
        Some((a, "")) => (a.parse().unwrap_or(len), len.saturating_sub(1)),
        Some((a, b)) => (
            a.parse().unwrap_or(len),
            b.parse::<usize>().unwrap_or(0).min(len.saturating_sub(1)),
        ),
        None => (len, 0),
    };
    if start >= len || start > end {
        return status(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
    }
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("bytes {start}-{end}/{len}"))
        .header("content-md5", md5)
        .body(full(data.slice(start..=end)))
        .expect("valid response")
}

fn image_data(
    data: Bytes,
    md5: String,
    faults: &Faults,
    headers: &HeaderMap,
) -> Response<FakeBody> {
    let data = match faults.flip_at {
        Some(at) if at < data.len() => {
            let mut v = data.to_vec();
            v[at] ^= 0xff;
            Bytes::from(v)
        }
        _ => data,
    };
    let len = data.len();
    let limit = faults
        .drop_after
        .or(faults.stall_after)
        .unwrap_or(len)
        .min(len);
    let chunks: Vec<Bytes> = (0..limit)
        .step_by(64 * 1024)
        .map(|start| data.slice(start..(start + 64 * 1024).min(limit)))
        .collect();
    let drip = faults.drip;
    let drop = faults.drop_after.is_some();
    let stall = faults.stall_after.is_some();
    let stream = async_stream(chunks, drip, drop, stall);
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .header("content-md5", md5)
        .header("x-openstack-request-id", request_id(headers));
    if !faults.chunked {
        b = b.header("content-length", len);
    }
    b.body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("valid response")
}

/// The download body: chunks (optionally dripped), then an error (drop) or a hang (stall).
fn async_stream(
    chunks: Vec<Bytes>,
    drip: Option<Duration>,
    drop: bool,
    stall: bool,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    tokio::spawn(async move {
        for chunk in chunks {
            if let Some(d) = drip {
                tokio::time::sleep(d).await;
            }
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
        if drop {
            let _ = tx.send(Err("injected drop".into())).await;
        } else if stall {
            tx.closed().await; // hold the stream open until the reader goes away
        }
    });
    let mut rx = rx;
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn versions(base: &str, code: StatusCode) -> Response<FakeBody> {
    let entries: Vec<serde_json::Value> = ["v2.17", "v2.15", "v2.0"]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::json!({
                "id": id,
                "status": if i == 0 { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": format!("{base}/v2/")}],
            })
        })
        .collect();
    json(code, serde_json::json!({ "versions": entries }))
}

fn json(code: StatusCode, v: serde_json::Value) -> Response<FakeBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(Bytes::from(v.to_string())))
        .expect("valid response")
}

fn status(code: StatusCode, msg: &str) -> Response<FakeBody> {
    json(
        code,
        serde_json::json!({"message": msg, "code": code.to_string(), "title": code.canonical_reason()}),
    )
}

fn full(b: Bytes) -> FakeBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}
