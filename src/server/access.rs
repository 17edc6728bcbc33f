//! The access log of one server instance (`AccessLog`): a finished request's line is queued
//! without waiting and written by the instance's own thread, never on the runtime thread that
//! answers the client. A hit's body often ends (for hyper) before its bytes are flushed, so a
//! line written inline would delay the first byte by the line's formatting and write (about
//! 35 µs on this project's VMs, `bench/RESULTS.md`).
//!
//! The queue is bounded by lines and by bytes. A full queue drops the line and counts it
//! (`access_log_dropped_total`; the writer warns at most once per `WARN_EVERY`): a request
//! never waits for the log, on a lock or otherwise, and a log that cannot keep up (a stderr
//! read slowly) costs neither time nor memory beyond the bound. A line is finished in `Drop`
//! (an access record's), where nothing can be awaited, so waiting for room would mean
//! blocking a runtime thread.
//!
//! Nothing in a line is trusted: the client's fields are cut to a bound with a marker
//! (`capped`), and every field the client can influence is written as a string value, which
//! the text format quotes and escapes (a value with spaces or quotes stays one field) and the
//! JSON format escapes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest request target (path) and error written whole; longer ones are cut, with a
/// marker.
pub const MAX_TARGET: usize = 2048;
/// The longest method or request id written whole.
pub const MAX_FIELD: usize = 256;

/// One finished request, as the access log writes it.
pub struct Line {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: f64,
    pub upstream: String,
    pub request_id: String,
    pub route: &'static str,
    pub cache: &'static str,
    pub cache_reason: &'static str,
    pub authorized: &'static str,
    pub tls: &'static str,
    pub complete: bool,
    pub error: Option<String>,
}

impl Line {
    /// What the line holds in memory while queued, roughly: its strings and its fixed part.
    fn cost(&self) -> usize {
        let strings = self.method.len()
            + self.path.len()
            + self.upstream.len()
            + self.request_id.len()
            + self.error.as_ref().map_or(0, String::len);
        strings + std::mem::size_of::<Line>()
    }
}

/// `value` whole if it is at most `max` bytes, else its first `max` bytes (at a character
/// boundary) and a marker saying how much was cut.
pub fn capped(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} bytes cut]", &value[..end], value.len() - end)
}

/// How much the queue holds and how the writer paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Lines queued at most.
    pub lines: usize,
    /// Bytes queued at most (`Line::cost`).
    pub bytes: usize,
    /// How often the writer looks for lines while requests keep coming. Requests do not wake
    /// it (a wake-up costs the request about as much as writing the line); it sleeps until
    /// the next line wakes it only after `idle_ticks` ticks in a row found nothing.
    pub tick: Duration,
    pub idle_ticks: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            lines: 4096,
            bytes: 4 << 20,
            tick: Duration::from_millis(50),
            idle_ticks: 20,
        }
    }
}

/// How often the writer says that lines were dropped, at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long `flush` waits for the writer (a stderr that blocks must not hang the exit).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// What the requests and the writer share.
#[derive(Default)]
struct Counts {
    /// Bytes of the lines queued now.
    queued_bytes: AtomicUsize,
    /// Lines queued since start, and lines written.
    queued: AtomicU64,
    written: AtomicU64,
    /// Lines dropped: the queue was full (or the writer gone).
    dropped: AtomicU64,
}

/// One server instance's access log: its queue and its writer thread (which ends when the
/// instance, and so the queue's sender, is dropped).
pub struct AccessLog {
    /// `None` if the writer thread could not start: every line is dropped and counted.
    tx: Option<SyncSender<Line>>,
    counts: Arc<Counts>,
    limits: Limits,
}

impl AccessLog {
    pub fn new() -> AccessLog {
        AccessLog::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> AccessLog {
        let (tx, rx) = mpsc::sync_channel(limits.lines);
        let counts = Arc::new(Counts::default());
        let writer = Writer {
            rx,
            counts: Arc::clone(&counts),
            limits,
            warned: None,
            reported: 0,
        };
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run());
        if let Err(e) = &spawned {
            tracing::error!(error = %e, "cannot start the access log's writer; access lines are dropped");
        }
        AccessLog {
            tx: spawned.is_ok().then_some(tx),
            counts,
            limits,
        }
    }

