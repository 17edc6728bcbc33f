//! Image data (`GET /v2/images/{id}/file`, legacy `GET /v1/images/{id}`) through the cache,
//! in three phases:
//!
//! 1. **authorize** (`authorize`): Glance, asked with the caller's own headers: for a v2 hit
//!    on a verified entry, the download probe (`Range: bytes=0-0`) alone, whose head must
//!    name the entry's size and md5; otherwise the image record, and when the image is
//!    probably cached the probe at the same time. A refusal goes back as Glance sent it. Within `auth.grant_ttl`
//!    of Glance's last "yes" to this caller for a cached image, nothing is asked
//!    (`Verdict::Cached`); when no upstream answers, a "yes" within `auth.offline_grace`
//!    stands for a verified entry (`Verdict::Offline`). See `grants`.
//! 2. **plan** (`plan`): from the record and the cache, `Plan::Hit`, `Join` (a fill in
//!    progress), `Fill` (this request starts one) or `Bypass` (pass through, with a reason).
//! 3. **respond** (`respond_cached`, `respond_miss`, `respond_offline`): a hit or a join is
//!    served only after Glance answered the probe
//!    with a 2xx for this caller (or a grant stands, above); a fill's own download is its
//!    authorization. Ranges become
//!    206/416; hits on a zero-copy connection go out with sendfile.
//!
//! A cached image is never served to a caller Glance would refuse, outside the windows the
//! operator set.

mod authorize;
pub mod range;
mod record;

pub use record::record;

use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::CallerKey;
use crate::body::follow::{follow, Fallback};
use crate::body::{BoxError, ProxyBody};
use crate::cache::fill::{self, Fill, Progress};
use crate::cache::read::Source;
use crate::cache::{Begin, Cache, Hit, Lookup, Starter};
use crate::digest::Expected;
use crate::error::Error;
use crate::grants::Grants;
use crate::outcome::{BypassReason, Decision, Outcome, QuarantineReason};
use crate::sendfile::{self, Hooks};
use crate::upstream::glance::{is_full_download, warn_if_md5_differs, Api, ImageInfo, Small};
use crate::upstream::{Downstream, Forwarded, Upstream};
use authorize::{authorize, glance_says, may_download, Allowed, Authorized};
use range::RangeAnswer;

/// What the image path needs of the shared state.
pub struct Context<'a> {
    pub upstream: &'a Arc<Upstream>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<&'a Arc<Cache>>,
    pub grants: &'a Grants,
}

/// An image-data response, which upstream (if any) answered for it, how it was served and, for
/// a cached image, on whose word (`authorization_decisions_total`).
pub struct Served {
    pub forwarded: Forwarded,
    pub outcome: Outcome,
    pub decision: Option<Decision>,
}

/// What one image-data request asks, read from the client's request.
struct Ask<'a> {
    api: Api,
    image_id: &'a str,
    /// The caller's headers as they go to Glance (identity, `X-Forwarded-*`).
    caller: HeaderMap,
    /// Their identity's key (what grants are remembered by).
    who: CallerKey,
    /// When Glance is asked about this request (unix ms): what a grant from it is dated by.
    asked_ms: u64,
    /// Its ticket (`Grants::ticket`): a refusal or forget recorded after it outranks its "yes".
    ticket: u64,
    /// The `Range` header, when the request has one.
    range: Option<String>,
    /// `?prefer=` and friends: on a miss with the download, on a hit with the probe (so a
    /// query Glance refuses is refused on a hit too).
    query: Option<String>,
    /// A hit may be answered on this connection with sendfile.
    zero_copy: Option<&'a Arc<sendfile::Conn>>,
}

