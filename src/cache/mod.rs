//! The image cache facade: `lookup` -> Hit | Filling | Miss, `begin_fill`, `remove`, `touch`.
//!
//! One mutex guards the bookkeeping (index, entry records, fills in progress); it is never
//! held across an await or a disk write. Disk work goes through `store`, always on the
//! blocking pool (`disk::blocking`): the methods that touch the disk are `async` or hand the
//! work off. Verification goes through `verify`, writing through `fill`, and readers follow
//! a `read::Source` (their body is `body::follow`'s: the cache builds no body and knows no
//! connection). The cache never calls Glance: a reader whose fill lost its disk gets the rest
//! from a `body::follow::Fallback` its caller supplies.

pub mod fill;
pub mod index;
pub mod read;
pub mod scrub;
pub mod store;
mod upkeep;
pub mod verify;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body::Body;
use tokio::sync::watch;

use crate::body::BoxError;
use crate::config::CacheConfig;
use crate::digest::Expected;
use crate::disk::{self, TempFile};
use crate::outcome::{BypassReason, FillResult, QuarantineReason};
use crate::writable::DiskHealth;
use fill::{Failure, Fill, Progress, Rules};
use index::{Entry, Index, Reservation};
use store::{unix_ms, EntryMeta, Fingerprint, Store, StoreError};

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

/// A verified entry opened for one hit: its data file as committed.
pub struct Hit {
    pub image_id: String,
    pub expected: Expected,
    file: Arc<File>,
    print: Fingerprint,
}

impl Hit {
    /// The open data file (it stays readable even if the entry is evicted meanwhile).
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// The file as it was committed (a read error quarantines only that file).
    pub fn print(&self) -> Fingerprint {
        self.print
    }
}

/// What the cache holds for an image, given what Glance says the image is now.
pub enum Lookup {
    Hit(Hit),
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
    Bypass(BypassReason),
}

/// Counters by a bounded label (a fill result, a quarantine reason), for metrics.
#[derive(Debug)]
pub struct Counts<K>(Mutex<HashMap<K, u64>>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }
}

impl<K: Copy + Ord + std::hash::Hash> Counts<K> {
    fn add(&self, key: K) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// Every key seen, with its count, in key order.
    pub fn all(&self) -> Vec<(K, u64)> {
        let mut v: Vec<(K, u64)> = self
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
    /// Fill results since start.
    pub fills: Counts<FillResult>,
    /// Entries taken out of service, by reason.
    pub quarantined: Counts<QuarantineReason>,
    /// Image bytes received from Glance by fills.
    pub fetched: std::sync::atomic::AtomicU64,
}

struct State {
    index: Index,
    entries: HashMap<String, Cached>,
    fills: HashMap<String, Arc<Fill>>,
}

/// Told the id of every entry or fill the cache lets go of (`Cache::on_removed`).
pub type OnRemoved = Box<dyn Fn(&str) + Send + Sync>;

pub struct Cache {
    store: Store,
    state: Mutex<State>,
    config: CacheConfig,
    pub stats: Stats,
    removed: std::sync::OnceLock<OnRemoved>,
    /// Write failures in a row (`/readyz`, `cache_writable`): fed by fills.
    health: Arc<DiskHealth>,
}

impl Cache {
    /// Open the cache directory, remove leftovers and rebuild the index from disk.
    /// `health` learns how each fill's writes went.
    pub fn open(config: &CacheConfig, health: Arc<DiskHealth>) -> Result<Cache, StoreError> {
        disk::startup(|| Cache::open_here(config, health))
    }

