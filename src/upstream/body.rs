//! The request body as sent upstream: one `BodySlot` per client request, one `AttemptBody`
//! per upstream attempt.
//!
//! The client's body is taken from the slot only when an attempt first polls it. If an attempt
//! fails before that (refused connection, 502/503 before reading), the body is still in the
//! slot and the request can be replayed against the next upstream. Bytes sent are counted so
//! the response timeout can tell a long upload from a dead upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// Holds the client's request body until an attempt claims it.
pub struct BodySlot<B> {
    /// std Mutex: held only to move the body out, never across an await.
    body: Arc<Mutex<Option<B>>>,
    empty: bool,
    hint: SizeHint,
    sent: Arc<AtomicU64>,
}

impl<B: Body> BodySlot<B> {
    pub fn new(body: B) -> Self {
        let empty = body.is_end_stream();
        let hint = body.size_hint();
        BodySlot {
            body: Arc::new(Mutex::new(Some(body))),
            empty,
            hint,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A body for one attempt; it claims the client's body on its first poll.
    pub fn attempt(&self) -> AttemptBody<B> {
        AttemptBody {
            slot: Arc::clone(&self.body),
            body: None,
            empty: self.empty,
            hint: self.hint,
            sent: Arc::clone(&self.sent),
        }
    }

    /// True while no attempt has started sending the body (always true without a body).
    pub fn replayable(&self) -> bool {
        self.empty || self.body.lock().map(|b| b.is_some()).unwrap_or(false)
    }

    /// Request body bytes sent upstream so far (all attempts).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// A request body for one upstream attempt.
pub struct AttemptBody<B> {
    slot: Arc<Mutex<Option<B>>>,
    body: Option<B>,
    empty: bool,
    hint: SizeHint,
    sent: Arc<AtomicU64>,
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
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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

    #[tokio::test]
    async fn empty_bodies_are_always_replayable() {
        let slot = BodySlot::new(Empty::<Bytes>::new());
        assert!(slot.attempt().is_end_stream());
        let _ = slot.attempt().collect().await.expect("empty");
        assert!(slot.replayable());
    }
}
