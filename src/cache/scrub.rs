//! The bit-rot scrubber: a background worker that re-reads committed entries from the disk
//! itself (`O_DIRECT`, so neither the page cache answers nor is it flooded) at a bounded rate,
//! checks them against the digests they were verified with, and quarantines any that differ
//! or cannot be read. Entries are taken oldest-verified first, each at most once per
//! `cache.scrub_interval`.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::store::unix_ms;
use super::verify::Digests;
use super::Cache;
use crate::digest::Expected;
use crate::outcome::QuarantineReason;

/// Bytes read per blocking call (a multiple of any block size `O_DIRECT` may require).
const CHUNK: usize = 4 << 20;
/// Alignment of the read buffer for `O_DIRECT`.
const ALIGN: usize = 4096;
/// The longest the worker sleeps before looking again (entries come and go).
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ScrubStats {
    /// Bytes read and checked.
    pub verified_bytes: AtomicU64,
    /// Entries checked in full and found intact.
    pub verified_entries: AtomicU64,
    /// Entries found corrupt or unreadable (and quarantined).
    pub corruptions: AtomicU64,
}

pub struct Scrubber {
    cache: Arc<Cache>,
    /// Bytes per second; 0 turns the scrubber off.
    rate: u64,
    interval: Duration,
    pub stats: ScrubStats,
}

/// How long to wait, `elapsed` into a pass that has read `done` bytes, so that the pass
/// averages at most `rate` bytes per second (pure; the worker sleeps it).
pub fn pace(done: u64, rate: u64, elapsed: Duration) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let due = Duration::from_secs_f64(done as f64 / rate as f64);
    due.saturating_sub(elapsed)
}

/// Why an entry failed its check.
enum Verdict {
    Intact,
    Corrupt(QuarantineReason, String),
    /// The entry went away or changed while it was read (evicted, replaced): no verdict.
    Gone,
}

impl Scrubber {
    pub fn new(cache: Arc<Cache>, rate: u64, interval: Duration) -> Scrubber {
        Scrubber {
            cache,
            rate,
            interval,
            stats: ScrubStats::default(),
        }
    }

