//! The fill side: one upstream download per image, gathered into batches, written to a
//! temporary file by a writer thread and hashed off the IO path (a blocking thread per
//! digest), publishing its `Progress` for the readers (`cache::read`) that stream the
//! growing file to their clients.
//!
//! Readers never receive an image's last byte before the fill is verified, so a bad fill
//! always ends every reader's response with an error (an aborted connection), never a clean
//! end with wrong bytes. If the disk fails, the fill stops (`Failure::Disk`) and each reader
//! fetches the rest of the image from Glance itself, so clients still get their image.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use crate::body::{BoxError, IdleTimeout};
use crate::cache::store::StoreError;
use crate::cache::verify::{Digests, Mismatch};
use crate::digest::Expected;
use crate::disk::TempFile;
use crate::outcome::{DiskFault, FillResult};
/// Upstream body bytes gathered into one batch before they go to the writer and the hashers:
/// one `writev` and one wake-up of each thread per batch, not per frame (hyper hands the body
/// over in frames of whatever one socket read returned: 8 KiB to about 400 KiB). A batch holds
/// the frames themselves (`Bytes` shared by the writer and every hasher), never a copy.
pub(super) const BATCH: usize = 256 * 1024;
/// At most this many frames in a batch (an upstream of tiny frames still makes bounded
/// `writev` calls).
const BATCH_FRAMES: usize = 256;
/// Batches queued to the writer and to each hashing thread: with `BATCH` (a batch ends with the
/// frame that fills it, each under 256 KiB plus one hyper frame of up to about 400 KiB), at
/// most about 10 batches alive per fill (8 queued, one being worked on by the slowest thread,
/// one the pump is sending): under 7 MiB of a fill's body in memory.
const PIPE_DEPTH: usize = 8;

/// Frames of the upstream body, shared by the writer and the hashers.
type Batch = Arc<[Bytes]>;

/// Where a fill stands; readers watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Registered; the upstream response head has not been accepted yet.
    Starting,
    /// `written` bytes are in the file.
    Running {
        written: u64,
    },
    /// Every byte is in the file and the digests match: readers may finish. Publishing
    /// (fsync, rename) happens after, so no client waits for the disk flush.
    Verified,
    /// Verified and published.
    Committed,
    Failed(Failure),
}

/// Why a fill did not commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Glance did not answer the download with a usable 200: nothing was written.
    Rejected,
    /// The bytes are not the image (length or digest).
    Mismatch(Mismatch),
    /// The upstream body broke or stalled.
    Upstream(String),
    /// The disk failed after `written` bytes; readers continue from Glance.
    Disk { written: u64, fault: DiskFault },
    /// Every reader left and the fill was not to finish alone.
    Abandoned,
}

impl Failure {
    /// The fill's result, for logs and metrics.
    pub fn result(&self) -> FillResult {
        match self {
            Failure::Rejected => FillResult::Rejected,
            Failure::Mismatch(m) => m.kind().into(),
            Failure::Upstream(_) => FillResult::Upstream,
            Failure::Disk { fault, .. } => (*fault).into(),
            Failure::Abandoned => FillResult::Aborted,
        }
    }
}

/// A fill in progress, shared by its filler and its readers.
pub struct Fill {
    pub image_id: String,
    pub expected: Expected,
    /// Read side of the temporary file (`pread`, so readers share it without seeking). After
    /// the commit's rename it is the committed file.
    pub(super) file: Arc<File>,
    pub(super) progress: watch::Receiver<Progress>,
    readers: AtomicUsize,
}

impl Fill {
    pub fn new(
        image_id: &str,
        expected: Expected,
        file: Arc<File>,
    ) -> (Arc<Fill>, watch::Sender<Progress>) {
        let (tx, rx) = watch::channel(Progress::Starting);
        let fill = Arc::new(Fill {
            image_id: image_id.to_string(),
            expected,
            file,
            progress: rx,
            readers: AtomicUsize::new(0),
        });
        (fill, tx)
    }

    /// Wait until the fill has left `Starting`; returns the state then.
    pub async fn started(&self) -> Progress {
        let mut rx = self.progress.clone();
        loop {
            let now = rx.borrow_and_update().clone();
            if now != Progress::Starting {
                return now;
            }
            if rx.changed().await.is_err() {
                return Progress::Failed(Failure::Rejected);
            }
        }
    }

