//! Typed Glance calls made with the caller's own credentials: the image record
//! (`GET /v2/images/{id}`), the download probe (`GET …/file` with `Range: bytes=0-0`) and the
//! full download. Parsing of the record is pure and tested here.

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use http::{request, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::auth::side_headers;
use crate::digest::{Expected, HashAlgo};
use crate::error::Error;
use crate::outcome::BypassReason;
use crate::upstream::Upstream;

/// Image records are a few KB; a larger one is not a record.
const MAX_RECORD: usize = 1 << 20;
/// A successful probe body up to this size is read (keeping the connection reusable).
const MAX_PROBE_BODY: u64 = 64 * 1024;

/// Which Image API a request speaks: v2 (`/v2/images/{id}/file`, JSON records) or the legacy
/// v1 (`/v1/images/{id}` data, `HEAD` for the record as `x-image-meta-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    V1,
    V2,
}

impl Api {
    fn record_path(self, id: &str) -> String {
        match self {
            Api::V1 => format!("/v1/images/{id}"),
            Api::V2 => format!("/v2/images/{id}"),
        }
    }

    fn data_path(self, id: &str) -> String {
        match self {
            Api::V1 => format!("/v1/images/{id}"),
            Api::V2 => format!("/v2/images/{id}/file"),
        }
    }

    fn record_method(self) -> Method {
        match self {
            Api::V1 => Method::HEAD,
            Api::V2 => Method::GET,
        }
    }
}

/// An image's status as Glance's record states it (parsed once; code decides on the variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// Its data may be downloaded (and cached).
    Active,
    /// Any other: queued, saving, uploading, importing, deactivated, killed, deleted,
    /// pending_delete, or one this proxy does not know. Glance answers the download itself.
    #[serde(other)]
    Other,
}

impl ImageStatus {
    fn parse(text: &str) -> ImageStatus {
        match text {
            "active" => ImageStatus::Active,
            _ => ImageStatus::Other,
        }
    }
}

/// An image as a record says it is: its status, the bytes it promises, and (v1) the
/// `x-image-meta-*` headers Glance puts on every response about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub status: ImageStatus,
    pub expected: Option<Expected>,
    pub meta_headers: HeaderMap,
}

impl ImageInfo {
    /// The v2 record a standing grant kept (only its size and digests are remembered): an
    /// active image with no extra headers.
    pub fn remembered(expected: &Expected) -> ImageInfo {
        ImageInfo {
            status: ImageStatus::Active,
            expected: Some(expected.clone()),
            meta_headers: HeaderMap::new(),
        }
    }

    /// Parse a 200 record answer of `api`.
    pub fn parse(api: Api, record: &Small) -> Option<ImageInfo> {
        match api {
            Api::V2 => {
                let r = ImageRecord::parse(&record.body)?;
                Some(ImageInfo {
                    expected: r.expected(),
                    status: r.status,
                    meta_headers: HeaderMap::new(),
                })
            }
            Api::V1 => {
                let h = &record.headers;
                let get = |name: &str| {
                    h.get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let status = get("x-image-meta-status")?;
                let size = get("x-image-meta-size").and_then(|s| s.parse::<u64>().ok());
                let md5 = get("x-image-meta-checksum").map(|s| s.to_ascii_lowercase());
                let mut meta_headers = HeaderMap::new();
                for (name, value) in h {
                    if name.as_str().starts_with("x-image-meta-") || name == http::header::ETAG {
                        meta_headers.append(name.clone(), value.clone());
                    }
                }
                Some(ImageInfo {
                    status: ImageStatus::parse(&status),
                    expected: size.map(|size| Expected {
                        size,
                        md5,
                        os_hash: None,
                    }),
                    meta_headers,
                })
            }
        }
    }
}

impl ImageInfo {
    /// Whether the cache may hold this image, and as what: an active image whose record
    /// states its size. The one test of the image path and the prefetcher; the cache's own
    /// conditions (digests, size, room) follow in `Cache::begin_fill`.
    pub fn cacheable(&self) -> Result<&Expected, BypassReason> {
        if self.status != ImageStatus::Active {
            return Err(BypassReason::NotActive);
        }
        self.expected.as_ref().ok_or(BypassReason::NoSize)
    }
}

/// What the proxy needs from Glance's image record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub status: ImageStatus,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub checksum: Option<String>,
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    #[serde(default)]
    pub os_hash_value: Option<String>,
}

