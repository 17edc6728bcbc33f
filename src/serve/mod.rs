//! Image data (`GET /v2/images/{id}/file`) through the cache: authorize with the caller's own
//! credentials, then serve a hit, join a fill in progress, start a fill, or pass through.
//!
//! Every answer is Glance's for that caller: the image record and a `Range: bytes=0-0` probe
//! are requested with the caller's headers, and any non-2xx answer goes back as Glance sent
//! it. A cached image is never served to a caller Glance would refuse.

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

pub mod range;
pub mod sendfile;

use crate::app::App;
use crate::auth::CallerKey;
use crate::body::{Hooks, ProxyBody};
use crate::cache::fill::{self, Fallback, Fill, Progress};
use crate::cache::verify::Expected;
use crate::cache::{Begin, Cache, Lookup};
use crate::error::Error;
use crate::upstream::glance::{is_full_download, Api, ImageInfo};
use crate::upstream::{Downstream, Forwarded};
use http_body_util::BodyExt;
use range::RangeAnswer;

/// How an image-data request was answered, for the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Coalesced,
    Bypass(&'static str),
    /// Glance refused the caller (its status went back unchanged).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Bypass(_) => "bypass",
            Outcome::Denied => "denied",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Bypass(r) => r,
            _ => "",
        }
    }
}

pub struct Served {
    pub forwarded: Forwarded,
    pub outcome: Outcome,
}

