//! The request body as sent upstream: how it goes (`request_body`: none, small and read whole
//! first by `read_whole`, or an upload), one `BodySlot` per client request, one `AttemptBody`
//! per upstream attempt.
//!
//! The client's body is taken from the slot only when an attempt first polls it. If an attempt
//! fails before that (refused connection, 502/503 before reading), the body is still in the
//! slot and the request can be replayed against the next upstream. Bytes sent are counted so
//! the response timeout can tell a long upload from a dead upstream.
//!
//! The slot also records the client's part in a failed attempt: its body broke (a malformed
//! chunk, a disconnect: `client_error`), or the proxy is waiting for its next bytes
//! (`waiting_for_client`), so that a client's fault is never blamed on Glance.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};

use super::{error_chain, MAX_BUFFERED_BODY};
use crate::body::{BoxError, IdleTimeout};
use crate::error::Error;

/// Holds the client's request body until an attempt claims it.
pub struct BodySlot<B> {
    /// std Mutex: held only to move the body out, never across an await.
    body: Arc<Mutex<Option<B>>>,
    empty: bool,
    hint: SizeHint,
    progress: Arc<Progress>,
}

/// What the attempts have seen of the client's body, shared by the slot and its attempts.
#[derive(Default)]
struct Progress {
    /// Bytes sent upstream so far (all attempts).
    sent: AtomicU64,
    /// The client's body failed with this error.
    failed: OnceLock<String>,
    /// The last poll of the client's body found no data yet.
    waiting: AtomicBool,
    /// The client's body failed because it sent nothing for `server.client_body_timeout`.
    stalled: AtomicBool,
}

impl<B: Body> BodySlot<B> {
    pub fn new(body: B) -> Self {
        let empty = body.is_end_stream();
        let hint = body.size_hint();
        BodySlot {
            body: Arc::new(Mutex::new(Some(body))),
            empty,
            hint,
            progress: Arc::default(),
        }
    }

    /// A body for one attempt; it claims the client's body on its first poll.
    pub fn attempt(&self) -> AttemptBody<B> {
        AttemptBody {
            slot: Arc::clone(&self.body),
            body: None,
            empty: self.empty,
            hint: self.hint,
            progress: Arc::clone(&self.progress),
        }
    }