    pub fn readers(&self) -> usize {
        self.readers.load(Ordering::Relaxed)
    }

    /// Count as a reader until the guard drops, so the fill is not abandoned for lack of
    /// clients (the prefetcher waits on fills this way).
    pub fn keep(self: &Arc<Self>) -> Keep {
        self.readers.fetch_add(1, Ordering::Relaxed);
        Keep(Arc::clone(self))
    }

    /// Wait until the fill has ended: `Committed` or `Failed`.
    pub async fn finished(&self) -> Progress {
        let mut rx = self.progress.clone();
        loop {
            let now = rx.borrow_and_update().clone();
            if matches!(now, Progress::Committed | Progress::Failed(_)) {
                return now;
            }
            if rx.changed().await.is_err() {
                // The filler is gone without a final word: it did not commit.
                return Progress::Failed(Failure::Rejected);
            }
        }
    }
}

/// A reader registration without a body (see `Fill::keep`).
pub struct Keep(Arc<Fill>);

impl Keep {
    /// The fill it keeps going.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.0
    }
}

impl Drop for Keep {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a fill runs: what it verifies, and how long it goes on without readers.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Keep filling when every client has left.
    pub finish_abandoned: bool,
    /// ... but for at most this long after the last one left.
    pub abandoned_timeout: Duration,
    /// A stalled upstream body fails the fill after this long.
    pub idle_timeout: Duration,
    /// Compute and compare md5 too when the record has an os_hash (`cache.verify_md5`).
    pub verify_md5: bool,
}

/// What the filler hands to its owner when the bytes are in and verified.
pub struct Filled {
    pub temp: TempFile,
    pub file: File,
}

/// Stream `body` into `file`, hashing on blocking threads (one per digest verified). Returns
/// the file once every byte is written and the digests match `fill.expected`.
pub async fn run<B>(
    fill: &Fill,
    progress: &watch::Sender<Progress>,
    body: B,
    temp: TempFile,
    file: File,
    life: Rules,
    fetched: &AtomicU64,
) -> Result<Filled, Failure>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    // Hash once: the strongest digest the record names (`Expected::to_verify`), each digest
    // on a blocking thread of its own.
    let checked = fill.expected.to_verify(life.verify_md5);
    let parts = checked.parts();
    let jobs: Vec<_> = parts.iter().map(|part| hasher(part.clone())).collect();
    let mut writer = Writer::spawn(file, fill.expected.size);
    let mut sinks: Vec<mpsc::Sender<Batch>> = writer.chunks.take().into_iter().collect();
    let mut hashers = Vec::new();
    for (tx, job) in jobs {
        sinks.push(tx);
        hashers.push(job);
    }
    let _ = progress.send(Progress::Running { written: 0 });
    let failure = pump(fill, progress, body, sinks, &mut writer, life, fetched).await;
    let file = writer.finish(&fill.image_id).await?;
    // The writer reported its last progress before exiting; publish it.
    let _ = progress.send(Progress::Running {
        written: *writer.written.borrow(),
    });
    if let Some(f) = failure {
        return Err(f);
    }
    for (job, part) in hashers.into_iter().zip(&parts) {
        let digests = job
            .await
            .map_err(|e| Failure::Upstream(format!("hash task: {e}")))?;
        digests.verify(part).map_err(Failure::Mismatch)?;
    }
    // Size only (no digest named, `cache.cache_unverified`): the length still counts.
    if parts.is_empty() && *writer.written.borrow() != fill.expected.size {
        return Err(Failure::Mismatch(Mismatch::Length {
            expected: fill.expected.size,
            actual: *writer.written.borrow(),
        }));
    }
    Ok(Filled { temp, file })
}

/// The blocking thread that appends batches to the temporary file (one `writev` each),
/// reporting bytes written.
struct Writer {
    /// Taken by `run` as the first sink; dropping it ends the thread.
    chunks: Option<mpsc::Sender<Batch>>,
    written: watch::Receiver<u64>,
    /// False once the thread has exited (its progress sender is gone).
    alive: bool,
    job: tokio::task::JoinHandle<Result<File, (StoreError, u64)>>,
}

