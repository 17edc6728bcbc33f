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
//! Only "yes" is remembered: a refusal drops the caller's grant (`refused`), a 404 to an
//! allowed caller, a DELETE and every removal from the cache drop the image's (`forget`). A
//! grant keeps the record Glance sent with it (size, digests): what is served within the
//! window is checked against that record. With a grace it also keeps the v2 record's JSON as
//! Glance sent it to that caller (shared between grants when equal), which `GET
//! /v2/images/{id}` answers while no upstream does: clients (nova, openstacksdk) read the
//! record before the data. The store is bounded in bytes (moka).

pub mod journal;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;

use crate::auth::CallerKey;
use crate::config::AuthConfig;
use crate::digest::Expected;

/// A grant is remembered at least this long (for the 404 rule), or the grace if longer.
const RETAIN: Duration = Duration::from_secs(24 * 3600);
/// The store's bound: about 300 bytes a grant without a record (some 200,000 grants), a few
/// KiB with one (records are shared, but counted for each grant).
const MAX_BYTES: u64 = 64 << 20;
/// How often the saver looks for changes to write (the batch of the journal's fsyncs).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// One caller's grant for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// When Glance last allowed it (unix ms, `clock::now`).
    pub at_ms: u64,
    /// The record Glance sent with it.
    pub expected: Arc<Expected>,
    /// With a grace: the v2 record as Glance sent it to this caller (JSON).
    pub record: Option<Arc<Bytes>>,
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

type Key = (CallerKey, String);

pub struct Grants {
    inner: Arc<Inner>,
}

struct Inner {
    windows: AuthConfig,
    seen: moka::sync::Cache<Key, Grant>,
    /// Where grants persist (`offline_grace` > 0 and a cache directory).
    journal: Option<journal::Journal>,
    /// The journal is behind the store.
    dirty: AtomicBool,
    /// The latest record per image, so equal records are held once (dropped with the
    /// image's grants: `forget`).
    records: std::sync::Mutex<std::collections::HashMap<String, Arc<Bytes>>>,
}

impl Grants {
    /// Grants in memory only.
    pub fn new(windows: AuthConfig) -> Grants {
        Grants::with_journal(windows, None)
    }

