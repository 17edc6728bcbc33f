//! The authorization of an image-data request as one pure decision: who gets bytes, on whose
//! word, when an image is gone, and when Glance counts as down.
//!
//! The image path gathers the facts (the caller's grant, what the cache has, Glance's answers
//! to the record, the download probe and the download, each classified by `Reply::of`), asks
//! `decide` what to do next, applies the `Effects` it returns in one place, and does the
//! `Step`: ask Glance (then decide again), look the image up in the cache (then decide
//! again), or answer. `decide` does no IO and reads no clock: the same facts always give the
//! same step, and the table test below states, for every combination, Glance's own answer to
//! the download as the expected one.
//!
//! The rules, in short:
//! - Glance's answer to the download (the probe on a hit or a join, the download itself on a
//!   miss) decides who gets bytes. The record says what the image is (its size and digests,
//!   whether it is active); a refused record only means the caller cannot read the record
//!   (a member without the reader role may still download): Glance answers the download.
//! - Within `auth.grant_ttl` of Glance's "yes" to this very caller, a held image is served
//!   without asking (and never older than the request's `Cache-Control: max-age`).
//! - An outage (`Reply::Outage`: refused or reset connections, 502/503 from every upstream,
//!   or a timeout while health tracking holds every upstream down) lets a verified entry go to
//!   a caller with a grant within `auth.offline_grace`. One slow answer is not an outage: it
//!   is that caller's 504, and so is a 504 from upstream (a site proxy's or a load balancer's
//!   own timeout: a chain of proxies must not turn Glance's slowness into an outage).
//! - Room in the cache is made only after Glance answered the download with the image (the
//!   plan registers a fill; `Starter::start` reserves).
//! - A 404 to the download evicts only when the caller's grant names the image (Glance had let
//!   this very caller download it: the image is gone); any other refusal ends the caller's
//!   grant, and nothing else.

use std::time::Duration;

use http::StatusCode;

use crate::config::AuthConfig;
use crate::outcome::BypassReason;

/// How Glance answered one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<T> {
    /// A 2xx with a body: yes, with what the answer says (see `Facts`).
    Yes(T),
    /// Any other answer Glance gave (401, 403, 404, 500, a download of the wrong size...):
    /// it goes back to the caller as it came.
    No(StatusCode),
    /// No upstream answers: an outage.
    Outage,
    /// No answer this time, but not an outage (one response timeout under load, a broken
    /// body): this caller gets the failure.
    Failed,
}

impl<T> Reply<T> {
    /// Classify an answer. `status` is Glance's status when it answered; `error` otherwise:
    /// `Unreachable` (refused, reset: no upstream answers) or a timeout (an outage only while
    /// `held_down`: health tracking holds every upstream down across requests) or another
    /// failure. `yes` reads what a 2xx says.
    pub fn of(answer: Answered, held_down: bool, yes: impl FnOnce() -> T) -> Reply<T> {
        match answer {
            Answered::Status(s) if is_unavailable(s) => Reply::Outage,
            Answered::Status(StatusCode::GATEWAY_TIMEOUT) => Reply::Failed,
            Answered::Status(s) if s.is_success() && s != StatusCode::NO_CONTENT => {
                Reply::Yes(yes())
            }
            Answered::Status(s) => Reply::No(s),
            Answered::Unreachable => Reply::Outage,
            Answered::Timeout if held_down => Reply::Outage,
            Answered::Timeout | Answered::Broken => Reply::Failed,
        }
    }
}

/// What came back for a question, before it is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Status(StatusCode),
    /// Every upstream refused or reset the connection.
    Unreachable,
    /// No response head within `upstream.response_timeout`.
    Timeout,
    /// Any other failure (an unreadable answer, a body that broke).
    Broken,
}

/// 502 and 503: after failover through every upstream, none could answer (a gateway with no
/// server to reach, or a server that says it is unavailable). A 504 is a gateway's word for a
/// slow answer (a site proxy or a load balancer whose own question to Glance timed out): like
/// the proxy's own timeout, not an outage.
pub fn is_unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// The caller's standing grant for the image (`grants`), as of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// Glance let this very caller download the image (within the last day, or the grace):
    /// a 404 to the download then means the image is gone.
    pub named: bool,
    /// Within `auth.grant_ttl` (and the request's `max-age`), v2.
    pub fresh: bool,
    /// Within `auth.offline_grace`, v2.
    pub offline: bool,
}