impl ImageRecord {
    pub fn parse(body: &[u8]) -> Option<ImageRecord> {
        serde_json::from_slice(body).ok()
    }

    /// The bytes this record promises, or `None` when it promises none (no size yet).
    /// An `os_hash_algo` the proxy does not know is treated as absent.
    pub fn expected(&self) -> Option<Expected> {
        let size = self.size?;
        let md5 = self.checksum.as_ref().map(|s| s.to_ascii_lowercase());
        let os_hash = match (&self.os_hash_algo, &self.os_hash_value) {
            (Some(algo), Some(value)) => {
                HashAlgo::parse(algo).map(|a| (a, value.to_ascii_lowercase()))
            }
            _ => None,
        };
        Some(Expected { size, md5, os_hash })
    }
}

/// Glance's 200 for the image we expect (Content-Length, when sent, is the record's size).
pub fn is_full_download<B>(resp: &Response<B>, expected: &Expected) -> bool {
    resp.status() == StatusCode::OK
        && resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_none_or(|len| len == expected.size)
}

/// Warn when Glance's `Content-MD5` on a download differs from the record's `checksum`: the
/// fill verifies the os_hash (unless `cache.verify_md5`), so this is how a wrong checksum in
/// a record shows without hashing md5 (hits send the record's checksum as Content-MD5).
pub fn warn_if_md5_differs<B>(image_id: &str, resp: &Response<B>, expected: &Expected) {
    let sent = resp
        .headers()
        .get("content-md5")
        .and_then(|v| v.to_str().ok());
    if let (Some(sent), Some(recorded)) = (sent, expected.md5.as_deref()) {
        if !sent.eq_ignore_ascii_case(recorded) {
            tracing::warn!(
                image_id,
                content_md5 = sent,
                checksum = recorded,
                "Glance's Content-MD5 differs from the image record's checksum"
            );
        }
    }
}

/// An upstream answer read into memory (small: records, errors, probes).
#[derive(Clone)]
pub struct Small {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Which upstream answered.
    pub upstream: usize,
}

impl Small {
    /// Back into a response for the client, exactly as Glance sent it.
    pub fn into_response(self) -> Response<crate::body::ProxyBody> {
        let mut resp = Response::new(crate::body::full(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }

    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.headers.get("x-openstack-request-id")
    }
}

impl Upstream {
    /// The image record (v2 `GET /v2/images/{id}`, v1 `HEAD /v1/images/{id}`), with the
    /// caller's headers.
    pub async fn image_record(
        &self,
        api: Api,
        caller: &HeaderMap,
        id: &str,
    ) -> Result<Small, Error> {
        let (resp, index) = self
            .side_request(api.record_method(), caller, &api.record_path(id), None)
            .await?;
        read_small(resp, index, self.body_idle_timeout).await
    }

    /// `PATCH /v2/images/{id}` with an empty JSON patch (`[]`), with the caller's headers: the
    /// image record as Glance's database visibility shows it to the caller (admin, owner,
    /// public or community, shared member), which is the lookup of Glance's cache API
    /// (`gateway.get_repo(ctx).get`), not the `get_image` policy that `GET` also enforces (a
    /// role). Glance's `ImagesController.update` looks the image up the same way, checks no
    /// policy for an empty change list and saves nothing (`if changes: image_repo.save`).
    pub async fn image_record_visible(&self, caller: &HeaderMap, id: &str) -> Result<Small, Error> {
        let mut headers = side_headers(caller);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/openstack-images-v2.1-json-patch"),
        );
        let mut req = Request::new(Full::new(Bytes::from_static(b"[]")));
        *req.method_mut() = Method::PATCH;
        *req.uri_mut() = Api::V2
            .record_path(id)
            .parse()
            .map_err(|e| Error::BadRequest(format!("image id cannot form a path: {e}")))?;
        *req.headers_mut() = headers;
        let (parts, body): (request::Parts, _) = req.into_parts();
        let (resp, index) = self.send(parts, body).await?;
        read_small(resp, index, self.body_idle_timeout).await
    }

