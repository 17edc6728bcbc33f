//! The read side: what a reader follows (`Source`: a fill in progress, or a committed entry)
//! and how far it may go (`Reader`, the `body::follow::Spans` of a source): a fill's bytes as
//! the writer reports them, never the image's last byte before the fill is verified, and
//! whether a stopped fill says anything about its bytes. Reads go to the blocking pool
//! (`disk::blocking`).
//!
//! The body that streams them (file spans for sendfile, or reads) is `body::follow`'s: the
//! cache knows no connection and builds no body.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::fill::{Failure, Fill, Keep, Progress};
use super::Hit;
use crate::body::follow::{Ready, Spans};

/// What a reader streams: a fill in progress (following it), or a committed entry.
pub enum Source {
    Filling(Arc<Fill>),
    Entry(Hit),
}

impl Source {
    /// Follow this source; a reader of a fill keeps the fill going (see `fill::Rules`).
    pub fn reader(self) -> Reader {
        let (keep, progress) = match &self {
            Source::Filling(fill) => (Some(fill.keep()), fill.progress.clone()),
            Source::Entry(_) => (None, watch::channel(Progress::Committed).1),
        };
        Reader {
            source: self,
            _keep: keep,
            progress,
        }
    }
}

/// One reader of a source: its registration with the fill and the fill's progress (a
/// committed entry is `Committed` for good).
pub struct Reader {
    source: Source,
    _keep: Option<Keep>,
    progress: watch::Receiver<Progress>,
}

impl Reader {
    /// How far a reader at `offset` may read in `state`, given the span's `end` and the bytes
    /// worth waking for (`batch`): the last byte only once verified; the state itself when
    /// the fill failed.
    fn readable(
        &self,
        state: &Progress,
        offset: u64,
        end: u64,
        batch: u64,
    ) -> Result<u64, Failure> {
        let size = self.size();
        Ok(match state {
            Progress::Starting => 0,
            Progress::Running { written } => {
                let available = (*written).min(size.saturating_sub(1)).min(end);
                // Wake for a full read, not for every small write of the filler.
                let batch_ready =
                    available >= offset + batch || available + 1 >= size || available >= end;
                if batch_ready {
                    available
                } else {
                    offset
                }
            }
            Progress::Verified | Progress::Committed => end,
            Progress::Failed(f) => return Err(f.clone()),
        })
    }
}

impl Spans for Reader {
    fn image_id(&self) -> &str {
        match &self.source {
            Source::Filling(f) => &f.image_id,
            Source::Entry(h) => &h.image_id,
        }
    }

    fn size(&self) -> u64 {
        match &self.source {
            Source::Filling(f) => f.expected.size,
            Source::Entry(h) => h.expected.size,
        }
    }

    fn file(&self) -> &Arc<File> {
        match &self.source {
            Source::Filling(f) => &f.file,
            Source::Entry(h) => &h.file,
        }
    }

    async fn ready(&mut self, offset: u64, end: u64, batch: u64) -> Ready {
        loop {
            let state = self.progress.borrow_and_update().clone();
            match self.readable(&state, offset, end, batch) {
                Ok(limit) if offset < limit => return Ready::Upto(limit),
                Ok(_) => {}
                // The fill stopped for a reason that says nothing about the bytes (its disk,
                // or it gave up an instant before this reader joined).
                Err(Failure::Disk { .. } | Failure::Abandoned) => return Ready::Stopped,
                Err(failed) => {
                    let (id, result) = (self.image_id(), failed.result().as_str());
                    return Ready::Failed(format!("image {id} failed verification: {result}"));
                }
            }
            if offset >= end && matches!(state, Progress::Verified | Progress::Committed) {
                return Ready::End;
            }
            if self.progress.changed().await.is_err() {
                // The filler is gone without a final word: treat as failed.
                return Ready::Failed("cache fill ended without a result".into());
            }
        }
    }