impl Grant {
    /// The facts of a caller's grant (`held`: its age, `None` when dated in the future, and
    /// whether it was asked through v2; `None`: no grant stands, or it was refused or
    /// forgotten) under the operator's `windows` and the request's `Cache-Control: max-age`.
    /// Only v2 grants serve the windows; a window of 0 is off.
    pub fn of(
        held: Option<(Option<Duration>, bool)>,
        windows: &AuthConfig,
        max_age: Option<Duration>,
    ) -> Grant {
        let Some((age, v2)) = held else {
            return Grant::default();
        };
        let within = |window: Duration| v2 && !window.is_zero() && age.is_some_and(|a| a < window);
        let ttl = windows.grant_ttl;
        let fresh = max_age.map_or(ttl, |m| ttl.min(m.saturating_add(Duration::from_millis(1))));
        Grant {
            named: true,
            fresh: within(fresh),
            offline: within(windows.offline_grace),
        }
    }
}

/// What the cache has for the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    None,
    /// A fill in progress (or, before the plan, an entry that may not be servable).
    Filling,
    /// A committed, verified entry; `md5`: its record names an md5 (the probe's
    /// `Content-MD5` can then show it is Glance's image).
    Verified {
        md5: bool,
    },
    /// After the plan: the cache will not take the image (its id, its size, no digest, a
    /// fill that failed before it began...). Glance answers the request itself.
    Uncacheable(BypassReason),
}

/// Everything `decide` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// v2 without a query: the windows and the probe alone apply only to these (a v1 answer
    /// carries the record's headers; a query may change Glance's answer).
    pub plain_v2: bool,
    pub grant: Grant,
    /// With `auth.offline_grace`, the caller's grant wants a fresh copy of the record's JSON.
    pub wants_record: bool,
    /// Before the plan, what the cache index says; after it, what the plan found.
    pub entry: Entry,
    /// The cache was looked up (`Step::Plan` done).
    pub planned: bool,
    /// The record: yes carries whether the cache may hold the image (`ImageInfo::cacheable`).
    pub record: Option<Reply<Result<(), BypassReason>>>,
    /// The download probe: yes carries whether its head describes the verified entry (size
    /// and `Content-MD5`).
    pub probe: Option<Reply<bool>>,
    /// The download of a miss: yes is the whole image (a 200 of the record's size).
    pub download: Option<Reply<()>>,
}

/// Whose record the cache is looked up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Glance's record, asked now.
    Record,
    /// The verified entry's, which the probe's head described.
    Entry,
    /// The record kept with the caller's grant.
    Grant,
}

/// Which of Glance's answers goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Record,
    Probe,
    Download,
}

/// On whose word cached bytes go to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// Glance's "yes" to the download, asked now.
    Glance,
    /// Glance's "yes" to this caller within `auth.grant_ttl`.
    Grant,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Ask Glance these (at once), then decide again.
    Ask { record: bool, probe: bool },
    /// Look the image up in the cache (a hit, a fill to join, or a new fill registered: no
    /// room made yet), then decide again.
    Plan(Basis),
    /// Serve the entry or the fill the plan found.
    Serve(Word),
    /// Ask Glance for the download of the miss (it starts the fill), then decide again.
    Fill,
    /// Stream the download to the caller (through the fill when there was room).
    Stream,
    /// Serve the verified entry on a grant within `auth.offline_grace` (no upstream answers).
    Offline,
    /// Glance's answer goes back as it came.
    Refuse(Which),
    /// The failure goes back (an error, or the 502/503/504 that came).
    Fail(Which),
    /// Pass the request to Glance, which answers it itself.
    Pass(BypassReason),
}

/// What the step teaches the grants and the cache (applied in one place, `image::apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effects {
    /// Glance let this caller download the image: grant it (dated by the question).
    pub grant: bool,
    /// Glance refused (or the image is not active): end the caller's grant.
    pub refuse: bool,
    /// Glance says the image this caller was granted is gone: evict it (and every grant).
    pub evict: bool,
}

