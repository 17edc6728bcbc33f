//! The API listener: accept loop under a connection limit (idle connections make room for
//! newcomers: `slots`), HTTP/1.1 connections with a header-read timeout that also bounds the
//! idle time between keep-alive requests, and graceful drain on shutdown.

pub mod admin;
pub mod kernel_tls;
mod request;
pub mod slots;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use self::kernel_tls::Transport;
use crate::app::App;
use crate::serve::sendfile;

/// Pending connections the kernel keeps for the API listener (capped by
/// `net.core.somaxconn`): deep enough that a burst of connections, or an attacker's, does not
/// make the kernel drop honest clients' SYNs (which they would retry only after seconds).
const BACKLOG: u32 = 4096;

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

/// Serve `listener` until `shutdown` resolves, then stop accepting and let open connections
/// finish for at most the configured drain timeout.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let cfg = app.config.server.clone();
    // One slot per open connection. A newcomer to a full house closes the connection idle
    // longest; only when every connection is busy does it wait (holding one descriptor),
    // and the clients behind it wait in the kernel backlog instead of exhausting descriptors.
    let slots = Arc::clone(&app.slots);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .keep_alive(true)
        // The queued write strategy hands body chunks to the IO as they are (no copy into
        // the head buffer): what sendfile for hits relies on (serve::sendfile).
        .writev(true);
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
            slot = slots.acquire() => slot,
        };
        let slot = Arc::new(slot);
        let _ = stream.set_nodelay(true);
        let conn_app = Arc::clone(&app);
        let conn_slot = Arc::clone(&slot);
        let service = move |zero_copy: Option<Arc<sendfile::Conn>>, transport: Transport| {
            service_fn(move |req| {
                let busy = conn_slot.busy();
                let conn = request::Connection {
                    peer,
                    zero_copy: zero_copy.clone(),
                    transport,
                    busy,
                };
                request::handle(Arc::clone(&conn_app), req, conn)
            })
        };
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = app.tls.clone();
        let handshake_timeout = cfg.header_read_timeout;
        tokio::spawn(async move {
            let served = async {
                match tls {
                    // Plain HTTP/1: hits go out with sendfile.
                    None => {
                        let zero_copy = sendfile::Conn::new();
                        let io = sendfile::SendfileIo::new(stream, Arc::clone(&zero_copy));
                        let conn = builder.serve_connection(
                            TokioIo::new(io),
                            service(Some(zero_copy), Transport::Plain),
                        );
                        watcher.watch(conn).await.map_err(|e| e.to_string())
                    }
                    // TLS with the kernel encrypting: served like plain HTTP, with sendfile.
                    #[cfg(feature = "ktls")]
                    Some(tls) if tls.kernel().is_on() => {
                        let io = within(handshake_timeout, ktls_accept(&tls, stream)).await?;
                        let zero_copy = sendfile::Conn::new();
                        let io = sendfile::SendfileIo::new(io, Arc::clone(&zero_copy));
                        let conn = builder.serve_connection(
                            TokioIo::new(io),
                            service(Some(zero_copy), Transport::Ktls),
                        );
                        watcher.watch(conn).await.map_err(|e| e.to_string())
                    }
                    // TLS in user space: hits are read and encrypted by rustls.
                    Some(tls) => {
                        let io = within(handshake_timeout, accept(&tls, stream)).await?;
                        let conn = builder.serve_connection(
                            TokioIo::new(io),
                            service(None, Transport::TlsUserspace),
                        );
                        watcher.watch(conn).await.map_err(|e| e.to_string())
                    }
                }
            };
            tokio::select! {
                ended = served => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                // Idle while another client needed its slot: closed without a response
                // lost (no request was in progress).
                _ = closed => tracing::debug!(%peer, "idle connection closed to make room"),
            }
            drop(slot);
        });
    }

    drop(listener);
    tracing::info!(deadline = ?cfg.drain_timeout, "shutting down: no new connections, draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain deadline passed, closing the remaining connections");
        }
    }
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