    /// True while no attempt has started sending the body (always true without a body).
    pub fn replayable(&self) -> bool {
        self.empty || self.body.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Request body bytes sent upstream so far (all attempts).
    pub fn bytes_sent(&self) -> u64 {
        self.progress.sent.load(Ordering::Relaxed)
    }

    /// Why the client's body failed, if it did: an attempt that failed after this failed
    /// because of the client, not the upstream.
    pub fn client_error(&self) -> Option<&str> {
        self.progress.failed.get().map(String::as_str)
    }

    /// Whether the proxy is waiting for the client's next body bytes (the upstream is not
    /// holding the upload up): a stall now is the client's.
    pub fn client_stalled(&self) -> bool {
        self.progress.stalled.load(Ordering::Relaxed)
    }

    pub fn waiting_for_client(&self) -> bool {
        self.progress.waiting.load(Ordering::Relaxed)
    }
}

/// A request body for one upstream attempt.
pub struct AttemptBody<B> {
    slot: Arc<Mutex<Option<B>>>,
    body: Option<B>,
    empty: bool,
    hint: SizeHint,
    progress: Arc<Progress>,
}

/// The body was claimed by an earlier attempt that failed midway: it cannot be sent again.
#[derive(Debug, thiserror::Error)]
#[error("request body already consumed by an earlier attempt")]
pub struct BodyConsumed;

impl<B> Body for AttemptBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.empty {
            return Poll::Ready(None);
        }
        if self.body.is_none() {
            let claimed = self.slot.lock().ok().and_then(|mut b| b.take());
            match claimed {
                Some(body) => self.body = Some(body),
                None => return Poll::Ready(Some(Err(BodyConsumed.into()))),
            }
        }
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        let progress = &this.progress;
        progress
            .waiting
            .store(polled.is_pending(), Ordering::Relaxed);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    progress
                        .sent
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                if e.is::<crate::body::BodyStalled>() {
                    progress.stalled.store(true, Ordering::Relaxed);
                }
                let _ = progress.failed.set(super::error_chain(&*e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty || self.body.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// How a client's request body goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestBody {
    /// None at all.
    None,
    /// Up to `MAX_BUFFERED_BODY` with a `Content-Length`: read whole first.
    Small,
    /// Larger, or of unknown length (image data): streamed, one of `upstream.max_uploads`.
    Upload,
}

pub(super) fn request_body<B: Body>(parts: &request::Parts, body: &B) -> RequestBody {
    if body.is_end_stream() {
        return RequestBody::None;
    }
    let length = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or(body.size_hint().exact());
    match length {
        Some(0) => RequestBody::None,
        Some(n) if n <= MAX_BUFFERED_BODY => RequestBody::Small,
        _ => RequestBody::Upload,
    }
}

/// A small request body, read whole: `timeout` between pieces (a 408 past it), at most
/// `MAX_BUFFERED_BODY` (what `Content-Length` said).
pub(super) async fn read_whole<B>(body: B, timeout: Duration) -> Result<Bytes, Error>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let limited = Limited::new(IdleTimeout::new(body, timeout), MAX_BUFFERED_BODY as usize);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<crate::body::BodyStalled>() => Err(Error::ClientTimeout(format!(
            "request body: no data for {timeout:?}"
        ))),
        Err(e) => Err(Error::BadRequest(format!(
            "request body: {}",
            error_chain(&*e)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full};

    #[tokio::test]
    async fn unpolled_attempt_leaves_body_replayable() {
        let slot = BodySlot::new(Full::new(Bytes::from_static(b"hello")));
        assert!(slot.replayable());
        let first = slot.attempt();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first); // e.g. the connection was refused
        assert!(slot.replayable());
        let second = slot.attempt().collect().await.expect("body").to_bytes();
        assert_eq!(&second[..], b"hello");
        assert_eq!(slot.bytes_sent(), 5);
        assert!(!slot.replayable());
        // A third attempt cannot resend what is gone: it fails instead of sending nothing.
        assert!(slot.attempt().collect().await.is_err());
    }

    /// One answer to `poll_frame`.
    type Step = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

    /// A client body that answers each poll with the next step.
    struct Script(std::collections::VecDeque<Step>);

    impl Body for Script {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Step {
            self.0.pop_front().unwrap_or(Poll::Ready(None))
        }
    }

    #[test]
    fn a_failing_client_body_is_recorded_as_the_clients() {
        let slot = BodySlot::new(Script(
            [
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc"))))),
                Poll::Pending,
                Poll::Ready(Some(Err("invalid chunk size".into()))),
            ]
            .into(),
        ));
        let mut attempt = slot.attempt();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = || Pin::new(&mut attempt).poll_frame(&mut cx);
        assert!(matches!(poll(), Poll::Ready(Some(Ok(_)))));
        assert!(!slot.waiting_for_client() && slot.client_error().is_none());
        // Nothing more yet: the proxy waits for the client.
        assert!(poll().is_pending());
        assert!(slot.waiting_for_client());
        assert!(matches!(poll(), Poll::Ready(Some(Err(_)))));
        assert!(!slot.waiting_for_client());
        assert_eq!(slot.client_error(), Some("invalid chunk size"));
        assert_eq!(slot.bytes_sent(), 3);
    }

    #[tokio::test]
    async fn empty_bodies_are_always_replayable() {
        let slot = BodySlot::new(Empty::<Bytes>::new());
        assert!(slot.attempt().is_end_stream());
        let _ = slot.attempt().collect().await.expect("empty");
        assert!(slot.replayable());
    }
}