const NONE: Effects = Effects {
    grant: false,
    refuse: false,
    evict: false,
};
const GRANT: Effects = Effects {
    grant: true,
    ..NONE
};
const REFUSE: Effects = Effects {
    refuse: true,
    ..NONE
};

/// What Glance's refusal of the download teaches: a 404 to a caller it had let download the
/// image means the image is gone; anything else ends only this caller's grant.
fn refused(status: StatusCode, grant: Grant) -> Effects {
    if status == StatusCode::NOT_FOUND && grant.named {
        Effects {
            evict: true,
            ..NONE
        }
    } else {
        REFUSE
    }
}

/// What Glance's answer to `GET /v2/images/{id}` (passed through; `Yes` says whether the
/// image is active) teaches the grants: a refusal or an inactive image ends the caller's
/// grant. It never evicts: a member without the reader role cannot read the record of an
/// image it may download, so only the download says an image is gone.
pub fn record_teaches(record: Reply<bool>) -> Effects {
    match record {
        Reply::Yes(false) => REFUSE,
        Reply::No(s) if matches!(s.as_u16(), 401 | 403 | 404) => REFUSE,
        _ => NONE,
    }
}

/// The next step, and what it teaches.
pub fn decide(f: &Facts) -> (Step, Effects) {
    if let Some(download) = f.download {
        return match download {
            Reply::Yes(()) => (Step::Stream, GRANT),
            Reply::No(s) => (Step::Refuse(Which::Download), refused(s, f.grant)),
            Reply::Outage | Reply::Failed => (Step::Fail(Which::Download), NONE),
        };
    }
    if f.planned {
        return planned(f);
    }
    match (f.record, f.probe) {
        (None, None) => first(f),
        (_, Some(probe)) => probe_answered(f, probe),
        (Some(record), None) => record_answered(f, record),
    }
}

/// Nothing asked yet.
fn first(f: &Facts) -> (Step, Effects) {
    let held = matches!(f.entry, Entry::Filling | Entry::Verified { .. });
    if f.plain_v2 && held && f.grant.fresh {
        return (Step::Plan(Basis::Grant), NONE);
    }
    let step = match f.entry {
        // A hit on a verified entry: the download probe alone (its head names the entry).
        Entry::Verified { md5: true } if f.plain_v2 && !f.wants_record => Step::Ask {
            record: false,
            probe: true,
        },
        // Probably a hit: both at once.
        Entry::Verified { .. } | Entry::Filling => Step::Ask {
            record: true,
            probe: true,
        },
        Entry::None | Entry::Uncacheable(_) => Step::Ask {
            record: true,
            probe: false,
        },
    };
    (step, NONE)
}

/// The probe answered (the record perhaps too): the probe is Glance's answer to the download.
fn probe_answered(f: &Facts, probe: Reply<bool>) -> (Step, Effects) {
    match probe {
        Reply::Yes(describes) => {
            let on_entry = describes && matches!(f.entry, Entry::Verified { .. });
            match f.record {
                Some(Reply::Yes(Ok(()))) => (Step::Plan(Basis::Record), NONE),
                Some(Reply::Yes(Err(reason))) => {
                    let effects = if reason == BypassReason::NotActive {
                        REFUSE
                    } else {
                        NONE
                    };
                    (Step::Pass(reason), effects)
                }
                // The probe describes the entry: that is Glance's image, and its answer.
                _ if on_entry => (Step::Plan(Basis::Entry), NONE),
                None => (
                    Step::Ask {
                        record: true,
                        probe: false,
                    },
                    NONE,
                ),
                // The record refused (a member without the reader role): Glance answers the
                // download itself.
                Some(Reply::No(_)) => (Step::Pass(BypassReason::RecordRefused), NONE),
                Some(Reply::Outage | Reply::Failed) => (Step::Fail(Which::Record), NONE),
            }
        }
        Reply::No(s) => (Step::Refuse(Which::Probe), refused(s, f.grant)),
        Reply::Outage if offline_serves(f) => (Step::Offline, NONE),
        Reply::Outage | Reply::Failed => (Step::Fail(Which::Probe), NONE),
    }
}