/// Serve `GET /v2/images/{id}/file` (or legacy `GET /v1/images/{id}`).
pub async fn image_data(
    app: &App,
    req: Request<Incoming>,
    api: Api,
    image_id: &str,
    down: &Downstream<'_>,
    zero_copy: Option<&Arc<sendfile::Conn>>,
) -> Result<Served, Error> {
    let Some(cache) = app.cache.as_ref() else {
        return bypass(app, req, down, "disabled").await;
    };
    // Glance bypasses its cache for ranges; so does the proxy (hits with Range come later).
    // A Range is answered from the cache only for a cached image (Glance's own cache never
    // does; the proxy can, exactly); otherwise it goes upstream. Legacy request
    // `Content-Range` and `If-Range` always go upstream.
    let range = req
        .headers()
        .get(RANGE)
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    if req.headers().contains_key(CONTENT_RANGE)
        || req.headers().contains_key(http::header::IF_RANGE)
        || (range.is_some() && !cache.holds(image_id))
    {
        return bypass(app, req, down, "range").await;
    }
    let upstream = &app.upstream;
    let caller = upstream.caller_headers(req.headers(), down);
    let who = CallerKey::of(&caller);
    // When the image is probably a hit, ask Glance both questions at once.
    let (record, early_probe) = if cache.holds(image_id) {
        let (record, probe) = tokio::join!(
            upstream.image_record(api, &caller, image_id),
            upstream.download_probe(api, &caller, image_id)
        );
        (record?, Some(probe))
    } else {
        (upstream.image_record(api, &caller, image_id).await?, None)
    };
    if record.status != StatusCode::OK {
        // A 404 to a caller Glance had let download the image means it is gone; a 404 to
        // anyone else may only mean they cannot see it, and must not evict.
        if record.status == StatusCode::NOT_FOUND && app.grants.was_granted(who, image_id) {
            tracing::info!(image_id, "image gone from Glance; evicting");
            cache.remove(image_id);
        }
        return match api {
            Api::V2 => Ok(denied(record.into_response())),
            // A HEAD answer has no body: let Glance answer the GET itself.
            Api::V1 => bypass(app, req, down, "v1_refused").await,
        };
    }
    let info = match ImageInfo::parse(api, &record) {
        Some(info) if info.status == "active" => info,
        Some(_) => return bypass(app, req, down, "not_active").await,
        None => return bypass(app, req, down, "bad_record").await,
    };
    let Some(expected) = info.expected.clone() else {
        return bypass(app, req, down, "no_size").await;
    };

    let (fill, outcome) = match cache.lookup(image_id, &expected) {
        Lookup::Hit(fill) => (fill, Outcome::Hit),
        Lookup::Filling(_) | Lookup::Miss if range.is_some() => {
            return bypass(app, req, down, "range").await;
        }
        Lookup::Filling(fill) => (fill, Outcome::Coalesced),
        Lookup::Miss => match cache.begin_fill(image_id, &expected) {
            Begin::Joined(fill) => (fill, Outcome::Coalesced),
            Begin::Bypass(reason) => return bypass(app, req, down, reason).await,
            Begin::Started(starter) => {
                // The download itself, with the caller's credentials, is the authorization.
                // `?prefer=` and friends go upstream on a miss; hits ignore them, as Glance's
                // own cache does.
                let query = req.uri().query().map(str::to_string);
                let started =
                    start_fill(app, starter, api, caller.clone(), query, &expected).await?;
                return match started {
                    Started::Fill(fill, request_id) => {
                        app.grants.granted(who, image_id);
                        let size = expected.size;
                        let body = reader(cache, &fill, 0..size, fallback(app, api, caller), false);
                        Ok(Served {
                            forwarded: data_response(&info, &expected, request_id, body),
                            outcome: Outcome::Miss,
                        })
                    }
                    Started::Refused(resp) => Ok(Served {
                        forwarded: Forwarded {
                            response: app.upstream.relay(resp),
                            upstream: 0,
                        },
                        outcome: Outcome::Bypass("upstream_answer"),
                    }),
                };
            }
        },
    };

    // A hit or a join: Glance must say this caller may download the image.
    let probe = match early_probe {
        Some(probe) => probe?,
        None => upstream.download_probe(api, &caller, image_id).await?,
    };
    if !probe.status.is_success() || probe.status == StatusCode::NO_CONTENT {
        return Ok(denied(probe.into_response()));
    }
    app.grants.granted(who, image_id);
    let request_id = probe.request_id().cloned();
    if outcome == Outcome::Coalesced {
        match fill.started().await {
            Progress::Running { .. } | Progress::Verified | Progress::Committed => {}
            Progress::Starting | Progress::Failed(_) => {
                return bypass(app, req, down, "fill_failed").await;
            }
        }
    }
    let answer = range
        .as_deref()
        .map_or(RangeAnswer::Full, |r| range::parse(r, expected.size));
    let span = match answer {
        RangeAnswer::Full => 0..expected.size,
        RangeAnswer::Partial { start, end } => start..end + 1,
        RangeAnswer::Unsatisfiable => {
            let rid = request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let mut resp = crate::error::error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "Requested range not satisfiable",
                &rid,
            );
            if let Some(v) = answer
                .content_range(expected.size)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            return Ok(Served {
                forwarded: Forwarded {
                    response: resp,
                    upstream: 0,
                },
                outcome,
            });
        }
    };
    let whole = answer == RangeAnswer::Full;
    let body = match (outcome, zero_copy) {
        // A committed file on a connection that can: zero-copy.
        (Outcome::Hit, Some(conn)) => conn
            .body(fill.file(), span.clone(), hooks(cache, &fill, whole))
            .boxed_unsync(),
        _ => reader(
            cache,
            &fill,
            span.clone(),
            fallback(app, api, caller),
            outcome == Outcome::Hit && whole,
        ),
    };
    let mut forwarded = data_response(&info, &expected, request_id, body);
    if let (false, Some(content_range)) = (whole, answer.content_range(expected.size)) {
        // 206: this part's length; Content-MD5 stays the whole image's, as Glance sends it.
        let resp = &mut forwarded.response;
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(span.end - span.start));
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            resp.headers_mut().insert(CONTENT_RANGE, v);
        }
    }
    Ok(Served { forwarded, outcome })
}

/// What became of a miss's download request.
enum Started {
    /// Glance sent the image: the fill runs; its `x-openstack-request-id`.
    Fill(Arc<Fill>, Option<HeaderValue>),
    /// Glance answered something else: it goes back to the client as is.
    Refused(Response<Incoming>),
}