/// Serve one image-data request.
pub async fn serve(
    ctx: &Context<'_>,
    req: Request<Incoming>,
    api: Api,
    image_id: &str,
    down: &Downstream<'_>,
    zero_copy: Option<&Arc<sendfile::Conn>>,
) -> Result<Served, Error> {
    let Some(cache) = ctx.cache else {
        return bypass(ctx, req, down, BypassReason::Disabled).await;
    };
    let headers = req.headers();
    let caller = ctx.upstream.caller_headers(headers, down);
    let ask = Ask {
        api,
        image_id,
        who: CallerKey::of(&caller),
        asked_ms: crate::grants::now_ms(),
        ticket: ctx.grants.ticket(),
        caller,
        range: headers
            .get(RANGE)
            .map(|v| v.to_str().map(str::to_string).unwrap_or_default()),
        query: req.uri().query().map(str::to_string),
        zero_copy,
    };
    // Legacy `Content-Range` and `If-Range` always go upstream; a Range only for an image
    // the cache holds (Glance's own cache never answers ranges; the proxy can, exactly).
    if headers.contains_key(CONTENT_RANGE)
        || headers.contains_key(IF_RANGE)
        || (ask.range.is_some() && !cache.holds(image_id))
    {
        return bypass(ctx, req, down, BypassReason::Range).await;
    }
    let mut allowed = match authorize(ctx, cache, &ask).await? {
        Authorized::Allowed(allowed) => *allowed,
        Authorized::Offline(allowed, unanswered) => {
            return respond_offline(ctx, cache, &ask, *allowed, unanswered, req, down).await;
        }
        Authorized::Refused(resp, upstream) => return Ok(denied(resp, upstream)),
        Authorized::Bypass(reason) => return bypass(ctx, req, down, reason).await,
    };
    let opened = allowed.opened.take();
    match plan(cache, &ask, &allowed.expected, opened).await {
        Plan::Bypass(reason) => bypass(ctx, req, down, reason).await,
        Plan::Fill(starter) => respond_miss(ctx, cache, &ask, allowed, starter).await,
        Plan::Hit(hit) => respond_cached(ctx, cache, &ask, allowed, Source::Entry(hit)).await,
        Plan::Join(fill) => match fill.started().await {
            Progress::Running { .. } | Progress::Verified | Progress::Committed => {
                respond_cached(ctx, cache, &ask, allowed, Source::Filling(fill)).await
            }
            // The fill failed before it began: Glance answers, as for anyone.
            Progress::Starting | Progress::Failed(_) => {
                bypass(ctx, req, down, BypassReason::FillFailed).await
            }
        },
    }
}

// === plan ===

/// How the cache will serve an image Glance allowed.
enum Plan {
    /// A verified entry on disk.
    Hit(Hit),
    /// A fill in progress, started by another request.
    Join(Arc<Fill>),
    /// This request fills: the starter waits for Glance's download.
    Fill(Starter),
    /// Not from the cache.
    Bypass(BypassReason),
}

/// `opened`: the entry, already opened while Glance was asked.
async fn plan(cache: &Arc<Cache>, ask: &Ask<'_>, expected: &Expected, opened: Option<Hit>) -> Plan {
    if let Some(hit) = opened.filter(|hit| cache.is_current(hit)) {
        return Plan::Hit(hit);
    }
    let ranged = ask.range.is_some();
    match cache.lookup(ask.image_id, expected).await {
        Lookup::Hit(hit) => Plan::Hit(hit),
        // A range is answered only from a whole entry.
        Lookup::Filling(_) | Lookup::Miss if ranged => Plan::Bypass(BypassReason::Range),
        Lookup::Filling(fill) => Plan::Join(fill),
        Lookup::Miss => match cache.begin_fill(ask.image_id, expected).await {
            Begin::Started(starter) => Plan::Fill(starter),
            Begin::Joined(fill) => Plan::Join(fill),
            Begin::Bypass(reason) => Plan::Bypass(reason),
        },
    }
}

// === respond ===

/// No upstream answered, and a grant within `auth.offline_grace` stands: a verified entry is
/// served, found without changing the cache (no fill, no eviction); anything else gets
/// Glance's failure as it came.
async fn respond_offline(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    allowed: Allowed,
    unanswered: Result<Small, Error>,
    req: Request<Incoming>,
    down: &Downstream<'_>,
) -> Result<Served, Error> {
    if let Some(hit) = cache.peek(ask.image_id, &allowed.expected).await {
        authorize::warn_offline(ctx, ask);
        return respond_cached(ctx, cache, ask, allowed, Source::Entry(hit)).await;
    }
    match glance_says(ctx, cache, ask, unanswered).await? {
        Authorized::Refused(resp, upstream) => Ok(denied(resp, upstream)),
        Authorized::Bypass(reason) => bypass(ctx, req, down, reason).await,
        Authorized::Allowed(_) | Authorized::Offline(..) => {
            Err(Error::Unreachable("no upstream answered".into()))
        }
    }
}

