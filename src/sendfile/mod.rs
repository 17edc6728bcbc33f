//! Zero-copy hits: hyper keeps writing response heads, keep-alive and pipelining; only the
//! body bytes of a cache hit go from the page cache to the socket with sendfile(2).
//!
//! A hit's body (`FileBody`) queues a `SendJob` on its connection and yields placeholder
//! chunks (`body::Chunk::File`). The connection's IO (`SendfileIo`), handed those chunks by
//! hyper's queued write strategy (`http1::Builder::writev(true)`), recognises the placeholder
//! by address and calls sendfile for the job instead of writing the zeros. `Chunk::advance`
//! guards the contract: if hyper ever consumes placeholder bytes that sendfile did not send,
//! the connection is poisoned and refuses every later write (ARCHITECTURE.md, "Zero-copy never
//! sends placeholder bytes").
//! The readers of a fill (the client whose miss started it, and coalesced ones) are served
//! the same way from the growing file: each queues one job per span once the span's bytes are
//! written (`Conn::file_chunk`). A read error of such a span continues from the reader's
//! fallback (`Rescue`) instead of failing the connection, as a hit's does.
//!
//! sendfile waits for the disk when its pages are not in the page cache, which would stall a
//! runtime thread and every request on it. So a `Warmer` keeps a window ahead of each
//! connection's sender resident: `cachestat` says whether the next window is cached, and if it
//! is not (or the kernel cannot tell), a blocking-pool task reads it into the page cache
//! (`sys::warm`, no copy to user space) while the connection waits; sendfile only ever sends
//! what is known to be resident. What was sent and warmed is counted per proxy instance
//! (`Counters`, shared by its connections).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

mod chunk;
mod rescue;

use chunk::{is_placeholder, SendJob};
pub use chunk::{Chunk, FileChunk, Hooks, OnDiskError, OnDone, PLACEHOLDER_LEN};
pub use rescue::{Rescue, RestBody, RestFuture, Resume, Taken};

/// A body's error; the same type as `body::BoxError` (this module sits below `body`).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes checked (and, when cold, read into the page cache) ahead of the sender at a time.
const WINDOW: u64 = 8 << 20;
/// The most one sendfile call moves (nginx's `sendfile_max_chunk` default): larger calls
/// measured no faster and cost the sending thread more CPU per GB (bench/RESULTS.md).
const MAX_CALL: u64 = 2 << 20;

/// What one proxy instance's connections did with sendfile, for its metrics: every
/// connection of the instance counts into the same `Counters` (two proxies in one process
/// count their own).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes sent with sendfile.
    sent: AtomicU64,
    /// Bytes read into the page cache off the runtime because they were cold.
    warmed: AtomicU64,
}

impl Counters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn warmed(&self) -> u64 {
        self.warmed.load(Ordering::Relaxed)
    }
}

/// Per-connection state shared by its IO and the hit bodies of its responses.
pub struct Conn {
    /// Jobs in response order; hyper writes one body at a time, so the front is the current one.
    jobs: Mutex<VecDeque<Arc<SendJob>>>,
    poisoned: Arc<AtomicBool>,
    /// The instance's counters.
    counters: Arc<Counters>,
}

impl Conn {
    pub fn new(counters: Arc<Counters>) -> Arc<Conn> {
        Arc::new(Conn {
            jobs: Mutex::default(),
            poisoned: Arc::default(),
            counters,
        })
    }

    fn front(&self) -> Option<Arc<SendJob>> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        while jobs
            .front()
            .is_some_and(|j| j.sent.load(Ordering::Acquire) >= j.len)
        {
            jobs.pop_front();
        }
        jobs.front().cloned()
    }

    /// A response body for `span` of `file`, sent with sendfile on this connection.
    pub fn body(
        self: &Arc<Self>,
        file: Arc<std::fs::File>,
        span: std::ops::Range<u64>,
        hooks: Hooks,
    ) -> FileBody {
        let _ = crate::sys::advise_sequential(&*file, span.start, span.end - span.start);
        FileBody {
            conn: Arc::clone(self),
            job: SendJob::new(file, span, Arc::clone(&self.poisoned), hooks, None),
            queued: false,
            yielded: 0,
        }
    }
}

