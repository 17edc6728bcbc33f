//! The shared state of the request path: the components every handler may draw on, built
//! once by `app`. It names components (upstream, cache, prefetcher, scrubber, grants,
//! metrics, sendfile counters) and never the layers that use it (`server`, `image`, `manage`); each handler gets
//! a narrow context made from it (`image::Context`, `manage::Context`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::cache::scrub::Scrubber;
use crate::cache::Cache;
use crate::grants::Grants;
use crate::metrics::{Metrics, Snapshot};
use crate::prefetch::Prefetcher;
use crate::upstream::Upstream;

/// What requests share.
pub struct Shared {
    pub upstream: Arc<Upstream>,
    /// `None` when `cache.enabled` is false.
    pub cache: Option<Arc<Cache>>,
    /// The persistent prefetch queue and its worker; with the cache.
    pub prefetch: Option<Arc<Prefetcher>>,
    /// The bit-rot scrubber; with the cache.
    pub scrub: Option<Arc<Scrubber>>,
    /// Glance's recent decisions: which callers it let download which images (the 404 rule,
    /// `auth.grant_ttl`, `auth.offline_grace`).
    pub grants: Grants,
    /// Who callers' Keystone tokens are (`auth.keystone_url`), for the grants' keys.
    pub identity: Arc<crate::identity::Resolver>,
    pub metrics: Arc<Metrics>,
    /// What this instance's connections sent with sendfile (and read in when cold).
    pub sendfile: Arc<crate::sendfile::Counters>,
}

impl Shared {
    /// The components' state for a metrics scrape (the listener adds its connections).
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            upstreams: self.upstream.health(),
            failovers: self.upstream.failovers(),
            upload_waits: self.upstream.upload_waits().0,
            uploads_waiting: self.upstream.upload_waits().1,
            sendfile_bytes: self.sendfile.sent(),
            cold_read_bytes: self.sendfile.warmed(),
            ..Snapshot::default()
        };
        if let Some(cache) = &self.cache {
            let (bytes, reserved, entries, capacity, evictions) = cache.usage();
            snap.cache_enabled = true;
            snap.cache_bytes = bytes;
            snap.cache_reserved_bytes = reserved;
            snap.cache_entries = entries;
            snap.cache_capacity_bytes = capacity;
            snap.cache_evictions = evictions;
            snap.fills = cache.stats.fills.all();
            snap.fetched_bytes = cache.stats.fetched.load(Relaxed);
            snap.quarantined = cache.stats.quarantined.all();
            snap.cache_writable = cache.disk_health().failing().is_none();
        }
        if let Some(s) = &self.scrub {
            snap.scrub_verified_bytes = s.stats.verified_bytes.load(Relaxed);
            snap.scrub_verified_entries = s.stats.verified_entries.load(Relaxed);
            snap.scrub_corruptions = s.stats.corruptions.load(Relaxed);
        }
        if let Some(p) = &self.prefetch {
            snap.prefetch_queued = p.queued().len() as u64;
            snap.prefetch_in_flight = p.in_flight() as u64;
            snap.prefetch_failures = p.failures();
        }
        snap
    }
}
