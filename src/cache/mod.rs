//! The image cache facade: `lookup` -> Hit | Filling | Miss, `begin_fill`, `remove`, `touch`.
//!
//! One mutex guards the bookkeeping (index, entry records, fills in progress); it is never
//! held across an await or a disk write. Disk work goes through `store`, verification through
//! `verify`, streaming through `fill`. A committed entry is served by the same reader as a
//! fill, in the `Committed` state.

pub mod fill;
pub mod index;
pub mod scrub;
pub mod store;
pub mod verify;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body::Body;
use tokio::sync::watch;

use crate::body::BoxError;
use crate::config::CacheConfig;
use fill::{Failure, Fill, Lifetime, Progress};
use index::{Entry, Index, Reservation};
use store::{unix_ms, EntryMeta, Fingerprint, Store, StoreError};
use verify::Expected;

/// A committed entry as the cache API and hits see it.
#[derive(Debug, Clone)]
pub struct Cached {
    pub meta: EntryMeta,
    pub hits: u64,
    pub last_access_ms: u64,
    /// When its bytes were last checked against its digests (the fill, or the scrubber);
    /// unix milliseconds.
    pub verified_ms: u64,
    /// The data file as committed (or as found at start): a hit on a file that no longer
    /// matches quarantines the entry instead.
    fingerprint: Fingerprint,
    /// Changed on disk while the proxy was down: served from Glance (not from the file)
    /// until the scrubber, which takes it first, has checked it.
    pub suspect: bool,
}

/// What the cache holds for an image, given what Glance says the image is now.
pub enum Lookup {
    Hit(Arc<Fill>),
    Filling(Arc<Fill>),
    Miss,
}

