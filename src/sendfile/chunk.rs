//! The data of every response body (`Chunk`: bytes, or a span of a cached file) and the
//! zero-copy mechanism behind the file spans: the static placeholder region, `SendJob` (one
//! response's span, queued on its connection) and the advance guard that poisons a connection
//! whose writer consumed bytes sendfile did not send. `Hooks` is what a hit's body reports
//! back to the cache, on both body paths (sendfile and the user-space reader).

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};

use super::rescue::Rescue;

/// Length of the placeholder region, and so of the largest `FileChunk`.
pub const PLACEHOLDER_LEN: usize = 16 << 20;

/// Zero bytes that stand for file bytes the connection sends with sendfile. Nothing reads
/// them on the correct path: the IO wrapper recognises this region by address. Static and
/// zero-initialised, it lives in .bss and costs no memory until touched.
static PLACEHOLDER: [u8; PLACEHOLDER_LEN] = [0; PLACEHOLDER_LEN];

/// Whether `bytes` lies inside the placeholder region.
pub fn is_placeholder(bytes: &[u8]) -> bool {
    let start = PLACEHOLDER.as_ptr() as usize;
    let p = bytes.as_ptr() as usize;
    !bytes.is_empty() && p >= start && p < start + PLACEHOLDER_LEN
}

/// The data of a response body.
pub enum Chunk {
    Bytes(Bytes),
    /// A span of a file, sent by the connection's IO with sendfile.
    File(FileChunk),
}

/// Up to `PLACEHOLDER_LEN` bytes of a `SendJob`.
pub struct FileChunk {
    len: usize,
    advanced: usize,
    job: Arc<SendJob>,
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(b) => b.remaining(),
            Chunk::File(f) => f.len - f.advanced,
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(b) => b.chunk(),
            Chunk::File(f) => &PLACEHOLDER[f.advanced..f.len],
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Bytes(b) => b.advance(cnt),
            Chunk::File(f) => {
                // The guard: hyper may only consume what sendfile really sent. If anything
                // copies placeholder bytes instead (a changed write strategy, HTTP/2, a body
                // reader), the connection is poisoned and its IO refuses every later write,
                // so the zeros never reach the client.
                let consumed = f.job.consumed.fetch_add(cnt as u64, Ordering::AcqRel) + cnt as u64;
                if consumed > f.job.sent.load(Ordering::Acquire) {
                    f.job.poisoned.store(true, Ordering::Release);
                }
                f.advanced = (f.advanced + cnt).min(f.len);
            }
        }
    }
}

/// What a hit's body reports back to the cache: `done` once every byte was sent,
/// `disk_error` if reading the cached file failed (the entry is then quarantined).
#[derive(Default)]
pub struct Hooks {
    done: Option<OnDone>,
    disk_error: Option<OnDiskError>,
}

pub type OnDone = Box<dyn FnOnce() + Send>;
pub type OnDiskError = Box<dyn FnOnce(&std::io::Error) + Send>;

impl Hooks {
    pub fn new(done: Option<OnDone>, disk_error: Option<OnDiskError>) -> Hooks {
        Hooks { done, disk_error }
    }

    pub fn done(&mut self) {
        if let Some(f) = self.done.take() {
            f();
        }
    }

    pub fn disk_failed(&mut self, error: &std::io::Error) {
        if let Some(f) = self.disk_error.take() {
            f(error);
        }
    }
}

/// One response's file span, queued on its connection for sendfile.
pub struct SendJob {
    pub file: Arc<File>,
    /// File offset of the span's first byte.
    pub start: u64,
    pub len: u64,
    /// Bytes sendfile has sent.
    pub sent: AtomicU64,
    /// Bytes hyper has consumed (advanced past).
    consumed: AtomicU64,
    /// The connection's poison flag.
    pub poisoned: Arc<AtomicBool>,
    /// `done` runs when the job is dropped with every byte sent (counting a cache hit).
    hooks: Mutex<Hooks>,
    /// A followed image's fallback: what the IO writes instead when the file cannot be read.
    pub rescue: Option<Arc<Rescue>>,
}

impl SendJob {
    pub fn new(
        file: Arc<File>,
        span: std::ops::Range<u64>,
        poisoned: Arc<AtomicBool>,
        hooks: Hooks,
        rescue: Option<Arc<Rescue>>,
    ) -> Arc<SendJob> {
        Arc::new(SendJob {
            file,
            start: span.start,
            len: span.end.saturating_sub(span.start),
            sent: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            poisoned,
            hooks: Mutex::new(hooks),
            rescue,
        })
    }

    /// Reading the file failed (the disk, not the socket).
    pub fn disk_failed(&self, error: &std::io::Error) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .disk_failed(error);
    }

    /// A data chunk of `len` bytes of this job.
    pub fn chunk(self: &Arc<Self>, len: usize) -> Chunk {
        Chunk::File(FileChunk {
            len: len.min(PLACEHOLDER_LEN),
            advanced: 0,
            job: Arc::clone(self),
        })
    }
}

impl Drop for SendJob {
    fn drop(&mut self) {
        let done = *self.sent.get_mut() == self.len && !self.poisoned.load(Ordering::Acquire);
        if done {
            self.hooks
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .done();
        }
    }
}