    /// Queue one finished request's line (nothing when the `access` target is filtered out).
    /// Never waits: a full queue drops the line and counts it.
    pub fn log(&self, line: Line) {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let cost = line.cost();
        let counts = &self.counts;
        let before = counts.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        let sent = match &self.tx {
            Some(tx) if before + cost <= self.limits.bytes => {
                // Counted before the writer can see it, so `flush` never misses it.
                counts.queued.fetch_add(1, Ordering::Relaxed);
                match tx.try_send(line) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                        counts.queued.fetch_sub(1, Ordering::Relaxed);
                        false
                    }
                }
            }
            _ => false,
        };
        if !sent {
            counts.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped since start (for metrics).
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Wait until every line queued so far is written (at exit, after the last request, off
    /// the runtime), for at most `FLUSH_WAIT`.
    pub fn flush(&self) {
        let want = self.counts.queued.load(Ordering::Relaxed);
        let deadline = Instant::now() + FLUSH_WAIT;
        while self.counts.written.load(Ordering::Relaxed) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::new()
    }
}

/// The writer thread's side.
struct Writer {
    rx: Receiver<Line>,
    counts: Arc<Counts>,
    limits: Limits,
    /// When it last warned of dropped lines, and how many it had reported then.
    warned: Option<Instant>,
    reported: u64,
}

impl Writer {
    fn run(mut self) {
        let _watch = Watch;
        let mut idle = 0;
        loop {
            match self.rx.try_recv() {
                Ok(line) => {
                    self.write(&line);
                    idle = 0;
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            self.report_drops();
            if idle < self.limits.idle_ticks {
                idle += 1;
                std::thread::sleep(self.limits.tick);
                continue;
            }
            // Asleep until the next line (a blocked receiver is woken by the send).
            match self.rx.recv() {
                Ok(line) => {
                    self.write(&line);
                    idle = 0;
                }
                Err(_) => return,
            }
        }
    }

    fn write(&self, line: &Line) {
        emit(line);
        let counts = &self.counts;
        counts
            .queued_bytes
            .fetch_sub(line.cost(), Ordering::Relaxed);
        counts.written.fetch_add(1, Ordering::Relaxed);
    }

    /// One warning per `WARN_EVERY` at most, when lines were dropped since the last.
    fn report_drops(&mut self) {
        let dropped = self.counts.dropped.load(Ordering::Relaxed);
        let due = self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if dropped > self.reported && due {
            tracing::warn!(
                dropped = dropped - self.reported,
                total = dropped,
                "the access log cannot keep up (is stderr read?): lines dropped"
            );
            self.reported = dropped;
            self.warned = Some(Instant::now());
        }
    }
}

/// Says so when the writer thread ends by a panic (its queue's receiver is then gone: every
/// later line is dropped and counted).
struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the access log's writer failed; access lines are dropped and counted");
        }
    }
}

