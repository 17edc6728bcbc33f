//! Glance's recent "yes": which callers Glance let download which images, and when, so that
//! the image path can (README "Edge sites"):
//! - judge a 404 on a record: it evicts only when Glance says it to a caller it had let
//!   download the image (the image is gone), never to a caller who simply cannot see it;
//! - within `auth.grant_ttl`, serve a repeat request of the same caller from the cache
//!   without asking Glance again (`fresh`);
//! - while no upstream answers, serve a cached image to a caller Glance allowed it within
//!   `auth.offline_grace` (`offline`); these grants persist in the cache directory
//!   (`journal`), so a proxy restarted during an outage keeps them.
//!
//! Only "yes" is remembered, and only until Glance says otherwise: a refusal leaves a
//! tombstone for the caller (`refused`), a 404 to an allowed caller, a DELETE and every
//! removal from the cache forget the image (`forget`). A grant is dated by when Glance was
//! asked, and ordered by the question's ticket (`ticket`): a "yes" asked before a refusal or a
//! forget never counts after it, however late it arrives. A grant keeps the record Glance sent with it (size, digests): what is served
//! within the window is checked against that record. With a grace it also keeps the v2
//! record's JSON (shared between grants when equal), which `GET /v2/images/{id}` answers
//! while no upstream does: clients (nova, openstacksdk) read the record before the data.
//! Only v2 grants are used for the windows (a v1 record carries no `os_hash`). The store is
//! bounded in bytes (moka, least recently used out first).

pub mod journal;
mod who;

pub use who::Who;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use moka::ops::compute::Op;

use crate::auth::{CallerKey, Secret};
use crate::config::AuthConfig;
use crate::digest::Expected;

/// A grant is remembered at least this long (for the 404 rule), or the grace if longer.
const RETAIN: Duration = Duration::from_secs(24 * 3600);
/// The store's bound: about 300 bytes a grant without a record (some 200,000 grants); a
/// record's JSON is shared between grants, but counted for each.
const MAX_BYTES: u64 = 64 << 20;
/// Images forgotten recently (their grants asked before then never count again).
const MAX_FORGOTTEN: u64 = 100_000;
/// The longest a repeat grant goes unwritten (`Grants::still_renewed`).
const RENEW_STEP: Duration = Duration::from_secs(1);
/// The saver writes the journal (when it changed) every grace/1000, within these bounds: a
/// restart loses at most that much of the newest grants, and a busy site rewrites the file
/// at most that often.
const SAVE_MIN: Duration = Duration::from_secs(1);
const SAVE_MAX: Duration = Duration::from_secs(30);

/// One caller's grant for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// When Glance was asked (unix ms, `clock::now`), for the answer that allowed it.
    pub at_ms: u64,
    /// The question's ticket (`Grants::ticket`): orders it against refusals and forgets
    /// exactly, whatever the clock's resolution (0 for grants read back at start).
    seq: u64,
    /// The record Glance sent with it.
    pub expected: Arc<Expected>,
    /// With a grace: the v2 record as Glance sent it to this caller (JSON).
    pub record: Option<Arc<Bytes>>,
    /// When `record` was last Glance's answer (unix ms; a grant read back at start: its
    /// `at_ms`). Kept in memory only.
    pub record_ms: u64,
    /// Asked through v2 (only those serve within the windows).
    pub v2: bool,
    /// `at_ms` as of the last change the journal was told about: a grant renewed within a
    /// small part of the grace is not rewritten (the journal's copy is a little older, which
    /// only shortens its grace after a restart).
    noted_ms: u64,
}

impl Grant {
    /// How old the grant is at `now_ms`; `None` if it lies in the future (the clock went
    /// back), which counts as no grant.
    fn age(&self, now_ms: u64) -> Option<Duration> {
        now_ms.checked_sub(self.at_ms).map(Duration::from_millis)
    }

