//! The API listener: accept loop under a connection limit (idle connections make room for
//! newcomers: `slots`), HTTP/1.1 connections with a header-read timeout that also bounds the
//! idle time between keep-alive requests, and graceful drain on shutdown. Each request goes
//! to `request::handle`, which dispatches to the features (`image`, `manage`) or upstream.
//!
//! A connection told to close (to make room, or by the drain) closes only between requests
//! (`serve_until_closed`): a request in progress, or one whose bytes have reached the proxy,
//! is answered with `Connection: close` and the connection ends after it; an idle one with
//! nothing unread is closed at once. Clients resend only a request they know was not sent,
//! so closing under a request that was on its way would fail it.

pub mod access;
pub mod admin;
pub mod kernel_tls;
mod request;
pub mod slots;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_io_timeout::TimeoutStream;
use url::Url;

use self::kernel_tls::Transport;
use crate::config::ServerConfig;
use crate::metrics::Snapshot;
use crate::sendfile;
use crate::state::Shared;

/// Pending connections the kernel keeps for the API listener (capped by
/// `net.core.somaxconn`): deep enough that a burst of connections, or an attacker's, does not
/// make the kernel drop honest clients' SYNs (which they would retry only after seconds).
const BACKLOG: u32 = 4096;

/// Bytes of response body hyper queues per connection before it stops asking the body for
/// more (also the most a request head may take): one chunk of `body::follow`, so a
/// client that stops reading a miss holds about two chunks of the proxy's memory (bench:
/// `benches/stalled.rs`, about 200 KiB per stalled reader in all).
const MAX_QUEUED: usize = crate::body::follow::READ_CHUNK;

/// Bind the API listener (`SO_REUSEADDR`, a deep accept backlog).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The API server: the shared state its handlers draw on, and what the listener itself
/// needs (its settings, TLS, connection slots, its own URL).
pub struct Server {
    pub shared: Shared,
    pub config: ServerConfig,
    /// HTTPS on the API listener (`server.tls_cert_file`), reloadable.
    pub tls: Option<Arc<tls::Tls>>,
    /// Client connection slots (`server.max_connections`).
    pub slots: Arc<slots::Slots>,
    /// Fallback public URL (`http://` + the listen address) for requests without `Host`.
    pub listen_url: Url,
    /// The last `Host` seen and its public URL: clients name the proxy one way, and parsing
    /// the URL anew cost each request more than the rest of its routing.
    pub last_host: std::sync::Mutex<Option<(String, Url)>>,
    /// This instance's access log (its queue and writer thread).
    pub access: Arc<access::AccessLog>,
}

impl Server {
    /// Everything `/metrics` reports: the components and the listener's connections.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connections_open: self.slots.open() as u64,
            connections_shed: self.slots.shed(),
            access_log_dropped: self.access.dropped(),
            log_events_dropped: crate::logging::events_dropped(),
            ..self.shared.snapshot()
        }
    }
}

/// Serve `listener` until `shutdown` resolves, then stop accepting and let open connections
/// finish for at most the configured drain timeout.
pub async fn serve(listener: TcpListener, server: Arc<Server>, shutdown: impl Future<Output = ()>) {
    // One slot per open connection. A newcomer to a full house closes the connection idle
    // longest; only when every connection is busy does it wait (holding one descriptor),
    // and the clients behind it wait in the kernel backlog instead of exhausting descriptors.
    // The drain: `send` tells every connection to close between requests; `closed` resolves
    // when every connection has ended (each holds a receiver).
    let (drain_tx, _) = watch::channel(());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(server.config.header_read_timeout)
        .keep_alive(true)
        // The queued write strategy hands body chunks to the IO as they are (no copy into
        // the head buffer): what sendfile for hits relies on (`sendfile`).
        .writev(true)
        // At most this many response bytes wait in a connection's queue (one reader chunk):
        // a client that stops reading holds no more than that of the proxy's memory.
        .max_buf_size(MAX_QUEUED);
    let mut accept_backoff = Duration::from_millis(5);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(accept_backoff).await;
                    accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        accept_backoff = Duration::from_millis(5);
        let (slot, closed) = tokio::select! {
            _ = &mut shutdown => break,
            slot = server.slots.acquire() => slot,
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            server: Arc::clone(&server),
            stream,
            peer,
            slot: Arc::new(slot),
        };
        let close = Close {
            room: closed,
            drain: drain_tx.subscribe(),
        };
        let served = accepted.serve(builder.clone(), close);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(drain_tx, server.config.drain_timeout).await;
}

