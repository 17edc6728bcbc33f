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
pub mod decide;
pub mod range;
mod record;

pub use record::record;

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::follow::{follow, Fallback};
use crate::body::{BoxError, ProxyBody};
use crate::cache::read::Source;
use crate::cache::{Cache, Hit};
use crate::digest::Expected;
use crate::error::Error;
use crate::fetch::{self, Plan, Started};
use crate::grants::{Grants, Who};
use crate::identity::Resolved;
use crate::outcome::{BypassReason, Decision, Outcome, QuarantineReason};
use crate::sendfile::{self, Hooks};
use crate::upstream::glance::{Api, ImageInfo, Small};
use crate::upstream::{Downstream, Forwarded, Upstream};
use authorize::Gathered;
use decide::{decide, Answered, Entry, Reply, Step, Which, Word};
use range::RangeAnswer;

/// What the image path needs of the shared state.
pub struct Context<'a> {
    pub upstream: &'a Arc<Upstream>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<&'a Arc<Cache>>,
    pub grants: &'a Grants,
    /// Who a Keystone token is: the grants' key.
    pub identity: &'a crate::identity::Resolver,
}

impl Context<'_> {
    /// Whose grants a caller sending these headers (as they go to Glance) reads and writes:
    /// its Keystone identity (and its exact identity headers) when `auth.keystone_url`
    /// resolves it, else its exact identity headers; none when Keystone refuses the token.
    pub async fn who(&self, caller: &HeaderMap) -> Who {
        let exact = self.grants.caller(caller);
        let resolved = self.identity.resolve(caller).await;
        self.who_is(exact, resolved)
    }

    /// `who` of a request whose `who` came from the identity cache (`Who::stale`), asked
    /// again now that Glance said yes: Keystone is asked again (bypassing and updating the
    /// cache). The same identity: kept under it too; another, or Keystone cannot say: under
    /// the exact credentials alone; the token refused now: kept under none. Any other `who`
    /// as it is.
    pub async fn confirm(&self, caller: &HeaderMap, who: Who) -> Who {
        let Who::Identity {
            identity,
            exact,
            fresh: false,
        } = who
        else {
            return who;
        };
        match self.who_is(exact, self.identity.revalidate(caller).await) {
            now @ Who::Identity {
                identity: same,
                fresh: true,
                ..
            } if same == identity => now,
            Who::Identity { .. } | Who::Exact(_) => Who::Exact(exact),
            refused @ Who::Refused { .. } => refused,
        }
    }

    fn who_is(&self, exact: crate::auth::CallerKey, resolved: Resolved) -> Who {
        match resolved {
            Resolved::Identity { identity, fresh } => Who::Identity {
                identity: self.grants.caller_identity(&identity),
                exact,
                fresh,
            },
            Resolved::Refused => Who::Refused { exact },
            Resolved::Exact => Who::Exact(exact),
        }
    }
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
    /// Whose grants it reads and writes.
    who: Who,
    /// When Glance is asked about this request (unix ms): what a grant from it is dated by.
    asked_ms: u64,
    /// Its ticket (`Grants::ticket`): a refusal or forget recorded after it outranks its "yes".
    ticket: u64,
    /// The `Range` header, when the request has one.
    range: Option<String>,
    /// `?prefer=` and friends: on a miss with the download, on a hit with the probe (so a
    /// query Glance refuses is refused on a hit too).
    query: Option<String>,
    /// The request's `Cache-Control: max-age`: the oldest grant it accepts.
    max_age: Option<Duration>,
    /// A hit may be answered on this connection with sendfile.
    zero_copy: Option<&'a Arc<sendfile::Conn>>,
}