    fn within(&self, window: Duration, now_ms: u64) -> bool {
        !window.is_zero() && self.age(now_ms).is_some_and(|age| age < window)
    }
}

/// What is remembered for a (caller, image).
#[derive(Debug, Clone)]
enum Memory {
    Granted(Grant),
    /// Glance refused with this ticket: no "yes" asked before it counts.
    Refused(u64),
}

/// What Glance asked for a grant: when, and what it said about the image.
#[derive(Clone, Copy)]
pub struct Asked<'a> {
    /// When Glance was asked (unix ms; `now_ms()` before the question).
    pub at_ms: u64,
    /// The question's ticket, taken before it was asked (`Grants::ticket`).
    pub seq: u64,
    pub expected: &'a Expected,
    /// The v2 record's JSON, when there is one.
    pub json: Option<&'a Bytes>,
    pub v2: bool,
}

/// A caller's grant for an image as the image path's decision reads it (`Grants::standing`).
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// The grant, when one stands (not refused or forgotten since).
    pub held: Option<Held>,
    /// The grace wants the record's JSON with Glance's next "yes" (`wants_record_of`).
    pub wants_record: bool,
}

/// A standing grant: how old (`None`: dated in the future, the clock went back), asked
/// through v2 (only those serve the windows), and the record it came with.
#[derive(Debug, Clone)]
pub struct Held {
    pub age: Option<Duration>,
    pub v2: bool,
    pub expected: Arc<Expected>,
}

type Key = (CallerKey, String);

#[derive(Clone)]
pub struct Grants {
    inner: Arc<Inner>,
}

struct Inner {
    windows: AuthConfig,
    /// What caller keys are HMACs with: the journal's, or one for this process.
    secret: Secret,
    seen: moka::sync::Cache<Key, Memory>,
    /// The ticket at which each recently forgotten image was forgotten.
    forgotten: moka::sync::Cache<String, u64>,
    /// The last ticket handed out.
    tickets: std::sync::atomic::AtomicU64,
    /// The latest record JSON per image, so equal records are held once.
    records: moka::sync::Cache<String, Arc<Bytes>>,
    /// Where grants persist (`offline_grace` > 0 and a cache directory).
    journal: Option<journal::Journal>,
    /// The journal is behind the store.
    dirty: AtomicBool,
}

impl Grants {
    /// Grants in memory only (keyed with a secret of this process's).
    pub fn new(windows: AuthConfig) -> Grants {
        Grants::with_journal(windows, Secret::ephemeral(), None)
    }