fn emit(line: &Line) {
    // Client-influenced values go as `&str`: quoted and escaped by the text format.
    tracing::info!(
        target: "access",
        method = line.method.as_str(),
        path = line.path.as_str(),
        status = line.status,
        bytes = line.bytes,
        duration_ms = line.duration_ms,
        upstream = %line.upstream,
        request_id = line.request_id.as_str(),
        route = line.route,
        cache = line.cache,
        cache_reason = line.cache_reason,
        authorized = line.authorized,
        tls = line.tls,
        outcome = if line.complete { "complete" } else { "aborted" },
        error = line.error.as_deref().unwrap_or(""),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    /// The text-format output of the access log (this test binary's only global subscriber:
    /// the writer threads emit through it).
    fn captured() -> &'static Captured {
        static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
        CAPTURED.get_or_init(|| {
            let captured = Captured::default();
            let sink = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber among the unit tests");
            captured
        })
    }

    fn line(path: &str) -> Line {
        Line {
            method: "GET".into(),
            path: path.into(),
            status: 200,
            bytes: 7,
            duration_ms: 1.5,
            upstream: "-".into(),
            request_id: "req-1".into(),
            route: "image_data",
            cache: "hit",
            cache_reason: "",
            authorized: "allowed",
            tls: "",
            complete: true,
            error: None,
        }
    }

    /// The paths of the lines written that start with `prefix`, in order.
    fn written(prefix: &str) -> Vec<String> {
        let key = format!("path=\"{prefix}");
        captured()
            .text()
            .lines()
            .filter_map(|l| l.split_once(&key).map(|(_, rest)| rest.to_string()))
            .filter_map(|rest| rest.split('"').next().map(|p| format!("{prefix}{p}")))
            .collect()
    }

    const TEST: Limits = Limits {
        lines: 8,
        bytes: 1 << 20,
        tick: Duration::from_millis(5),
        idle_ticks: 2,
    };

    #[test]
    fn lines_are_written_in_order_by_the_writer_thread_and_flush_waits_for_them() {
        captured();
        let log = AccessLog::with_limits(TEST);
        // A few lines: the ticking writer takes them without being woken.
        for n in 0..3 {
            log.log(line(&format!("/order/{n}")));
        }
        let want = |n: usize| (0..n).map(|k| format!("/order/{k}")).collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(5);
        while written("/order/").len() < 3 && Instant::now() < deadline {
            std::thread::sleep(TEST.tick);
        }
        assert_eq!(
            written("/order/"),
            want(3),
            "written within ticks, no flush"
        );
        // Idle past `idle_ticks`: the writer sleeps; the next line wakes it.
        std::thread::sleep(TEST.tick * (TEST.idle_ticks + 3));
        for n in 3..3 + TEST.lines {
            log.log(line(&format!("/order/{n}")));
        }
        log.flush();
        assert_eq!(
            written("/order/"),
            want(3 + TEST.lines),
            "every line, in order"
        );
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        captured();
        // Lines of about 2 KiB against a 16 KiB bound: a burst is cut at the bound, at once.
        let small = Limits {
            lines: 1000,
            bytes: 16 << 10,
            tick: Duration::from_secs(60),
            idle_ticks: 1_000,
        };
        let log = AccessLog::with_limits(small);
        let long = "x".repeat(2000);
        let started = Instant::now();
        for n in 0..100 {
            log.log(line(&format!("/burst/{n}/{long}")));
        }
        assert!(started.elapsed() < Duration::from_secs(1), "nothing waited");
        // Every line was queued or dropped; what waits in the queue stays within its bound
        // (the writer, asleep for a minute, may have taken a line or two before it slept).
        let in_queue = |log: &AccessLog| {
            let c = &log.counts;
            c.queued.load(Ordering::Relaxed) - c.written.load(Ordering::Relaxed)
        };
        let queued = log.counts.queued.load(Ordering::Relaxed);
        assert_eq!(queued + log.dropped(), 100);
        assert!(log.counts.queued_bytes.load(Ordering::Relaxed) <= small.bytes);
        assert!(in_queue(&log) <= 8, "about 2 KiB each in 16 KiB");
        assert!(log.dropped() >= 80, "{} dropped", log.dropped());
        // Bounded by lines as well.
        let few = AccessLog::with_limits(Limits { lines: 2, ..small });
        for n in 0..10 {
            few.log(line(&format!("/few/{n}")));
        }
        let queued = few.counts.queued.load(Ordering::Relaxed);
        assert_eq!(queued + few.dropped(), 10);
        assert!(in_queue(&few) <= 2 && few.dropped() >= 6);
    }

    #[test]
    fn client_fields_are_cut_and_stay_one_field() {
        captured();
        assert_eq!(capped("abc", 3), "abc");
        assert_eq!(capped("abcdef", 3), "abc...[3 bytes cut]");
        assert_eq!(capped("aé", 2), "a...[2 bytes cut]", "at a char boundary");
        let log = AccessLog::with_limits(TEST);
        let forged = Line {
            request_id: "req-1 status=200 upstream=evil injected=yes".into(),
            path: "/forged/a b\"c".into(),
            ..line("")
        };
        log.log(forged);
        log.flush();
        let text = captured().text();
        let written = text
            .lines()
            .find(|l| l.contains("/forged/"))
            .expect("the line");
        assert!(
            written.contains(r#"path="/forged/a b\"c""#),
            "quoted and escaped: {written}"
        );
        assert!(
            written.contains(r#"request_id="req-1 status=200 upstream=evil injected=yes""#),
            "{written}"
        );
        assert!(!written.contains(" injected=yes "), "{written}");
    }
}