    /// The image download with `Range: bytes=0-0`: Glance's own answer to "may this caller
    /// download this image?" (visibility, `download_image` policy, deactivation). A refusal
    /// is read whole (it goes back to the client); a success is dropped after its head, so
    /// nothing is transferred even if Glance ignores the range.
    /// The client's `query` goes with it (Glance's `?prefer=`: a store it would refuse is
    /// refused for a hit too).
    pub async fn download_probe(
        &self,
        api: Api,
        caller: &HeaderMap,
        id: &str,
        query: Option<&str>,
    ) -> Result<Small, Error> {
        let range = HeaderValue::from_static("bytes=0-0");
        let path = with_query(api.data_path(id), query);
        let (resp, index) = self
            .side_request(Method::GET, caller, &path, Some(range))
            .await?;
        // The answer is its head; the one ranged byte is read after it (the connection goes
        // back to the pool). If Glance ignored the range, the body is dropped after the head.
        verdict(resp, index, MAX_PROBE_BODY, self.body_idle_timeout).await
    }

    /// `GET /v2/cache` with the caller's headers: Glance's own decision on its `cache_list`
    /// policy (admin by default). Glance checks the policy before it checks whether its cache
    /// is on, so an allowed caller gets 200 (cache on) or 404 "Caching via API is not
    /// supported at this site." (cache off), and a refused one 401 or 403. A success's body
    /// (Glance's own cache listing) is dropped unread.
    pub async fn cache_policy(&self, caller: &HeaderMap) -> Result<Small, Error> {
        let (resp, index) = self
            .side_request(Method::GET, caller, "/v2/cache", None)
            .await?;
        verdict(resp, index, 0, self.body_idle_timeout).await
    }

    /// The full download, with the caller's headers and query (e.g. Glance's `?prefer=`), and
    /// which upstream answered.
    pub async fn download(
        &self,
        api: Api,
        caller: &HeaderMap,
        id: &str,
        query: Option<&str>,
    ) -> Result<(Response<Incoming>, usize), Error> {
        let path = with_query(api.data_path(id), query);
        self.side_request(Method::GET, caller, &path, None).await
    }

    /// The rest of an image of `size` bytes from `offset` (a ranged download), for a reader
    /// whose fill lost its disk: the body, only if Glance answered 206 with exactly that span.
    pub async fn download_rest(
        &self,
        api: Api,
        caller: &HeaderMap,
        id: &str,
        offset: u64,
        size: u64,
    ) -> Result<crate::body::BytesBody, Error> {
        let range = HeaderValue::from_str(&format!("bytes={offset}-"))
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let (resp, _) = self
            .side_request(Method::GET, caller, &api.data_path(id), Some(range))
            .await?;
        let want = format!("bytes {offset}-{}/{size}", size.saturating_sub(1));
        let range_ok = resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(http::header::CONTENT_RANGE)
                .is_some_and(|v| v.as_bytes() == want.as_bytes());
        if !range_ok {
            return Err(Error::BadUpstream(format!(
                "upstream did not resume at {offset}: {}",
                resp.status()
            )));
        }
        let idle = self.body_idle_timeout;
        Ok(crate::body::IdleTimeout::new(resp.into_body(), idle).boxed_unsync())
    }

    async fn side_request(
        &self,
        method: Method,
        caller: &HeaderMap,
        path: &str,
        range: Option<HeaderValue>,
    ) -> Result<(Response<Incoming>, usize), Error> {
        let mut headers = side_headers(caller);
        if let Some(range) = range {
            headers.insert(RANGE, range);
        }
        self.ask_max_age(&mut headers);
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method;
        *req.uri_mut() = path
            .parse()
            .map_err(|e| Error::BadRequest(format!("image id cannot form a path: {e}")))?;
        *req.headers_mut() = headers;
        let (parts, body): (request::Parts, _) = req.into_parts();
        self.send(parts, body).await
    }
}

fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// How long a successful answer's few body bytes are waited for after its head.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// Glance's answer to a yes/no question: a refusal is read whole (it goes back to the client
/// as sent); a success is answered on its head. Its body is read in the background when its
/// Content-Length is at most `keep` (the connection then goes back to the pool), else dropped
/// with its connection, so nothing large is transferred.
async fn verdict(
    resp: Response<Incoming>,
    upstream: usize,
    keep: u64,
    idle: std::time::Duration,
) -> Result<Small, Error> {
    let small = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len <= keep);
    if resp.status().is_success() {
        let (parts, mut body) = resp.into_parts();
        // A few bytes, which usually came with the head: read at once, they need no task.
        if small && !drained(&mut body) {
            // Still on the way: read them aside, within a short bound, so that a stalled body
            // does not hold the connection.
            let bound = idle.min(DRAIN_BOUND);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(bound, body.collect()).await;
            });
        }
        let mut headers = parts.headers;
        crate::upstream::headers::strip_hop_by_hop(&mut headers);
        return Ok(Small {
            status: parts.status,
            headers,
            body: Bytes::new(),
            upstream,
        });
    }
    read_small(resp, upstream, idle).await
}

/// Read what of `body` has already arrived; true once it is whole (or failed).
fn drained(body: &mut Incoming) -> bool {
    use futures_util::FutureExt;
    use http_body::Body as _;
    // At most a few frames: `verdict` drains only bodies of a few bytes.
    for _ in 0..4 {
        if body.is_end_stream() {
            return true;
        }
        match body.frame().now_or_never() {
            Some(Some(Ok(_))) => continue,
            Some(None) | Some(Some(Err(_))) => return true,
            None => return false,
        }
    }
    body.is_end_stream()
}

async fn read_small(
    resp: Response<Incoming>,
    upstream: usize,
    idle: std::time::Duration,
) -> Result<Small, Error> {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(idle, Limited::new(body, MAX_RECORD).collect())
        .await
        .map_err(|_| Error::Timeout(idle))?
        .map_err(|e| Error::BadUpstream(format!("reading a small response: {e}")))?
        .to_bytes();
    let mut headers = parts.headers;
    crate::upstream::headers::strip_hop_by_hop(&mut headers);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(Small {
        status: parts.status,
        headers,
        body,
        upstream,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let body = br#"{"foo": "bar", "name": "example", "size": 5000000, "status": "active",
            "checksum": "96B258E58FBB34826FF84D86376C3609", "os_hash_algo": "sha512",
            "os_hash_value": "8374fc3c", "id": "786e1a48-8ce4-4310-9a23-4dbd46a8bdb9"}"#;
        let r = ImageRecord::parse(body).expect("record");
        assert_eq!(r.status, ImageStatus::Active);
        let e = r.expected().expect("expected");
        assert_eq!(e.size, 5_000_000);
        assert_eq!(e.md5.as_deref(), Some("96b258e58fbb34826ff84d86376c3609"));
        assert_eq!(e.os_hash, Some((HashAlgo::Sha512, "8374fc3c".to_string())));

        let queued = br#"{"id": "x", "status": "queued", "size": null, "checksum": null,
            "os_hash_algo": null, "os_hash_value": null}"#;
        assert_eq!(ImageRecord::parse(queued).and_then(|r| r.expected()), None);

        let unknown_algo = br#"{"id": "x", "status": "active", "size": 3, "os_hash_algo": "blake3", "os_hash_value": "ab"}"#;
        let e = ImageRecord::parse(unknown_algo)
            .and_then(|r| r.expected())
            .expect("sized");
        assert!(!e.has_digest());
        assert_eq!(ImageRecord::parse(b"<html>"), None);
    }
}