    async fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let file = Arc::clone(self.file());
        let read = crate::disk::blocking(move || {
            fail::fail_point!("cache::read", |kind| Err(crate::disk::injected(kind)));
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map(|()| Bytes::from(buf))
        })
        .await;
        read.and_then(|r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::follow::{follow, Fallback, SPAN_BATCH};
    use crate::body::{BoxError, BytesBody, ProxyBody};
    use crate::cache::verify::Mismatch;
    use crate::digest::Expected;
    use crate::outcome::DiskFault;
    use crate::sendfile::Hooks;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use std::io::Write;
    use std::time::Duration;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn chunked(data: &[u8], n: usize) -> Vec<Vec<u8>> {
        data.chunks(n).map(<[u8]>::to_vec).collect()
    }

    /// An in-memory body of these chunks.
    fn body(chunks: Vec<Vec<u8>>) -> BytesBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[test]
    fn a_zero_copy_reader_wakes_for_a_writer_batch() {
        assert_eq!(SPAN_BATCH, super::super::fill::BATCH as u64);
    }

    /// A reader of a fill driven by hand: the file, the progress sender and the reader's body.
    struct Driven {
        _dir: tempfile::TempDir,
        file: File,
        progress: watch::Sender<Progress>,
        body: ProxyBody,
    }

    fn driven(size: u64, fallback: Option<Fallback>) -> Driven {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("img");
        let file = File::create(&path).expect("create");
        let read_side = Arc::new(File::open(&path).expect("open"));
        let expected = Expected {
            size,
            md5: None,
            os_hash: None,
        };
        let (fill, progress) = Fill::new("img", expected, read_side);
        let body = follow(
            Source::Filling(fill).reader(),
            0..size,
            fallback,
            Hooks::default(),
            None,
        );
        Driven {
            _dir: dir,
            file,
            progress,
            body,
        }
    }

    /// The body's bytes until it waits, ends (`ended`) or fails (the error). "Waits" is no new
    /// frame within 200 ms: a reader that waits for the fill has no other outward signal.
    async fn drain(body: &mut ProxyBody) -> (Vec<u8>, bool, Option<String>) {
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
            match next {
                Err(_) => return (got, false, None),
                Ok(None) => return (got, true, None),
                Ok(Some(Err(e))) => return (got, false, Some(e.to_string())),
                Ok(Some(Ok(frame))) => {
                    if let Ok(chunk) = frame.into_data() {
                        got.extend_from_slice(bytes::Buf::chunk(&chunk));
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_reader_holds_back_the_last_byte_until_the_fill_is_verified() {
        let d = data(600_000);
        let mut r = driven(d.len() as u64, None);
        r.file.write_all(&d).expect("write");
        let _ = r.progress.send(Progress::Running {
            written: d.len() as u64,
        });
        let (got, ended, error) = drain(&mut r.body).await;
        assert!(got == d[..d.len() - 1], "all but the last byte");
        assert!(!ended && error.is_none(), "waits for the verdict");
        let _ = r.progress.send(Progress::Verified);
        let (rest, ended, error) = drain(&mut r.body).await;
        assert_eq!(
            (rest.as_slice(), ended, error),
            (&d[d.len() - 1..], true, None)
        );
    }

    #[tokio::test]
    async fn a_failed_verification_fails_the_reader() {
        let d = data(300_000);
        let mut r = driven(d.len() as u64, None);
        r.file.write_all(&d).expect("write");
        let _ = r.progress.send(Progress::Running {
            written: d.len() as u64,
        });
        let _ = drain(&mut r.body).await;
        let mismatch = Mismatch::Length {
            expected: d.len() as u64,
            actual: 1,
        };
        let _ = r
            .progress
            .send(Progress::Failed(Failure::Mismatch(mismatch)));
        let (_, ended, error) = drain(&mut r.body).await;
        assert!(!ended, "never a clean end");
        assert!(error.is_some_and(|e| e.contains("failed verification")));
    }

    #[tokio::test]
    async fn a_fill_that_lost_its_disk_hands_the_reader_to_the_fallback() {
        let d = data(700_000);
        let from = Arc::new(std::sync::Mutex::new(None));
        let (asked, rest) = (Arc::clone(&from), d.clone());
        let fallback: Fallback = Box::new(move |offset| {
            *asked.lock().expect("lock") = Some(offset);
            let tail = rest[offset as usize..].to_vec();
            Box::pin(async move { Ok(body(chunked(&tail, 10_000))) })
        });
        let mut r = driven(d.len() as u64, Some(fallback));
        r.file.write_all(&d[..300_000]).expect("write");
        let _ = r.progress.send(Progress::Running { written: 300_000 });
        let (head, _, _) = drain(&mut r.body).await;
        // Readers wake for whole 64 KiB reads: what they sent is a prefix of what was written.
        assert!(!head.is_empty() && head.len() <= 300_000 && head == d[..head.len()]);
        let _ = r.progress.send(Progress::Failed(Failure::Disk {
            written: 300_000,
            fault: DiskFault::NoSpace,
        }));
        let (tail, ended, error) = drain(&mut r.body).await;
        assert_eq!((ended, error), (true, None));
        assert_eq!(*from.lock().expect("lock"), Some(head.len() as u64));
        assert!([head, tail].concat() == d, "the whole image, in order");
    }
}
