//! TLS on both sides, with certificates from CAs made here (rcgen). The API listener:
//! passthrough and cache hits over TLS (byte-exact; the path they took, user space where the
//! kernel has no `tls` ULP as on CI, reported in the start log, the access log and
//! `tls_hits_total`), a SIGHUP that swaps the certificate for new connections while an open one keeps
//! working, a certificate file that does not load named in the error. `https://` upstreams:
//! verified against `upstream.ca_file` (and by default against the system's roots, which do not
//! know a private CA), the client certificate presented to an upstream that demands one, and
//! bad TLS files named at start.

mod support;

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use support::{config, get, pattern, FakeGlance, ProxyProcess, TestProxy, BIN};

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

/// `<name>.pem` and `<name>-key.pem` in `dir`.
fn write_named(dir: &Path, name: &str, pair: &(String, String)) {
    std::fs::write(dir.join(format!("{name}.pem")), &pair.0).expect("cert");
    std::fs::write(dir.join(format!("{name}-key.pem")), &pair.1).expect("key");
}

fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A server config for `leaf` that demands a client certificate issued by `client_ca`.
fn demanding_server(leaf: &(String, String), client_ca: &str) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs(client_ca) {
        roots.add(cert).expect("client CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certs(&leaf.0), key)
        .expect("server config");
    Arc::new(config)
}

/// An HTTP/1.1 connection over TLS that trusts only `ca_pem`.
async fn connect(
    url: &str,
    ca_pem: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
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
    write_named(dir.path(), "cert", &leaf(&issuer1));
    let config = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("cert-key.pem").display()
    );
    std::fs::write(dir.path().join("proxy.toml"), config).expect("config");
    let metrics = support::closed_port().await;
    let args = vec![
        "--config".to_string(),
        dir.path().join("proxy.toml").display().to_string(),
        "--upstream".into(),
        glance.url.clone(),
        "--cache-dir".into(),
        dir.path().join("cache").display().to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
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
    let admin = format!("http://{metrics}");
    for round in 0..3 {
        let (status, body, _) = fetch(&mut conn, "/v2/images/img/file").await;
        assert_eq!(status, 200, "round {round}");
        assert!(body == data, "round {round}: bytes differ");
        if round == 0 {
            let committed = "glance_cache_proxy_fills_total{result=\"committed\"}";
            support::until_metric(&admin, committed, 1.0).await;
        }
    }
    // Each request's access line is logged when its body ends.
    support::until(|| {
        let log = proxy.log_text();
        let done = |l: &&str| l.contains("access") && l.contains("path=\"/v2/images/img/file\"");
        log.lines().filter(done).count() >= 3
    })
    .await;
    assert_eq!(
        glance.downloads("img"),
        1,
        "hits over TLS come from the cache"
    );
    // Which path hits took is in the start log, the access log and the metric: kernel TLS
    // where the build and the kernel offer it, else (as on this project's CI machines) user
    // space, with the reason.
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let ktls = cfg!(feature = "ktls") && ulps.split_whitespace().any(|u| u == "tls");
    let (path, other) = if ktls {
        ("ktls", "userspace")
    } else {
        ("userspace", "ktls")
    };
    let log = proxy.log_text();
    if ktls {
        assert!(
            log.contains("TLS: cache hits use kernel TLS and sendfile"),
            "{log}"
        );
    } else {
        assert!(
            log.contains("TLS: cache hits are encrypted in user space")
                && (log.contains("offers no \"tls\" ULP") || log.contains("cargo feature `ktls`")),
            "{log}"
        );
    }
    let hits = log
        .lines()
        .filter(|l| l.contains("cache=\"hit\"") && l.contains(&format!("tls=\"{path}\"")))
        .count();
    assert_eq!(hits, 2, "{log}");
    let page = get(&format!("http://{metrics}/metrics")).await;
    let page = String::from_utf8_lossy(&page.body);
    for line in [
        format!("glance_cache_proxy_tls_hits_total{{path=\"{path}\"}} 2"),
        format!("glance_cache_proxy_tls_hits_total{{path=\"{other}\"}} 0"),
    ] {
        assert!(page.contains(&line), "{line} missing: {page}");
    }
    // Plain HTTP on the TLS port gets nowhere.
    assert!(plain_http(&proxy.url).await.is_err());

    // New certificate from another CA, then SIGHUP.
    let (ca2, issuer2) = ca("second CA");
    write_named(dir.path(), "cert", &leaf(&issuer2));
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

/// A connection stalled in its TLS handshake holds no slot against a newcomer: it is closed
/// to make room as a slowloris one is (no request can be on its way before the handshake).
#[tokio::test]
async fn a_stalled_tls_handshake_makes_room_for_a_newcomer() {
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca1, issuer1) = ca("room CA");
    write_named(dir.path(), "cert", &leaf(&issuer1));
    let proxy = TestProxy::start(config(
        &[&glance.url],
        &format!(
            "[server]\nmax_connections = 1\nheader_read_timeout = \"60s\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            dir.path().join("cert.pem").display(),
            dir.path().join("cert-key.pem").display()
        ),
    ))
    .await;
    let stalled = TcpStream::connect(proxy.addr).await.expect("connect");
    let url = format!("http://{}", proxy.addr);
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut conn = connect(&url, &ca1).await.expect("TLS");
        fetch(&mut conn, "/versions").await.0
    })
    .await
    .expect("served while the other connection's handshake stalls");
    assert_eq!(served, 200);
    drop(stalled);
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
    std::fs::write(dir.path().join("cert-key.pem"), "junk").expect("key");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n[cache]\ndir = \"{}\"\n[metrics]\nlisten = \"\"\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("cert-key.pem").display(),
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

