//! The body of a file that may still be growing (a fill in progress, or a committed entry on
//! a connection without zero-copy): it asks its `Spans` how far it may go, and sends what is
//! ready as file spans for sendfile (`sendfile::Conn::file_chunk`) on a zero-copy connection,
//! or as 64 KiB reads otherwise. When the source stops for a reason that says nothing about
//! its bytes (its disk failed), the rest comes from the caller's `Fallback`.
//!
//! This is where the choice between sendfile spans and reads is made; the source (the cache)
//! knows neither bodies nor connections.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

use super::{BoxError, BytesBody, Chunk, ProxyBody};
use crate::sendfile::{self, Hooks, PLACEHOLDER_LEN};

/// Size of each read from the file for a reader in user space. A client that stops reading
/// holds at most about two of these: the one its connection has queued, partly sent, and the
/// next (`server::MAX_QUEUED`).
pub const READ_CHUNK: usize = 64 * 1024;
/// The least a zero-copy reader waits for while the file grows: a fill writer's batch
/// (`cache::fill`'s `BATCH`; a test there keeps the two equal).
pub const SPAN_BATCH: u64 = 256 * 1024;

/// Where a reader gets the rest of the image, from an offset, if its source stops: a body of
/// exactly the bytes from that offset to the image's end, supplied by whoever serves the
/// reader (the image path asks Glance with the caller's credentials).
pub type Fallback = Box<dyn FnOnce(u64) -> RestFuture + Send>;
/// The rest of an image as `Fallback` finds it.
pub type RestFuture = Pin<Box<dyn Future<Output = Result<BytesBody, BoxError>> + Send>>;

/// How far a reader may go, as its source says.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Bytes up to this offset (exclusive) may be sent.
    Upto(u64),
    /// Every byte of the span may be sent and has been: end the body cleanly.
    End,
    /// The source stopped for a reason that says nothing about its bytes: the rest comes
    /// from the fallback.
    Stopped,
    /// The bytes are not to be trusted: fail the body with this message.
    Failed(String),
}

/// A file being followed: what the body asks of its source.
pub trait Spans: Send + 'static {
    /// The image's id, for logs.
    fn image_id(&self) -> &str;
    /// The image's whole size.
    fn size(&self) -> u64;
    /// The open file (sendfile spans are cut from it).
    fn file(&self) -> &Arc<File>;
    /// Wait until bytes from `offset` on are worth sending: at least `batch` of them, unless
    /// `end` (or the image's end) is nearer. Never the image's last byte before its bytes are
    /// known good.
    fn ready(&mut self, offset: u64, end: u64, batch: u64) -> impl Future<Output = Ready> + Send;
    /// Read `len` bytes at `offset` (off the runtime threads).
    fn read(&self, offset: u64, len: usize) -> impl Future<Output = std::io::Result<Bytes>> + Send;
}

/// A response body that streams bytes `span` of `spans` (the whole image: `0..size`).
/// `hooks.done` runs once every byte was produced, `hooks.disk_failed` if reading fails.
///
/// The body is pulled: the next chunk is read only when hyper asks for it, so a client that
/// stops reading holds at most the one chunk its connection has queued
/// (`server::MAX_QUEUED`), never a read-ahead of its own.
///
/// With `zero_copy` (the connection sends file spans with sendfile) the chunks are spans of
/// the file that the connection sends from the page cache the writer has just filled: no
/// read, no copy through user space, no memory held for a client that stops reading. A read
/// error then aborts the response, as on a hit, where a user-space reader continues from
/// the fallback.
pub fn follow<S: Spans>(
    spans: S,
    span: std::ops::Range<u64>,
    fallback: Option<Fallback>,
    hooks: Hooks,
    zero_copy: Option<Arc<sendfile::Conn>>,
) -> ProxyBody {
    let size = spans.size();
    let follower = Follower {
        size,
        end: span.end.min(size),
        offset: span.start,
        spans,
        fallback,
        rest: None,
        hooks,
        batch: match zero_copy {
            Some(_) => SPAN_BATCH,
            None => READ_CHUNK as u64,
        },
        zero_copy,
        started: false,
        ended: false,
    };
    let chunks = futures_util::stream::unfold(follower, |mut follower| async move {
        let item = follower.next().await?;
        Some((item.map(Frame::data), follower))
    });
    http_body_util::StreamBody::new(chunks).boxed_unsync()
}