    fn open_here(config: &CacheConfig, health: Arc<DiskHealth>) -> Result<Cache, StoreError> {
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
            removed: std::sync::OnceLock::new(),
            health,
        })
    }

    /// Call `f` with the id of every entry or fill removed from now on (a DELETE, an
    /// eviction, a quarantine, a clear): the image path's remembered grants follow the cache.
    /// Set once; a second call is ignored.
    pub fn on_removed(&self, f: OnRemoved) {
        let _ = self.removed.set(f);
    }

    /// Tell the listener that `id` is gone.
    fn gone(&self, id: &str) {
        if let Some(f) = self.removed.get() {
            f(id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves State consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the cache has for `id`, if it was verified against the same `expected` digests.
    /// An entry recorded with other digests (the image changed) is removed.
    pub async fn lookup(self: &Arc<Self>, id: &str, expected: &Expected) -> Lookup {
        let print = {
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
                Some(c) if c.meta.expected() != *expected => None,
                Some(c) => Some(c.fingerprint),
            }
        };
        let Some(print) = print else {
            tracing::info!(image_id = %id, "cached entry no longer matches the image record; evicting");
            self.remove(id).await;
            return Lookup::Miss;
        };
        let (cache, owned_id) = (Arc::clone(self), id.to_string());
        let opened = disk::blocking(move || cache.open_hit(&owned_id, print)).await;
        match opened {
            Ok(Some(file)) => Lookup::Hit(Hit {
                image_id: id.to_string(),
                expected: expected.clone(),
                file: Arc::new(file),
                print,
            }),
            Ok(None) | Err(_) => Lookup::Miss,
        }
    }

    /// Whether `hit` (opened earlier) is still the committed entry for its image: the same
    /// file and digests, not suspect.
    pub fn is_current(&self, hit: &Hit) -> bool {
        self.servable(&hit.image_id, &hit.expected) == Some(hit.print)
    }

    /// The fingerprint of the committed entry of `id`, if it may be served as the image of
    /// `expected`: recorded with these very digests and not suspect.
    fn servable(&self, id: &str, expected: &Expected) -> Option<Fingerprint> {
        let st = self.lock();
        let c = st.entries.get(id)?;
        (!c.suspect && c.meta.expected() == *expected).then_some(c.fingerprint)
    }

    /// A committed, verified entry recorded with these very digests, found without evicting
    /// a mismatch or starting a fill (for serving while Glance cannot answer, and for opening
    /// a hit's file while Glance is asked); a file that changed or will not open is still
    /// taken out of service (`open_hit`). The open starts on the blocking pool at the call,
    /// which must be made inside the runtime.
    pub fn peek(
        self: &Arc<Self>,
        id: &str,
        expected: &Expected,
    ) -> impl std::future::Future<Output = Option<Hit>> + Send + 'static {
        // The open starts now, not when the future is first polled: a caller asks Glance
        // meanwhile, and no task of its own is spawned for it (a task would be one more for
        // the runtime to hand to another worker).
        let opening = self.servable(id, expected).map(|print| {
            let (cache, owned_id) = (Arc::clone(self), id.to_string());
            let task = disk::spawn(move || cache.open_hit(&owned_id, print));
            (print, task)
        });
        let (image_id, expected) = (id.to_string(), expected.clone());
        async move {
            let (print, task) = opening?;
            let file = task.await.ok()??;
            Some(Hit {
                image_id,
                expected,
                file: Arc::new(file),
                print,
            })
        }
    }

    /// Open a committed entry's file if it is still the file `print`; anything else takes the
    /// entry out of service. On the blocking pool.
    fn open_hit(&self, id: &str, print: Fingerprint) -> Option<File> {
        match self.store.open_data(id) {
            Ok((file, now)) if now == print => Some(file),
            Ok(_) => {
                // Written, truncated or replaced behind the proxy's back: never serve it.
                self.quarantine(
                    id,
                    print,
                    QuarantineReason::ChangedOnDisk,
                    "the data file changed after it was verified".into(),
                );
                None
            }
            Err(e) => {
                tracing::warn!(image_id = %id, error = %e, "cached file cannot be opened; evicting");
                self.remove_here(id);
                None
            }
        }
    }

    /// Whether md5 is verified too where an os_hash is (`cache.verify_md5`).
    pub fn verify_md5(&self) -> bool {
        self.config.verify_md5
    }

    /// Whether the cache's writes go through (`/readyz`, `cache_writable`).
    pub fn disk_health(&self) -> &Arc<DiskHealth> {
        &self.health
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

    /// The record a committed entry of `id` was verified against, if there is one.
    pub fn entry_expected(&self, id: &str) -> Option<Expected> {
        self.lock().entries.get(id).map(|c| c.meta.expected())
    }

    /// Whether a committed entry exists for `id`.
    pub fn is_cached(&self, id: &str) -> bool {
        self.lock().entries.contains_key(id)
    }

    /// Whether an entry or a fill exists for `id` (whatever its digests).
    pub fn holds(&self, id: &str) -> bool {
        let st = self.lock();
        st.entries.contains_key(id) || st.fills.contains_key(id)
    }

    /// Register a fill of `id` (so that others join it), without room yet: room is made only
    /// when Glance has answered the download with the image (`Starter::start`), so that a
    /// refused, failed or missing download evicts nothing.
    pub async fn begin_fill(self: &Arc<Self>, id: &str, expected: &Expected) -> Begin {
        if !disk::is_storable_id(id) {
            return Begin::Bypass(BypassReason::BadId);
        }
        if !expected.has_digest() && !self.config.cache_unverified {
            return Begin::Bypass(BypassReason::NoDigest);
        }
        if expected.size == 0 {
            return Begin::Bypass(BypassReason::Empty);
        }
        if expected.size > self.lock().index.max_size() {
            return Begin::Bypass(BypassReason::TooLarge);
        }
        let (cache, id, expected) = (Arc::clone(self), id.to_string(), expected.clone());
        disk::blocking(move || cache.begin_fill_here(&id, &expected))
            .await
            .unwrap_or(Begin::Bypass(BypassReason::IoError))
    }

    /// `begin_fill`'s disk and bookkeeping part, on the blocking pool.
    fn begin_fill_here(self: &Arc<Self>, id: &str, expected: &Expected) -> Begin {
        let (temp, file) = match self.store.create_temp(id) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(image_id = %id, error = %e, "cannot create a cache file");
                self.health
                    .failed(format!("creating a file for image {id}: {e}"));
                self.stats.fills.add(e.fault().into());
                return Begin::Bypass(e.fault().into());
            }
        };
        let read_side = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                tracing::error!(image_id = %id, error = %e, "cannot reopen a cache file");
                return Begin::Bypass(BypassReason::IoError);
            }
        };
        // Every early return drops `temp`, which removes the file.
        let (fill, tx) = {
            let mut st = self.lock();
            if let Some(fill) = st.fills.get(id) {
                return Begin::Joined(Arc::clone(fill));
            }
            if st.entries.get(id).is_some_and(|c| c.suspect) {
                return Begin::Bypass(BypassReason::Unverified);
            }
            let (fill, tx) = Fill::new(id, expected.clone(), read_side);
            st.fills.insert(id.to_string(), Arc::clone(&fill));
            (fill, tx)
        };
        Begin::Started(Starter {
            cache: Arc::clone(self),
            fill,
            tx: Some(tx),
            temp: Some(temp),
            file: Some(file),
        })
    }

    /// Reserve room for a registered fill (evicting least recently used entries as needed);
    /// the victims' files are deleted here. On the blocking pool.
    fn make_room(&self, fill: &Arc<Fill>) -> Result<(), BypassReason> {
        let victims = {
            let mut st = self.lock();
            if !st
                .fills
                .get(&fill.image_id)
                .is_some_and(|f| Arc::ptr_eq(f, fill))
            {
                // Removed (a DELETE) while Glance was asked: nothing to fill.
                return Err(BypassReason::FillFailed);
            }
            let victims = match st.index.reserve(fill.expected.size) {
                Reservation::Granted { victims } => victims,
                Reservation::TooLarge => return Err(BypassReason::TooLarge),
                Reservation::NoRoom => return Err(BypassReason::NoRoom),
            };
            for v in &victims {
                st.entries.remove(v);
            }
            victims
        };
        for v in victims {
            tracing::info!(image_id = %v, "evicted to make room");
            self.gone(&v);
            if let Err(e) = self.store.remove(&v) {
                tracing::warn!(image_id = %v, error = %e, "cannot delete an evicted entry");
            }
        }
        Ok(())
    }

    /// Forget `id`: its entry, and any fill in progress (which then will not publish).
    pub async fn remove(self: &Arc<Self>, id: &str) {
        let (cache, id) = (Arc::clone(self), id.to_string());
        let _ = disk::blocking(move || cache.remove_here(&id)).await;
    }

    fn remove_here(&self, id: &str) {
        let had = {
            let mut st = self.lock();
            st.fills.remove(id);
            st.entries.remove(id);
            st.index.remove(id).is_some()
        };
        self.gone(id);
        if had {
            if let Err(e) = self.store.remove(id) {
                tracing::warn!(image_id = %id, error = %e, "cannot delete a cache entry");
            }
        }
    }

    /// Count a hit that sent every byte, and make the entry the most recently used.
    pub fn touch(self: &Arc<Self>, id: &str) {
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
        // a restart even after the wall clock stepped back. Setting the time is disk work:
        // handed to the blocking pool, not waited for.
        if let Some(tick) = tick {
            let (cache, id) = (Arc::clone(self), id.to_string());
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(tick);
            tokio::spawn(disk::blocking(move || cache.store.touch(&id, when)));
        }
    }

    pub fn rules(&self, idle_timeout: std::time::Duration) -> Rules {
        Rules {
            finish_abandoned: self.config.finish_abandoned_fills,
            abandoned_timeout: self.config.abandoned_fill_timeout,
            idle_timeout,
            verify_md5: self.config.verify_md5,
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
            return Err(Failure::Abandoned); // dropping `filled.temp` removes the file
        }
        let (meta, fingerprint) =
            match self
                .store
                .commit(filled.temp, &filled.file, id, &fill.expected)
            {
                Ok(done) => done,
                Err(e) => {
                    tracing::debug!(image_id = %id, error = %e, "cannot publish a verified fill");
                    return Err(Failure::Disk {
                        written: fill.expected.size,
                        fault: e.fault(),
                    });
                }
            };
        let now = meta.committed_ms;
        let mut st = self.lock();
        if !st.fills.get(id).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            // Removed (a DELETE, an eviction) while its files were being renamed into place:
            // the removal stands. Its files go, unless a newer entry already owns the name.
            let newer = st.entries.contains_key(id);
            drop(st);
            if !newer {
                if let Err(e) = self.store.remove(id) {
                    tracing::warn!(image_id = %id, error = %e, "cannot delete a removed entry");
                }
            }
            return Err(Failure::Abandoned);
        }
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

    /// Undo a fill's registration and, when it had room (`reserved`), its reservation (its
    /// temporary file goes with its guard).
    fn abandon(&self, fill: &Arc<Fill>, reserved: bool) {
        let mut st = self.lock();
        if st
            .fills
            .get(&fill.image_id)
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            st.fills.remove(&fill.image_id);
        }
        if reserved {
            st.index.release(fill.expected.size);
        }
    }
}

