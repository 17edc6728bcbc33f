//! The IO edge of the image path's authorization (`decide` is its pure core): the facts are
//! gathered here (the caller's grant, what the cache has, Glance's answers, asked with the
//! caller's own headers and classified by `Reply::of`), the effects `decide` returns are
//! applied here in one place (`apply`: grants written or ended, evictions), and the answers
//! are kept so that the step `decide` takes can send Glance's answer back as it came.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;

use super::decide::{Answered, Basis, Effects, Entry, Facts, Grant, Reply};
use super::Ask;
use crate::cache::{Cache, Hit};
use crate::digest::Expected;
use crate::error::Error;
use crate::grants::{Asked, Standing};
use crate::upstream::glance::{Api, ImageInfo, Small};

use super::Context;

/// The facts of one image-data request and the answers behind them.
pub(super) struct Gathered {
    pub facts: Facts,
    /// The caller's grant as it stood when the request came.
    pub standing: Standing,
    /// The record of the verified entry, when the cache has one.
    pub entry: Option<Expected>,
    /// Glance's answer to the record, as it came.
    pub record: Option<Result<Small, Error>>,
    /// The record's content, when Glance answered 200 and it parsed.
    pub info: Option<ImageInfo>,
    /// Glance's answer to the download probe, as it came.
    pub probe: Option<Result<Small, Error>>,
    /// The entry's file, opened while the probe was asked (`Cache::peek`).
    pub opening: Option<Opening>,
}

type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Hit>> + Send>>;

impl Gathered {
    /// What is known before Glance is asked: the grant, and what the cache has.
    pub fn new(ctx: &Context<'_>, cache: &Cache, ask: &Ask<'_>) -> Gathered {
        let standing = ctx.grants.standing(ask.who, ask.image_id);
        let held = standing.held.as_ref().map(|h| (h.age, h.v2));
        let grant = Grant::of(held, &ctx.grants.windows(), ask.max_age);
        let entry = cache.entry_expected(ask.image_id);
        let state = match &entry {
            Some(e) => Entry::Verified {
                md5: e.md5.is_some(),
            },
            None if cache.holds(ask.image_id) => Entry::Filling,
            None => Entry::None,
        };
        let facts = Facts {
            plain_v2: ask.api == Api::V2 && ask.query.is_none(),
            grant,
            wants_record: standing.wants_record,
            entry: state,
            planned: false,
            record: None,
            probe: None,
            download: None,
        };
        Gathered {
            facts,
            standing,
            entry,
            record: None,
            info: None,
            probe: None,
            opening: None,
        }
    }

    /// Ask Glance the record, the probe, or both at once; on a probe alone for a verified
    /// entry, its file is opened meanwhile (no eviction, no fill), off the path of the hit's
    /// first byte.
    pub async fn ask(
        &mut self,
        ctx: &Context<'_>,
        cache: &Arc<Cache>,
        ask: &Ask<'_>,
        record: bool,
        probe: bool,
    ) {
        let upstream = ctx.upstream;
        let record_q = async {
            if record {
                Some(
                    upstream
                        .image_record(ask.api, &ask.caller, ask.image_id)
                        .await,
                )
            } else {
                None
            }
        };
        let probe_q = async {
            if probe {
                Some(
                    upstream
                        .download_probe(ask.api, &ask.caller, ask.image_id, ask.query.as_deref())
                        .await,
                )
            } else {
                None
            }
        };
        if probe && !record && !self.facts.planned {
            if let Some(entry) = &self.entry {
                self.opening = Some(Box::pin(cache.peek(ask.image_id, entry)));
            }
        }
        let (record_a, probe_a) = tokio::join!(record_q, probe_q);
        let held_down = upstream.all_held_down();
        if let Some(answer) = record_a {
            let info = match &answer {
                Ok(small) if small.status == StatusCode::OK => ImageInfo::parse(ask.api, small),
                _ => None,
            };
            let reply = Reply::of(answered(&answer), held_down, || match &info {
                Some(info) => info.cacheable().map(|_| ()),
                None => Err(crate::outcome::BypassReason::BadRecord),
            });
            self.facts.record = Some(reply);
            self.info = info;
            self.record = Some(answer);
        }
        if let Some(answer) = probe_a {
            let entry = self.entry.as_ref();
            let reply = Reply::of(answered(&answer), held_down, || match (&answer, entry) {
                (Ok(p), Some(e)) => describes(p, e),
                _ => false,
            });
            self.facts.probe = Some(reply);
            self.probe = Some(answer);
        }
    }