impl Ask<'_> {
    /// The download a miss asks Glance for.
    fn download(&self) -> fetch::Download<'_> {
        fetch::Download {
            api: self.api,
            caller: &self.caller,
            image_id: self.image_id,
            query: self.query.as_deref(),
        }
    }
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
        who: ctx.who(&caller).await,
        asked_ms: crate::grants::now_ms(),
        ticket: ctx.grants.ticket(),
        caller,
        range: headers
            .get(RANGE)
            .map(|v| v.to_str().map(str::to_string).unwrap_or_default()),
        query: req.uri().query().map(str::to_string),
        max_age: max_age(headers),
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
    let mut got = Gathered::new(ctx, cache, &ask);
    let mut planned: Option<(Plan, Expected)> = None;
    let mut started: Option<Result<Started, Error>> = None;
    loop {
        let (step, effects) = decide(&got.facts);
        let granted = planned.as_ref().map(|(_, e)| e);
        let json = got.json(&ask);
        authorize::apply(
            ctx,
            cache,
            &ask,
            effects,
            granted.map(|e| (e, json.as_ref())),
        )
        .await;
        match step {
            Step::Ask { record, probe } => got.ask(ctx, cache, &ask, record, probe).await,
            Step::Plan(basis) => planned = Some(plan_step(cache, &ask, &mut got, basis).await?),
            Step::Fill => {
                let Some((Plan::Fill(starter), expected)) = planned.take() else {
                    return Err(Error::Internal("decided to fill without a fill".into()));
                };
                started = Some(fill_step(ctx, &ask, &mut got, starter, &expected).await);
                // The grant names what the download was asked for.
                planned = Some((Plan::Bypass(BypassReason::UpstreamAnswer), expected));
            }
            Step::Serve(word) => {
                let Some((plan, expected)) = planned.take() else {
                    return Err(Error::Internal("decided to serve without a plan".into()));
                };
                let source = match plan {
                    Plan::Hit(hit) => Source::Entry(hit),
                    Plan::Join(fill) => Source::Filling(fill),
                    Plan::Fill(_) | Plan::Bypass(_) => {
                        return bypass(ctx, req, down, BypassReason::FillFailed).await;
                    }
                };
                let (decision, probe) = match word {
                    Word::Glance => (Decision::Allowed, got.probe.take().and_then(Result::ok)),
                    Word::Grant => (Decision::Cached, None),
                };
                let info = got.info(&expected);
                return respond_cached(ctx, cache, &ask, (info, expected), source, decision, probe);
            }
            Step::Stream => {
                let (Some(Ok(answer)), Some((_, expected))) = (started.take(), planned.take())
                else {
                    return Err(Error::Internal(
                        "decided to stream without a download".into(),
                    ));
                };
                let info = got.info(&expected);
                return Ok(respond_miss(ctx, cache, &ask, (info, expected), answer));
            }
            Step::Offline => return respond_offline(ctx, cache, &ask, got).await,
            Step::Refuse(which) | Step::Fail(which) => {
                let refused = matches!(step, Step::Refuse(_));
                return glance_answers(ctx, &mut got, which, started.take(), refused);
            }
            Step::Pass(reason) => return bypass(ctx, req, down, reason).await,
        }
    }
}

/// `Step::Plan`: look the image up with the record `decide` named (the entry opened while
/// Glance was asked, if it was), and tell the facts what the plan found.
async fn plan_step(
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    got: &mut Gathered,
    basis: decide::Basis,
) -> Result<(Plan, Expected), Error> {
    let Some(expected) = got.expected(basis) else {
        return Err(Error::Internal("decided to plan without a record".into()));
    };
    let opened = match got.opening.take() {
        Some(opening) => opening.await,
        None => None,
    };
    let plan = fetch::plan(cache, ask.image_id, &expected, ask.range.is_some(), opened).await;
    got.facts.planned = true;
    got.facts.entry = match &plan {
        Plan::Hit(hit) => Entry::Verified {
            md5: hit.expected.md5.is_some(),
        },
        Plan::Join(_) => Entry::Filling,
        Plan::Fill(_) => Entry::None,
        Plan::Bypass(reason) => Entry::Uncacheable(*reason),
    };
    Ok((plan, expected))
}

/// `Step::Fill`: Glance's download of the miss (it starts the fill, room made on its 200),
/// and what it said, for the facts.
async fn fill_step(
    ctx: &Context<'_>,
    ask: &Ask<'_>,
    got: &mut Gathered,
    starter: crate::cache::Starter,
    expected: &Expected,
) -> Result<Started, Error> {
    let answer = fetch::start(ctx.upstream, starter, &ask.download(), expected).await;
    let held_down = ctx.upstream.all_held_down();
    got.facts.download = Some(match &answer {
        Ok(Started::Fill(..) | Started::NoRoom(..)) => Reply::Yes(()),
        Ok(Started::Refused(resp, _)) => {
            Reply::of(Answered::Status(resp.status()), held_down, || ())
        }
        Err(e) => Reply::of(authorize::answered_error(e), held_down, || ()),
    });
    answer
}

/// The request's `Cache-Control: max-age=N`, the oldest grant it accepts (a node proxy asks
/// its site proxy with `max-age=0` so that the site asks Glance: README "Fleet topologies").
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|d| {
            let (name, value) = d.split_once('=')?;
            name.trim().eq_ignore_ascii_case("max-age").then_some(value)
        })
        .filter_map(|n| n.trim().trim_matches('"').parse::<u64>().ok())
        .min()
        .map(Duration::from_secs)
}

/// Glance's answer (`refused`: a refusal) or failure goes back as it came: the record's or
/// the probe's read into memory, or the download's head and body.
fn glance_answers(
    ctx: &Context<'_>,
    got: &mut Gathered,
    which: Which,
    started: Option<Result<Started, Error>>,
    refused: bool,
) -> Result<Served, Error> {
    let answer = match which {
        Which::Record => got.record.take(),
        Which::Probe => got.probe.take(),
        Which::Download => {
            return match started {
                Some(Ok(Started::Refused(resp, upstream))) => Ok(Served {
                    forwarded: Forwarded::new(ctx.upstream.relay(resp), upstream),
                    outcome: Outcome::Bypass(BypassReason::UpstreamAnswer),
                    decision: None,
                }),
                Some(Err(e)) => Err(e),
                _ => Err(Error::Unreachable("no answer to the download".into())),
            };
        }
    };
    match answer {
        Some(Ok(small)) => {
            let index = small.upstream;
            let served = denied(small.into_response(), index);
            Ok(if refused {
                served
            } else {
                Served {
                    decision: None,
                    ..served
                }
            })
        }
        Some(Err(e)) => Err(e),
        None => Err(Error::Unreachable("no answer from Glance".into())),
    }
}