/// The record answered alone (the image is not held).
fn record_answered(f: &Facts, record: Reply<Result<(), BypassReason>>) -> (Step, Effects) {
    match record {
        Reply::Yes(Ok(())) => (Step::Plan(Basis::Record), NONE),
        Reply::Yes(Err(reason)) if reason == BypassReason::NotActive => {
            (Step::Pass(reason), REFUSE)
        }
        Reply::Yes(Err(reason)) => (Step::Pass(reason), NONE),
        // Glance answers the download itself (a caller may download what it cannot read).
        Reply::No(_) => (Step::Pass(BypassReason::RecordRefused), NONE),
        Reply::Outage if offline_serves(f) => (Step::Offline, NONE),
        Reply::Outage | Reply::Failed => (Step::Fail(Which::Record), NONE),
    }
}

/// The plan looked the image up.
fn planned(f: &Facts) -> (Step, Effects) {
    match f.entry {
        Entry::None => (Step::Fill, NONE),
        Entry::Uncacheable(reason) => (Step::Pass(reason), NONE),
        Entry::Filling | Entry::Verified { .. } => match f.probe {
            Some(Reply::Yes(_)) => (Step::Serve(Word::Glance), GRANT),
            // Allowed on the grant: nothing was asked.
            None if f.record.is_none() && f.grant.fresh && f.plain_v2 => {
                (Step::Serve(Word::Grant), NONE)
            }
            None => (
                Step::Ask {
                    record: false,
                    probe: true,
                },
                NONE,
            ),
            // Glance's answer to the probe decides, as before the plan.
            Some(probe) => probe_answered(
                &Facts {
                    planned: false,
                    ..*f
                },
                probe,
            ),
        },
    }
}