    fn with_journal(
        windows: AuthConfig,
        secret: Secret,
        journal: Option<journal::Journal>,
    ) -> Grants {
        let retain = RETAIN.max(windows.offline_grace);
        let seen = moka::sync::Cache::builder()
            .max_capacity(MAX_BYTES)
            .weigher(|k: &Key, m: &Memory| weight(k, m))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_live(retain)
            .support_invalidation_closures()
            .build();
        let forgotten = moka::sync::Cache::builder()
            .max_capacity(MAX_FORGOTTEN)
            .time_to_live(retain)
            .build();
        let records = moka::sync::Cache::builder()
            .max_capacity(MAX_BYTES / 4)
            .weigher(|k: &String, r: &Arc<Bytes>| {
                u32::try_from(k.len() + r.len() + 64).unwrap_or(u32::MAX)
            })
            .build();
        Grants {
            inner: Arc::new(Inner {
                windows,
                secret,
                seen,
                forgotten,
                records,
                journal,
                dirty: AtomicBool::new(false),
                tickets: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Grants kept in `<cache_dir>/grants` when `offline_grace` is set: those younger than
    /// the grace are read back (for images `held` still holds), and a thread writes changes
    /// in batches. Without a grace the file is deleted (its decisions must not outlive the
    /// setting). Disk work: call before serving or on the blocking pool.
    pub fn open(
        windows: AuthConfig,
        cache_dir: &Path,
        held: impl Fn(&str) -> bool,
    ) -> std::io::Result<Grants> {
        let path = cache_dir.join(journal::FILE);
        if windows.offline_grace.is_zero() {
            journal::discard(&path)?;
            return Ok(Grants::new(windows));
        }
        let (journal, secret, loaded) = journal::Journal::open(path)?;
        let skipped = journal.skipped();
        let grants = Grants::with_journal(windows, secret, Some(journal));
        let now = now_ms();
        let (mut kept, total) = (0, loaded.len());
        for ((caller, id), grant) in loaded {
            if held(&id) && grant.within(windows.offline_grace, now) {
                if let Some(record) = &grant.record {
                    grants.inner.records.insert(id.clone(), Arc::clone(record));
                }
                grants
                    .inner
                    .seen
                    .insert((caller, id), Memory::Granted(grant));
                kept += 1;
            }
        }
        if kept != total {
            grants.inner.dirty.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            kept,
            dropped = total - kept,
            unreadable = skipped.unreadable,
            unverified = skipped.unverified,
            "remembered grants read back"
        );
        grants.start_saver();
        Ok(grants)
    }

    /// A listener for `Cache::on_removed`: an image the cache lets go of loses its grants (a
    /// refill by another caller must not revive them). Holds no strong reference.
    pub fn forgetter(&self) -> Box<dyn Fn(&str) + Send + Sync> {
        let weak = Arc::downgrade(&self.inner);
        Box::new(move |id| {
            if let Some(inner) = weak.upgrade() {
                Grants { inner }.forget(id);
            }
        })
    }

    /// The key grants are remembered by for a caller sending these identity headers.
    pub fn caller(&self, headers: &http::HeaderMap) -> CallerKey {
        CallerKey::of(&self.inner.secret, headers)
    }

    /// The key grants are remembered by for an identity Keystone resolved a token to
    /// (`identity::Resolved`): what its renewed tokens share.
    pub fn caller_identity(&self, identity: &str) -> CallerKey {
        CallerKey::of_identity(&self.inner.secret, identity)
    }

    /// A ticket for a question about to be asked of Glance: strictly after every refusal
    /// and forget recorded before, strictly before every one recorded after.
    pub fn ticket(&self) -> u64 {
        self.inner.tickets.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The windows in force.
    pub fn windows(&self) -> AuthConfig {
        self.inner.windows
    }

    /// Glance let `who` download `id`, when asked as `asked` says: kept under every key
    /// `who` keeps (`Who::keeps`: with a Keystone identity, under the token's exact
    /// credentials too). Ignored for a key Glance refused, or if the image was forgotten,
    /// after that question.
    pub fn granted(&self, who: Who, id: &str, asked: Asked<'_>) {
        for caller in who.keeps() {
            self.granted_to(caller, id, asked);
        }
    }

    fn granted_to(&self, caller: CallerKey, id: &str, asked: Asked<'_>) {
        if self.forgotten_since(id, asked.seq) || self.still_renewed(caller, id, &asked) {
            return;
        }
        let json = asked
            .json
            .filter(|_| !self.inner.windows.offline_grace.is_zero());
        let step = (self.inner.windows.offline_grace / 100).min(Duration::from_secs(60));
        let mut news = false;
        self.inner
            .seen
            .entry((caller, id.to_string()))
            .and_compute_with(|current| {
                let before = match current.map(|e| e.into_value()) {
                    Some(Memory::Refused(seq)) if seq > asked.seq => return Op::Nop,
                    Some(Memory::Granted(g)) if g.seq > asked.seq => return Op::Nop,
                    Some(Memory::Granted(g)) => Some(g),
                    _ => None,
                };
                let grant = self.renewal(id, before.as_ref(), &asked, json, step);
                news = before.is_none_or(|b| b.noted_ms != grant.noted_ms);
                Op::Put(Memory::Granted(grant))
            });
        if news {
            // After the insert, so a save that sees the flag sees the grant.
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `caller`'s standing grant for `id` already says what `asked` would, renewed
    /// less than `renew_step` before it: a repeat hit then costs a read, not a write (a moka
    /// write cost a hit about 20 µs before its first byte). Skipping only ever ends a window
    /// earlier, by less than the step.
    fn still_renewed(&self, caller: CallerKey, id: &str, asked: &Asked<'_>) -> bool {
        if asked.json.is_some() {
            return false; // a new record to keep, or to compare
        }
        self.grant(caller, id).is_some_and(|g| {
            g.seq < asked.seq
                && g.v2 == asked.v2
                && asked.at_ms >= g.at_ms
                && asked.at_ms - g.at_ms < self.renew_step_ms()
                && *g.expected == *asked.expected
        })
    }

    /// A hundredth of the shortest window set (at most 1 s; 1 s when neither is set: a grant
    /// then only feeds the 404 rule, kept for a day).
    fn renew_step_ms(&self) -> u64 {
        let w = &self.inner.windows;
        let shortest = [w.grant_ttl, w.offline_grace]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min();
        let step = shortest.map_or(RENEW_STEP, |d| (d / 100).min(RENEW_STEP));
        u64::try_from(step.as_millis()).unwrap_or(u64::MAX)
    }

    /// The grant `asked` makes of `before` (the caller's last one for `id`): shared record
    /// and digests where they are equal, a new `noted_ms` when the journal should hear of it
    /// (a new grant, a changed record, or one moved on by more than `step`).
    fn renewal(
        &self,
        id: &str,
        before: Option<&Grant>,
        asked: &Asked<'_>,
        json: Option<&Bytes>,
        step: Duration,
    ) -> Grant {
        let expected = match before {
            Some(g) if *g.expected == *asked.expected => Arc::clone(&g.expected),
            _ => Arc::new(asked.expected.clone()),
        };
        let old = before.and_then(|g| g.record.as_ref());
        let record_ms = match json {
            Some(_) => asked.at_ms,
            None => before.map_or(0, |g| g.record_ms),
        };
        let record = match (json, old) {
            (Some(new), Some(old)) if **old == *new => Some(Arc::clone(old)),
            (Some(new), _) => Some(self.shared_record(id, new)),
            // No JSON this time (v1, a miss after a cached verdict): keep the last one.
            (None, old) => old.cloned(),
        };
        let noted_ms = match before {
            Some(g)
                if Arc::ptr_eq(&g.expected, &expected)
                    && same(&g.record, &record)
                    && g.v2 == asked.v2
                    && Duration::from_millis(asked.at_ms.saturating_sub(g.noted_ms)) < step =>
            {
                g.noted_ms
            }
            _ => asked.at_ms,
        };
        Grant {
            at_ms: asked.at_ms,
            seq: asked.seq,
            expected,
            record,
            record_ms,
            v2: asked.v2 || before.is_some_and(|g| g.v2),
            noted_ms,
        }
    }

    /// One copy of an image's record for every grant that has the same bytes.
    fn shared_record(&self, id: &str, json: &Bytes) -> Arc<Bytes> {
        let records = &self.inner.records;
        match records.get(id) {
            Some(r) if **r == *json => r,
            _ => {
                let r = Arc::new(json.clone());
                records.insert(id.to_string(), Arc::clone(&r));
                r
            }
        }
    }

    /// `GET /v2/images/{id}` answered `who` this record JSON: keep it with its grants (under
    /// every key it keeps), if any, as the freshest (the grant's date does not move: a
    /// record is not a download).
    pub fn seen_record(&self, who: Who, id: &str, json: &Bytes) {
        if self.inner.windows.offline_grace.is_zero() {
            return;
        }
        for caller in who.keeps() {
            self.seen_record_by(caller, id, json);
        }
    }

    fn seen_record_by(&self, caller: CallerKey, id: &str, json: &Bytes) {
        let mut news = false;
        self.inner
            .seen
            .entry((caller, id.to_string()))
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(Memory::Granted(g)) => {
                    news = g.record.as_deref().is_none_or(|r| *r != *json);
                    let record = Some(self.shared_record(id, json));
                    let record_ms = now_ms();
                    Op::Put(Memory::Granted(Grant {
                        record,
                        record_ms,
                        ..g
                    }))
                }
                _ => Op::Nop,
            });
        if news {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn wants_record_at(&self, caller: CallerKey, id: &str, now: u64) -> bool {
        self.wants_record_of(self.grant(caller, id).as_ref(), now)
    }

    /// Whether Glance's next "yes" for this grant should come with the record's JSON: with
    /// `offline_grace`, while the caller's grant keeps none or an old one (the record answered
    /// while Glance is down is the one Glance gave this caller). A kept record is refreshed
    /// once it is older than a hundredth of the grace (between a minute and an hour).
    fn wants_record_of(&self, grant: Option<&Grant>, now: u64) -> bool {
        let grace = self.inner.windows.offline_grace;
        let refresh = (grace / 100).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        !grace.is_zero()
            && grant.is_none_or(|g| {
                g.record.is_none()
                    || Duration::from_millis(now.saturating_sub(g.record_ms)) >= refresh
            })
    }

    /// Glance refused `who` `id` (or did not let it through): no grant stands under any key
    /// `who` ends (`Who::ends`), and no "yes" asked before now counts.
    pub fn refused(&self, who: Who, id: &str) {
        for caller in who.ends() {
            self.refused_to(caller, id);
        }
    }

    fn refused_to(&self, caller: CallerKey, id: &str) {
        let key = (caller, id.to_string());
        let had = matches!(self.inner.seen.get(&key), Some(Memory::Granted(_)));
        self.inner.seen.insert(key, Memory::Refused(self.ticket()));
        if had {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// `id` is gone (a 404, a DELETE, a removal from the cache): no caller's grant asked
    /// before now counts.
    pub fn forget(&self, id: &str) {
        self.inner.forgotten.insert(id.to_string(), self.ticket());
        self.inner.records.invalidate(id);
        let id = id.to_string();
        // Registered predicates apply at once to reads; the entries go in the background.
        if self
            .inner
            .seen
            .invalidate_entries_if(move |k, _| k.1 == id)
            .is_ok()
        {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `id` was forgotten after the question with ticket `seq`.
    fn forgotten_since(&self, id: &str, seq: u64) -> bool {
        self.inner.forgotten.get(id).is_some_and(|f| f > seq)
    }

    /// `caller`'s standing grant for `id`, if any (not refused since, not forgotten since).
    fn grant(&self, caller: CallerKey, id: &str) -> Option<Grant> {
        match self.inner.seen.get(&(caller, id.to_string()))? {
            Memory::Granted(g) if !self.forgotten_since(id, g.seq) => Some(g),
            _ => None,
        }
    }

    /// What the image path's decision needs of `who`'s grant for `id`, read once: its age
    /// and record (the windows are applied by `image::decide::Grant::of`), and whether the
    /// grace wants the record's JSON anew. A token Keystone refused has none, and ends its
    /// exact credentials' grant (`Who::Refused`): else it would be served again on it once
    /// Keystone could not be asked.
    pub fn standing(&self, who: Who, id: &str) -> Standing {
        let now = now_ms();
        if let Who::Refused { exact } = who {
            if self.grant(exact, id).is_some() {
                self.refused_to(exact, id);
            }
        }
        let Some(grant) = who.reads().and_then(|caller| self.grant(caller, id)) else {
            return Standing {
                wants_record: !self.inner.windows.offline_grace.is_zero(),
                ..Standing::default()
            };
        };
        Standing {
            held: Some(Held {
                age: grant.age(now),
                v2: grant.v2,
                expected: Arc::clone(&grant.expected),
            }),
            wants_record: self.wants_record_of(Some(&grant), now),
        }
    }

    /// Whether Glance let `who` download `id` (within the last day, or the grace).
    pub fn was_granted(&self, who: Who, id: &str) -> bool {
        who.reads()
            .is_some_and(|caller| self.grant(caller, id).is_some())
    }

    /// The record of `caller`'s v2 grant for `id`, if it is younger than `grant_ttl` (the
    /// image path applies the windows with `image::decide::Grant::of`; this is the tests'
    /// view of the same rule).
    #[cfg(test)]
    fn fresh_at(&self, caller: CallerKey, id: &str, now: u64) -> Option<Arc<Expected>> {
        let window = self.inner.windows.grant_ttl;
        let grant = self.grant(caller, id)?;
        (grant.v2 && grant.within(window, now)).then_some(grant.expected)
    }

    /// `caller`'s v2 grant for `id` and its age, if it is younger than `offline_grace`.
    fn offline_at(&self, caller: CallerKey, id: &str, now: u64) -> Option<(Grant, Duration)> {
        let window = self.inner.windows.offline_grace;
        let grant = self.grant(caller, id)?;
        let age = grant.age(now)?;
        (grant.v2 && grant.within(window, now)).then_some((grant, age))
    }

    /// The v2 record JSON kept with `who`'s grant for `id` within `offline_grace`, and
    /// the grant's age (asked only when no upstream answers `GET /v2/images/{id}`).
    pub fn offline_record(&self, who: Who, id: &str) -> Option<(Bytes, Duration)> {
        let (grant, age) = self.offline_at(who.reads()?, id, now_ms())?;
        grant.record.map(|r| (Bytes::clone(&r), age))
    }

    /// How many entries are held (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.inner.seen.run_pending_tasks();
        self.inner.seen.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the journal now, if there is one and it is behind; how many grants it holds.
    /// Disk work: call on the blocking pool or a thread of its own (at shutdown: `app`).
    pub fn save(&self) -> std::io::Result<Option<usize>> {
        self.inner.save()
    }

    /// A thread that writes the journal when it changed, every grace/1000 (within `SAVE_MIN`
    /// and `SAVE_MAX`), and ends with the store.
    fn start_saver(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let every = (self.inner.windows.offline_grace / 1000).clamp(SAVE_MIN, SAVE_MAX);
        let spawned = std::thread::Builder::new()
            .name("grants-saver".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = inner.save() {
                    tracing::warn!(error = %e, "cannot write the remembered grants; retrying");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the grants saver; grants will not persist");
        }
    }
}

impl Inner {
    fn save(&self) -> std::io::Result<Option<usize>> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(None);
        }
        let (now, grace) = (now_ms(), self.windows.offline_grace);
        let live: Vec<(Arc<Key>, Grant)> = self
            .seen
            .iter()
            .filter_map(|(k, m)| match m {
                Memory::Granted(g) if g.v2 && g.within(grace, now) => Some((k, g)),
                _ => None,
            })
            .filter(|(k, g)| self.forgotten.get(&k.1).is_none_or(|f| f < g.seq))
            .collect();
        match journal.write(live.iter().map(|(k, g)| (&**k, g))) {
            Ok(n) => Ok(Some(n)),
            Err(e) => {
                self.dirty.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

/// About the bytes an entry holds (a shared record counted in full for each grant).
fn weight(key: &Key, memory: &Memory) -> u32 {
    let held = match memory {
        Memory::Refused(_) => 0,
        Memory::Granted(g) => {
            let e = &g.expected;
            e.md5.as_ref().map_or(0, String::len)
                + e.os_hash.as_ref().map_or(0, |(_, v)| v.len())
                + g.record.as_ref().map_or(0, |r| r.len())
        }
    };
    u32::try_from(key.1.len() + held + 160).unwrap_or(u32::MAX)
}

fn same(a: &Option<Arc<Bytes>>, b: &Option<Arc<Bytes>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// Now, in unix ms (`clock::now`): what grants are dated with.
pub fn now_ms() -> u64 {
    crate::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