// === respond ===

/// No upstream answers, and a grant within `auth.offline_grace` stands: a verified entry is
/// served, found without changing the cache (no fill, no eviction); else the failure goes
/// back as it came.
async fn respond_offline(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    mut got: Gathered,
) -> Result<Served, Error> {
    if let Some(expected) = got.grant_record() {
        if let Some(hit) = cache.peek(ask.image_id, &expected).await {
            authorize::warn_offline(ask, got.grant_age());
            let allowed = (ImageInfo::remembered(&expected), expected);
            let source = Source::Entry(hit);
            return respond_cached(ctx, cache, ask, allowed, source, Decision::Offline, None);
        }
    }
    let which = if got.probe.is_some() {
        Which::Probe
    } else {
        Which::Record
    };
    glance_answers(ctx, &mut got, which, None, false)
}

/// A miss: Glance's download (with the caller's credentials, which is the authorization)
/// started the fill, and this client reads it like any other; without room in the cache,
/// the download streams to this client uncached.
fn respond_miss(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    allowed: (ImageInfo, Expected),
    started: Started,
) -> Served {
    let (info, expected) = allowed;
    match started {
        Started::Fill(keep, request_id, upstream) => {
            let body = follow(
                Source::Filling(Arc::clone(keep.fill())).reader(),
                0..expected.size,
                Some(fallback(ctx.upstream, ask, expected.size)),
                hooks(cache, None, false),
                ask.zero_copy.cloned(),
            );
            // The reader holds its own registration now.
            drop(keep);
            let response = data_response(&info, &expected, request_id, body);
            Served {
                forwarded: Forwarded::new(response, upstream),
                outcome: Outcome::Miss,
                decision: None,
            }
        }
        Started::NoRoom(resp, upstream, reason) => Served {
            forwarded: Forwarded::new(ctx.upstream.relay(resp), upstream),
            outcome: Outcome::Bypass(reason),
            decision: None,
        },
        Started::Refused(resp, upstream) => Served {
            forwarded: Forwarded::new(ctx.upstream.relay(resp), upstream),
            outcome: Outcome::Bypass(BypassReason::UpstreamAnswer),
            decision: None,
        },
    }
}

/// A hit or a join, once Glance has said this caller may download the image (its probe's
/// answer kept for the response's request id), or a grant stands.
fn respond_cached(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    allowed: (ImageInfo, Expected),
    source: Source,
    decision: Decision,
    probe: Option<Small>,
) -> Result<Served, Error> {
    let (info, expected) = allowed;
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
    let size = expected.size;
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
        // A join: the growing file, as spans the connection sends with sendfile when it can
        // (`body::follow` chooses), as reads otherwise.
        (source @ Source::Filling(_), zero_copy) => {
            let hooks = hooks(cache, None, false);
            let fallback = fallback(ctx.upstream, ask, size);
            let zero_copy = zero_copy.cloned();
            follow(
                source.reader(),
                span.clone(),
                Some(fallback),
                hooks,
                zero_copy,
            )
        }
        (Source::Entry(hit), None) => {
            let hooks = hooks(cache, Some(&hit), whole);
            let fallback = fallback(ctx.upstream, ask, size);
            let source = Source::Entry(hit);
            follow(source.reader(), span.clone(), Some(fallback), hooks, None)
        }
    };
    let mut response = data_response(&info, &expected, request_id, body);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::CACHE_CONTROL,
                HeaderValue::from_str(v).expect("value"),
            );
        }
        max_age(&h)
    }

    #[test]
    fn a_requests_max_age_is_read_as_rfc_9111_writes_it() {
        let s = Duration::from_secs;
        assert_eq!(cc(&[]), None);
        assert_eq!(cc(&["max-age=0"]), Some(s(0)));
        assert_eq!(cc(&["no-cache, MAX-AGE = 30"]), Some(s(30)));
        assert_eq!(cc(&["max-age=\"5\""]), Some(s(5)));
        // Several: the smallest (the strictest) counts.
        assert_eq!(cc(&["max-age=60", "max-age=10"]), Some(s(10)));
        // Not a number of seconds: ignored.
        assert_eq!(cc(&["max-age=-1", "max-age=x"]), None);
        assert_eq!(cc(&["max-stale=5", "s-maxage=1"]), None);
        assert_eq!(cc(&["max-age=99999999999999999999"]), None);
    }
}
