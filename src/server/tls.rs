//! HTTPS on the API listener: rustls (ring) with the certificate chain and key from
//! `server.tls_cert_file` and `server.tls_key_file`, held by a `tls::Identity` that SIGHUP
//! reloads: new handshakes get the new certificate, open connections keep theirs, and a file
//! that does not load leaves the old certificate in place. Hits on TLS connections use
//! sendfile only with kernel TLS (`server::kernel_tls`; the handshake then offers only AES-GCM
//! suites, which every kTLS kernel supports); otherwise they are served by the ordinary cache
//! reader, encrypted by rustls in user space.

use std::path::Path;
use std::sync::Arc;

use rustls::server::ResolvesServerCert;
use tokio_rustls::TlsAcceptor;

use super::kernel_tls::KernelTls;
use crate::config::KtlsMode;
use crate::tls::{provider, Identity, Keys, TlsError};

const KEYS: Keys = Keys {
    cert: "server.tls_cert_file",
    key: "server.tls_key_file",
};

/// The listener's TLS state.
pub struct Tls {
    identity: Arc<Identity>,
    acceptor: TlsAcceptor,
    kernel: KernelTls,
}

impl Tls {
    pub fn new(cert_file: &Path, key_file: &Path, ktls: KtlsMode) -> Result<Tls, TlsError> {
        let identity = Identity::load(cert_file, key_file, KEYS)?;
        let kernel = KernelTls::detect(ktls);
        let mut provider = (*provider()).clone();
        if kernel.is_on() {
            provider.cipher_suites.retain(|s| {
                use rustls::CipherSuite::*;
                matches!(
                    s.suite(),
                    TLS13_AES_128_GCM_SHA256
                        | TLS13_AES_256_GCM_SHA384
                        | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                        | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                        | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                )
            });
        }
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(KEYS.cert, cert_file, e))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&identity) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // kTLS takes the session keys from rustls after the handshake.
        config.enable_secret_extraction = kernel.is_on();
        Ok(Tls {
            identity,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            kernel,
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Whether hits go out with kernel TLS and sendfile.
    pub fn kernel(&self) -> &KernelTls {
        &self.kernel
    }

    /// The certificate and key, reloaded on SIGHUP.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }
}