/// No upstream answers and a grant within `auth.offline_grace` stands for a verified entry.
fn offline_serves(f: &Facts) -> bool {
    f.plain_v2 && f.grant.offline && matches!(f.entry, Entry::Verified { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Glance's own answers to one caller, as the table states them: what it says to the
    /// record and to the download (the probe and the download get the same answer).
    #[derive(Debug, Clone, Copy)]
    struct Glance {
        record: Reply<Result<(), BypassReason>>,
        download: Reply<()>,
    }

    /// What the caller ends up with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Got {
        /// Image bytes from the cache, on this word.
        Cached(Word),
        /// Image bytes from the cache while Glance is down.
        Offline,
        /// Bytes streamed from Glance's download (a miss).
        Streamed,
        /// Glance answered the request itself (passed through): its download answer.
        Passed(BypassReason),
        /// Glance's refusal of this question, as it came.
        Refused(Which, StatusCode),
        /// The failure of this question.
        Failed(Which),
    }

    /// Run the decision loop against a world in which Glance answers as `glance` says, the
    /// cache holds `entry` (a verified entry stays verified through the plan; a fill joins),
    /// and the probe's head describes the entry when `describes`. Returns the answer and the
    /// effects applied, in order, and which questions were asked.
    fn run(
        plain_v2: bool,
        grant: Grant,
        entry: Entry,
        glance: Glance,
        describes: bool,
    ) -> (Got, Vec<Effects>, Vec<&'static str>) {
        let mut f = Facts {
            plain_v2,
            grant,
            wants_record: false,
            entry,
            planned: false,
            record: None,
            probe: None,
            download: None,
        };
        let mut effects = Vec::new();
        let mut asked = Vec::new();
        for _ in 0..10 {
            let (step, fx) = decide(&f);
            if fx != NONE {
                effects.push(fx);
            }
            let got = match step {
                Step::Ask { record, probe } => {
                    assert!(record || probe, "asks something");
                    if record {
                        assert!(f.record.is_none(), "asks the record once");
                        asked.push("record");
                        f.record = Some(glance.record);
                    }
                    if probe {
                        assert!(f.probe.is_none(), "asks the probe once");
                        asked.push("probe");
                        f.probe = Some(match glance.download {
                            Reply::Yes(()) => Reply::Yes(describes),
                            Reply::No(s) => Reply::No(s),
                            Reply::Outage => Reply::Outage,
                            Reply::Failed => Reply::Failed,
                        });
                    }
                    continue;
                }
                Step::Plan(_) => {
                    assert!(!f.planned, "plans once");
                    f.planned = true;
                    continue;
                }
                Step::Fill => {
                    assert_eq!(f.entry, Entry::None);
                    asked.push("download");
                    f.download = Some(glance.download);
                    continue;
                }
                Step::Serve(word) => Got::Cached(word),
                Step::Stream => Got::Streamed,
                Step::Offline => Got::Offline,
                Step::Refuse(which) => {
                    let status = match which {
                        Which::Record => f.record,
                        Which::Probe => f.probe.map(|p| match p {
                            Reply::No(s) => Reply::No(s),
                            _ => Reply::Failed,
                        }),
                        Which::Download => f.download.map(|d| match d {
                            Reply::No(s) => Reply::No(s),
                            _ => Reply::Failed,
                        }),
                    };
                    match status {
                        Some(Reply::No(s)) => Got::Refused(which, s),
                        other => panic!("refused with {which:?} but it said {other:?}"),
                    }
                }
                Step::Fail(which) => Got::Failed(which),
                Step::Pass(reason) => Got::Passed(reason),
            };
            return (got, effects, asked);
        }
        panic!("no answer after 10 steps: {f:?}");
    }

    /// Glance's own answer to the caller's download, as the expected outcome: bytes when it
    /// says yes, its refusal when it refuses, no bytes when it cannot answer, except for the
    /// operator's windows (a fresh grant: bytes without asking; an outage with a grant within
    /// the grace and a verified entry: bytes).
    fn bytes_expected(plain_v2: bool, grant: Grant, entry: Entry, glance: Glance) -> bool {
        let held = entry != Entry::None;
        if plain_v2 && held && grant.fresh {
            return true;
        }
        match glance.download {
            Reply::Yes(()) => true,
            Reply::No(_) | Reply::Failed => false,
            Reply::Outage => plain_v2 && grant.offline && matches!(entry, Entry::Verified { .. }),
        }
    }

    fn gives_bytes(got: Got) -> Option<bool> {
        match got {
            Got::Cached(_) | Got::Offline | Got::Streamed => Some(true),
            Got::Refused(..) | Got::Failed(_) => Some(false),
            // Glance answers itself: whatever its download says.
            Got::Passed(_) => None,
        }
    }

    const S200: StatusCode = StatusCode::OK;
    const S401: StatusCode = StatusCode::UNAUTHORIZED;
    const S403: StatusCode = StatusCode::FORBIDDEN;
    const S404: StatusCode = StatusCode::NOT_FOUND;
    const S500: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

    /// Grants as `Grant::of` makes them: none (or refused: no grant stands), a young and an
    /// old v2 grant, a young v1 grant, each under the windows off, `grant_ttl` only,
    /// `offline_grace` only, and both.
    fn grants() -> Vec<(String, Grant)> {
        let s = Duration::from_secs;
        let helds = [
            ("none", None),
            ("young v2", Some((Some(s(1)), true))),
            ("old v2", Some((Some(s(7200)), true))),
            ("young v1", Some((Some(s(1)), false))),
            ("from the future", Some((None, true))),
        ];
        let windows = [
            (s(0), s(0)),
            (s(60), s(0)),
            (s(0), s(86400)),
            (s(60), s(86400)),
        ];
        let mut out = Vec::new();
        for (name, held) in helds {
            for (ttl, grace) in windows {
                let w = AuthConfig {
                    grant_ttl: ttl,
                    offline_grace: grace,
                };
                let label = format!("{name}, ttl {ttl:?}, grace {grace:?}");
                out.push((label, Grant::of(held, &w, None)));
            }
        }
        out
    }

    fn entries() -> Vec<Entry> {
        vec![
            Entry::None,
            Entry::Filling,
            Entry::Verified { md5: true },
            Entry::Verified { md5: false },
        ]
    }

    fn records() -> Vec<Reply<Result<(), BypassReason>>> {
        vec![
            Reply::Yes(Ok(())),
            Reply::Yes(Err(BypassReason::NotActive)),
            Reply::No(S403),
            Reply::No(S404),
            Reply::No(S500),
            Reply::Outage,
            Reply::Failed,
        ]
    }

    fn downloads() -> Vec<Reply<()>> {
        vec![
            Reply::Yes(()),
            Reply::No(S401),
            Reply::No(S403),
            Reply::No(S404),
            Reply::No(S500),
            Reply::Outage,
            Reply::Failed,
        ]
    }

    /// Every combination that matters: grant none (or refused) / young / old / v1 / dated in
    /// the future, x windows 0 / grant_ttl / offline_grace / both, entry none / filling /
    /// verified (with and without an md5), record 200 / inactive / 403 / 404 / 500 / outage
    /// (502-504, refused) / failed (timeout), download (probe 200 or 206, and the download
    /// itself) 200 / 401 / 403 / 404 / 500 / outage / failed, v2 or not (windows apply to plain
    /// v2 only), the probe's head describing the entry or not. The expected answer is Glance's
    /// own to the download, windows aside.
    #[test]
    fn every_combination_gets_glances_own_answer() {
        let mut rows = 0;
        for (grant_name, grant) in grants() {
            let grant_name = grant_name.as_str();
            for entry in entries() {
                for record in records() {
                    for download in downloads() {
                        for plain_v2 in [true, false] {
                            for describes in [true, false] {
                                let glance = Glance { record, download };
                                let (got, effects, asked) =
                                    run(plain_v2, grant, entry, glance, describes);
                                let row = format!(
                                    "grant {grant_name}, entry {entry:?}, record {record:?}, \
                                     download {download:?}, plain v2 {plain_v2}, \
                                     describes {describes}: got {got:?} after {asked:?}, \
                                     effects {effects:?}"
                                );
                                check_row(&row, plain_v2, grant, entry, glance, got, &effects);
                                rows += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 20 * 4 * 7 * 7 * 2 * 2);
    }

    fn check_row(
        row: &str,
        plain_v2: bool,
        grant: Grant,
        entry: Entry,
        glance: Glance,
        got: Got,
        effects: &[Effects],
    ) {
        let expected = bytes_expected(plain_v2, grant, entry, glance);
        match gives_bytes(got) {
            Some(bytes) => {
                // Never wider than Glance: bytes only where Glance (or a window) allows.
                assert!(!bytes || expected, "widened: {row}");
                // Never narrower, except when Glance's record could not be had (no record:
                // nothing to check a fill or a hit against) or told why not to cache.
                let record_missing = matches!(glance.record, Reply::Outage | Reply::Failed);
                if expected && !bytes {
                    assert!(record_missing, "narrowed: {row}");
                }
            }
            // Passed to Glance: it answers its own download; a pass is right only when the
            // record refused or said the image cannot be cached.
            None => assert!(
                matches!(glance.record, Reply::No(_) | Reply::Yes(Err(_))),
                "passed without cause: {row}"
            ),
        }
        // A refusal is Glance's answer to the download, status for status.
        if let Got::Refused(which, status) = got {
            assert_ne!(
                which,
                Which::Record,
                "the record never answers a download: {row}"
            );
            assert_eq!(Reply::No(status), glance.download, "{row}");
        }
        // An offline answer only in an outage.
        if got == Got::Offline {
            assert_eq!(glance.download, Reply::Outage, "{row}");
        }
        let evicted = effects.iter().any(|e| e.evict);
        let should_evict = glance.download == Reply::No(S404)
            && grant.named
            && matches!(got, Got::Refused(Which::Probe | Which::Download, _));
        assert_eq!(evicted, should_evict, "eviction: {row}");
        let granted = effects.iter().any(|e| e.grant);
        let allowed_now = matches!(got, Got::Cached(Word::Glance) | Got::Streamed);
        assert_eq!(granted, allowed_now, "grant: {row}");
        if effects.iter().any(|e| e.refuse) {
            assert!(
                matches!(got, Got::Refused(..)) || got == Got::Passed(BypassReason::NotActive),
                "a refusal ends grants only on Glance's refusal: {row}"
            );
        }
    }

    /// The four faults the second probe found, as rows of their own.
    #[test]
    fn the_probes_findings() {
        let grace_only = Grant {
            named: true,
            fresh: false,
            offline: true,
        };
        // 2. A slow answer under load is not an outage: no offline serving.
        let slow = Glance {
            record: Reply::Failed,
            download: Reply::Failed,
        };
        let (got, ..) = run(true, grace_only, Entry::Verified { md5: true }, slow, true);
        assert_eq!(got, Got::Failed(Which::Probe));
        let (got, ..) = run(true, grace_only, Entry::Verified { md5: false }, slow, true);
        assert_eq!(got, Got::Failed(Which::Probe));
        // A real outage is.
        let down = Glance {
            record: Reply::Outage,
            download: Reply::Outage,
        };
        let (got, ..) = run(true, grace_only, Entry::Verified { md5: true }, down, true);
        assert_eq!(got, Got::Offline);
        // 4. A member without the reader role: record 404, download 200.
        let member = Glance {
            record: Reply::No(S404),
            download: Reply::Yes(()),
        };
        let none = Grant::default();
        let (got, fx, _) = run(true, none, Entry::None, member, false);
        assert_eq!(got, Got::Passed(BypassReason::RecordRefused));
        assert!(fx.is_empty(), "nothing evicted or refused: {fx:?}");
        let (got, ..) = run(true, none, Entry::Verified { md5: true }, member, true);
        assert_eq!(got, Got::Cached(Word::Glance));
        // 1. A refused download (record 200, download 403) refuses, and room is made only
        // after the download said yes (the plan registers; `Step::Fill` asks first).
        let reader = Glance {
            record: Reply::Yes(Ok(())),
            download: Reply::No(S403),
        };
        let (got, fx, asked) = run(true, none, Entry::None, reader, false);
        assert_eq!(got, Got::Refused(Which::Download, S403));
        assert_eq!(asked, ["record", "download"]);
        assert_eq!(fx, [REFUSE]);
        // 3. A 404 to a caller the grant does not name evicts nothing.
        let gone = Glance {
            record: Reply::No(S404),
            download: Reply::No(S404),
        };
        let (_, fx, _) = run(true, none, Entry::Verified { md5: true }, gone, true);
        assert_eq!(fx, [REFUSE]);
        let named = Grant {
            named: true,
            ..none
        };
        let (_, fx, _) = run(true, named, Entry::Verified { md5: true }, gone, true);
        assert!(fx.iter().any(|e| e.evict));
        // A record 404 alone never evicts, even to a named caller.
        let (got, fx, _) = run(true, named, Entry::None, member, false);
        assert_eq!(got, Got::Passed(BypassReason::RecordRefused));
        assert!(fx.is_empty());
    }

    #[test]
    fn a_hit_asks_the_probe_alone_and_a_fresh_grant_asks_nothing() {
        let glance = Glance {
            record: Reply::Yes(Ok(())),
            download: Reply::Yes(()),
        };
        let verified = Entry::Verified { md5: true };
        let (got, fx, asked) = run(true, Grant::default(), verified, glance, true);
        assert_eq!((got, asked), (Got::Cached(Word::Glance), vec!["probe"]));
        assert_eq!(fx, [GRANT]);
        // The probe does not describe the entry: the record decides.
        let (_, _, asked) = run(true, Grant::default(), verified, glance, false);
        assert_eq!(asked, ["probe", "record"]);
        let fresh = Grant {
            named: true,
            fresh: true,
            offline: false,
        };
        let (got, fx, asked) = run(true, fresh, verified, glance, true);
        assert_eq!(got, Got::Cached(Word::Grant));
        assert!(fx.is_empty() && asked.is_empty());
        // v1, or a query: Glance is asked.
        let (got, _, asked) = run(false, fresh, verified, glance, true);
        assert_eq!(
            (got, asked),
            (Got::Cached(Word::Glance), vec!["record", "probe"])
        );
        // A miss: the record, then the download.
        let (got, fx, asked) = run(true, Grant::default(), Entry::None, glance, false);
        assert_eq!((got, asked), (Got::Streamed, vec!["record", "download"]));
        assert_eq!(fx, [GRANT]);
    }

    #[test]
    fn grants_count_within_their_windows_and_the_requests_max_age() {
        let s = Duration::from_secs;
        let w = AuthConfig {
            grant_ttl: s(60),
            offline_grace: s(3600),
        };
        let young = Some((Some(s(10)), true));
        let g = Grant::of(young, &w, None);
        assert!(g.named && g.fresh && g.offline);
        // The request accepts nothing older than 5 s (or 0 s): not fresh; the grace stands.
        for m in [s(5), s(0)] {
            let g = Grant::of(young, &w, Some(m));
            assert!(g.named && !g.fresh && g.offline);
        }
        assert!(Grant::of(young, &w, Some(s(30))).fresh);
        assert!(
            Grant::of(young, &w, Some(Duration::MAX)).fresh,
            "no overflow"
        );
        let old = Grant::of(Some((Some(s(120)), true)), &w, None);
        assert!(old.named && !old.fresh && old.offline);
        let v1 = Grant::of(Some((Some(s(10)), false)), &w, None);
        assert!(v1.named && !v1.fresh && !v1.offline);
        let future = Grant::of(Some((None, true)), &w, None);
        assert!(future.named && !future.fresh && !future.offline);
        assert_eq!(Grant::of(None, &w, None), Grant::default());
        let off = Grant::of(young, &AuthConfig::default(), None);
        assert!(off.named && !off.fresh && !off.offline);
    }

    #[test]
    fn the_record_route_ends_grants_on_refusals_and_never_evicts() {
        for s in [S401, S403, S404] {
            assert_eq!(record_teaches(Reply::No(s)), REFUSE);
        }
        assert_eq!(record_teaches(Reply::No(S500)), NONE);
        assert_eq!(record_teaches(Reply::Yes(false)), REFUSE);
        assert_eq!(record_teaches(Reply::Yes(true)), NONE);
        assert_eq!(record_teaches(Reply::Outage), NONE);
        assert_eq!(record_teaches(Reply::Failed), NONE);
    }

    #[test]
    fn a_plan_the_cache_cannot_take_passes_to_glance() {
        let f = Facts {
            plain_v2: true,
            grant: Grant::default(),
            wants_record: false,
            entry: Entry::Uncacheable(BypassReason::TooLarge),
            planned: true,
            record: Some(Reply::Yes(Ok(()))),
            probe: None,
            download: None,
        };
        assert_eq!(decide(&f), (Step::Pass(BypassReason::TooLarge), NONE));
    }

    #[test]
    fn a_grace_that_wants_the_record_asks_it_with_the_probe() {
        let f = Facts {
            plain_v2: true,
            grant: Grant::default(),
            wants_record: true,
            entry: Entry::Verified { md5: true },
            planned: false,
            record: None,
            probe: None,
            download: None,
        };
        assert_eq!(
            decide(&f).0,
            Step::Ask {
                record: true,
                probe: true
            }
        );
    }

    #[test]
    fn outages_are_refused_connections_unavailable_answers_and_held_down_timeouts() {
        let of = |a, held| Reply::of(a, held, || ());
        for s in [502, 503] {
            let status = StatusCode::from_u16(s).expect("status");
            assert_eq!(of(Answered::Status(status), false), Reply::Outage);
        }
        // A gateway's timeout (a site proxy's own 504) is a slow answer, as the proxy's own.
        let slow = Answered::Status(StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(of(slow, false), Reply::Failed);
        assert_eq!(of(Answered::Unreachable, false), Reply::Outage);
        assert_eq!(of(Answered::Timeout, false), Reply::Failed);
        assert_eq!(of(Answered::Timeout, true), Reply::Outage);
        assert_eq!(of(Answered::Broken, true), Reply::Failed);
        assert_eq!(of(Answered::Status(S200), false), Reply::Yes(()));
        assert_eq!(
            of(Answered::Status(StatusCode::PARTIAL_CONTENT), false),
            Reply::Yes(())
        );
        assert_eq!(
            of(Answered::Status(StatusCode::NO_CONTENT), false),
            Reply::No(StatusCode::NO_CONTENT)
        );
        assert_eq!(of(Answered::Status(S500), false), Reply::No(S500));
    }
}
