//! The process's log (tracing events on stderr): events are queued and written by their own
//! thread, so a runtime thread that logs never waits on stderr, its lock or a full pipe.
//!
//! A stderr read slowly (a stalled journald, a `2>` into a pipe nobody drains) would
//! otherwise block every runtime thread that logs a warning, and warnings come per request
//! in an outage ("upstream request failed", "serving a cached image on a grant"). Events
//! go through `tracing_appender`'s non-blocking writer, lossy: when its queue of
//! `EVENT_LINES` lines is full, an event is dropped and counted (`log_events_dropped_total`).
//! Access lines are not events of a request thread: each server's `AccessLog` has its own
//! bounded queue and writer thread (`server::access`), which writes to stderr directly, so
//! its lines are bounded and counted there, once.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Events queued at most for the writer thread (each a formatted line, a few hundred bytes).
pub const EVENT_LINES: usize = 8192;

/// The target of access lines (`server::access`), written by their own writer thread.
pub const ACCESS_TARGET: &str = "access";

/// The process's event queue's drop counter, once `init` has run.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Install the process's subscriber: `RUST_LOG`, when set, wins over `log.level`. Keep the
/// returned guard until exit: dropping it writes the events still queued.
pub fn init(config: &Config) -> WorkerGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let (events, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(EVENT_LINES)
        .thread_name("log-events")
        .finish(std::io::stderr());
    let _ = DROPPED.set(events.error_counter());
    let writer = events
        .with_filter(|meta| meta.target() != ACCESS_TARGET)
        .or_else(std::io::stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// Events dropped because the event queue was full (0 before `init`, as in tests).
pub fn events_dropped() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}
