//! HTTPS on the API listener: rustls (ring) with the certificate chain and key from
//! `server.tls_cert_file` and `server.tls_key_file`. `reload` reads both files again (SIGHUP):
//! new handshakes get the new certificate, open connections keep theirs, and a file that does
//! not load leaves the old certificate in place. Hits on TLS connections cannot use sendfile
//! (the kernel would send plaintext); they are served by the ordinary cache reader, encrypted
//! by rustls in user space.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// The listener's TLS state.
pub struct Tls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// Why the certificate or key could not be used; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({path}): {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and private key into a signing identity.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let bad = |key: &'static str, path: &Path, message: String| TlsError {
        key,
        path: path.display().to_string(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad("server.tls_cert_file", cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("server.tls_cert_file", cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "server.tls_cert_file",
            cert_file,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| bad("server.tls_key_file", key_file, e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad("server.tls_key_file", key_file, e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        bad(
            "server.tls_key_file",
            key_file,
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(certified))
}

impl Tls {
    pub fn new(cert_file: &Path, key_file: &Path) -> Result<Tls, TlsError> {
        let current = Arc::new(Current(RwLock::new(load(cert_file, key_file)?)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                key: "server.tls_cert_file",
                path: cert_file.display().to_string(),
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Load the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load(&self.cert_file, &self.key_file)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}