/// A miss: Glance's download (with the caller's credentials, which is the authorization)
/// starts the fill, and this client reads it like any other.
async fn respond_miss(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    allowed: Allowed,
    starter: Starter,
) -> Result<Served, Error> {
    let expected = &allowed.expected;
    match start_fill(ctx.upstream, starter, ask, expected).await? {
        Started::Fill(started, request_id, upstream) => {
            authorize::grant(ctx, ask, &allowed);
            let body = follow(
                Source::Filling(Arc::clone(started.fill())).reader(),
                0..expected.size,
                Some(fallback(ctx.upstream, ask, expected.size)),
                hooks(cache, None, false),
                ask.zero_copy.cloned(),
            );
            // The reader holds its own registration now.
            drop(started);
            let response = data_response(&allowed.info, expected, request_id, body);
            Ok(Served {
                forwarded: Forwarded::new(response, upstream),
                outcome: Outcome::Miss,
                decision: None,
            })
        }
        Started::Refused(resp, upstream) => {
            // Glance refused the download itself: no grant stands.
            if !crate::upstream::is_unavailable(resp.status()) {
                ctx.grants.refused(ask.who, ask.image_id);
            }
            Ok(Served {
                forwarded: Forwarded::new(ctx.upstream.relay(resp), upstream),
                outcome: Outcome::Bypass(BypassReason::UpstreamAnswer),
                decision: None,
            })
        }
    }
}

/// A hit or a join: served once Glance has said this caller may download the image.
async fn respond_cached(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    mut allowed: Allowed,
    source: Source,
) -> Result<Served, Error> {
    let (decision, probe) = match may_download(ctx, ask, &mut allowed, &source).await? {
        Ok(judged) => judged,
        Err(refused) => return Ok(refused),
    };
    // Glance's request id when it was asked; one of the proxy's own when a grant stood.
    let upstream = probe.as_ref().map(|p| p.upstream);
    let request_id = match probe.as_ref().and_then(Small::request_id) {
        Some(id) => Some(id.clone()),
        None => HeaderValue::from_str(&format!("req-{}", uuid::Uuid::new_v4())).ok(),
    };
    let outcome = match &source {
        Source::Entry(_) => Outcome::Hit,
        Source::Filling(_) => Outcome::Coalesced,
    };
    let size = allowed.expected.size;
    let answer = ask
        .range
        .as_deref()
        .map_or(RangeAnswer::Full, |r| range::parse(r, size));
    let span = match answer {
        RangeAnswer::Full => 0..size,
        RangeAnswer::Partial { start, end } => start..end + 1,
        RangeAnswer::Unsatisfiable | RangeAnswer::Multiple => {
            let resp = refused_range(&answer, size, request_id.as_ref());
            return Ok(Served {
                forwarded: Forwarded::new(resp, upstream),
                outcome,
                decision: Some(decision),
            });
        }
    };
    let whole = answer == RangeAnswer::Full;
    let body = match (source, ask.zero_copy) {
        // A committed file on a connection that can: zero-copy.
        (Source::Entry(hit), Some(conn)) => {
            let hooks = hooks(cache, Some(&hit), whole);
            conn.body(hit.file(), span.clone(), hooks).boxed_unsync()
        }
        (source, _) => {
            let hooks = match &source {
                Source::Entry(hit) => hooks(cache, Some(hit), whole),
                Source::Filling(_) => hooks(cache, None, false),
            };
            let fallback = fallback(ctx.upstream, ask, size);
            follow(source.reader(), span.clone(), Some(fallback), hooks, None)
        }
    };
    let mut response = data_response(&allowed.info, &allowed.expected, request_id, body);
    if let (false, Some(content_range)) = (whole, answer.content_range(size)) {
        // 206: this part's length; Content-MD5 stays the whole image's, as Glance sends it.
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let h = response.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(span.end - span.start));
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            h.insert(CONTENT_RANGE, v);
        }
    }
    Ok(Served {
        forwarded: Forwarded::new(response, upstream),
        outcome,
        decision: Some(decision),
    })
}

/// What became of a miss's download request.
enum Started {
    /// Glance sent the image: the fill runs; its `x-openstack-request-id`, and which upstream.
    Fill(fill::Keep, Option<HeaderValue>, usize),
    /// Glance answered something else: it goes back to the client as is.
    Refused(Response<Incoming>, usize),
}

