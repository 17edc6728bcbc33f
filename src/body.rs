//! Response body types shared by every path: the boxed `ProxyBody` whose data is a `Chunk`
//! (bytes, or a span of a cached file that the connection sends with sendfile), constructors,
//! and `IdleTimeout`, which fails a stream that stops moving so hyper aborts the response.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

/// Error type carried by bodies; hyper only needs it to be boxable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Chunk, BoxError>;

/// Box a body of bytes as a `ProxyBody`.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_frame(|f| f.map_data(Chunk::Bytes))
        .map_err(Into::into)
        .boxed_unsync()
}

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    boxed(Full::new(bytes.into()).map_err(|never| -> BoxError { match never {} }))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    boxed(Empty::<Bytes>::new().map_err(|never| -> BoxError { match never {} }))
}

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
}

impl SendJob {
    pub fn new(
        file: Arc<File>,
        span: std::ops::Range<u64>,
        poisoned: Arc<AtomicBool>,
        hooks: Hooks,
    ) -> Arc<SendJob> {
        Arc::new(SendJob {
            file,
            start: span.start,
            len: span.end.saturating_sub(span.start),
            sent: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            poisoned,
            hooks: Mutex::new(hooks),
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

/// The body error `IdleTimeout` yields.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyStalled(pub Duration);

pin_project_lite::pin_project! {
    /// Wraps a body and fails it when no frame arrives for `limit`.
    ///
    /// A stalled upstream must not hold a client forever, and a failed body makes hyper abort
    /// the response (no terminal chunk, or a short Content-Length), never end it cleanly.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        limit: Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, limit: Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep(limit),
            limit,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.as_mut().reset(Instant::now() + *this.limit);
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(*this.limit).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stalled_body() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream_from(rx);
        let mut body = Box::pin(IdleTimeout::new(
            StreamBody::new(stream),
            Duration::from_secs(5),
        ));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .expect("receiver alive");
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"abc")));
        // Nothing more is sent: after the limit the body must fail, not hang or end cleanly.
        let next = body.frame().await.expect("an error frame");
        assert!(next.is_err());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_passes_a_moving_body() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut body = Box::pin(IdleTimeout::new(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(5),
        ));
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
        });
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            frame.expect("no timeout while data keeps coming");
            n += 1;
        }
        assert_eq!(n, 4);
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_core::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
