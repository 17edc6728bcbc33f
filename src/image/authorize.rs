//! The authorize phase of an image-data request: may this caller have this image, on whose
//! word, and what is it? Glance decides, asked with the caller's own headers: for a v2 hit on
//! a verified entry, the download probe alone (its head names the entry's size and md5);
//! otherwise the record (and the probe at the same time when the image is probably cached). Within
//! `auth.grant_ttl` of Glance's last "yes" to this caller for a cached image nothing is asked
//! (`Verdict::Cached`); when no upstream answers the record (and the probe, if asked, found
//! none either), a "yes" within `auth.offline_grace` stands for a verified entry
//! (`Authorized::Offline`). Every answer Glance gives teaches `grants`: a "yes" is granted
//! (dated by the question), a refusal ends the caller's grant, a 404 to a caller Glance had
//! allowed means the image is gone.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{denied, Ask, Served};
use crate::body::ProxyBody;
use crate::cache::read::Source;
use crate::cache::{Cache, Hit};
use crate::digest::Expected;
use crate::error::Error;
use crate::grants::Asked;
use crate::outcome::{BypassReason, Decision};
use crate::upstream::glance::{Api, ImageInfo, Small};
use crate::upstream::{is_unanswered, is_unavailable};

use super::Context;

/// Glance's answer to "may this caller have this image, and what is it?".
pub(super) enum Authorized {
    Allowed(Box<Allowed>),
    /// No upstream answered (what goes back unless a verified entry is served); a grant
    /// within `auth.offline_grace` stands.
    Offline(Box<Allowed>, Result<Small, Error>),
    /// Glance refused (its answer, from upstream `usize`): it goes back unchanged.
    Refused(Response<ProxyBody>, usize),
    /// Glance allowed the record, but the image cannot be served from the cache.
    Bypass(BypassReason),
}

/// An image record Glance gave this caller (or that a standing grant kept).
pub(super) struct Allowed {
    pub info: ImageInfo,
    pub expected: Expected,
    pub verdict: Verdict,
    /// The v2 record's JSON as Glance sent it (kept with the grant, for the grace).
    pub json: Option<Bytes>,
    /// The entry, opened while Glance was asked (a hit on the probe alone).
    pub opened: Option<Hit>,
}

/// On whose word a cached copy may go to this caller.
pub(super) enum Verdict {
    /// Glance's: the download probe, when it was asked already (alone, or with the record
    /// when the image was cached); else it is asked before a hit or a join is served.
    Glance(Option<Result<Small, Error>>),
    /// Glance allowed this caller this image within `auth.grant_ttl`: nothing was asked.
    Cached,
    /// No upstream answered; Glance allowed this caller this image within
    /// `auth.offline_grace`.
    Offline,
}