/// Request the image and start the fill in a task of its own, so that the fill goes on (and
/// serves later requests) even if the client that started it hangs up before Glance answers.
async fn start_fill(
    upstream: &Arc<Upstream>,
    starter: Starter,
    ask: &Ask<'_>,
    expected: &Expected,
) -> Result<Started, Error> {
    let upstream = Arc::clone(upstream);
    let expected = expected.clone();
    let (api, caller, query) = (ask.api, ask.caller.clone(), ask.query.clone());
    let image_id = ask.image_id.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let started = match upstream
            .download(api, &caller, &image_id, query.as_deref())
            .await
        {
            Ok((resp, index)) if is_full_download(&resp, &expected) => {
                warn_if_md5_differs(&image_id, &resp, &expected);
                let request_id = resp.headers().get("x-openstack-request-id").cloned();
                let idle = upstream.body_idle_timeout;
                Ok(Started::Fill(
                    starter.start(resp.into_body(), idle),
                    request_id,
                    index,
                ))
            }
            // Dropping the starter undoes the registration (joiners then pass through).
            Ok((resp, index)) => Ok(Started::Refused(resp, index)),
            Err(e) => Err(e),
        };
        let _ = tx.send(started);
    });
    rx.await
        .map_err(|_| Error::Unreachable("fill task ended without an answer".into()))?
}

/// Where a reader gets the rest of the image when the cache's disk fails: Glance, with the
/// caller's credentials, from the offset it reached.
fn fallback(upstream: &Arc<Upstream>, ask: &Ask<'_>, size: u64) -> Fallback {
    let upstream = Arc::clone(upstream);
    let (api, caller, id) = (ask.api, ask.caller.clone(), ask.image_id.to_string());
    Box::new(move |offset| {
        Box::pin(async move {
            let body = upstream
                .download_rest(api, &caller, &id, offset, size)
                .await
                .map_err(|e| -> BoxError { e.to_string().into() })?;
            Ok(body)
        })
    })
}

/// What a response's body reports: once it sent every byte, a whole hit counts and refreshes
/// the entry; a committed entry whose file cannot be read is quarantined (the rest of this
/// response comes from Glance where it can, and the next request refetches).
fn hooks(cache: &Arc<Cache>, hit: Option<&Hit>, count: bool) -> Hooks {
    let Some(hit) = hit else {
        return Hooks::default();
    };
    let done = count.then(|| {
        let cache = Arc::clone(cache);
        let id = hit.image_id.clone();
        Box::new(move || cache.touch(&id)) as sendfile::OnDone
    });
    let (cache, id, print) = (Arc::clone(cache), hit.image_id.clone(), hit.print());
    let disk_error = Box::new(move |e: &std::io::Error| {
        // Files are removed and a report written: off the runtime threads.
        let detail = format!("reading the cached file failed: {e}");
        cache.quarantine_later(&id, print, QuarantineReason::ReadError, detail);
    }) as sendfile::OnDiskError;
    Hooks::new(done, Some(disk_error))
}

/// The response head Glance sends for a full download.
fn data_response(
    info: &ImageInfo,
    expected: &Expected,
    request_id: Option<HeaderValue>,
    body: ProxyBody,
) -> Response<ProxyBody> {
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
    resp
}

/// Glance's 416 for a range beyond the image (or malformed), its 400 for several ranges.
fn refused_range(
    answer: &RangeAnswer,
    size: u64,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let rid = request_id.and_then(|v| v.to_str().ok()).unwrap_or_default();
    let (status, message) = match answer {
        RangeAnswer::Multiple => (StatusCode::BAD_REQUEST, range::MULTIPLE_RANGES),
        _ => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "Requested range not satisfiable",
        ),
    };
    let mut resp = crate::error::error_response(status, message, rid);
    if let Some(v) = answer
        .content_range(size)
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        resp.headers_mut().insert(CONTENT_RANGE, v);
    }
    resp
}

fn denied(response: Response<ProxyBody>, upstream: usize) -> Served {
    Served {
        forwarded: Forwarded::new(response, Some(upstream)),
        outcome: Outcome::Denied,
        decision: Some(Decision::Denied),
    }
}

async fn bypass(
    ctx: &Context<'_>,
    req: Request<Incoming>,
    down: &Downstream<'_>,
    reason: BypassReason,
) -> Result<Served, Error> {
    let forwarded = ctx.upstream.forward(req, down).await?;
    Ok(Served {
        forwarded,
        outcome: Outcome::Bypass(reason),
        decision: None,
    })
}
