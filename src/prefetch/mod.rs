//! The prefetcher: drains the persistent queue (`queue`) into the cache, a bounded number of
//! images at a time, with the proxy's own credentials (`credentials`).
//!
//! Each image goes through the same path as a client's miss: the record (`ImageInfo::cacheable`),
//! then the image path's plan and fill start (`fetch`), joining a fill that a client started
//! already. An image that is
//! gone (404) or not active leaves the queue; any other failure is retried with exponential
//! backoff. A queued image leaves the queue only once it is cached, so a restart (or a
//! `kill -9`) mid-fetch starts it again.

pub mod credentials;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::sync::Notify;

use crate::cache::fill::{Keep, Progress};
use crate::cache::Cache;
use crate::config::PrefetchConfig;
use crate::fetch::{self, Plan, Started};
use crate::outcome::BypassReason;
use crate::upstream::glance::{Api, ImageInfo};
use crate::upstream::Upstream;
use credentials::Credentials;
use queue::Queue;

/// How one attempt at an image ended.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// In the cache now.
    Cached,
    /// Cannot be cached (gone, not active, too large...): leaves the queue.
    Skipped(Skip),
    /// Worth retrying later.
    Failed(String),
    /// Glance refused the proxy's token.
    Unauthorized,
}

/// Why a queued image cannot be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Glance says 404 to the proxy's own credentials.
    Gone,
    /// The record or the cache rules it out (not active, no size, too large...).
    Uncacheable(BypassReason),
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::Gone => "gone",
            Skip::Uncacheable(reason) => reason.as_str(),
        }
    }
}

#[derive(Default)]
struct Work {
    in_flight: HashSet<String>,
    /// Failed images: attempts so far and when to try again.
    backoff: HashMap<String, (u32, Instant)>,
}

pub struct Prefetcher {
    queue: Queue,
    wake: Notify,
    work: Mutex<Work>,
    cache: Arc<Cache>,
    upstream: Arc<Upstream>,
    credentials: Credentials,
    config: PrefetchConfig,
    failures: AtomicU64,
}

impl Prefetcher {
    /// Open the queue under the cache directory (markers left by an earlier run included).
    pub fn open(
        config: &PrefetchConfig,
        cache: Arc<Cache>,
        upstream: Arc<Upstream>,
    ) -> io::Result<Prefetcher> {
        let queue = crate::disk::startup(|| Queue::open(cache.dir()))?;
        if !queue.is_empty() {
            tracing::info!(queued = queue.len(), "prefetch queue restored");
        }
        let credentials = Credentials::new(&config.credentials, Arc::clone(&upstream));
        Ok(Prefetcher {
            queue,
            wake: Notify::new(),
            work: Mutex::new(Work::default()),
            cache,
            upstream,
            credentials,
            config: config.clone(),
            failures: AtomicU64::new(0),
        })
    }

    fn work(&self) -> MutexGuard<'_, Work> {
        self.work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `id` durably and start on it at once (a failed image is retried now too).
    /// `Ok(false)` if it was queued already.
    pub async fn enqueue(&self, id: &str) -> io::Result<bool> {
        let added = self.queue.push(id).await?;
        self.work().backoff.remove(id);
        self.wake.notify_one();
        Ok(added)
    }

    /// Unqueue `id`; whether it was queued.
    pub async fn dequeue(&self, id: &str) -> bool {
        self.work().backoff.remove(id);
        self.queue.remove(id).await
    }

    /// Unqueue everything; how many were queued.
    pub async fn clear(&self) -> usize {
        self.work().backoff.clear();
        self.queue.clear().await
    }

    /// Queued image ids, oldest first.
    pub fn queued(&self) -> Vec<String> {
        self.queue.ids()
    }

    pub fn is_queued(&self, id: &str) -> bool {
        self.queue.contains(id)
    }

    pub fn in_flight(&self) -> usize {
        self.work().in_flight.len()
    }