/// The answer to "start filling this image".
pub enum Begin {
    /// This request fills; call `Starter::start` with Glance's 200 body, or drop it.
    Started(Starter),
    /// Another request is filling it already.
    Joined(Arc<Fill>),
    /// Not cached: serve from upstream only.
    Bypass(&'static str),
}

/// Counters by a bounded reason label, for metrics.
#[derive(Debug, Default)]
pub struct Counts(Mutex<HashMap<&'static str, u64>>);

impl Counts {
    fn add(&self, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Every reason seen, with its count, in reason order.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<(&'static str, u64)> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect();
        v.sort();
        v
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Fill results since start (`committed` or a `Failure::reason`).
    pub fills: Counts,
    /// Entries taken out of service, by reason (`changed_on_disk`, `hash_mismatch`, ...).
    pub quarantined: Counts,
    /// Image bytes received from Glance by fills.
    pub fetched: std::sync::atomic::AtomicU64,
}

struct State {
    index: Index,
    entries: HashMap<String, Cached>,
    fills: HashMap<String, Arc<Fill>>,
}

pub struct Cache {
    store: Store,
    state: Mutex<State>,
    config: CacheConfig,
    pub stats: Stats,
}

impl Cache {
    /// Open the cache directory, remove leftovers and rebuild the index from disk.
    pub fn open(config: &CacheConfig) -> Result<Cache, StoreError> {
        let started = std::time::Instant::now();
        let store = Store::open(&config.dir)?;
        let scan = store.scan()?;
        let mut state = State {
            index: Index::new(config.max_size),
            entries: HashMap::new(),
            fills: HashMap::new(),
        };
        let found = scan.entries.len();
        let suspects = scan.entries.iter().filter(|e| e.suspect).count();
        for rec in scan.entries {
            let id = rec.meta.image_id.clone();
            let victims = state.index.restore(
                &id,
                Entry {
                    size: rec.meta.size,
                    tick: rec.last_access_ms,
                },
            );
            state.entries.insert(
                id,
                Cached {
                    // Suspects are due for the scrubber at once.
                    verified_ms: if rec.suspect {
                        0
                    } else {
                        rec.meta.committed_ms
                    },
                    meta: rec.meta,
                    hits: 0,
                    last_access_ms: rec.last_access_ms,
                    fingerprint: rec.fingerprint,
                    suspect: rec.suspect,
                },
            );
            for v in victims {
                state.entries.remove(&v);
                let _ = store.remove(&v);
            }
        }
        tracing::info!(
            dir = %config.dir.display(),
            entries = state.index.len(),
            bytes = state.index.committed_bytes(),
            found,
            suspects,
            leftovers_removed = scan.removed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "cache opened"
        );
        Ok(Cache {
            store,
            state: Mutex::new(state),
            config: config.clone(),
            stats: Stats::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the cache has for `id`, if it was verified against the same `expected` digests.
    /// An entry recorded with other digests (the image changed) is removed.
    pub fn lookup(&self, id: &str, expected: &Expected) -> Lookup {
        let (stale, print) = {
            let st = self.lock();
            if let Some(fill) = st.fills.get(id) {
                return if fill.expected == *expected {
                    Lookup::Filling(Arc::clone(fill))
                } else {
                    Lookup::Miss
                };
            }
            match st.entries.get(id) {
                None => return Lookup::Miss,
                // Not served until checked; `begin_fill` passes such requests through.
                Some(c) if c.suspect => return Lookup::Miss,
                Some(c) => (c.meta.expected() != *expected, c.fingerprint),
            }
        };
        if stale {
            tracing::info!(image_id = %id, "cached entry no longer matches the image record; evicting");
            self.remove(id);
            return Lookup::Miss;
        }
        let opened = File::open(self.store.data_path(id)).and_then(|f| {
            let stat = f.metadata()?;
            Ok((f, Fingerprint::of(&stat)))
        });
        match opened {
            Ok((file, now)) if now == print => {
                Lookup::Hit(Fill::committed(id, expected.clone(), Arc::new(file), print))
            }
            Ok(_) => {
                // Written, truncated or replaced behind the proxy's back: never serve it.
                self.quarantine(
                    id,
                    print,
                    "changed_on_disk",
                    "the data file changed after it was verified".into(),
                );
                Lookup::Miss
            }
            Err(e) => {
                tracing::warn!(image_id = %id, error = %e, "cached file cannot be opened; evicting");
                self.remove(id);
                Lookup::Miss
            }
        }
    }

    /// Take the entry `id` out of service for good, if it is still the file `print`: its
    /// files are deleted, a report stays in `quarantine/`, the next request fetches afresh.
    pub fn quarantine(&self, id: &str, print: Fingerprint, reason: &'static str, detail: String) {
        let meta = {
            let mut st = self.lock();
            match st.entries.get(id) {
                Some(c) if c.fingerprint == print => {
                    let meta = c.meta.clone();
                    st.entries.remove(id);
                    st.index.remove(id);
                    meta
                }
                _ => return, // already gone or replaced by a new fill
            }
        };
        self.stats.quarantined.add(reason);
        let report = serde_json::json!({
            "image_id": id,
            "reason": reason,
            "detail": detail,
            "found_ms": unix_ms(crate::clock::now()),
            "entry": meta,
        });
        match self.store.quarantine(id, &report) {
            Ok(path) => {
                tracing::error!(image_id = %id, reason, %detail, report = %path.display(), "cache entry quarantined; it will be fetched again on demand")
            }
            Err(e) => {
                tracing::error!(image_id = %id, reason, %detail, error = %e, "cache entry quarantined, but its files could not all be removed")
            }
        }
    }

    /// The committed entry verified longest ago, if that was more than `interval_ms` before
    /// `now_ms`: its id, digests and fingerprint. Otherwise when the next one falls due.
    pub fn next_to_scrub(
        &self,
        now_ms: u64,
        interval_ms: u64,
    ) -> Result<(String, Expected, Fingerprint), Option<u64>> {
        let st = self.lock();
        let oldest = st.entries.values().min_by_key(|c| c.verified_ms);
        match oldest {
            None => Err(None),
            Some(c) if c.verified_ms.saturating_add(interval_ms) <= now_ms => {
                Ok((c.meta.image_id.clone(), c.meta.expected(), c.fingerprint))
            }
            Some(c) => Err(Some(c.verified_ms.saturating_add(interval_ms))),
        }
    }

    /// The scrubber read `id` (as `print`) and its digests matched at `now_ms`.
    pub fn scrubbed(&self, id: &str, print: Fingerprint, now_ms: u64) {
        let mut st = self.lock();
        if let Some(c) = st.entries.get_mut(id) {
            if c.fingerprint == print {
                c.verified_ms = now_ms;
                c.suspect = false;
            }
        }
    }

    /// Open a committed entry for the scrubber: the file, whether it bypasses the page cache,
    /// and whether it is still the file `print`.
    pub fn open_for_scrub(&self, id: &str) -> std::io::Result<(File, bool, Fingerprint)> {
        let (file, direct) = self.store.open_direct(id)?;
        let stat = file.metadata()?;
        Ok((file, direct, Fingerprint::of(&stat)))
    }

    /// The cache directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.config.dir
    }

    /// (committed bytes, reserved bytes, entries, capacity, evictions) for metrics.
    pub fn usage(&self) -> (u64, u64, u64, u64, u64) {
        let st = self.lock();
        (
            st.index.committed_bytes(),
            st.index.reserved_bytes(),
            st.index.len() as u64,
            st.index.max_size(),
            st.index.evictions(),
        )
    }

    /// Committed entries, by image id.
    pub fn entries(&self) -> Vec<Cached> {
        let st = self.lock();
        let mut all: Vec<Cached> = st.entries.values().cloned().collect();
        all.sort_by(|a, b| a.meta.image_id.cmp(&b.meta.image_id));
        all
    }

    /// Whether a committed entry exists for `id`.
    pub fn is_cached(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Remove every committed entry (fills in progress go on); returns how many.
    pub fn clear(&self) -> usize {
        let ids: Vec<String> = self.lock().entries.keys().cloned().collect();
        ids.iter().filter(|id| self.remove_entry(id)).count()
    }

    /// Evict least recently used entries until the cache is within `max_size`; returns the
    /// files and bytes removed. Fills keep the cache within bounds as they reserve, so this
    /// finds work only if something else grew it.
    pub fn prune(&self) -> (u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        loop {
            let victim = {
                let st = self.lock();
                let used = st.index.committed_bytes() + st.index.reserved_bytes();
                if used <= st.index.max_size() {
                    break;
                }
                let lru = st
                    .index
                    .iter_lru()
                    .next()
                    .map(|(id, e)| (id.to_string(), e.size));
                lru
            };
            let Some((id, size)) = victim else { break };
            if self.remove_entry(&id) {
                files += 1;
                bytes += size;
            }
        }
        (files, bytes)
    }

    /// Remove a committed entry (not a fill in progress); whether there was one.
    fn remove_entry(&self, id: &str) -> bool {
        let had = {
            let mut st = self.lock();
            st.entries.remove(id);
            st.index.remove(id).is_some()
        };
        if had {
            if let Err(e) = self.store.remove(id) {
                tracing::warn!(image_id = %id, error = %e, "cannot delete a cache entry");
            }
        }
        had
    }

    /// Whether an entry or a fill exists for `id` (whatever its digests).
    pub fn holds(&self, id: &str) -> bool {
        let st = self.lock();
        st.entries.contains_key(id) || st.fills.contains_key(id)
    }

    /// Register a fill of `id`, reserving its size (evicting as needed).
    pub fn begin_fill(self: &Arc<Self>, id: &str, expected: &Expected) -> Begin {
        if !store::is_storable_id(id) {
            return Begin::Bypass("bad_id");
        }
        if !expected.has_digest() && !self.config.cache_unverified {
            return Begin::Bypass("no_digest");
        }
        if expected.size == 0 {
            return Begin::Bypass("empty");
        }
        let (temp, file) = match self.store.create_temp(id) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(image_id = %id, error = %e, "cannot create a cache file");
                self.stats.fills.add(e.reason());
                return Begin::Bypass(e.reason());
            }
        };
        let read_side = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                tracing::error!(image_id = %id, error = %e, "cannot reopen a cache file");
                return Begin::Bypass("io_error");
            }
        };
        let (victims, fill, tx) = {
            let mut st = self.lock();
            if let Some(fill) = st.fills.get(id) {
                let fill = Arc::clone(fill);
                drop(st);
                let _ = std::fs::remove_file(&temp);
                return Begin::Joined(fill);
            }
            if st.entries.get(id).is_some_and(|c| c.suspect) {
                drop(st);
                let _ = std::fs::remove_file(&temp);
                return Begin::Bypass("unverified");
            }
            let victims = match st.index.reserve(expected.size) {
                Reservation::Granted { victims } => victims,
                Reservation::TooLarge => {
                    drop(st);
                    let _ = std::fs::remove_file(&temp);
                    return Begin::Bypass("too_large");
                }
                Reservation::NoRoom => {
                    drop(st);
                    let _ = std::fs::remove_file(&temp);
                    return Begin::Bypass("no_room");
                }
            };
            for v in &victims {
                st.entries.remove(v);
            }
            let (fill, tx) = Fill::new(id, expected.clone(), read_side);
            st.fills.insert(id.to_string(), Arc::clone(&fill));
            (victims, fill, tx)
        };
        for v in victims {
            tracing::info!(image_id = %v, "evicted to make room");
            if let Err(e) = self.store.remove(&v) {
                tracing::warn!(image_id = %v, error = %e, "cannot delete an evicted entry");
            }
        }
        Begin::Started(Starter {
            cache: Arc::clone(self),
            fill,
            tx: Some(tx),
            temp,
            file: Some(file),
        })
    }

    /// Forget `id`: its entry, and any fill in progress (which then will not publish).
    pub fn remove(&self, id: &str) {
        let had = {
            let mut st = self.lock();
            st.fills.remove(id);
            st.entries.remove(id);
            st.index.remove(id).is_some()
        };
        if had {
            if let Err(e) = self.store.remove(id) {
                tracing::warn!(image_id = %id, error = %e, "cannot delete a cache entry");
            }
        }
    }

    /// Count a hit that sent every byte, and make the entry the most recently used.
    pub fn touch(&self, id: &str) {
        let now_ms = unix_ms(crate::clock::now());
        let tick = {
            let mut st = self.lock();
            let tick = st.index.touch(id, now_ms);
            if let Some(c) = st.entries.get_mut(id) {
                c.hits += 1;
                c.last_access_ms = now_ms;
            }
            tick
        };
        // The tick the index used (never older than the newest seen), so the order survives
        // a restart even after the wall clock stepped back.
        if let Some(tick) = tick {
            self.store.touch(
                id,
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(tick),
            );
        }
    }

    pub fn lifetime(&self, idle_timeout: std::time::Duration) -> Lifetime {
        Lifetime {
            finish_abandoned: self.config.finish_abandoned_fills,
            abandoned_timeout: self.config.abandoned_fill_timeout,
            idle_timeout,
        }
    }

    /// Publish a verified fill; called by the filler task.
    fn publish(&self, fill: &Arc<Fill>, filled: fill::Filled) -> Result<(), Failure> {
        let id = &fill.image_id;
        let still_wanted = {
            let st = self.lock();
            st.fills.get(id).is_some_and(|f| Arc::ptr_eq(f, fill))
        };
        if !still_wanted {
            let _ = std::fs::remove_file(&filled.temp);
            return Err(Failure::Abandoned);
        }
        let (meta, fingerprint) =
            match self
                .store
                .commit(&filled.temp, &filled.file, id, &fill.expected)
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::debug!(image_id = %id, error = %e, "cannot publish a verified fill");
                    let _ = std::fs::remove_file(&filled.temp);
                    return Err(Failure::Disk {
                        written: fill.expected.size,
                        reason: e.reason(),
                    });
                }
            };
        let now = meta.committed_ms;
        let mut st = self.lock();
        st.fills.remove(id);
        let tick = st.index.commit(id, fill.expected.size, now);
        st.entries.insert(
            id.to_string(),
            Cached {
                meta,
                hits: 0,
                last_access_ms: tick,
                verified_ms: now,
                fingerprint,
                suspect: false,
            },
        );
        Ok(())
    }

    fn abandon(&self, fill: &Arc<Fill>, temp: &PathBuf) {
        let _ = std::fs::remove_file(temp);
        let mut st = self.lock();
        if st
            .fills
            .get(&fill.image_id)
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            st.fills.remove(&fill.image_id);
        }
        st.index.release(fill.expected.size);
    }
}