    /// Run until the task is dropped (at shutdown). Returns at once when the rate is 0.
    pub async fn run(self: Arc<Self>) {
        if self.rate == 0 {
            return;
        }
        let interval_ms = self.interval.as_millis().try_into().unwrap_or(u64::MAX);
        loop {
            let now = unix_ms(crate::clock::now());
            match self.cache.next_to_scrub(now, interval_ms) {
                Ok((id, expected, print)) => match self.check(&id, &expected, print).await {
                    Verdict::Intact => {
                        self.stats.verified_entries.fetch_add(1, Ordering::Relaxed);
                        self.cache
                            .scrubbed(&id, print, unix_ms(crate::clock::now()));
                        tracing::debug!(image_id = %id, "scrub: entry intact");
                    }
                    Verdict::Corrupt(reason, detail) => {
                        let cache = Arc::clone(&self.cache);
                        let _ = crate::disk::blocking(move || {
                            cache.quarantine(&id, print, reason, detail)
                        })
                        .await;
                        // Counted once the entry is out and its report written.
                        self.stats.corruptions.fetch_add(1, Ordering::Relaxed);
                    }
                    Verdict::Gone => {}
                },
                Err(next) => {
                    // Nothing cached: an entry committed from now on is due an interval
                    // after its commit at the earliest.
                    let wait = next
                        .map(|at| Duration::from_millis(at.saturating_sub(now)))
                        .unwrap_or(self.interval)
                        .clamp(Duration::from_millis(10), MAX_IDLE);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Read the entry in full at the configured rate and compare its digests.
    async fn check(
        &self,
        id: &str,
        expected: &Expected,
        print: super::store::Fingerprint,
    ) -> Verdict {
        let opened = {
            let cache = Arc::clone(&self.cache);
            let id = id.to_string();
            crate::disk::blocking(move || cache.open_for_scrub(&id)).await
        };
        let (file, direct) = match opened {
            Ok(Ok((file, direct, now))) if now == print => (Arc::new(file), direct),
            Ok(Ok(_)) => {
                return Verdict::Corrupt(
                    QuarantineReason::ChangedOnDisk,
                    "the data file changed after it was verified".into(),
                )
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Verdict::Gone,
            Ok(Err(e)) => {
                return Verdict::Corrupt(QuarantineReason::ReadError, format!("cannot open: {e}"))
            }
            Err(_) => return Verdict::Gone, // the blocking pool is shutting down
        };
        let started = Instant::now();
        // The digests and the buffer go to each blocking read and come back with its result.
        // The same digests a fill verifies (hash once: the strongest the record names).
        let expected = &expected.to_verify(self.cache.verify_md5());
        let mut digests = Digests::for_expected(expected);
        let mut buf = vec![0u8; CHUNK + ALIGN];
        let mut offset = 0u64;
        loop {
            let f = Arc::clone(&file);
            let read = crate::disk::spawn(move || {
                let result = read_chunk(&f, &mut buf, offset, direct).map(|data| {
                    digests.update(data);
                    data.len()
                });
                (result, digests, buf)
            })
            .await;
            let Ok((result, d, b)) = read else {
                return Verdict::Gone;
            };
            (digests, buf) = (d, b);
            let n = match result {
                Ok(n) => n,
                Err(e) => {
                    return Verdict::Corrupt(
                        QuarantineReason::ReadError,
                        format!("at offset {offset}: {e}"),
                    )
                }
            };
            self.stats
                .verified_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            offset += n as u64;
            if n == 0 || offset >= expected.size {
                break;
            }
            let wait = pace(offset, self.rate, started.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        if !self.cache.is_cached(id) {
            return Verdict::Gone;
        }
        // A file longer or shorter than recorded has another fingerprint (checked at open);
        // the digests and the length read decide the rest.
        match digests.verify(expected) {
            Ok(()) => Verdict::Intact,
            Err(m) => Verdict::Corrupt(m.kind().into(), m.to_string()),
        }
    }
}

/// Fill an aligned slice of `buf` from `offset` (short only at the end of the file); the
/// bytes read. With `direct` IO a read that ends off a block boundary is the end of the file
/// (another read from there would be refused as unaligned).
fn read_chunk<'a>(
    file: &std::fs::File,
    buf: &'a mut [u8],
    offset: u64,
    direct: bool,
) -> std::io::Result<&'a [u8]> {
    let skip = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
    let window = &mut buf[skip..skip + CHUNK];
    let mut got = 0;
    while got < CHUNK {
        match file.read_at(&mut window[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                if direct && got % ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(&window[..got])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_holds_the_average_rate() {
        let mib = 1 << 20;
        // 4 MiB at 2 MiB/s are due at 2 s.
        assert_eq!(
            pace(4 * mib, 2 * mib, Duration::ZERO),
            Duration::from_secs(2)
        );
        assert_eq!(
            pace(4 * mib, 2 * mib, Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        // Behind schedule: no wait.
        assert_eq!(pace(mib, 2 * mib, Duration::from_secs(3)), Duration::ZERO);
        assert_eq!(pace(mib, 0, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn chunks_are_read_whole_and_aligned() {
        use std::io::Write;
        let mut f = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..(CHUNK + 100)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).expect("write");
        let mut buf = vec![0u8; CHUNK + ALIGN];
        let first = read_chunk(&f, &mut buf, 0, false).expect("read").to_vec();
        assert_eq!(first.len(), CHUNK);
        assert_eq!(first, data[..CHUNK]);
        let tail = read_chunk(&f, &mut buf, CHUNK as u64, false).expect("read");
        assert_eq!(tail, &data[CHUNK..]);
        assert_eq!(tail.as_ptr() as usize % ALIGN, 0);
    }
}