pub(super) async fn authorize(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
) -> Result<Authorized, Error> {
    if let Some(allowed) = remembered(ctx, cache, ask) {
        return Ok(Authorized::Allowed(Box::new(allowed)));
    }
    let upstream = ctx.upstream;
    let (record, mut probe) = if let Some(entry) = probe_will_do(ctx, cache, ask) {
        // A hit on a verified entry: Glance's answer to the download itself, while the
        // entry's file is opened (`Cache::peek`: no eviction, no fill) off the critical path of the
        // hit's first byte, and waited for only if Glance allows.
        let opening = cache.peek(ask.image_id, &entry);
        let probe = upstream
            .download_probe(ask.api, &ask.caller, ask.image_id, ask.query.as_deref())
            .await;
        match &probe {
            Ok(p) if describes(p, &entry) => {
                return Ok(Authorized::Allowed(Box::new(Allowed {
                    info: ImageInfo::remembered(&entry),
                    expected: entry,
                    verdict: Verdict::Glance(Some(probe)),
                    json: None,
                    opened: opening.await,
                })));
            }
            // Allowed, but the entry may not be the image Glance has now: the record decides.
            Ok(p) if is_allowed(p.status) => (
                upstream
                    .image_record(ask.api, &ask.caller, ask.image_id)
                    .await,
                Some(probe),
            ),
            // Refused, or no upstream answered: that is Glance's answer, as a record's would be.
            _ => (probe, None),
        }
    } else if cache.holds(ask.image_id) {
        // Probably a hit: ask Glance both questions at once.
        let (record, probe) = tokio::join!(
            upstream.image_record(ask.api, &ask.caller, ask.image_id),
            upstream.download_probe(ask.api, &ask.caller, ask.image_id, ask.query.as_deref())
        );
        (record, Some(probe))
    } else {
        let record = upstream
            .image_record(ask.api, &ask.caller, ask.image_id)
            .await;
        (record, None)
    };
    if is_outage(&record) {
        // The probe found Glance, and it refuses: that is Glance's answer (the refusal ends
        // the grant, the 404 rule applies), as when the probe was asked alone.
        if let Some(refusal) = probe.take_if(|p| matches!(p, Ok(p) if is_refusal(p.status))) {
            return glance_says(ctx, cache, ask, refusal).await;
        }
        match &probe {
            // The probe found Glance and allows: the record's failure goes back.
            Some(Ok(p)) if !is_unavailable(p.status) => {}
            _ if cache.is_cached(ask.image_id) => {
                if let Some(expected) = offline_grant(ctx, ask) {
                    let allowed = Allowed {
                        info: ImageInfo::remembered(&expected),
                        expected,
                        verdict: Verdict::Offline,
                        json: None,
                        opened: None,
                    };
                    return Ok(Authorized::Offline(Box::new(allowed), record));
                }
            }
            _ => {}
        }
    }
    match glance_says(ctx, cache, ask, record).await? {
        Authorized::Allowed(mut allowed) => {
            allowed.verdict = Verdict::Glance(probe);
            Ok(Authorized::Allowed(allowed))
        }
        other => Ok(other),
    }
}

/// Within `auth.grant_ttl` of Glance's last "yes" to this caller for an image the cache
/// holds: allowed, with the record of that "yes", and Glance is not asked. v2 without a query
/// only (v1 answers carry the record's headers; a query may change Glance's answer).
fn remembered(ctx: &Context<'_>, cache: &Cache, ask: &Ask<'_>) -> Option<Allowed> {
    if ask.api != Api::V2 || ask.query.is_some() || !cache.holds(ask.image_id) {
        return None;
    }
    let expected = Expected::clone(&*ctx.grants.fresh(ask.who, ask.image_id)?);
    Some(Allowed {
        info: ImageInfo::remembered(&expected),
        expected,
        verdict: Verdict::Cached,
        json: None,
        opened: None,
    })
}

/// The record of the verified entry a v2 hit would serve, when the download probe alone can
/// decide: Glance's answer to the download states the image's size (`Content-Range`) and md5
/// (`Content-MD5`, Glance's `checksum`), which must match the entry's. Glance's image data
/// never changes once active, so those settle that the entry is the image Glance would send,
/// and a hit asks Glance one question, not two. The record is asked as well (at once) when the
/// entry has no md5, for a request with a query, or when the caller's grant must keep a
/// (fresh) record for `auth.offline_grace`.
fn probe_will_do(ctx: &Context<'_>, cache: &Cache, ask: &Ask<'_>) -> Option<Expected> {
    // A query (`?prefer=`) goes with the probe but not the record: the record still decides
    // what a 404 means.
    if ask.api != Api::V2 || ask.query.is_some() || ctx.grants.wants_record(ask.who, ask.image_id) {
        return None;
    }
    cache
        .entry_expected(ask.image_id)
        .filter(|e| e.md5.is_some())
}

