//! The body of a file that may still be growing (a fill in progress, or a committed entry on
//! a connection without zero-copy): it asks its `Spans` how far it may go, and sends what is
//! ready as file spans for sendfile (`sendfile::Conn::file_chunk`) on a zero-copy connection,
//! or as 64 KiB reads otherwise. When the source stops for a reason that says nothing about
//! its bytes (its disk failed), or reading the file fails, the rest comes from the caller's
//! `Fallback`: for a reader in user space here; for one on sendfile the connection's IO writes
//! the fallback's bytes in place of the spans it could not read, then this body takes the
//! fallback over (`sendfile::Rescue`).
//!
//! This is where the choice between sendfile spans and reads is made; the source (the cache)
//! knows neither bodies nor connections.

use std::fs::File;
use std::future::{poll_fn, Future};
use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;

use super::{BoxError, BytesBody, Chunk, ProxyBody};
use crate::sendfile::{self, Hooks, Rescue, PLACEHOLDER_LEN};

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
/// (The zero-copy path's `sendfile::Resume`, the same type.)
pub type Fallback = sendfile::Resume;
/// The rest of an image as `Fallback` finds it.
pub type RestFuture = sendfile::RestFuture;

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
/// error of the file continues from the fallback on both paths (on sendfile through the
/// connection's IO: `sendfile::Rescue`); without a fallback, or for a range that does not run
/// to the image's end, it fails the body.
pub fn follow<S: Spans>(
    spans: S,
    span: std::ops::Range<u64>,
    fallback: Option<Fallback>,
    hooks: Hooks,
    zero_copy: Option<Arc<sendfile::Conn>>,
) -> ProxyBody {
    let size = spans.size();
    let end = span.end.min(size);
    // On sendfile, the fallback is shared with the spans the connection's IO sends, which
    // meet the file's read errors (the rest only for a span that runs to the image's end).
    let (fallback, rescue) = match (&zero_copy, fallback) {
        (Some(_), Some(f)) if end == size => (None, Some(Arc::new(Rescue::new(f)))),
        (_, f) => (f, None),
    };
    let follower = Follower {
        size,
        end,
        offset: span.start,
        spans,
        fallback,
        rescue,
        rest: None,
        leftover: Bytes::new(),
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
    /// The fallback, on sendfile: shared with the spans queued on the connection.
    rescue: Option<Arc<Rescue>>,
    /// The rest of the image from the fallback, once the source has stopped.
    rest: Option<BytesBody>,
    /// Bytes of the fallback to send before `rest`'s next frame.
    leftover: Bytes,
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
        if self.rescue.as_ref().is_some_and(|r| r.active()) {
            return self.take_rescue().await.map(|r| r.map(Chunk::Bytes));
        }
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
            let (file, rescue) = (Arc::clone(self.spans.file()), self.rescue.clone());
            return Some(Ok(conn.file_chunk(file, span, rescue)));
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
        let shared = self.rescue.as_ref().and_then(|r| r.take_resume());
        let Some(fallback) = self.fallback.take().or(shared) else {
            if self.rescue.as_ref().is_some_and(|r| r.active()) {
                // The connection's IO met a read error first and holds the fallback.
                return self.take_rescue().await;
            }
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

    /// The connection's IO continued this reader's spans from the fallback: once it has sent
    /// every span queued, the fallback's rest is this body's.
    async fn take_rescue(&mut self) -> Option<Result<Bytes, BoxError>> {
        let rescue = Arc::clone(self.rescue.as_ref()?);
        let offset = self.offset;
        match poll_fn(|cx| rescue.poll_take(cx, offset)).await {
            Ok(taken) => {
                self.leftover = taken.leftover;
                self.rest = Some(taken.body);
                self.next_from_rest().await
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The next chunk of the fallback's body; it must end exactly at the image's end.
    async fn next_from_rest(&mut self) -> Option<Result<Bytes, BoxError>> {
        if !self.leftover.is_empty() {
            let data = std::mem::take(&mut self.leftover);
            self.offset += data.len() as u64;
            if self.offset > self.size {
                return Some(Err("resumed download overran the image".into()));
            }
            return Some(Ok(data));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BoxError;
    use std::io::Write;
    use std::sync::Mutex;

    use http_body_util::BodyExt;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// A source that says the whole image is ready, over a file that holds only its first
    /// bytes: reading past them fails (a short read, or sendfile sending nothing).
    struct Cut {
        file: Arc<File>,
        size: u64,
    }

    impl Spans for Cut {
        fn image_id(&self) -> &str {
            "img"
        }

        fn size(&self) -> u64 {
            self.size
        }

        fn file(&self) -> &Arc<File> {
            &self.file
        }

        async fn ready(&mut self, offset: u64, end: u64, _batch: u64) -> Ready {
            if offset >= end {
                Ready::End
            } else {
                Ready::Upto(end)
            }
        }

        async fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            self.file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        }
    }

    /// The image `d` with only its first `cut` bytes in the file, and a fallback that serves
    /// the rest from memory in 10,000-byte frames, recording the offset it was asked for.
    fn cut(d: &[u8], cut: usize) -> (Cut, Fallback, Arc<Mutex<Option<u64>>>) {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&d[..cut]).expect("write");
        let asked = Arc::new(Mutex::new(None));
        let (from, rest) = (Arc::clone(&asked), d.to_vec());
        let fallback: Fallback = Box::new(move |offset| {
            *from.lock().expect("lock") = Some(offset);
            let frames: Vec<Result<Frame<Bytes>, BoxError>> = rest[offset as usize..]
                .chunks(10_000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Box::pin(async move { Ok(body.boxed_unsync()) })
        });
        let spans = Cut {
            file: Arc::new(file),
            size: d.len() as u64,
        };
        (spans, fallback, asked)
    }

    #[tokio::test]
    async fn a_read_error_in_user_space_continues_from_the_fallback() {
        let d = data(300_000);
        let (spans, fallback, asked) = cut(&d, 200_000);
        let mut body = follow(
            spans,
            0..d.len() as u64,
            Some(fallback),
            Hooks::default(),
            None,
        );
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("no body error");
            if let Ok(chunk) = frame.into_data() {
                got.extend_from_slice(bytes::Buf::chunk(&chunk));
            }
        }
        // 64 KiB reads: the one across the cut fails, the rest comes from its start.
        assert_eq!(*asked.lock().expect("lock"), Some(3 * READ_CHUNK as u64));
        assert!(got == d, "the whole image, in order");
    }

    /// Serve `follow` over `spans` on a zero-copy connection (hyper as the server runs it)
    /// and return what the client received after the head, and whether it ended cleanly.
    async fn serve_zero_copy(spans: Cut, fallback: Option<Fallback>) -> (Vec<u8>, bool) {
        let size = spans.size;
        let conn = sendfile::Conn::new(Arc::default());
        let server = Arc::clone(&conn);
        let raw = sendfile::testing::serve_one(
            conn,
            |b| {
                b.writev(true).max_buf_size(READ_CHUNK);
            },
            move || {
                let body = follow(spans, 0..size, fallback, Hooks::default(), Some(server));
                let mut resp = http::Response::new(body);
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, size.into());
                resp
            },
        )
        .await;
        let body = sendfile::testing::body_of(&raw).to_vec();
        let whole = body.len() as u64 == size;
        (body, whole)
    }

    #[tokio::test]
    async fn a_read_error_on_sendfile_continues_from_the_fallback() {
        // Spans of up to 16 MiB: the first one runs across the cut, where sendfile finds
        // the file's end; the IO writes the fallback's bytes from there on, then the body.
        let d = data(3 << 20);
        let (spans, fallback, asked) = cut(&d, 1_000_000);
        let (got, whole) = serve_zero_copy(spans, Some(fallback)).await;
        assert_eq!(*asked.lock().expect("lock"), Some(1_000_000));
        assert!(whole && got == d, "the whole image, in order");
    }

    #[tokio::test]
    async fn a_read_error_on_sendfile_without_a_fallback_breaks_the_body() {
        let d = data(1 << 20);
        let (spans, _, _) = cut(&d, 300_000);
        let (got, whole) = serve_zero_copy(spans, None).await;
        assert!(!whole && got.len() < d.len());
        assert!(d.starts_with(&got), "what arrived is the image's");
    }
}