    /// The record the cache is looked up with, on the basis `decide` named.
    pub fn expected(&self, basis: Basis) -> Option<Expected> {
        match basis {
            Basis::Record => self.info.as_ref()?.cacheable().ok().cloned(),
            Basis::Entry => self.entry.clone(),
            Basis::Grant => self.grant_record(),
        }
    }

    /// The record kept with the caller's grant (the decision uses it only within a window).
    pub fn grant_record(&self) -> Option<Expected> {
        self.standing
            .held
            .as_ref()
            .map(|h| Expected::clone(&h.expected))
    }

    /// The grant's age, for the warning each offline hit logs.
    pub fn grant_age(&self) -> std::time::Duration {
        self.standing
            .held
            .as_ref()
            .and_then(|h| h.age)
            .unwrap_or_default()
    }

    /// The image as the response describes it: Glance's record when it was asked, else the
    /// record `expected` stands for (an active v2 image).
    pub fn info(&self, expected: &Expected) -> ImageInfo {
        match &self.info {
            Some(info) if info.expected.as_ref() == Some(expected) => info.clone(),
            _ => ImageInfo::remembered(expected),
        }
    }

    /// The record's JSON as Glance sent it (v2), kept with a grant for the grace.
    pub fn json(&self, ask: &Ask<'_>) -> Option<Bytes> {
        match &self.record {
            Some(Ok(small)) if ask.api == Api::V2 && small.status == StatusCode::OK => {
                Some(small.body.clone())
            }
            _ => None,
        }
    }
}

/// What came back, before it is classified.
pub(super) fn answered(answer: &Result<Small, Error>) -> Answered {
    match answer {
        Ok(small) => Answered::Status(small.status),
        Err(e) => answered_error(e),
    }
}

/// An error in place of an answer: no upstream reachable, no answer in time, or another
/// failure.
pub(super) fn answered_error(e: &Error) -> Answered {
    match e {
        Error::Unreachable(_) => Answered::Unreachable,
        Error::Timeout(_) => Answered::Timeout,
        _ => Answered::Broken,
    }
}

/// Apply what a step teaches: Glance's "yes" granted (dated by the question; `expected` and
/// `json` are what it said about the image; under an identity from the cache only once
/// Keystone, asked again, gives the same: `Context::confirm`), a refusal ending the caller's grant, an image
/// gone evicted (and with it every caller's grant: `Cache::on_removed`).
pub(super) async fn apply(
    ctx: &Context<'_>,
    cache: &Arc<Cache>,
    ask: &Ask<'_>,
    effects: Effects,
    granted: Option<(&Expected, Option<&Bytes>)>,
) {
    if effects.evict {
        tracing::info!(image_id = ask.image_id, "image gone from Glance; evicting");
        cache.remove(ask.image_id).await;
    }
    if effects.refuse {
        ctx.grants.refused(ask.who, ask.image_id);
    }
    if let (true, Some((expected, json))) = (effects.grant, granted) {
        // A grant is kept under an identity only if Keystone gave it during this request
        // (no need to ask when no window ever reads a grant).
        let windows = ctx.grants.windows();
        let used = !(windows.grant_ttl.is_zero() && windows.offline_grace.is_zero());
        let who = match ask.who.stale() && used {
            true => ctx.confirm(&ask.caller, ask.who).await,
            false => ask.who,
        };
        let asked = Asked {
            at_ms: ask.asked_ms,
            seq: ask.ticket,
            expected,
            json,
            v2: ask.api == Api::V2,
        };
        ctx.grants.granted(who, ask.image_id, asked);
    }
}

/// Whether an allowing download probe describes the image `entry` holds: its size (the total
/// of `Content-Range`, or the `Content-Length` of a 200 when Glance ignored the range) and
/// its `Content-MD5`. Glance's image data never changes once active, so those settle that
/// the entry is the image Glance would send.
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

/// The warning each hit served while Glance cannot answer logs.
pub(super) fn warn_offline(ask: &Ask<'_>, age: std::time::Duration) {
    tracing::warn!(
        image_id = ask.image_id,
        grant_age_s = age.as_secs(),
        "no upstream Glance answers; serving a cached image on a grant within auth.offline_grace"
    );
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

    #[test]
    fn errors_are_classified_by_kind() {
        let d = std::time::Duration::from_secs(1);
        assert_eq!(
            answered_error(&Error::Unreachable("x".into())),
            Answered::Unreachable
        );
        assert_eq!(answered_error(&Error::Timeout(d)), Answered::Timeout);
        assert_eq!(
            answered_error(&Error::BadUpstream("x".into())),
            Answered::Broken
        );
        assert_eq!(
            answered(&Ok(probe(403, &[]))),
            Answered::Status(StatusCode::FORBIDDEN)
        );
    }
}