/// The request that started a fill holds this until Glance's answer is known.
pub struct Starter {
    cache: Arc<Cache>,
    fill: Arc<Fill>,
    tx: Option<watch::Sender<Progress>>,
    temp: Option<TempFile>,
    file: Option<File>,
}

impl Starter {
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Glance answered 200: make room for the image (evicting least recently used entries;
    /// only now, so that a refused download evicts nothing), then stream `body` into the
    /// cache in a task of its own, which outlives the client that started it (see `Rules`).
    /// Returns the starter's own reader registration, taken before the task runs, so a fill
    /// that stops for want of readers cannot stop before the starting client's reader exists:
    /// hold it until that reader does. Without room, `body` comes back with the reason, to be
    /// streamed to the client uncached (joiners then go to Glance themselves).
    pub async fn start<B>(
        mut self,
        body: B,
        idle_timeout: std::time::Duration,
    ) -> Result<fill::Keep, (BypassReason, B)>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (cache, fill) = (Arc::clone(&self.cache), Arc::clone(&self.fill));
        let room = disk::blocking(move || cache.make_room(&fill))
            .await
            .unwrap_or(Err(BypassReason::IoError));
        if let Err(reason) = room {
            tracing::info!(image_id = %self.fill.image_id, reason = reason.as_str(), "no room for the image; streamed uncached");
            return Err((reason, body));
        }
        let (Some(tx), Some(file), Some(temp)) =
            (self.tx.take(), self.file.take(), self.temp.take())
        else {
            return Ok(self.fill.keep());
        };
        let keep = self.fill.keep();
        let cache = Arc::clone(&self.cache);
        let fill = Arc::clone(&self.fill);
        let life = cache.rules(idle_timeout);
        tokio::spawn(async move {
            let result = fill::run(&fill, &tx, body, temp, file, life, &cache.stats.fetched).await;
            let result = match result {
                Ok(filled) => {
                    // Readers may finish now; publishing waits for the disk, they need not.
                    let _ = tx.send(Progress::Verified);
                    let c = Arc::clone(&cache);
                    let f = Arc::clone(&fill);
                    disk::blocking(move || c.publish(&f, filled))
                        .await
                        .unwrap_or_else(|e| Err(Failure::Upstream(e.to_string())))
                }
                Err(f) => Err(f),
            };
            match result {
                Ok(()) => {
                    cache.health.succeeded();
                    cache.stats.fills.add(FillResult::Committed);
                    tracing::info!(image_id = %fill.image_id, size = fill.expected.size, "cached");
                    let _ = tx.send(Progress::Committed);
                }
                Err(failure) => {
                    cache.stats.fills.add(failure.result());
                    if let Failure::Disk { written, fault } = &failure {
                        // Operator action needed (disk full or failing): error level, once.
                        tracing::error!(image_id = %fill.image_id, reason = fault.as_str(), written, "cache write failed; nothing kept, readers continue from upstream");
                        cache.health.failed(format!(
                            "writing image {} ({})",
                            fill.image_id,
                            fault.as_str()
                        ));
                    } else {
                        tracing::warn!(image_id = %fill.image_id, reason = failure.result().as_str(), detail = ?failure, "fill failed; nothing kept");
                    }
                    cache.abandon(&fill, true);
                    let _ = tx.send(Progress::Failed(failure));
                }
            }
        });
        Ok(keep)
    }
}

impl Drop for Starter {
    /// Dropped without `start`: Glance refused or the request failed; undo the registration.
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.cache.abandon(&self.fill, false);
            let _ = tx.send(Progress::Failed(Failure::Rejected));
        }
    }
}
