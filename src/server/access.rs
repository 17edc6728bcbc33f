//! The access log's own thread: a finished request's line is formatted and written there, not
//! on the runtime thread that answers the client. A hit's body often ends (for hyper) before
//! its bytes are flushed, so a line written inline would delay the first byte by the line's
//! formatting and write (about 35 µs on this project's VMs, `bench/RESULTS.md`). Lines keep
//! their order and none is dropped: a full queue makes the request wait for room.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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

/// Lines waiting for the writer before a finishing request waits for room.
const QUEUED: usize = if cfg!(test) { 8 } else { 4096 };

/// How often the writer looks for lines while requests keep coming. Requests do not wake it
/// (a wake-up costs the request about as much as writing the line); it sleeps until the next
/// line wakes it only after `IDLE_TICKS` ticks in a row found nothing.
const TICK: Duration = Duration::from_millis(if cfg!(test) { 5 } else { 50 });
const IDLE_TICKS: u32 = if cfg!(test) { 2 } else { 20 };

/// How long `flush` waits for the writer (a stderr that blocks must not hang the exit).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

struct State {
    lines: Vec<Line>,
    /// The writer sleeps until woken (no tick): the next line wakes it.
    asleep: bool,
    /// The writer thread is gone (it panicked): lines are written inline.
    dead: bool,
    /// Flushes asked for: the writer bumps `written` after writing what was queued before.
    flushes: u64,
    written: u64,
}

struct Queue {
    state: Mutex<State>,
    /// The writer waits here (ticks, or asleep).
    work: Condvar,
    /// Requests waiting for room and `flush` wait here.
    room: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

static QUEUE: Queue = Queue {
    state: Mutex::new(State {
        lines: Vec::new(),
        asleep: false,
        dead: false,
        flushes: 0,
        written: 0,
    }),
    work: Condvar::new(),
    room: Condvar::new(),
};

/// Whether the writer thread started (on first use).
static STARTED: OnceLock<bool> = OnceLock::new();

/// The writer's queue, its thread started on first use (`None` if no thread could start:
/// lines are then written inline).
fn queue() -> Option<&'static Queue> {
    let started = STARTED.get_or_init(|| {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(write_lines)
            .is_ok()
    });
    started.then_some(&QUEUE)
}

/// Marks the queue dead when the writer thread ends (it ends only by a panic), and wakes
/// whoever waits for room or a flush: they then write inline.
struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        QUEUE.lock().dead = true;
        QUEUE.room.notify_all();
    }
}

fn write_lines() {
    let _watch = Watch;
    let queue = &QUEUE;
    let mut state = queue.lock();
    let mut idle = 0;
    loop {
        if state.lines.is_empty() && state.flushes == state.written {
            idle += 1;
            if idle < IDLE_TICKS {
                state = queue
                    .work
                    .wait_timeout(state, TICK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            } else {
                state.asleep = true;
                state = queue.work.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            continue;
        }
        idle = 0;
        let lines = std::mem::take(&mut state.lines);
        let flushes = state.flushes;
        queue.room.notify_all();
        drop(state);
        for line in &lines {
            emit(line);
        }
        state = queue.lock();
        state.written = flushes;
        queue.room.notify_all();
        // A full queue, or a flush asked meanwhile: write again at once.
        if state.flushes == state.written && state.lines.len() < QUEUED {
            state = queue
                .work
                .wait_timeout(state, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Log one finished request (nothing when the `access` target is filtered out).
pub fn log(line: Line) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let Some(queue) = queue() else {
        emit(&line);
        return;
    };
    let mut state = queue.lock();
    while state.lines.len() >= QUEUED && !state.dead {
        queue.work.notify_one();
        state = queue.room.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    if state.dead {
        drop(state);
        emit(&line);
        return;
    }
    state.lines.push(line);
    if std::mem::take(&mut state.asleep) {
        queue.work.notify_one();
    }
}

/// Wait until every line logged so far is written (at exit, after the last request), for
/// at most `FLUSH_WAIT`.
pub fn flush() {
    if STARTED.get() != Some(&true) {
        return;
    }
    let queue = &QUEUE;
    let mut state = queue.lock();
    state.flushes += 1;
    let want = state.flushes;
    state.asleep = false;
    queue.work.notify_one();
    let deadline = std::time::Instant::now() + FLUSH_WAIT;
    while state.written < want && !state.dead {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        state = queue
            .room
            .wait_timeout(state, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

fn emit(line: &Line) {
    tracing::info!(
        target: "access",
        method = %line.method,
        path = %line.path,
        status = line.status,
        bytes = line.bytes,
        duration_ms = line.duration_ms,
        upstream = %line.upstream,
        request_id = %line.request_id,
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
    use std::sync::{Arc, Mutex};

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

    #[test]
    fn lines_are_written_in_order_by_the_writer_thread_and_flush_waits_for_them() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        // The writer thread emits through the global subscriber (this test binary's only one).
        tracing::subscriber::set_global_default(subscriber)
            .expect("the only global subscriber among the unit tests");
        let written = || {
            let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
            text.lines()
                .filter_map(|l| l.split("path=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .filter(|path| path.starts_with("/access-test/"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let want = |n: usize| {
            (0..n)
                .map(|k| format!("/access-test/{k}"))
                .collect::<Vec<_>>()
        };
        // A few lines: the ticking writer takes them without being woken.
        for n in 0..3 {
            log(line(&format!("/access-test/{n}")));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while written().len() < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(TICK);
        }
        assert_eq!(written(), want(3), "written within ticks, no flush");
        // Idle past IDLE_TICKS: the writer sleeps; then more lines than the queue holds (the
        // first wakes it, later ones wait for room), and a flush.
        std::thread::sleep(TICK * (IDLE_TICKS + 3));
        for n in 3..(3 + 5 * QUEUED) {
            log(line(&format!("/access-test/{n}")));
        }
        flush();
        assert_eq!(
            written(),
            want(3 + 5 * QUEUED),
            "every line, in order, before flush returns"
        );
    }
}