/// Tell every connection to close between requests, and let them finish, for at most
/// `deadline`.
async fn drain(connections: watch::Sender<()>, deadline: Duration) {
    tracing::info!(?deadline, "shutting down: no new connections, draining");
    connections.send_replace(());
    tokio::select! {
        _ = connections.closed() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!("drain deadline passed, closing the remaining connections");
        }
    }
}

/// What tells a connection to close: a newcomer needing its slot (`slots`), or the drain.
struct Close {
    room: oneshot::Receiver<()>,
    drain: watch::Receiver<()>,
}

impl Close {
    /// `setup` (a TLS handshake: no request can be on its way yet), given up if the
    /// connection is told to close meanwhile.
    async fn until<T>(
        &mut self,
        setup: impl Future<Output = Result<T, String>>,
    ) -> Result<T, String> {
        tokio::select! {
            done = setup => done,
            _ = &mut self.room => Err("closed to make room during the TLS handshake".into()),
            _ = self.drain.changed() => Err("closed by the drain during the TLS handshake".into()),
        }
    }
}

/// A served connection that can be told to end after the response it is writing, or at once
/// when idle (hyper's `http1::Connection`; it closes only once its writes are flushed).
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

/// Serve `conn` (on socket `fd`) until it ends. Told to close, it closes only between
/// requests: while a request is in progress on it (`Slot::is_busy`), every response says
/// `Connection: close` and hyper ends the connection after one; once idle, it closes if no
/// byte of a next request has arrived (`sys::unread_bytes`), else hyper reads that request
/// first (it is then busy, and answered). An idle connection that has served is closed by
/// hyper (after the last response's bytes are out); one that never did is dropped. The one
/// race left is HTTP/1.1's own: a request written in the microseconds between that check and
/// the close.
async fn serve_until_closed<C: Graceful>(
    conn: C,
    fd: RawFd,
    slot: &slots::Slot,
    close: Close,
) -> Result<(), String> {
    let Close {
        room: mut shed,
        mut drain,
    } = close;
    let mut conn = std::pin::pin!(conn);
    let made_room = tokio::select! {
        ended = conn.as_mut() => return ended.map_err(|e| e.to_string()),
        // Dropped unsent only with the slot, which this connection holds: closes all the same.
        _ = &mut shed => true,
        _ = drain.changed() => false,
    };
    slot.close_after_response();
    let mut hyper_closing = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(ended.map_err(|e| e.to_string()));
        }
        if hyper_closing || slot.is_busy() {
            // Busy: its response says `Connection: close` (or, begun before, the next one
            // does). Closing: hyper ends the connection once its writes are out.
            return Poll::Pending;
        }
        if let Ok(n) = crate::sys::unread_bytes(fd) {
            if n > 0 {
                // A request's bytes: hyper reads them at its next wake-up (the socket is
                // readable), and the request makes the connection busy.
                return Poll::Pending;
            }
        }
        let why = if made_room {
            "to make room"
        } else {
            "for the drain"
        };
        if !slot.has_served() {
            // Nothing was ever written on it, and a head begun and stalled (slowloris) is no
            // request its client can expect an answer to: closed as it drops.
            tracing::debug!("connection that never sent a request closed {why}");
            return Poll::Ready(Ok(()));
        }
        // Idle between requests: hyper flushes what is left of the last response (a hit's
        // last sendfile span may still be going out), then closes.
        tracing::debug!("idle connection closed {why}");
        hyper_closing = true;
        conn.as_mut().graceful_shutdown();
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// One accepted connection, holding its slot until it ends.
struct Accepted {
    server: Arc<Server>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Arc<slots::Slot>,
}