impl Writer {
    /// The thread for `file`, into which an image of `size` bytes is to go.
    fn spawn(file: File, size: u64) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Batch>(PIPE_DEPTH);
        let (written_tx, written) = watch::channel(0u64);
        let job = crate::disk::spawn(move || {
            let mut file = file;
            // Blocks for the whole image at once; a disk that refuses fails the writes, as
            // it would have without.
            let _ = crate::sys::preallocate(&file, size);
            let mut written = 0u64;
            while let Some(batch) = rx.blocking_recv() {
                fail::fail_point!("cache::write", |kind| Err((
                    StoreError::from(crate::disk::injected(kind)),
                    written
                )));
                if let Err(e) = write_batch(&mut file, &batch) {
                    return Err((StoreError::from(e), written));
                }
                written += batch.iter().map(|b| b.len() as u64).sum::<u64>();
                let _ = written_tx.send(written);
            }
            Ok(file)
        });
        Writer {
            chunks: Some(tx),
            written,
            alive: true,
            job,
        }
    }

    /// Wait for the thread (every sink must be dropped): the file, or the disk's failure.
    async fn finish(&mut self, image_id: &str) -> Result<File, Failure> {
        let ended = (&mut self.job)
            .await
            .map_err(|e| Failure::Upstream(format!("writer task: {e}")))?;
        ended.map_err(|(e, written)| {
            tracing::debug!(image_id, error = %e, written, "cache write failed");
            Failure::Disk {
                written,
                fault: e.fault(),
            }
        })
    }
}

/// Append every byte of `batch` to `file`: `writev`, again for what a short write left.
fn write_batch(file: &mut File, batch: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|b| IoSlice::new(b)).collect();
    let mut left = &mut slices[..];
    IoSlice::advance_slices(&mut left, 0); // skips empty frames
    while !left.is_empty() {
        match file.write_vectored(left) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Frames of the upstream body on their way to the sinks.
#[derive(Default)]
struct Gather {
    frames: Vec<Bytes>,
    bytes: usize,
    /// Body bytes received so far.
    received: u64,
}

impl Gather {
    /// Take in one frame's data; the failure if the body runs past the image's size.
    fn take(&mut self, data: Bytes, size: u64, fetched: &AtomicU64) -> Result<(), Failure> {
        self.received += data.len() as u64;
        fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.received > size {
            return Err(Failure::Mismatch(Mismatch::Length {
                expected: size,
                actual: self.received,
            }));
        }
        self.bytes += data.len();
        self.frames.push(data);
        Ok(())
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH || self.frames.len() >= BATCH_FRAMES
    }

    /// Send what was gathered to every sink (the writer first); false if the writer stopped.
    async fn flush(&mut self, sinks: &[mpsc::Sender<Batch>]) -> bool {
        if self.frames.is_empty() {
            return true;
        }
        let batch: Batch = std::mem::take(&mut self.frames).into();
        self.bytes = 0;
        let Some((disk, hashers)) = sinks.split_first() else {
            return true;
        };
        if disk.send(Arc::clone(&batch)).await.is_err() {
            return false;
        }
        for hasher in hashers {
            let _ = hasher.send(Arc::clone(&batch)).await;
        }
        true
    }
}

/// Move the upstream body into `sinks` (the writer first, then the hashers) in batches,
/// publishing the writer's progress, until the body ends or fails, the writer stops, or the
/// fill is abandoned. `Some` failure if it did not simply end.
///
/// A batch goes out when it is full or when the body has nothing more at hand: a fast
/// upstream makes full batches, a slow one never waits for bytes that are not there.
async fn pump<B>(
    fill: &Fill,
    progress: &watch::Sender<Progress>,
    body: B,
    sinks: Vec<mpsc::Sender<Batch>>,
    writer: &mut Writer,
    life: Rules,
    fetched: &AtomicU64,
) -> Option<Failure>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let size = fill.expected.size;
    let mut body = std::pin::pin!(IdleTimeout::new(body, life.idle_timeout));
    let mut gather = Gather::default();
    let mut orphan_since: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            changed = writer.written.changed(), if writer.alive => {
                match changed {
                    Ok(()) => {
                        let written = *writer.written.borrow_and_update();
                        let _ = progress.send(Progress::Running { written });
                    }
                    Err(_) => writer.alive = false,
                }
            }
            frame = body.frame() => {
                // This frame, and every one already at hand, up to a full batch.
                let mut next = Some(frame);
                let mut ended = false;
                while let Some(frame) = next.take() {
                    match frame {
                        None => ended = true,
                        Some(Err(e)) => return Some(Failure::Upstream(e.to_string())),
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                if let Err(f) = gather.take(data, size, fetched) {
                                    return Some(f);
                                }
                            }
                            if !gather.full() {
                                next = body.frame().now_or_never();
                            }
                        }
                    }
                }
                if !gather.flush(&sinks).await {
                    return None; // the writer stopped: `Writer::finish` has its error
                }
                if fill.readers() > 0 {
                    orphan_since = None;
                } else {
                    let since = *orphan_since.get_or_insert_with(Instant::now);
                    if !life.finish_abandoned || since.elapsed() > life.abandoned_timeout {
                        return Some(Failure::Abandoned);
                    }
                }
                if ended {
                    return None;
                }
            }
        }
    }
}