impl Conn {
    /// One chunk of `span` of `file` (at most `PLACEHOLDER_LEN` bytes), queued at once to be
    /// sent with sendfile: for a body that produces a file's bytes piece by piece (a reader
    /// following a fill), calling this from its `poll_frame` and yielding the chunk
    /// directly. Every byte of the span must already be in the file. With a `rescue`, a
    /// read error of the file continues from the rescue's fallback instead of failing the
    /// connection (`rescue`).
    pub fn file_chunk(
        self: &Arc<Self>,
        file: Arc<std::fs::File>,
        span: std::ops::Range<u64>,
        rescue: Option<Arc<Rescue>>,
    ) -> Chunk {
        let len = (span.end.saturating_sub(span.start)).min(PLACEHOLDER_LEN as u64);
        let span = span.start..span.start + len;
        let poisoned = Arc::clone(&self.poisoned);
        let job = SendJob::new(file, span, poisoned, Hooks::default(), rescue);
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Arc::clone(&job));
        job.chunk(len as usize)
    }
}

/// A hit's body: placeholder chunks for its job, queued on first poll (hyper never polls the
/// body of a HEAD, 204 or 304, so those leave no job behind).
pub struct FileBody {
    conn: Arc<Conn>,
    job: Arc<SendJob>,
    queued: bool,
    yielded: u64,
}

impl Body for FileBody {
    type Data = Chunk;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Chunk>, BoxError>>> {
        if !self.queued {
            self.queued = true;
            let job = Arc::clone(&self.job);
            self.conn
                .jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back(job);
        }
        let left = self.job.len - self.yielded;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(PLACEHOLDER_LEN as u64) as usize;
        self.yielded += n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.job.chunk(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.yielded >= self.job.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.job.len - self.yielded)
    }
}

/// The page-cache window ahead of one connection's current job.
#[derive(Default)]
struct Warmer {
    /// The job the window belongs to (weak: the job's drop counts the hit).
    job: Option<Weak<SendJob>>,
    /// File offset up to which the job's bytes are known to be in the page cache.
    ready: u64,
    /// A blocking-pool task warming up to the given offset.
    pending: Option<(u64, JoinHandle<io::Result<u64>>)>,
    /// A window of this job was cold: warm every later window too. `cachestat` counts pages
    /// whose read is still in flight (the kernel's readahead beyond a warmed window) as
    /// cached, and sendfile would wait for them on the runtime thread.
    cold: bool,
}

impl Warmer {
    /// How many bytes from file offset `pos` of `job` can be sent without waiting for the
    /// disk; `Pending` while the window at `pos` is being read in. Keeps the next window
    /// checked or warming while the current one is sent.
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        job: &Arc<SendJob>,
        pos: u64,
        counters: &Counters,
    ) -> Poll<u64> {
        let end = job.start + job.len;
        let same = self
            .job
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(job)));
        if !same {
            *self = Warmer {
                job: Some(Arc::downgrade(job)),
                ready: pos,
                pending: None,
                cold: false,
            };
        }
        self.ready = self.ready.max(pos);
        loop {
            if let Some((target, handle)) = self.pending.as_mut() {
                match Pin::new(handle).poll(cx) {
                    Poll::Ready(result) => {
                        if let Ok(Ok(n)) = result {
                            counters.warmed.fetch_add(n, Ordering::Relaxed);
                        }
                        // Failed or short: sendfile meets the same error or end of file itself.
                        self.ready = self.ready.max(*target);
                        self.pending = None;
                    }
                    Poll::Pending if self.ready <= pos => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(self.ready - pos),
                }
            }
            if self.ready >= end || self.ready - pos >= WINDOW / 2 {
                return Poll::Ready(self.ready - pos);
            }
            let (from, to) = (self.ready, (self.ready + WINDOW).min(end));
            let cached = !self.cold
                && matches!(
                    crate::sys::is_cached(&*job.file, from, to - from),
                    Ok(Some(true))
                );
            match cached {
                true => self.ready = to,
                false => {
                    self.cold = true;
                    let file = Arc::clone(&job.file);
                    let warm = move || crate::sys::warm(&*file, from, to - from);
                    self.pending = Some((to, tokio::task::spawn_blocking(warm)));
                }
            }
        }
    }
}

/// A connection's byte stream whose TCP socket carries what sendfile writes as is: plain TCP,
/// or (feature `ktls`) TCP that the kernel encrypts.
pub trait Socket: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

#[cfg(feature = "ktls")]
impl Socket for ::ktls::KtlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

/// The socket of an HTTP/1 connection, with sendfile for placeholder slices.
pub struct SendfileIo<S = TcpStream> {
    socket: S,
    conn: Arc<Conn>,
    warmer: Warmer,
    /// TCP_CORK is on: from a hit's head to its last byte, only full segments go out (as
    /// nginx's `tcp_nopush`), so the head shares a segment with the body.
    corked: bool,
}

