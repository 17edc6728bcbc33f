//! Response body types shared by every path: the boxed `ProxyBody` whose data is a
//! `sendfile::Chunk` (bytes, or a span of a cached file that the connection sends with
//! sendfile), constructors, `IdleTimeout`, which fails a stream that stops moving so hyper
//! aborts the response, and `follow`: the body of a file that is still being written.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub use crate::sendfile::Chunk;

pub mod follow;

/// Error type carried by bodies; hyper only needs it to be boxable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Chunk, BoxError>;

/// A boxed body of plain bytes: requests to Glance, and the rest of an image fetched from it.
pub type BytesBody = UnsyncBoxBody<Bytes, BoxError>;

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