/// Whether an allowing download probe describes the image `entry` holds: its size (the total
/// of `Content-Range`, or the `Content-Length` of a 200 when Glance ignored the range) and
/// its `Content-MD5`.
fn describes(probe: &Small, entry: &Expected) -> bool {
    let header = |name: &str| probe.headers.get(name).and_then(|v| v.to_str().ok());
    let size = match probe.status {
        StatusCode::PARTIAL_CONTENT => header("content-range")
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, total)| total.parse::<u64>().ok()),
        StatusCode::OK => header("content-length").and_then(|l| l.parse().ok()),
        _ => None,
    };
    let md5 = header("content-md5");
    size == Some(entry.size)
        && md5.is_some_and(|m| {
            entry
                .md5
                .as_deref()
                .is_some_and(|e| m.eq_ignore_ascii_case(e))
        })
}

/// A 2xx with a body: Glance lets the caller download the image.
fn is_allowed(status: StatusCode) -> bool {
    status.is_success() && status != StatusCode::NO_CONTENT
}

/// No upstream answered: refused or timed-out connections, or 502/503/504 from every one
/// (`Upstream::send` fails over through all of them first).
pub(super) fn is_outage(answer: &Result<Small, Error>) -> bool {
    match answer {
        Ok(small) => is_unavailable(small.status),
        Err(e) => is_unanswered(e),
    }
}

/// An answer that refuses the caller (not one that says Glance could not answer).
fn is_refusal(status: StatusCode) -> bool {
    !is_allowed(status) && !is_unavailable(status)
}

/// The record of this caller's v2 grant for the image within `auth.offline_grace`, if any.
/// Requests with a query always need Glance.
fn offline_grant(ctx: &Context<'_>, ask: &Ask<'_>) -> Option<Expected> {
    if ask.api != Api::V2 || ask.query.is_some() {
        return None;
    }
    let (expected, _) = ctx.grants.offline(ask.who, ask.image_id)?;
    Some(Expected::clone(&expected))
}

/// The warning each hit served while Glance cannot answer logs.
pub(super) fn warn_offline(ctx: &Context<'_>, ask: &Ask<'_>) {
    let age = ctx
        .grants
        .offline(ask.who, ask.image_id)
        .map(|(_, age)| age);
    tracing::warn!(
        image_id = ask.image_id,
        grant_age_s = age.map_or(0, |a| a.as_secs()),
        "no upstream Glance answers; serving a cached image on a grant within auth.offline_grace"
    );
}

/// Glance's answer to the record: allowed (the record), refused (its answer goes back), or
/// not from the cache. Refusals end the caller's grant; a 404 to a caller Glance had let
/// download the image means it is gone (evicted, and with it every grant), while a 404 to
/// anyone else may only mean they cannot see it, and must not evict.
pub(super) async fn glance_says(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    record: Result<Small, Error>,
) -> Result<Authorized, Error> {
    let record = record?;
    if record.status != StatusCode::OK {
        let gone =
            record.status == StatusCode::NOT_FOUND && ctx.grants.was_granted(ask.who, ask.image_id);
        if gone {
            // The removal forgets every caller's grant too (`Cache::on_removed`).
            tracing::info!(image_id = ask.image_id, "image gone from Glance; evicting");
            cache.remove(ask.image_id).await;
        } else if is_refusal(record.status) {
            ctx.grants.refused(ask.who, ask.image_id);
        }
        return Ok(match ask.api {
            Api::V2 => {
                let index = record.upstream;
                Authorized::Refused(record.into_response(), index)
            }
            // A HEAD answer has no body: let Glance answer the GET itself.
            Api::V1 => Authorized::Bypass(BypassReason::V1Refused),
        });
    }
    let info = match ImageInfo::parse(ask.api, &record) {
        Some(info) if info.status == "active" => info,
        Some(_) => {
            // Deactivated (or not yet active): Glance answers the download; no grant stands.
            ctx.grants.refused(ask.who, ask.image_id);
            return Ok(Authorized::Bypass(BypassReason::NotActive));
        }
        None => return Ok(Authorized::Bypass(BypassReason::BadRecord)),
    };
    let Some(expected) = info.expected.clone() else {
        return Ok(Authorized::Bypass(BypassReason::NoSize));
    };
    let json = (ask.api == Api::V2).then(|| record.body.clone());
    Ok(Authorized::Allowed(Box::new(Allowed {
        info,
        expected,
        verdict: Verdict::Glance(None),
        json,
        opened: None,
    })))
}