impl<S: Socket> SendfileIo<S> {
    pub fn new(socket: S, conn: Arc<Conn>) -> Self {
        SendfileIo {
            socket,
            conn,
            warmer: Warmer::default(),
            corked: false,
        }
    }

    fn cork(&mut self, on: bool) {
        if self.corked != on {
            self.corked = on;
            // Only an optimisation: a failure leaves the socket as it was.
            let _ = socket2::SockRef::from(self.socket.tcp()).set_tcp_cork(on);
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.conn.poisoned.load(Ordering::Acquire) {
            Err(io::Error::other(
                "sendfile guard: placeholder bytes were consumed unsent",
            ))
        } else {
            Ok(())
        }
    }

    /// Send up to `max` bytes of the current job.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<usize>> {
        let Some(job) = self.conn.front() else {
            self.conn.poisoned.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::other("sendfile: placeholder without a job")));
        };
        let sent = job.sent.load(Ordering::Acquire);
        if job.rescue.as_ref().is_some_and(|r| r.active()) {
            return self.poll_rescued(cx, &job, max);
        }
        let counters = &self.conn.counters;
        let resident = ready!(self.warmer.poll_ready(cx, &job, job.start + sent, counters));
        let count = (job.len - sent).min(resident).min(MAX_CALL) as usize;
        let count = count.min(max);
        loop {
            let tcp = self.socket.tcp();
            ready!(tcp.poll_write_ready(cx))?;
            let result = tcp.try_io(Interest::WRITABLE, || {
                fail::fail_point!("sendfile::send", |_| Err(io::Error::from_raw_os_error(
                    crate::sys::EIO
                )));
                crate::sys::sendfile(tcp, &*job.file, job.start + sent, count)
            });
            match result {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "cached file shorter than announced",
                    );
                    return self.read_failed(cx, &job, max, e);
                }
                Ok(n) => {
                    self.conn
                        .counters
                        .sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(self.advance(&job, n)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // EIO comes from reading the file (socket errors are EPIPE, ECONNRESET...).
                Err(e) if e.raw_os_error() == Some(crate::sys::EIO) => {
                    return self.read_failed(cx, &job, max, e)
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Count `n` more bytes of `job` as sent.
    fn advance(&mut self, job: &SendJob, n: usize) -> usize {
        let sent = job.sent.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
        if sent >= job.len {
            self.cork(false); // pushes the tail out now
        }
        n
    }

    /// Reading the job's file failed: a followed image continues from its fallback (the
    /// job's rescue); anything else fails the connection, reporting the disk error.
    fn read_failed(
        &mut self,
        cx: &mut Context<'_>,
        job: &Arc<SendJob>,
        max: usize,
        error: io::Error,
    ) -> Poll<io::Result<usize>> {
        let at = job.start + job.sent.load(Ordering::Acquire);
        if job.rescue.as_ref().is_some_and(|r| r.start(at)) {
            tracing::error!(offset = at, error = %error, "cache read failed; continuing from upstream");
            return self.poll_rescued(cx, job, max);
        }
        job.disk_failed(&error);
        Poll::Ready(Err(error))
    }

    /// Write up to `max` bytes of `job` from its rescue's fallback instead of the file.
    fn poll_rescued(
        &mut self,
        cx: &mut Context<'_>,
        job: &Arc<SendJob>,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let Some(rescue) = job.rescue.as_ref() else {
            return Poll::Ready(Err(io::Error::other("sendfile: no fallback")));
        };
        let sent = job.sent.load(Ordering::Acquire);
        let max = (job.len - sent).min(max as u64) as usize;
        let n = ready!(rescue.poll_write(cx, &mut self.socket, job.start + sent, max))?;
        Poll::Ready(Ok(self.advance(job, n)))
    }
}

impl<S: Socket> AsyncRead for SendfileIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl<S: Socket> AsyncWrite for SendfileIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        if is_placeholder(buf) {
            return self.poll_sendfile(cx, buf.len());
        }
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        let bufs: Vec<&IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).collect();
        let Some(first) = bufs.first() else {
            return Poll::Ready(Ok(0));
        };
        if is_placeholder(first) {
            return self.poll_sendfile(cx, first.len());
        }
        if bufs.iter().any(|b| is_placeholder(b)) {
            self.cork(true); // a head followed by a hit's body
        }
        // Ordinary bytes up to the next placeholder, in one writev.
        let run: Vec<IoSlice<'_>> = bufs
            .iter()
            .take_while(|b| !is_placeholder(b))
            .map(|b| IoSlice::new(b))
            .collect();
        Pin::new(&mut self.socket).poll_write_vectored(cx, &run)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// Test support shared by this module's tests and `body::follow`'s: one request served by
/// hyper on a zero-copy connection.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use http_body::Body;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Conn, SendfileIo};

    /// Serve one `GET` over a `SendfileIo` for `conn`, the server set up by `configure` and
    /// answering with `respond`'s response; everything the client received (head and body)
    /// until the connection closed.
    pub(crate) async fn serve_one<B, F>(
        conn: Arc<Conn>,
        configure: impl FnOnce(&mut http1::Builder) + Send + 'static,
        respond: F,
    ) -> Vec<u8>
    where
        F: FnOnce() -> http::Response<B> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let respond = Arc::new(Mutex::new(Some(respond)));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let io = SendfileIo::new(tcp, conn);
            let service = service_fn(move |_req| {
                let respond = respond.lock().expect("lock").take();
                let resp = respond.expect("one request")();
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let mut builder = http1::Builder::new();
            configure(&mut builder);
            let _ = builder.serve_connection(TokioIo::new(io), service).await;
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        raw
    }

    /// The body of a response `serve_one` returned: what follows the head (empty without one).
    pub(crate) fn body_of(raw: &[u8]) -> &[u8] {
        match raw.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => &raw[at + 4..],
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use testing::body_of;

    /// Serve one hit of a file of 0xAB bytes through `SendfileIo` with the given write
    /// strategy; return what the client received (head and body).
    async fn serve_once(writev: bool, len: usize, cold: bool) -> (Vec<u8>, bool, u64) {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&vec![0xAB; len]).expect("write");
        if cold {
            file.sync_all().expect("fsync");
            crate::sys::advise_dont_need(&file, 0, 0).expect("dontneed");
        }
        let file = Arc::new(file);
        let conn = Conn::new(Arc::default());
        let (poisoned, counters) = (Arc::clone(&conn.poisoned), Arc::clone(&conn.counters));
        let server = Arc::clone(&conn);
        let got = testing::serve_one(
            conn,
            move |b| {
                b.writev(writev);
            },
            move || http::Response::new(server.body(file, 0..len as u64, Default::default())),
        )
        .await;
        (got, poisoned.load(Ordering::Acquire), counters.warmed())
    }

    #[tokio::test]
    async fn queued_strategy_sends_the_file() {
        let (raw, poisoned, _) = serve_once(true, 3 << 20, false).await;
        let body = body_of(&raw);
        assert!(!poisoned);
        assert_eq!(body.len(), 3 << 20);
        assert!(body.iter().all(|&b| b == 0xAB));
    }

    #[tokio::test]
    async fn a_cold_file_is_read_in_off_the_runtime_and_sent_whole() {
        const LEN: usize = 20 << 20; // several windows
        let probe = tempfile::tempfile().expect("tempfile");
        let can_tell = crate::sys::is_cached(&probe, 0, 1)
            .expect("cachestat")
            .is_some();
        let (raw, poisoned, warmed) = serve_once(true, LEN, true).await;
        let body = body_of(&raw);
        assert!(!poisoned);
        assert_eq!(body.len(), LEN);
        assert!(body.iter().all(|&b| b == 0xAB));
        if can_tell {
            // The file was dropped from the page cache, so every window was warmed first
            // (after a cold window, readahead's in-flight pages must not count as cached).
            assert!(warmed >= LEN as u64, "not every window was warmed");
        }
    }

    #[tokio::test]
    async fn a_copying_strategy_trips_the_guard_instead_of_sending_zeros() {
        // hyper's flattening strategy copies body chunks into its own buffer: the guard must
        // fail the connection before any placeholder byte is written.
        let (raw, poisoned, _) = serve_once(false, 3 << 20, false).await;
        assert!(poisoned, "the guard did not fire");
        let body = body_of(&raw);
        assert!(body.len() < 3 << 20, "the response must not complete");
        assert!(!body.contains(&0), "placeholder zeros reached the client");
    }

    #[test]
    fn advancing_unsent_placeholder_bytes_poisons_the_connection() {
        let conn = Conn::new(Arc::default());
        let file = Arc::new(tempfile::tempfile().expect("tempfile"));
        let poisoned = Arc::clone(&conn.poisoned);
        let job = SendJob::new(file, 0..10, poisoned, Default::default(), None);
        let mut chunk = job.chunk(10);
        assert!(is_placeholder(bytes::Buf::chunk(&chunk)));
        job.sent.store(4, Ordering::Release);
        bytes::Buf::advance(&mut chunk, 4);
        assert!(!conn.poisoned.load(Ordering::Acquire));
        bytes::Buf::advance(&mut chunk, 1);
        assert!(conn.poisoned.load(Ordering::Acquire));
    }
}