/// Request the image and start the fill in a task of its own, so that the fill goes on (and
/// serves later requests) even if the client that started it hangs up before Glance answers.
async fn start_fill(
    app: &App,
    starter: crate::cache::Starter,
    api: Api,
    caller: HeaderMap,
    query: Option<String>,
    expected: &Expected,
) -> Result<Started, Error> {
    let upstream = Arc::clone(&app.upstream);
    let idle = app.config.upstream.body_idle_timeout;
    let expected = expected.clone();
    let image_id = starter.fill().image_id.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let started = match upstream
            .download(api, &caller, &image_id, query.as_deref())
            .await
        {
            Ok(resp) if is_full_download(&resp, &expected) => {
                let request_id = resp.headers().get("x-openstack-request-id").cloned();
                Ok(Started::Fill(
                    starter.start(resp.into_body(), idle),
                    request_id,
                ))
            }
            // Dropping the starter undoes the registration (joiners then pass through).
            Ok(resp) => {
                drop(starter);
                Ok(Started::Refused(resp))
            }
            Err(e) => {
                drop(starter);
                Err(e)
            }
        };
        let _ = tx.send(started);
    });
    rx.await
        .map_err(|_| Error::Unreachable("fill task ended without an answer".into()))?
}

fn fallback(app: &App, api: Api, caller: HeaderMap) -> Option<Fallback> {
    Some(Fallback {
        upstream: Arc::clone(&app.upstream),
        api,
        caller,
    })
}

fn reader(
    cache: &Arc<Cache>,
    fill: &Arc<Fill>,
    span: std::ops::Range<u64>,
    fallback: Option<Fallback>,
    hit: bool,
) -> ProxyBody {
    fill::reader(Arc::clone(fill), span, fallback, hooks(cache, fill, hit))
}

/// What a response's body reports: once it sent every byte, a whole hit counts and refreshes
/// the entry; a committed entry whose file cannot be read is quarantined (the rest of this
/// response comes from Glance where it can, and the next request refetches).
fn hooks(cache: &Arc<Cache>, fill: &Fill, count: bool) -> Hooks {
    let done = count.then(|| {
        let cache = Arc::clone(cache);
        let id = fill.image_id.clone();
        Box::new(move || cache.touch(&id)) as crate::body::OnDone
    });
    let disk_error = fill.print().map(|print| {
        let cache = Arc::clone(cache);
        let id = fill.image_id.clone();
        Box::new(move |e: &std::io::Error| {
            // Files are removed and a report written: off the runtime threads.
            let detail = format!("reading the cached file failed: {e}");
            tokio::task::spawn_blocking(move || cache.quarantine(&id, print, "read_error", detail));
        }) as crate::body::OnDiskError
    });
    Hooks::new(done, disk_error)
}

/// The response head Glance sends for a full download.
fn data_response(
    info: &ImageInfo,
    expected: &Expected,
    request_id: Option<HeaderValue>,
    body: ProxyBody,
) -> Forwarded {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    // v1: the record's x-image-meta-* headers and ETag, as Glance sends with the data.
    for (name, value) in &info.meta_headers {
        h.append(name.clone(), value.clone());
    }
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(expected.size));
    if let Some(md5) = expected
        .md5
        .as_ref()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        h.insert("content-md5", md5);
    }
    if let Some(id) = request_id {
        h.insert("x-openstack-request-id", id);
    }
    Forwarded {
        response: resp,
        upstream: 0,
    }
}

fn denied(resp: Response<ProxyBody>) -> Served {
    Served {
        forwarded: Forwarded {
            response: resp,
            upstream: 0,
        },
        outcome: Outcome::Denied,
    }
}

async fn bypass(
    app: &App,
    req: Request<Incoming>,
    down: &Downstream<'_>,
    reason: &'static str,
) -> Result<Served, Error> {
    let forwarded = app.upstream.forward(req, down).await?;
    Ok(Served {
        forwarded,
        outcome: Outcome::Bypass(reason),
    })
}
