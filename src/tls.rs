//! What both TLS sides share: the crypto provider (rustls with ring), PEM loading whose errors
//! name the config key and file, trust roots, and `Identity`, a certificate and key that
//! SIGHUP reloads: the API listener's server certificate and the client certificate presented
//! to `https://` upstreams are both one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};

/// Why a certificate, key or CA bundle could not be used; names the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key} ({path}): {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

impl TlsError {
    pub fn new(key: &'static str, path: &Path, message: impl fmt::Display) -> TlsError {
        TlsError {
            key,
            path: path.display().to_string(),
            message: message.to_string(),
        }
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The config keys naming an identity's two files, for errors.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    pub cert: &'static str,
    pub key: &'static str,
}

/// A PEM certificate chain (leaf first) and its private key, reloadable.
#[derive(Debug)]
pub struct Identity {
    cert_file: PathBuf,
    key_file: PathBuf,
    keys: Keys,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Identity {
    pub fn load(cert_file: &Path, key_file: &Path, keys: Keys) -> Result<Arc<Identity>, TlsError> {
        Ok(Arc::new(Identity {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            keys,
            current: RwLock::new(read_identity(cert_file, key_file, keys)?),
        }))
    }

    /// Read both files again; on success new handshakes use them, and on failure the current
    /// certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = read_identity(&self.cert_file, &self.key_file, self.keys)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Which setting this identity comes from (for logs).
    pub fn setting(&self) -> &'static str {
        self.keys.cert
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn read_identity(
    cert_file: &Path,
    key_file: &Path,
    keys: Keys,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert_file, keys.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::new(keys.key, key_file, e))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::new(keys.key, key_file, e))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        TlsError::new(
            keys.key,
            key_file,
            format!("does not match the certificate: {e}"),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Every certificate in a PEM file; none is an error.
fn read_certs(file: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| TlsError::new(key, file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::new(key, file, e))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, file, "no certificate in the file"));
    }
    Ok(certs)
}

/// The CAs that server certificates must chain to: every certificate of `ca_file` (config key
/// `key`), or the system's trust store when there is none.
pub fn roots(ca_file: Option<&Path>, key: &'static str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in read_certs(file, key)? {
                store
                    .add(cert)
                    .map_err(|e| TlsError::new(key, file, format!("not a CA certificate: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(TlsError::new(
                    key,
                    Path::new("(unset)"),
                    format!("not set, and the system has no CA certificates{why}; set it to a PEM CA bundle"),
                ));
            }
        }
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: Keys = Keys {
        cert: "test.cert_file",
        key: "test.key_file",
    };

    /// A self-signed certificate for `name`: (cert PEM, key PEM).
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, pair: &(String, String)) {
        std::fs::write(dir.join("c.pem"), &pair.0).expect("cert");
        std::fs::write(dir.join("k.pem"), &pair.1).expect("key");
    }

    fn leaf(identity: &Identity) -> Vec<u8> {
        identity.current().cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_the_identity_and_a_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let first = self_signed("first");
        write(dir.path(), &first);
        let identity = Identity::load(&c, &k, KEYS).expect("load");
        let before = leaf(&identity);

        write(dir.path(), &self_signed("second"));
        identity.reload().expect("reload");
        let after = leaf(&identity);
        assert_ne!(before, after, "the new certificate is served");

        std::fs::write(&c, "not a certificate").expect("junk");
        let err = identity.reload().expect_err("junk does not load");
        assert_eq!(err.key, "test.cert_file");
        assert_eq!(leaf(&identity), after, "the working certificate stays");

        // A certificate with another certificate's key names the key file.
        std::fs::write(&c, &first.0).expect("cert");
        std::fs::write(&k, self_signed("third").1).expect("key");
        let err = identity.reload().expect_err("mismatched key");
        assert_eq!(err.key, "test.key_file");
        assert!(err.message.contains("does not match"), "{err}");
    }

    #[test]
    fn a_ca_file_needs_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "").expect("empty");
        let err = roots(Some(&ca), "upstream.ca_file").expect_err("empty bundle");
        assert_eq!(err.key, "upstream.ca_file");
        let err = roots(Some(&dir.path().join("missing.pem")), "upstream.ca_file")
            .expect_err("missing file");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        std::fs::write(&ca, self_signed("ca").0).expect("ca");
        assert_eq!(
            roots(Some(&ca), "upstream.ca_file").expect("roots").len(),
            1
        );
    }
}
