//! Taking entries out of service: `quarantine` (a file that changed or failed
//! re-verification: deleted, a report kept), the scrubber's bookkeeping (`next_to_scrub`,
//! `scrubbed`, `open_for_scrub`), `clear` and `prune` (the cache API). Disk work runs on the
//! blocking pool (`disk::blocking`) or is marked as blocking-pool work in its doc.

use std::fs::File;
use std::sync::Arc;

use super::store::{unix_ms, Fingerprint};
use super::Cache;
use crate::digest::Expected;
use crate::disk;
use crate::outcome::QuarantineReason;

impl Cache {
    /// `quarantine` on the blocking pool, not waited for (from a body's hooks).
    pub fn quarantine_later(
        self: &Arc<Self>,
        id: &str,
        print: Fingerprint,
        reason: QuarantineReason,
        detail: String,
    ) {
        let (cache, id) = (Arc::clone(self), id.to_string());
        tokio::spawn(disk::blocking(move || {
            cache.quarantine(&id, print, reason, detail)
        }));
    }

    /// Take the entry `id` out of service for good, if it is still the file `print`: its
    /// files are deleted, a report stays in `quarantine/`, the next request fetches afresh.
    /// Disk work: call it on the blocking pool.
    pub fn quarantine(
        &self,
        id: &str,
        print: Fingerprint,
        reason: QuarantineReason,
        detail: String,
    ) {
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
        self.gone(id);
        let report = serde_json::json!({
            "image_id": id,
            "reason": reason.as_str(),
            "detail": detail,
            "found_ms": unix_ms(crate::clock::now()),
            "entry": meta,
        });
        let stored = self.store.quarantine(id, &report);
        // Counted once its report is on disk (or failed to be).
        self.stats.quarantined.add(reason);
        match stored {
            Ok(path) => {
                tracing::error!(image_id = %id, reason = reason.as_str(), %detail, report = %path.display(), "cache entry quarantined; it will be fetched again on demand")
            }
            Err(e) => {
                tracing::error!(image_id = %id, reason = reason.as_str(), %detail, error = %e, "cache entry quarantined, but its files could not all be removed")
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

    /// Remove every committed entry (fills in progress go on); returns how many.
    pub async fn clear(self: &Arc<Self>) -> usize {
        let cache = Arc::clone(self);
        disk::blocking(move || {
            let ids: Vec<String> = cache.lock().entries.keys().cloned().collect();
            ids.iter().filter(|id| cache.remove_entry(id)).count()
        })
        .await
        .unwrap_or(0)
    }

    /// Evict least recently used entries until the cache is within `max_size`; returns the
    /// files and bytes removed. Fills keep the cache within bounds as they reserve, so this
    /// finds work only if something else grew it.
    pub async fn prune(self: &Arc<Self>) -> (u64, u64) {
        let cache = Arc::clone(self);
        disk::blocking(move || cache.prune_here())
            .await
            .unwrap_or((0, 0))
    }

    fn prune_here(&self) -> (u64, u64) {
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
            self.gone(id);
            if let Err(e) = self.store.remove(id) {
                tracing::warn!(image_id = %id, error = %e, "cannot delete a cache entry");
            }
        }
        had
    }
}
