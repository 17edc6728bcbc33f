//! HTTPS on the API listener, with certificates from a CA made here (rcgen): passthrough and
//! cache hits over TLS (served by the user-space reader, byte-exact, no sendfile), a SIGHUP
//! that swaps the certificate for new connections while an open one keeps working, and a
//! certificate file that does not load named in the error.

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use support::{pattern, FakeGlance, ProxyProcess, BIN};

/// A CA: its PEM certificate, and an issuer for leaves.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

/// A leaf for 127.0.0.1 and localhost, signed by `issuer`: (cert PEM, key PEM).
fn leaf(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let params =
        CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
    let cert = params.signed_by(&key, issuer).expect("leaf");
    (cert.pem(), key.serialize_pem())
}

fn write_pair(dir: &Path, pair: &(String, String)) {
    std::fs::write(dir.join("cert.pem"), &pair.0).expect("cert");
    std::fs::write(dir.join("key.pem"), &pair.1).expect("key");
}

/// An HTTP/1.1 connection over TLS that trusts only `ca_pem`.
async fn connect(
    url: &str,
    ca_pem: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let cert: CertificateDer<'static> = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = url.trim_start_matches("http://");
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn fetch(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, Bytes, http::HeaderMap) {
    sender.ready().await.expect("ready");
    let req = http::Request::get(path)
        .header("host", "127.0.0.1")
        .header("x-auth-token", "t")
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body, headers)
}

#[tokio::test]
async fn https_serves_passthrough_and_hits_and_reloads_on_sighup() {
    let glance = FakeGlance::start().await;
    let data = pattern(3 << 20, 901);
    glance.add_image("img", data.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, issuer1) = ca("first CA");
    write_pair(dir.path(), &leaf(&issuer1));
    let config = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display()
    );
    std::fs::write(dir.path().join("proxy.toml"), config).expect("config");
    let args = vec![
        "--config".to_string(),
        dir.path().join("proxy.toml").display().to_string(),
        "--upstream".into(),
        glance.url.clone(),
        "--cache-dir".into(),
        dir.path().join("cache").display().to_string(),
    ];
    let proxy = ProxyProcess::start(BIN, &args, dir.path().join("proxy.log")).await;

    let mut conn = connect(&proxy.url, &ca1)
        .await
        .expect("TLS with the first CA");
    // Passthrough: version documents point at https://.
    let (status, body, _) = fetch(&mut conn, "/versions").await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("https://127.0.0.1"),
        "{body:?}"
    );
    // A miss, then hits (whole and ranged) on the same TLS connection.
    for round in 0..3 {
        let (status, body, _) = fetch(&mut conn, "/v2/images/img/file").await;
        assert_eq!(status, 200, "round {round}");
        assert!(body == data, "round {round}: bytes differ");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        glance.downloads("img"),
        1,
        "hits over TLS come from the cache"
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(plain_http(&proxy.url).await.is_err());

    // New certificate from another CA, then SIGHUP.
    let (ca2, issuer2) = ca("second CA");
    write_pair(dir.path(), &leaf(&issuer2));
    let pid = proxy.pid();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    support::until(|| proxy.log_text().contains("TLS certificate reloaded")).await;
    // The open connection keeps working; new ones see only the new certificate.
    let (status, body, _) = fetch(&mut conn, "/v2/images/img/file").await;
    assert!(status == 200 && body == data);
    assert!(
        connect(&proxy.url, &ca2).await.is_ok(),
        "new connections use the new cert"
    );
    assert!(
        connect(&proxy.url, &ca1).await.is_err(),
        "the old cert is gone"
    );

    // A broken file on the next SIGHUP leaves the working certificate in place.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").expect("write");
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    support::until(|| proxy.log_text().contains("keeping the current certificate")).await;
    assert!(proxy.log_text().contains("server.tls_cert_file"));
    assert!(connect(&proxy.url, &ca2).await.is_ok());
}

/// A plain-HTTP request to `url`: Err when the other side does not speak HTTP.
async fn plain_http(url: &str) -> Result<u16, String> {
    let addr = url.trim_start_matches("http://");
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/versions")
        .header("host", "x")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

#[test]
fn a_certificate_that_does_not_load_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("cert.pem"), "junk").expect("cert");
    std::fs::write(dir.path().join("key.pem"), "junk").expect("key");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[cache]\ndir = \"{}\"\n[metrics]\nlisten = \"\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        dir.path().join("cache").display()
    );
    std::fs::write(dir.path().join("proxy.toml"), config).expect("config");
    let out = std::process::Command::new(BIN)
        .args([
            "--config",
            &dir.path().join("proxy.toml").display().to_string(),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.tls_cert_file"), "{err}");
}