    /// Failed attempts since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The worker: start queued images while there is room, then wait for a change or for
    /// the next retry to come due. Dropping it (shutdown) stops its attempts too; their
    /// images stay queued on disk.
    pub async fn run(self: Arc<Self>) {
        let mut attempts = tokio::task::JoinSet::new();
        loop {
            let wait = self.dispatch(&mut attempts);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = attempts.join_next() => {}
            }
        }
    }

    /// Start attempts up to the concurrency limit; returns how long until a retry is due.
    fn dispatch(self: &Arc<Self>, attempts: &mut tokio::task::JoinSet<()>) -> Duration {
        let now = Instant::now();
        let mut next = Duration::from_secs(3600);
        let mut work = self.work();
        for id in self.queue.ids() {
            if work.in_flight.len() >= self.config.concurrency {
                break;
            }
            if work.in_flight.contains(&id) {
                continue;
            }
            if let Some((_, due)) = work.backoff.get(&id) {
                if *due > now {
                    next = next.min(*due - now);
                    continue;
                }
            }
            work.in_flight.insert(id.clone());
            let me = Arc::clone(self);
            attempts.spawn(async move { me.attempt(id).await });
        }
        next
    }

    async fn attempt(self: Arc<Self>, id: String) {
        let started = Instant::now();
        let mut result = self.fetch(&id).await;
        if result == Attempt::Unauthorized && self.credentials.rejected().await {
            // A revoked or expired Keystone token: one more try with a new one.
            result = self.fetch(&id).await;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match result {
            Attempt::Cached => {
                tracing::info!(image_id = %id, elapsed_ms, "prefetch: cached");
                self.finish(&id).await;
            }
            Attempt::Skipped(reason) => {
                tracing::info!(image_id = %id, reason = reason.as_str(), "prefetch: cannot be cached; unqueued");
                self.finish(&id).await;
            }
            Attempt::Failed(_) | Attempt::Unauthorized => {
                let detail = match result {
                    Attempt::Failed(d) => d,
                    _ => "Glance refused the proxy's credentials (401): check [prefetch]".into(),
                };
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut work = self.work();
                if !self.queue.contains(&id) {
                    // Unqueued while it was being fetched: nothing to retry.
                    work.in_flight.remove(&id);
                    return;
                }
                let tries = work.backoff.get(&id).map_or(0, |(n, _)| *n) + 1;
                let wait = backoff(self.config.retry_initial, self.config.retry_max, tries);
                work.backoff
                    .insert(id.clone(), (tries, Instant::now() + wait));
                tracing::warn!(image_id = %id, attempt = tries, retry_in_s = wait.as_secs(), error = %detail, "prefetch failed; will retry");
            }
        }
        self.work().in_flight.remove(&id);
        self.wake.notify_one();
    }

    async fn finish(&self, id: &str) {
        self.work().backoff.remove(id);
        self.queue.remove(id).await;
    }

    async fn fetch(&self, id: &str) -> Attempt {
        let headers = match self.credentials.headers().await {
            Ok(h) => h,
            Err(e) => return Attempt::Failed(e),
        };
        let record = match self.upstream.image_record(Api::V2, &headers, id).await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("image record: {e}")),
        };
        match record.status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Attempt::Unauthorized,
            StatusCode::NOT_FOUND => return Attempt::Skipped(Skip::Gone),
            s => return Attempt::Failed(format!("Glance answered {s} to the image record")),
        }
        let Some(info) = ImageInfo::parse(Api::V2, &record) else {
            return Attempt::Failed("unreadable image record".into());
        };
        let expected = match info.cacheable() {
            Ok(expected) => expected.clone(),
            Err(reason) => return Attempt::Skipped(Skip::Uncacheable(reason)),
        };
        // The image path's own plan and fill start (`fetch`), with the proxy's credentials.
        let download = fetch::Download {
            api: Api::V2,
            caller: &headers,
            image_id: id,
            query: None,
        };
        match fetch::plan(&self.cache, id, &expected, false, None).await {
            Plan::Hit(_) => Attempt::Cached,
            Plan::Join(fill) => outcome(fill.keep()).await,
            // Another request's fill failed before it began: try again later.
            Plan::Bypass(BypassReason::FillFailed) => {
                Attempt::Failed("a fill of the image failed before it began".into())
            }
            Plan::Bypass(reason) if reason.is_transient() => {
                Attempt::Failed(format!("cache: {reason}"))
            }
            Plan::Bypass(reason) => Attempt::Skipped(Skip::Uncacheable(reason)),
            Plan::Fill(starter) => {
                match fetch::start(&self.upstream, starter, &download, &expected).await {
                    Ok(Started::Fill(keep, ..)) => outcome(keep).await,
                    Ok(Started::NoRoom(_, _, reason)) if !reason.is_transient() => {
                        Attempt::Skipped(Skip::Uncacheable(reason))
                    }
                    Ok(Started::NoRoom(_, _, reason)) => {
                        Attempt::Failed(format!("cache: {reason}"))
                    }
                    Ok(Started::Refused(resp, _)) if resp.status() == StatusCode::UNAUTHORIZED => {
                        Attempt::Unauthorized
                    }
                    Ok(Started::Refused(resp, _)) => Attempt::Failed(format!(
                        "Glance answered the download with {}",
                        resp.status()
                    )),
                    Err(e) => Attempt::Failed(format!("download: {e}")),
                }
            }
        }
    }
}

/// Wait for a fill (counted as a reader, so it is never abandoned for lack of clients).
async fn outcome(keep: Keep) -> Attempt {
    match keep.fill().finished().await {
        Progress::Committed => Attempt::Cached,
        Progress::Failed(f) => Attempt::Failed(format!("fill: {}", f.result())),
        other => Attempt::Failed(format!("fill ended as {other:?}")),
    }
}

/// `initial * 2^(tries-1)`, at most `max`.
fn backoff(initial: Duration, max: Duration, tries: u32) -> Duration {
    let factor = 1u32 << tries.saturating_sub(1).min(20);
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), s(600), 1), s(10));
        assert_eq!(backoff(s(10), s(600), 2), s(20));
        assert_eq!(backoff(s(10), s(600), 4), s(80));
        assert_eq!(backoff(s(10), s(600), 7), s(600));
        assert_eq!(backoff(s(10), s(600), u32::MAX), s(600));
    }
}