/// A blocking thread that hashes what it is sent; `Digests` for what `part` names.
fn hasher(part: Expected) -> (mpsc::Sender<Batch>, tokio::task::JoinHandle<Digests>) {
    let (tx, mut rx) = mpsc::channel::<Batch>(PIPE_DEPTH);
    let job = tokio::task::spawn_blocking(move || {
        let mut d = Digests::for_expected(&part);
        while let Some(batch) = rx.blocking_recv() {
            for chunk in batch.iter() {
                d.update(chunk);
            }
        }
        d
    });
    (tx, job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BytesBody;
    use crate::cache::store::Store;
    use crate::digest::HashAlgo;
    use crate::disk::startup;
    use http_body::Frame;
    use md5::Digest as _;
    use std::os::unix::fs::FileExt;

    /// md5 and sha512 of `data`, as a record would state them.
    fn expected_for(data: &[u8]) -> Expected {
        Expected {
            size: data.len() as u64,
            md5: Some(hex::encode(md5::Md5::digest(data))),
            os_hash: Some((HashAlgo::Sha512, hex::encode(sha2::Sha512::digest(data)))),
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// An in-memory upstream body: these chunks, then optionally an error.
    fn body(chunks: Vec<Vec<u8>>, fail: bool) -> BytesBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        if fail {
            frames.push(Err("connection reset".into()));
        }
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    const LIFE: Rules = Rules {
        finish_abandoned: true,
        abandoned_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(5),
        verify_md5: true,
    };

    /// Run a fill of `chunks` against `expected` into a temporary file; the result and the
    /// last progress the fill published.
    async fn fill(
        expected: Expected,
        chunks: Vec<Vec<u8>>,
        fail: bool,
        life: Rules,
        reader: bool,
    ) -> (Result<Vec<u8>, Failure>, Progress) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = startup(|| Store::open(dir.path())).expect("store");
        let (temp, file) = startup(|| store.create_temp("img")).expect("temp");
        let read_side = Arc::new(file.try_clone().expect("clone"));
        let (fill, tx) = Fill::new("img", expected, read_side);
        let _keep = reader.then(|| fill.keep());
        let fetched = std::sync::atomic::AtomicU64::new(0);
        let done = run(&fill, &tx, body(chunks, fail), temp, file, life, &fetched).await;
        let last = tx.borrow().clone();
        let result = done.map(|filled| {
            let mut bytes = Vec::new();
            let len = filled.file.metadata().expect("stat").len() as usize;
            bytes.resize(len, 0);
            filled.file.read_exact_at(&mut bytes, 0).expect("pread");
            startup(|| filled.temp.keep());
            bytes
        });
        (result, last)
    }

    fn chunked(data: &[u8], n: usize) -> Vec<Vec<u8>> {
        data.chunks(n).map(<[u8]>::to_vec).collect()
    }

    #[tokio::test]
    async fn a_fill_of_the_right_bytes_is_verified_and_kept_whole() {
        let d = data(1_000_003);
        let (got, last) = fill(expected_for(&d), chunked(&d, 65_536), false, LIFE, true).await;
        assert!(got.expect("verified") == d);
        assert_eq!(
            last,
            Progress::Running {
                written: d.len() as u64
            }
        );
    }

    #[tokio::test]
    async fn wrong_short_long_and_broken_bodies_fail_with_their_reason() {
        let d = data(200_000);
        let mut flipped = d.clone();
        flipped[150_000] ^= 1;
        let cases: [(Vec<u8>, bool, FillResult); 4] = [
            (flipped, false, FillResult::HashMismatch),
            (d[..199_999].to_vec(), false, FillResult::Short),
            ([d.clone(), vec![0]].concat(), false, FillResult::Long),
            (d[..100_000].to_vec(), true, FillResult::Upstream),
        ];
        for (bytes, fail, want) in cases {
            let (got, _) = fill(expected_for(&d), chunked(&bytes, 4096), fail, LIFE, true).await;
            assert_eq!(got.map(|_| ()).map_err(|f| f.result()), Err(want));
        }
    }

    #[tokio::test]
    async fn a_fill_nobody_reads_is_abandoned_unless_told_to_finish() {
        let d = data(100_000);
        let alone = Rules {
            finish_abandoned: false,
            ..LIFE
        };
        let (got, _) = fill(expected_for(&d), chunked(&d, 4096), false, alone, false).await;
        assert_eq!(got.map(|_| ()), Err(Failure::Abandoned));
        let (got, _) = fill(expected_for(&d), chunked(&d, 4096), false, LIFE, false).await;
        assert!(got.expect("finished alone") == d);
    }

    /// A `Gather` fed these frame lengths, all within a large image.
    fn gathered(lens: &[usize]) -> Gather {
        let mut gather = Gather::default();
        let fetched = AtomicU64::new(0);
        for &len in lens {
            let frame = Bytes::from(vec![0u8; len]);
            gather
                .take(frame, u64::MAX, &fetched)
                .expect("within the size");
        }
        gather
    }

    #[test]
    fn a_batch_ends_at_batch_bytes_or_batch_frames() {
        assert!(!gathered(&[]).full());
        assert!(!gathered(&[BATCH - 1]).full());
        assert!(gathered(&[BATCH]).full(), "BATCH bytes in one frame");
        let tenth = BATCH / 10;
        assert!(!gathered(&[tenth; 9]).full());
        assert!(
            gathered(&[tenth; 11]).full(),
            "the frame that fills it ends it"
        );
        assert!(!gathered(&vec![1; BATCH_FRAMES - 1]).full());
        assert!(
            gathered(&vec![1; BATCH_FRAMES]).full(),
            "BATCH_FRAMES tiny frames"
        );
    }

    #[test]
    fn a_body_past_the_image_size_is_a_length_mismatch_and_still_counted() {
        let mut gather = Gather::default();
        let fetched = AtomicU64::new(0);
        let frame = |n: usize| Bytes::from(vec![1u8; n]);
        assert_eq!(gather.take(frame(600), 1000, &fetched), Ok(()));
        assert_eq!(
            gather.take(frame(400), 1000, &fetched),
            Ok(()),
            "exactly the size"
        );
        let over = gather.take(frame(7), 1000, &fetched);
        let length = Mismatch::Length {
            expected: 1000,
            actual: 1007,
        };
        assert_eq!(over, Err(Failure::Mismatch(length)));
        assert_eq!(fetched.load(Ordering::Relaxed), 1007, "what was fetched");
        assert_eq!(gather.frames.len(), 2, "the overrun is not gathered");
    }

    #[tokio::test]
    async fn a_flush_hands_one_shared_batch_to_the_writer_and_every_hasher() {
        let (writer, mut to_disk) = mpsc::channel::<Batch>(4);
        let (hasher_a, mut to_a) = mpsc::channel::<Batch>(4);
        let (hasher_b, mut to_b) = mpsc::channel::<Batch>(4);
        let sinks = [writer, hasher_a, hasher_b];
        let mut gather = gathered(&[100, 200, 300]);
        assert!(gather.flush(&sinks).await);
        let on_disk = to_disk.try_recv().expect("the writer's batch");
        assert_eq!(
            on_disk.iter().map(Bytes::len).collect::<Vec<_>>(),
            [100, 200, 300]
        );
        for to_hasher in [&mut to_a, &mut to_b] {
            let hashed = to_hasher.try_recv().expect("a hasher's batch");
            assert!(Arc::ptr_eq(&on_disk, &hashed), "the same batch, not a copy");
        }
        assert_eq!((gather.frames.len(), gather.bytes), (0, 0), "emptied");
        // An empty flush sends nothing.
        assert!(gather.flush(&sinks).await);
        for rx in [&mut to_disk, &mut to_a, &mut to_b] {
            assert_eq!(rx.try_recv().err(), Some(mpsc::error::TryRecvError::Empty));
        }
        // The writer has stopped: the flush says so.
        drop(to_disk);
        let mut gather = gathered(&[10]);
        assert!(!gather.flush(&sinks).await, "the writer's receiver is gone");
    }
}
