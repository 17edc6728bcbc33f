//! The upstream client's connector: TCP with the connect timeout, then rustls for `https`
//! (server certificates always verified, against `upstream.ca_file` or the system's roots; the
//! client certificate when one is configured), and a request count on each connection
//! (`Counting`, `reused`): hyper-util's errors do not say whether a connection that broke had
//! carried a request before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};

use crate::config::UpstreamConfig;
use crate::tls::{Identity, Keys, TlsError};

/// The connector: TCP, TLS for `https`, and a request count on each connection.
pub(super) type Connector = Counting<HttpsConnector<HttpConnector>>;

/// How many requests a connection has carried, kept in its `Connected` extras (each checkout
/// of a pooled connection sees the same counter).
#[derive(Clone, Default)]
struct Uses(Arc<AtomicU64>);

/// Counts one more request on the connection `captured` was sent on; whether it had
/// carried one before (a reused keep-alive connection).
pub(super) fn reused(captured: &CaptureConnection) -> bool {
    let meta = captured.connection_metadata();
    let Some(connected) = meta.as_ref() else {
        return false;
    };
    let mut extras = http::Extensions::new();
    connected.get_extras(&mut extras);
    extras
        .get::<Uses>()
        .is_some_and(|uses| uses.0.fetch_add(1, Ordering::Relaxed) > 0)
}

/// A connector whose connections carry a `Uses` counter: hyper-util's errors do not say
/// whether the connection that broke was a reused one.
#[derive(Clone)]
pub(super) struct Counting<C>(C);

impl<C> tower_service::Service<Uri> for Counting<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, C::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), C::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            Ok(Counted {
                io: connecting.await?,
                uses: Uses::default(),
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// A connection and its request count.
    pub(super) struct Counted<T> {
        #[pin]
        io: T,
        uses: Uses,
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.uses.clone())
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}

/// TCP with the connect timeout, then TLS for `https` URLs: rustls with the safe default
/// protocol versions, server certificates verified (never optional) against `upstream.ca_file`
/// or the system's roots, and the client certificate when one is configured.
pub(super) fn connector(
    cfg: &UpstreamConfig,
) -> Result<(Connector, Option<Arc<Identity>>), TlsError> {
    const CA: &str = "upstream.ca_file";
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(cfg.connect_timeout));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let any_https = cfg.urls.iter().any(|u| u.scheme() == "https");
    let roots = match crate::tls::roots(cfg.ca_file.as_deref(), CA) {
        Ok(roots) => roots,
        // Plain-http upstreams need no roots (a Keystone behind https would then fail
        // verification, naming the certificate).
        Err(_) if cfg.ca_file.is_none() && !any_https => rustls::RootCertStore::empty(),
        Err(e) => return Err(e),
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(CA, std::path::Path::new("-"), e))?
        .with_root_certificates(roots);
    let identity = match &cfg.client_identity {
        Some((cert, key)) => Some(Identity::load(
            cert,
            key,
            Keys {
                cert: "upstream.client_cert_file",
                key: "upstream.client_key_file",
            },
        )?),
        None => None,
    };
    let tls = match &identity {
        Some(id) => builder.with_client_cert_resolver(Arc::clone(id) as _),
        None => builder.with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok((Counting(https), identity))
}