    fn with_journal(windows: AuthConfig, journal: Option<journal::Journal>) -> Grants {
        let retain = RETAIN.max(windows.offline_grace);
        let seen = moka::sync::Cache::builder()
            .max_capacity(MAX_BYTES)
            .weigher(|k: &Key, g: &Grant| weight(k, g))
            .time_to_live(retain)
            .support_invalidation_closures()
            .build();
        Grants {
            inner: Arc::new(Inner {
                windows,
                seen,
                journal,
                dirty: AtomicBool::new(false),
                records: Default::default(),
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
        let (journal, loaded) = journal::Journal::open(path)?;
        let grants = Grants::with_journal(windows, Some(journal));
        let now = now_ms();
        let (mut kept, total) = (0, loaded.len());
        for (key, grant) in loaded {
            if held(&key.1) && grant.within(windows.offline_grace, now) {
                grants.inner.seen.insert(key, grant);
                kept += 1;
            }
        }
        if kept != total {
            grants.inner.dirty.store(true, Ordering::Relaxed);
        }
        tracing::info!(kept, dropped = total - kept, "remembered grants read back");
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

    /// The windows in force.
    pub fn windows(&self) -> AuthConfig {
        self.inner.windows
    }

    /// Glance let `caller` download `id`, with this record.
    /// (`json`: the v2 record's body as Glance sent it, kept only with a grace).
    pub fn granted(&self, caller: CallerKey, id: &str, expected: &Expected, json: Option<&Bytes>) {
        self.granted_at(caller, id, expected, json, now_ms());
    }

    fn granted_at(
        &self,
        caller: CallerKey,
        id: &str,
        expected: &Expected,
        json: Option<&Bytes>,
        now: u64,
    ) {
        let key = (caller, id.to_string());
        let before = self.inner.seen.get(&key);
        let expected = match &before {
            Some(g) if *g.expected == *expected => Arc::clone(&g.expected),
            _ => Arc::new(expected.clone()),
        };
        let json = json.filter(|_| !self.inner.windows.offline_grace.is_zero());
        let record = match (json, before.as_ref().and_then(|g| g.record.as_ref())) {
            (Some(new), Some(old)) if **old == *new => Some(Arc::clone(old)),
            (Some(new), _) => Some(self.shared_record(id, new)),
            (None, _) => None,
        };
        // Tell the journal when the grant is new, its record changed, or it moved on by more
        // than a hundredth of the grace (or a minute).
        let step = (self.inner.windows.offline_grace / 100).min(Duration::from_secs(60));
        let noted_ms = match &before {
            Some(g)
                if Arc::ptr_eq(&g.expected, &expected)
                    && same(&g.record, &record)
                    && Duration::from_millis(now.saturating_sub(g.noted_ms)) < step =>
            {
                g.noted_ms
            }
            _ => {
                self.inner.dirty.store(true, Ordering::Relaxed);
                now
            }
        };
        let grant = Grant {
            at_ms: now,
            expected,
            record,
            noted_ms,
        };
        self.inner.seen.insert(key, grant);
    }

    /// One copy of an image's record for every grant that has the same bytes.
    fn shared_record(&self, id: &str, json: &Bytes) -> Arc<Bytes> {
        let mut records = self.inner.records.lock().unwrap_or_else(|p| p.into_inner());
        match records.get(id) {
            Some(r) if **r == *json => Arc::clone(r),
            _ => {
                let r = Arc::new(json.clone());
                records.insert(id.to_string(), Arc::clone(&r));
                r
            }
        }
    }

    /// Glance refused `caller` `id` (or did not let it through): no grant stands.
    pub fn refused(&self, caller: CallerKey, id: &str) {
        if self.inner.seen.remove(&(caller, id.to_string())).is_some() {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// `id` is gone (a 404, a DELETE, a removal from the cache): drop every caller's grant.
    pub fn forget(&self, id: &str) {
        self.inner
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
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

    /// Whether Glance let `caller` download `id` (within the last day, or the grace).
    pub fn was_granted(&self, caller: CallerKey, id: &str) -> bool {
        self.inner.seen.contains_key(&(caller, id.to_string()))
    }

    /// The record of `caller`'s grant for `id`, if it is younger than `grant_ttl`.
    pub fn fresh(&self, caller: CallerKey, id: &str) -> Option<Arc<Expected>> {
        self.fresh_at(caller, id, now_ms())
    }

    fn fresh_at(&self, caller: CallerKey, id: &str, now: u64) -> Option<Arc<Expected>> {
        let window = self.inner.windows.grant_ttl;
        let grant = self.inner.seen.get(&(caller, id.to_string()))?;
        grant.within(window, now).then_some(grant.expected)
    }

    /// The record and age of `caller`'s grant for `id`, if it is younger than
    /// `offline_grace` (asked only when no upstream answers).
    pub fn offline(&self, caller: CallerKey, id: &str) -> Option<(Arc<Expected>, Duration)> {
        self.offline_at(caller, id, now_ms())
    }

    fn offline_at(
        &self,
        caller: CallerKey,
        id: &str,
        now: u64,
    ) -> Option<(Arc<Expected>, Duration)> {
        let window = self.inner.windows.offline_grace;
        let grant = self.inner.seen.get(&(caller, id.to_string()))?;
        let age = grant.age(now)?;
        grant.within(window, now).then_some((grant.expected, age))
    }

    /// The v2 record remembered with `caller`'s grant for `id` within `offline_grace`, and
    /// the grant's age (asked only when no upstream answers `GET /v2/images/{id}`).
    pub fn offline_record(&self, caller: CallerKey, id: &str) -> Option<(Bytes, Duration)> {
        let window = self.inner.windows.offline_grace;
        let now = now_ms();
        let grant = self.inner.seen.get(&(caller, id.to_string()))?;
        let age = grant.age(now)?;
        let record = grant.record.as_ref()?;
        grant
            .within(window, now)
            .then(|| (Bytes::clone(record), age))
    }

    /// How many grants are held (approximate: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.inner.seen.run_pending_tasks();
        self.inner.seen.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the journal now, if there is one and it is behind; how many grants it holds.
    /// Disk work: call on the blocking pool or a thread of its own.
    pub fn save(&self) -> std::io::Result<Option<usize>> {
        self.inner.save()
    }

    /// A thread that writes the journal once a second when it changed, and ends with the
    /// store (after a last write).
    fn start_saver(&self) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("grants-saver".into())
            .spawn(move || loop {
                std::thread::sleep(SAVE_EVERY);
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
            .filter(|(_, g)| g.within(grace, now))
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

impl Drop for Inner {
    fn drop(&mut self) {
        // A clean stop writes what the last batch did not (the saver holds no strong ref).
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "cannot write the remembered grants at stop");
        }
    }
}

/// About the bytes a grant holds (a shared record counted in full for each).
fn weight(key: &Key, grant: &Grant) -> u32 {
    let e = &grant.expected;
    let digests = e.md5.as_ref().map_or(0, String::len)
        + e.os_hash.as_ref().map_or(0, |(_, v)| v.len())
        + grant.record.as_ref().map_or(0, |r| r.len());
    u32::try_from(key.1.len() + digests + 160).unwrap_or(u32::MAX)
}

fn same(a: &Option<Arc<Bytes>>, b: &Option<Arc<Bytes>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

fn now_ms() -> u64 {
    crate::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn caller(token: &'static str) -> CallerKey {
        let mut h = HeaderMap::new();
        h.insert("x-auth-token", HeaderValue::from_static(token));
        CallerKey::of(&h)
    }

    fn record(size: u64) -> Expected {
        Expected {
            size,
            md5: Some("0".repeat(32)),
            os_hash: None,
        }
    }

    fn windows(ttl: u64, grace: u64) -> AuthConfig {
        AuthConfig {
            grant_ttl: Duration::from_secs(ttl),
            offline_grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn fresh_only_within_the_ttl_and_for_the_same_caller() {
        let g = Grants::new(windows(30, 0));
        let (a, b) = (caller("a"), caller("b"));
        g.granted_at(a, "img", &record(5), None, 1_000_000);
        assert_eq!(g.fresh_at(a, "img", 1_000_000).map(|e| e.size), Some(5));
        assert!(g.fresh_at(a, "img", 1_029_999).is_some());
        assert!(
            g.fresh_at(a, "img", 1_030_000).is_none(),
            "expired at the TTL"
        );
        assert!(g.fresh_at(b, "img", 1_000_001).is_none(), "another caller");
        assert!(g.fresh_at(a, "other", 1_000_001).is_none(), "another image");
        assert!(
            g.fresh_at(a, "img", 999_000).is_none(),
            "a clock gone back is no grant"
        );
        // No offline grace: never offline.
        assert!(g.offline_at(a, "img", 1_000_001).is_none());
    }

    #[test]
    fn a_zero_ttl_is_todays_behaviour() {
        let g = Grants::new(windows(0, 0));
        let a = caller("a");
        g.granted_at(a, "img", &record(5), None, 1_000);
        assert!(g.fresh_at(a, "img", 1_000).is_none());
        assert!(g.was_granted(a, "img"), "still known for the 404 rule");
    }

    #[test]
    fn offline_within_the_grace_with_its_age() {
        let g = Grants::new(windows(0, 3600));
        let a = caller("a");
        g.granted_at(a, "img", &record(7), None, 10_000);
        let (e, age) = g.offline_at(a, "img", 70_000).expect("within the grace");
        assert_eq!((e.size, age), (7, Duration::from_secs(60)));
        assert!(g.offline_at(a, "img", 10_000 + 3_600_000).is_none());
        // Renewed: the window runs from the last grant.
        g.granted_at(a, "img", &record(7), None, 3_000_000);
        assert!(g.offline_at(a, "img", 10_000 + 3_600_000).is_some());
    }

    #[test]
    fn refusals_and_removals_drop_grants() {
        let g = Grants::new(windows(60, 3600));
        let (a, b) = (caller("a"), caller("b"));
        for who in [a, b] {
            g.granted_at(who, "img", &record(1), None, 1_000);
            g.granted_at(who, "keep", &record(1), None, 1_000);
        }
        g.refused(a, "img");
        assert!(
            g.fresh_at(a, "img", 1_001).is_none(),
            "a refusal drops the caller's"
        );
        assert!(
            g.fresh_at(b, "img", 1_001).is_some(),
            "and only the caller's"
        );
        g.forget("img");
        assert!(
            g.fresh_at(b, "img", 1_001).is_none(),
            "forget drops every caller's"
        );
        assert!(!g.was_granted(b, "img"));
        assert!(g.fresh_at(a, "keep", 1_001).is_some(), "other images stay");
        // A grant after the forget counts again.
        g.granted_at(b, "img", &record(1), None, 2_000);
        assert!(g.fresh_at(b, "img", 2_001).is_some());
    }

    #[test]
    fn the_record_is_the_one_sent_with_the_grant() {
        let g = Grants::new(windows(60, 0));
        let a = caller("a");
        g.granted_at(a, "img", &record(1), None, 1_000);
        g.granted_at(a, "img", &record(2), None, 1_500);
        assert_eq!(g.fresh_at(a, "img", 1_600).map(|e| e.size), Some(2));
    }

    #[test]
    fn the_store_is_bounded_in_bytes() {
        let g = Grants::new(windows(60, 0));
        let each = u64::from(weight(
            &(caller("x"), "img".into()),
            &Grant {
                at_ms: 0,
                expected: Arc::new(record(1)),
                record: None,
                noted_ms: 0,
            },
        ));
        let n = MAX_BYTES / each + 10_000;
        for i in 0..n {
            let mut h = HeaderMap::new();
            h.insert("x-auth-token", HeaderValue::from(i));
            g.granted_at(CallerKey::of(&h), "img", &record(1), None, 1_000);
        }
        let held = g.len();
        assert!(held < n, "{held} of {n} held");
        assert!(
            held * each <= MAX_BYTES,
            "{held} grants exceed the byte bound"
        );
    }

    #[test]
    fn with_a_grace_the_record_json_is_kept_once_and_served_offline() {
        let json = Bytes::from_static(b"{\"id\": \"img\"}");
        let g = Grants::new(windows(0, 3600));
        let (a, b) = (caller("a"), caller("b"));
        g.granted(a, "img", &record(1), Some(&json));
        g.granted(b, "img", &record(1), Some(&json.clone()));
        let (ra, rb) = (
            g.inner.seen.get(&(a, "img".into())),
            g.inner.seen.get(&(b, "img".into())),
        );
        let (ra, rb) = (ra.and_then(|g| g.record), rb.and_then(|g| g.record));
        assert!(
            ra.as_ref()
                .zip(rb.as_ref())
                .is_some_and(|(x, y)| Arc::ptr_eq(x, y)),
            "one copy"
        );
        assert_eq!(
            g.offline_record(a, "img").map(|(j, _)| j),
            Some(json.clone())
        );
        assert!(g.offline_record(caller("c"), "img").is_none());
        g.forget("img");
        assert!(g.offline_record(a, "img").is_none());
        // Without a grace no record is kept.
        let g = Grants::new(windows(60, 0));
        g.granted(a, "img", &record(1), Some(&json));
        assert!(g
            .inner
            .seen
            .get(&(a, "img".into()))
            .and_then(|g| g.record)
            .is_none());
    }

    #[test]
    fn renewals_within_a_small_step_do_not_dirty_the_journal() {
        let g = Grants::new(windows(0, 3600));
        let a = caller("a");
        g.granted_at(a, "img", &record(1), None, 1_000);
        assert!(
            g.inner.dirty.swap(false, Ordering::Relaxed),
            "a new grant is news"
        );
        g.granted_at(a, "img", &record(1), None, 2_000);
        assert!(
            !g.inner.dirty.load(Ordering::Relaxed),
            "a renewal a second later is not"
        );
        g.granted_at(a, "img", &record(1), None, 1_000 + 36_001);
        assert!(
            g.inner.dirty.swap(false, Ordering::Relaxed),
            "a hundredth of the grace is"
        );
        g.granted_at(a, "img", &record(2), None, 40_000);
        assert!(g.inner.dirty.load(Ordering::Relaxed), "a changed record is");
    }
}