/// Tell the grants that Glance let this caller download the image (the question's time,
/// the record, its JSON).
pub(super) fn grant(ctx: &Context<'_>, ask: &Ask<'_>, allowed: &Allowed) {
    let asked = Asked {
        at_ms: ask.asked_ms,
        seq: ask.ticket,
        expected: &allowed.expected,
        json: allowed.json.as_ref(),
        v2: ask.api == Api::V2,
    };
    ctx.grants.granted(ask.who, ask.image_id, asked);
}

/// Whether this caller may have the cached copy now, and on whose word: Glance's download
/// probe (a 2xx; its answer is kept for the response's request id), or a grant that stands.
/// A refusal comes back as `Err`, Glance's answer unchanged. When the probe finds no upstream
/// and the copy is a verified entry, an offline grant stands in for it.
pub(super) async fn may_download(
    ctx: &Context<'_>,
    ask: &Ask<'_>,
    allowed: &mut Allowed,
    source: &Source,
) -> Result<Result<(Decision, Option<Small>), Served>, Error> {
    let early = match std::mem::replace(&mut allowed.verdict, Verdict::Cached) {
        Verdict::Cached => return Ok(Ok((Decision::Cached, None))),
        Verdict::Offline => return Ok(Ok((Decision::Offline, None))),
        Verdict::Glance(early) => early,
    };
    let probe = match early {
        Some(probe) => probe,
        None => {
            ctx.upstream
                .download_probe(ask.api, &ask.caller, ask.image_id, ask.query.as_deref())
                .await
        }
    };
    let verified = matches!(source, Source::Entry(_));
    if is_outage(&probe) && verified && offline_grant(ctx, ask).is_some() {
        warn_offline(ctx, ask);
        return Ok(Ok((Decision::Offline, None)));
    }
    let probe = probe?;
    if !is_allowed(probe.status) {
        if is_refusal(probe.status) {
            ctx.grants.refused(ask.who, ask.image_id);
        }
        let index = probe.upstream;
        return Ok(Err(denied(probe.into_response(), index)));
    }
    grant(ctx, ask, allowed);
    Ok(Ok((Decision::Allowed, Some(probe))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn probe(status: u16, headers: &[(&str, &str)]) -> Small {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        Small {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: Bytes::new(),
            upstream: 0,
        }
    }

    const MD5: &str = "10bb51e11fbc20e34c1faa8244f27f70";

    fn entry(size: u64, md5: Option<&str>) -> Expected {
        Expected {
            size,
            md5: md5.map(str::to_string),
            os_hash: None,
        }
    }

    #[test]
    fn a_probe_describes_the_entry_by_size_and_md5() {
        let e = entry(16777216, Some(MD5));
        let ranged = |range, md5| probe(206, &[("content-range", range), ("content-md5", md5)]);
        // Glance 33's answer to Range: bytes=0-0, as it sent it on this machine.
        assert!(describes(&ranged("bytes 0-0/16777216", MD5), &e));
        let upper = MD5.to_uppercase();
        assert!(describes(&ranged("bytes 0-0/16777216", &upper), &e));
        assert!(!describes(&ranged("bytes 0-0/16777215", MD5), &e));
        assert!(!describes(&ranged("bytes 0-0/*", MD5), &e));
        assert!(!describes(&ranged("bytes 0-0", MD5), &e));
        assert!(!describes(&ranged("bytes 0-0/16777216", "0123"), &e));
        assert!(!describes(
            &probe(206, &[("content-range", "bytes 0-0/16777216")]),
            &e
        ));
        // Glance ignored the range: the whole image's length.
        let whole = probe(200, &[("content-length", "16777216"), ("content-md5", MD5)]);
        assert!(describes(&whole, &e));
        assert!(!describes(&whole, &entry(16777216, None)));
        // Any other status says nothing about the image.
        let other = probe(203, &[("content-length", "16777216"), ("content-md5", MD5)]);
        assert!(!describes(&other, &e));
    }
}
