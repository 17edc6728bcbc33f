//! The rest of a followed image when sendfile cannot read its file: a reader of a fill whose
//! spans go out with sendfile hands its fallback (the image's rest from Glance) to a `Rescue`
//! shared by its body and the spans it queued. When a sendfile call of one of those spans
//! fails on the file (EIO, or the file shorter than the span), the connection's IO starts the
//! fallback at the first unsent byte and writes the bytes it yields in place of the file's,
//! for that span and every later one of the reader; the body then takes the fallback's
//! remaining bytes over once the IO has sent what was queued. So a zero-copy reader continues
//! from Glance after a read error, as a reader in user space does, and the bytes stay in
//! order: one stream, consumed first by the queued spans, then by the body.
//!
//! Memory: at most one frame of the fallback's body is held (`leftover`), and only after a
//! read error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;

use super::BoxError;

/// A body of the image's bytes from some offset to its end.
pub type RestBody = UnsyncBoxBody<Bytes, BoxError>;
/// The rest of an image as a `Resume` finds it.
pub type RestFuture = Pin<Box<dyn Future<Output = Result<RestBody, BoxError>> + Send>>;
/// Where the rest of an image comes from, from an offset: exactly the bytes from that offset
/// to the image's end.
pub type Resume = Box<dyn FnOnce(u64) -> RestFuture + Send>;

/// One reader's fallback, shared by its body and the file spans it queued.
pub struct Rescue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Not used yet.
    resume: Option<Resume>,
    /// Being asked for.
    starting: Option<RestFuture>,
    /// The fallback's body, once it answered.
    body: Option<RestBody>,
    /// Bytes of the body's last frame not written yet.
    leftover: Bytes,
    /// File offset of the next byte the fallback yields (`leftover`'s first, or the body's).
    at: u64,
    /// The fallback is in use: every later span of the reader is written from it.
    active: bool,
    /// The body (follower) waits for the queued spans to be sent from the fallback.
    waiter: Option<Waker>,
}

impl Rescue {
    pub fn new(resume: Resume) -> Rescue {
        Rescue {
            state: Mutex::new(State {
                resume: Some(resume),
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The IO met a read error at file offset `at`: the fallback starts there. False if it
    /// cannot (already taken by the body, whose source stopped first).
    pub fn start(&self, at: u64) -> bool {
        let mut s = self.lock();
        if s.active {
            return s.at == at;
        }
        let Some(resume) = s.resume.take() else {
            return false;
        };
        s.starting = Some(resume(at));
        s.at = at;
        s.active = true;
        true
    }

    /// Whether the fallback stands in for the file.
    pub fn active(&self) -> bool {
        self.lock().active
    }

    /// The fallback, unused, for the body whose source stopped; `None` once the IO started it.
    pub fn take_resume(&self) -> Option<Resume> {
        let mut s = self.lock();
        if s.active {
            return None;
        }
        s.resume.take()
    }

    /// Write up to `max` bytes of the fallback at file offset `pos` to `socket`: the IO's
    /// replacement for one sendfile call. Never `Pending` after writing.
    pub fn poll_write<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        cx: &mut Context<'_>,
        socket: &mut W,
        pos: u64,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        let mut s = self.lock();
        if s.at != pos {
            return Poll::Ready(Err(io::Error::other(
                "resumed download out of step with the response",
            )));
        }
        if let Err(e) = std::task::ready!(s.poll_leftover(cx)) {
            return Poll::Ready(Err(e));
        }
        let n = s.leftover.len().min(max);
        let written = std::task::ready!(Pin::new(socket).poll_write(cx, &s.leftover[..n]))?;
        s.leftover.advance(written);
        s.at += written as u64;
        if let Some(w) = s.waiter.take() {
            w.wake();
        }
        Poll::Ready(Ok(written))
    }

    /// For the body, at file offset `pos`: once the IO has sent every queued span (the
    /// fallback is at `pos`), the bytes it has not yielded yet and its body.
    pub fn poll_take(&self, cx: &mut Context<'_>, pos: u64) -> Poll<Result<Taken, BoxError>> {
        let mut s = self.lock();
        if s.at < pos {
            s.waiter = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if s.at > pos {
            return Poll::Ready(Err("resumed download ahead of the response".into()));
        }
        if let Some(starting) = s.starting.as_mut() {
            let body = std::task::ready!(starting.as_mut().poll(cx))?;
            s.starting = None;
            s.body = Some(body);
        }
        let body = s.body.take().ok_or("resumed download taken twice")?;
        Poll::Ready(Ok(Taken {
            leftover: std::mem::take(&mut s.leftover),
            body,
        }))
    }
}

/// What the body continues with: bytes first, then the body's frames.
pub struct Taken {
    pub leftover: Bytes,
    pub body: RestBody,
}

impl State {
    /// Make sure `leftover` has bytes: wait for the fallback to answer, then for a frame.
    fn poll_leftover(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(starting) = self.starting.as_mut() {
            let body = std::task::ready!(starting.as_mut().poll(cx)).map_err(io::Error::other)?;
            self.starting = None;
            self.body = Some(body);
        }
        while self.leftover.is_empty() {
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Err(io::Error::other("resumed download taken")));
            };
            match std::task::ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "resumed download ended early",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.leftover = data;
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}