/// The request that started a fill holds this until Glance's answer is known.
pub struct Starter {
    cache: Arc<Cache>,
    fill: Arc<Fill>,
    tx: Option<watch::Sender<Progress>>,
    temp: PathBuf,
    file: Option<File>,
}

impl Starter {
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Glance answered 200: stream `body` into the cache in a task of its own, which outlives
    /// the client that started it (see `Lifetime`).
    pub fn start<B>(mut self, body: B, idle_timeout: std::time::Duration) -> Arc<Fill>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (Some(tx), Some(file)) = (self.tx.take(), self.file.take()) else {
            return Arc::clone(&self.fill);
        };
        let cache = Arc::clone(&self.cache);
        let fill = Arc::clone(&self.fill);
        let temp = self.temp.clone();
        let life = cache.lifetime(idle_timeout);
        tokio::spawn(async move {
            let result = fill::run(
                &fill,
                &tx,
                body,
                temp.clone(),
                file,
                life,
                &cache.stats.fetched,
            )
            .await;
            let result = match result {
                Ok(filled) => {
                    // Readers may finish now; publishing waits for the disk, they need not.
                    let _ = tx.send(Progress::Verified);
                    let c = Arc::clone(&cache);
                    let f = Arc::clone(&fill);
                    tokio::task::spawn_blocking(move || c.publish(&f, filled))
                        .await
                        .unwrap_or_else(|e| Err(Failure::Upstream(format!("commit task: {e}"))))
                }
                Err(f) => Err(f),
            };
            match result {
                Ok(()) => {
                    cache.stats.fills.add("committed");
                    tracing::info!(image_id = %fill.image_id, size = fill.expected.size, "cached");
                    let _ = tx.send(Progress::Committed);
                }
                Err(failure) => {
                    cache.stats.fills.add(failure.reason());
                    if let Failure::Disk { written, reason } = &failure {
                        // Operator action needed (disk full or failing): error level, once.
                        tracing::error!(image_id = %fill.image_id, reason, written, "cache write failed; nothing kept, readers continue from upstream");
                    } else {
                        tracing::warn!(image_id = %fill.image_id, reason = failure.reason(), detail = ?failure, "fill failed; nothing kept");
                    }
                    cache.abandon(&fill, &temp);
                    let _ = tx.send(Progress::Failed(failure));
                }
            }
        });
        Arc::clone(&self.fill)
    }
}

impl Drop for Starter {
    /// Dropped without `start`: Glance refused or the request failed; undo the registration.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.cache.abandon(&self.fill, &self.temp);
            let _ = tx.send(Progress::Failed(Failure::Rejected));
        }
    }
}