/// `[upstream]` TLS keys for `config()`: `ca` and `client` name files in `dir` (`<client>.pem`
/// and `<client>-key.pem`).
fn upstream_tls(dir: &Path, ca: Option<&str>, client: Option<&str>) -> String {
    let mut text = String::from("[upstream]\n");
    if let Some(ca) = ca {
        text += &format!("ca_file = \"{}\"\n", dir.join(ca).display());
    }
    if let Some(client) = client {
        text += &format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            dir.join(format!("{client}.pem")).display(),
            dir.join(format!("{client}-key.pem")).display()
        );
    }
    text
}

#[tokio::test]
async fn https_upstreams_are_verified_and_get_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_pem, issuer) = ca("upstream CA");
    let (other_pem, other_issuer) = ca("some other CA");
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("ca");
    std::fs::write(dir.path().join("other-ca.pem"), &other_pem).expect("other ca");
    write_named(dir.path(), "client", &leaf(&issuer));
    write_named(dir.path(), "stranger", &leaf(&other_issuer));
    let glance = FakeGlance::start_tls(demanding_server(&leaf(&issuer), &ca_pem)).await;
    let data = pattern(2 << 20, 902);
    glance.add_image("img", data.clone());
    let port = glance.addr.port();

    // Trusted CA and a client certificate: passthrough with links rewritten, a miss, a hit.
    let proxy = TestProxy::start(config(
        &[&glance.url],
        &upstream_tls(dir.path(), Some("ca.pem"), Some("client")),
    ))
    .await;
    let versions = get(&format!("{}/versions", proxy.url)).await;
    assert_eq!(versions.status, 200);
    let text = String::from_utf8_lossy(&versions.body).to_string();
    assert!(
        text.contains(&proxy.url),
        "links point at the proxy: {text}"
    );
    assert!(!text.contains(&format!("127.0.0.1:{port}")), "{text}");
    for round in 0..2 {
        let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
        assert_eq!(got.status, 200, "round {round}");
        assert!(
            got.body == data && got.body_error.is_none(),
            "round {round}"
        );
    }
    assert_eq!(glance.downloads("img"), 1, "the second download was a hit");
    let served = glance.requests();

    // Not trusted: no ca_file (the system's roots do not know this CA), or the wrong CA. No
    // request reaches the upstream; the client gets Glance's error shape.
    for (what, tls) in [
        (
            "system roots",
            upstream_tls(dir.path(), None, Some("client")),
        ),
        (
            "other CA",
            upstream_tls(dir.path(), Some("other-ca.pem"), Some("client")),
        ),
    ] {
        let proxy = TestProxy::start(config(&[&glance.url], &tls)).await;
        let got = get(&format!("{}/v2/images", proxy.url)).await;
        assert_eq!(got.status, 502, "{what}");
        assert!(
            got.json().get("message").is_some() || got.json().get("error").is_some(),
            "{what}: {:?}",
            got.body
        );
    }
    // Trusted, but no client certificate (or one from a CA the upstream does not accept): the
    // upstream refuses the handshake.
    for (what, client) in [
        ("no client certificate", None),
        ("stranger's certificate", Some("stranger")),
    ] {
        let proxy = TestProxy::start(config(
            &[&glance.url],
            &upstream_tls(dir.path(), Some("ca.pem"), client),
        ))
        .await;
        let got = get(&format!("{}/v2/images", proxy.url)).await;
        assert_eq!(got.status, 502, "{what}");
    }
    assert_eq!(
        glance.requests(),
        served,
        "no request got past the handshake"
    );
}

#[test]
fn upstream_tls_files_that_do_not_load_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("junk.pem"), "junk").expect("junk");
    std::fs::write(dir.path().join("junk-key.pem"), "junk").expect("junk");
    let (ca_pem, issuer) = ca("CA");
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("ca");
    write_named(dir.path(), "client", &leaf(&issuer));
    let (_, other) = ca("other");
    // A certificate with somebody else's key.
    std::fs::write(dir.path().join("mixed.pem"), leaf(&issuer).0).expect("cert");
    std::fs::write(dir.path().join("mixed-key.pem"), leaf(&other).1).expect("key");
    for (tls, key) in [
        (
            upstream_tls(dir.path(), Some("junk.pem"), None),
            "upstream.ca_file",
        ),
        (
            upstream_tls(dir.path(), Some("ca.pem"), Some("junk")),
            "upstream.client_cert_file",
        ),
        (
            upstream_tls(dir.path(), Some("ca.pem"), Some("mixed")),
            "upstream.client_key_file",
        ),
    ] {
        let cfg = config(&["https://127.0.0.1:1"], &tls);
        let err = match glance_cache_proxy::app::build(cfg.to_config()) {
            Ok(_) => panic!("{key}: started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key), "{key}: {err}");
    }
}
