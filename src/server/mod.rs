//! The API listener: accept loop under a connection limit (idle connections make room for
//! newcomers: `slots`), HTTP/1.1 connections with a header-read timeout that also bounds the
//! idle time between keep-alive requests, and graceful drain on shutdown. Each request goes
//! to `request::handle`, which dispatches to the features (`image`, `manage`) or upstream.

pub mod access;
pub mod admin;
pub mod kernel_tls;
mod request;
pub mod slots;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
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
    let graceful = GracefulShutdown::new();
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
        let served = accepted.serve(builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            tokio::select! {
                ended = served => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                // Idle while another client needed its slot: closed without a response
                // lost (no request was in progress).
                _ = closed => tracing::debug!(%peer, "idle connection closed to make room"),
            }
        });
    }
    drop(listener);
    drain(graceful, server.config.drain_timeout).await;
}

/// Let open connections finish, for at most `deadline`.
async fn drain(graceful: GracefulShutdown, deadline: Duration) {
    tracing::info!(?deadline, "shutting down: no new connections, draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(deadline) => {
            tracing::warn!("drain deadline passed, closing the remaining connections");
        }
    }
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
            request::handle(Arc::clone(&server), req, conn)
        })
    }

    /// TLS if configured, then HTTP/1.1 until the connection ends or the drain closes it.
    async fn serve(self, builder: http1::Builder, watcher: Watcher) -> Result<(), String> {
        let timeout = self.server.config.header_read_timeout;
        let send_limit = self.server.config.send_timeout;
        match self.server.tls.clone() {
            // Plain HTTP/1: hits go out with sendfile.
            None => {
                let zero_copy = sendfile::Conn::new(Arc::clone(&self.server.shared.sendfile));
                let service = self.service(Some(Arc::clone(&zero_copy)), Transport::Plain);
                let io = sendfile::SendfileIo::new(self.stream, zero_copy);
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                watcher.watch(conn).await.map_err(|e| e.to_string())
            }
            // TLS with the kernel encrypting: served like plain HTTP, with sendfile.
            #[cfg(feature = "ktls")]
            Some(tls) if tls.kernel().is_on() => {
                let zero_copy = sendfile::Conn::new(Arc::clone(&self.server.shared.sendfile));
                let service = self.service(Some(Arc::clone(&zero_copy)), Transport::Ktls);
                let io = within(timeout, ktls_accept(&tls, self.stream)).await?;
                let io = sendfile::SendfileIo::new(io, zero_copy);
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                watcher.watch(conn).await.map_err(|e| e.to_string())
            }
            // TLS in user space: hits are read and encrypted by rustls.
            Some(tls) => {
                let service = self.service(None, Transport::TlsUserspace);
                let io = within(timeout, accept(&tls, self.stream)).await?;
                let conn = builder.serve_connection(send_timeout(io, send_limit), service);
                watcher.watch(conn).await.map_err(|e| e.to_string())
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
