//! Test certificates (rcgen): `cargo run --example mkcert -- DIR` writes, as PEM, a self-signed
//! CA (`ca.pem`), a server leaf for 127.0.0.1 and localhost (`server.pem`, `server-key.pem`),
//! a client leaf with CN gcp-client (`client.pem`, `client-key.pem`), both signed by that CA,
//! and an unrelated second CA (`other-ca.pem`) for negative checks.

use std::error::Error;
use std::path::Path;

use rcgen::ExtendedKeyUsagePurpose::{self, ClientAuth, ServerAuth};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A self-signed CA: its PEM certificate and an issuer for leaves.
fn ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A leaf signed by `issuer`: (certificate PEM, key PEM).
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn main() -> Result<()> {
    let dir = std::env::args_os().nth(1).ok_or(
        "usage: mkcert DIR (writes ca.pem, server[-key].pem, client[-key].pem, other-ca.pem)",
    )?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (ca_pem, issuer) = ca("glance-cache-proxy test CA")?;
    let sans = vec!["127.0.0.1".into(), "localhost".into()];
    let server = leaf(&issuer, "127.0.0.1", sans, ServerAuth)?;
    let client = leaf(&issuer, "gcp-client", Vec::new(), ClientAuth)?;
    let (other_pem, _) = ca("unrelated test CA")?;
    write(dir, "ca.pem", &ca_pem)?;
    write(dir, "server.pem", &server.0)?;
    write(dir, "server-key.pem", &server.1)?;
    write(dir, "client.pem", &client.0)?;
    write(dir, "client-key.pem", &client.1)?;
    write(dir, "other-ca.pem", &other_pem)?;
    Ok(())
}