impl Accepted {
    /// The service for this connection's requests.
    fn service(
        &self,
        zero_copy: Option<Arc<sendfile::Conn>>,
        transport: Transport,
    ) -> impl hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<crate::body::ProxyBody>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Send
           + 'static {
        let (server, slot, peer) = (Arc::clone(&self.server), Arc::clone(&self.slot), self.peer);
        service_fn(move |req| {
            let conn = request::Connection {
                peer,
                zero_copy: zero_copy.clone(),
                transport,
                busy: slot.busy(),
            };
            let handled = request::handle(Arc::clone(&server), req, conn);
            let slot = Arc::clone(&slot);
            async move {
                let mut response = handled.await?;
                // Told to close: the connection ends after this response (hyper reads the
                // header), and the client knows not to send another request on it.
                if slot.must_close() {
                    response.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                Ok(response)
            }
        })
    }

    /// TLS if configured, then HTTP/1.1 until the connection ends or the drain closes it.
    async fn serve(self, builder: http1::Builder, close: Close) -> Result<(), String> {
        let timeout = self.server.config.header_read_timeout;
        // The socket under any TLS: its descriptor stays open while `serve_until_closed` runs
        // (the connection owns the stream).
        let fd = self.stream.as_raw_fd();
        let mut close = close;
        let slot = Arc::clone(&self.slot);
        let send_limit = self.server.config.send_timeout;
        match self.server.tls.clone() {
            // Plain HTTP/1: hits go out with sendfile.
            None => {
                let zero_copy = sendfile::Conn::new(Arc::clone(&self.server.shared.sendfile));
                let service = self.service(Some(Arc::clone(&zero_copy)), Transport::Plain);
                let io = sendfile::SendfileIo::new(self.stream, zero_copy);
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                serve_until_closed(conn, fd, &slot, close).await
            }
            // TLS with the kernel encrypting: served like plain HTTP, with sendfile.
            #[cfg(feature = "ktls")]
            Some(tls) if tls.kernel().is_on() => {
                let zero_copy = sendfile::Conn::new(Arc::clone(&self.server.shared.sendfile));
                let service = self.service(Some(Arc::clone(&zero_copy)), Transport::Ktls);
                let io = close
                    .until(within(timeout, ktls_accept(&tls, self.stream)))
                    .await?;
                let io = sendfile::SendfileIo::new(io, zero_copy);
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                serve_until_closed(conn, fd, &slot, close).await
            }
            // TLS in user space: hits are read and encrypted by rustls.
            Some(tls) => {
                let service = self.service(None, Transport::TlsUserspace);
                let io = close
                    .until(within(timeout, accept(&tls, self.stream)))
                    .await?;
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                serve_until_closed(conn, fd, &slot, close).await
            }
        }
    }
}

/// The connection's IO for hyper, failing any write that makes no progress for `limit`
/// (`server.send_timeout`): hyper then closes the connection and its slot is freed.
fn send_timeout<IO>(io: IO, limit: Duration) -> TokioIo<Pin<Box<TimeoutStream<IO>>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut io = TimeoutStream::new(io);
    io.set_write_timeout(Some(limit));
    TokioIo::new(Box::pin(io))
}

/// `setup` (a TLS handshake, and for kTLS the key hand-over) bounded by the header timeout.
async fn within<T>(
    timeout: Duration,
    setup: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, setup)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
}

/// The TLS handshake.
async fn accept<IO>(
    tls: &tls::Tls,
    stream: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tls.acceptor()
        .accept(stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// The TLS handshake, then the session keys handed to the kernel. A refusal by the kernel
/// itself (the ULP, the keys, the cipher) switches kTLS off for later connections; anything
/// else (the client) fails this connection only.
#[cfg(feature = "ktls")]
async fn ktls_accept(
    tls: &tls::Tls,
    stream: tokio::net::TcpStream,
) -> Result<::ktls::KtlsStream<tokio::net::TcpStream>, String> {
    let io = accept(tls, ::ktls::CorkStream::new(stream)).await?;
    ::ktls::config_ktls_server(io).await.map_err(|e| {
        if matches!(
            e,
            ::ktls::Error::UlpError(_)
                | ::ktls::Error::TlsCryptoInfoError(_)
                | ::ktls::Error::KtlsCompatibility(_)
        ) {
            tls.kernel().failed(&e);
        }
        format!("kernel TLS setup failed: {e}")
    })
}