/// One reader's position in its source.
struct Follower<S> {
    spans: S,
    size: u64,
    /// Where the span ends (exclusive).
    end: u64,
    /// The next byte to send.
    offset: u64,
    fallback: Option<Fallback>,
    /// The rest of the image from the fallback, once the source has stopped.
    rest: Option<BytesBody>,
    hooks: Hooks,
    /// The connection sends file spans itself (sendfile): chunks are spans, not reads.
    zero_copy: Option<Arc<sendfile::Conn>>,
    /// Bytes worth waking for: a read's size, or a span's at least.
    batch: u64,
    /// The body has been asked for a frame before.
    started: bool,
    /// Nothing more: the span was sent, or an error was.
    ended: bool,
}

impl<S: Spans> Follower<S> {
    /// The next chunk of the span; an error fails the body (the client's connection is
    /// aborted, never ended cleanly); `None` once every byte was sent.
    async fn next(&mut self) -> Option<Result<Chunk, BoxError>> {
        if self.ended {
            return None;
        }
        if !self.started {
            // Pending once first, so hyper flushes the response head before the body can
            // fail: a fill that breaks at once still shows as a status and a broken body,
            // never as a connection closed before any head.
            self.started = true;
            tokio::task::yield_now().await;
        }
        let next = match self.rest.is_some() {
            true => self.next_from_rest().await.map(|r| r.map(Chunk::Bytes)),
            false => self.next_from_file().await,
        };
        match &next {
            None => {
                self.ended = true;
                self.hooks.done();
            }
            Some(Err(_)) => self.ended = true,
            Some(Ok(_)) => {}
        }
        next
    }

    /// Wait until the source has bytes past `offset` worth sending, then send them (a span
    /// or a read); or switch to the fallback when the source stopped.
    async fn next_from_file(&mut self) -> Option<Result<Chunk, BoxError>> {
        let limit = match self.spans.ready(self.offset, self.end, self.batch).await {
            Ready::Upto(limit) => limit,
            Ready::End => return None,
            Ready::Stopped => {
                return self
                    .switch_to_rest("cache fill stopped")
                    .await
                    .map(|r| r.map(Chunk::Bytes))
            }
            Ready::Failed(why) => return Some(Err(why.into())),
        };
        if let Some(conn) = &self.zero_copy {
            let span = self.offset..limit.min(self.offset + PLACEHOLDER_LEN as u64);
            self.offset = span.end;
            return Some(Ok(conn.file_chunk(Arc::clone(self.spans.file()), span)));
        }
        self.read(limit).await.map(|r| r.map(Chunk::Bytes))
    }

    /// Read up to one chunk below `limit`.
    async fn read(&mut self, limit: u64) -> Option<Result<Bytes, BoxError>> {
        let len = (limit - self.offset).min(READ_CHUNK as u64) as usize;
        match self.spans.read(self.offset, len).await {
            Ok(chunk) => {
                self.offset += chunk.len() as u64;
                Some(Ok(chunk))
            }
            Err(e) => {
                // The disk failed under us: the bytes read so far were good; the rest comes
                // from Glance when the request runs to the image's end.
                let offset = self.offset;
                tracing::error!(image_id = %self.spans.image_id(), offset, error = %e, "cache read failed; continuing from upstream");
                self.hooks.disk_failed(&e);
                if self.end != self.size {
                    return Some(Err(format!("cache read failed: {e}").into()));
                }
                self.switch_to_rest("cache read failed").await
            }
        }
    }

    /// Continue from the caller's fallback at `offset`, if there is one.
    async fn switch_to_rest(&mut self, why: &str) -> Option<Result<Bytes, BoxError>> {
        let Some(fallback) = self.fallback.take() else {
            return Some(Err(why.to_string().into()));
        };
        match fallback(self.offset).await {
            Ok(body) => {
                self.rest = Some(body);
                self.next_from_rest().await
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The next chunk of the fallback's body; it must end exactly at the image's end.
    async fn next_from_rest(&mut self) -> Option<Result<Bytes, BoxError>> {
        let body = self.rest.as_mut()?;
        loop {
            match body.frame().await {
                None if self.offset == self.size => return None,
                None => {
                    let (at, size) = (self.offset, self.size);
                    return Some(Err(
                        format!("resumed download ended at {at} of {size}").into()
                    ));
                }
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    self.offset += data.len() as u64;
                    if self.offset > self.size {
                        return Some(Err("resumed download overran the image".into()));
                    }
                    return Some(Ok(data));
                }
            }
        }
    }
}
