//! Passthrough: every method and header goes upstream and back, bodies stream both ways
//! (Content-Length, chunked, `Expect: 100-continue`), and upstream links are rewritten.

mod support;

use bytes::Bytes;
use support::{config, get, pattern, send, sha256_hex, FakeGlance, Faults, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn methods_and_end_to_end_headers_pass_both_ways() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let got = send(
            &format!("{}/v2/anything/here?x=1&y=%2F", proxy.url),
            method,
            &[
                ("x-auth-token", "tok-123"),
                (
                    "x-openstack-request-id",
                    "req-11111111-2222-3333-4444-555555555555",
                ),
                ("x-image-meta-name", "name"),
                ("content-md5", "0123456789abcdef0123456789abcdef"),
                (
                    "content-type",
                    "application/openstack-images-v2.1-json-patch",
                ),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "must not pass"),
                ("keep-alive", "timeout=5"),
            ],
            Bytes::from_static(b"[]"),
        )
        .await;
        assert_eq!(got.status, 200, "{method}");
        let echo = got.json();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["path"], "/v2/anything/here?x=1&y=%2F");
        let h = &echo["headers"];
        assert_eq!(h["x-auth-token"][0], "tok-123");
        assert_eq!(
            h["x-openstack-request-id"][0],
            "req-11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(h["x-image-meta-name"][0], "name");
        assert_eq!(h["content-md5"][0], "0123456789abcdef0123456789abcdef");
        assert_eq!(
            h["content-type"][0],
            "application/openstack-images-v2.1-json-patch"
        );
        assert_eq!(h["host"][0], glance.addr.to_string());
        assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"][0], "http");
        assert_eq!(h["x-forwarded-host"][0], proxy.addr.to_string());
        assert!(h.get("x-hop").is_none(), "Connection-listed header leaked");
        assert!(h.get("keep-alive").is_none(), "hop-by-hop header leaked");
        assert_eq!(echo["body_len"], 2);
    }
}

#[tokio::test]
async fn uploads_stream_with_content_length_and_chunked() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(8 << 20, 1);

    // Content-Length upload (openstacksdk, curl -T).
    let got = send(
        &format!("{}/v2/images/a/file", proxy.url),
        "PUT",
        &[],
        data.clone(),
    )
    .await;
    assert_eq!(got.status, 204);
    assert_eq!(glance.image("a").as_deref(), Some(&data[..]));

    // Chunked upload (glanceclient): raw HTTP so the framing is exactly chunked.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = "PUT /v2/images/b/file HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("write head");
    for chunk in data.chunks(1 << 20) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("size");
        s.write_all(chunk).await.expect("chunk");
        s.write_all(b"\r\n").await.expect("crlf");
    }
    s.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let reply = read_head(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    assert_eq!(glance.image("b").as_deref(), Some(&data[..]));
    let seen = glance.seen();
    let b_put = seen
        .iter()
        .find(|r| r.path_and_query == "/v2/images/b/file")
        .expect("seen");
    assert_eq!(b_put.body_sha256, sha256_hex(&data));
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(300_000, 2);
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!(
        "PUT /v2/images/c/file HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(&data).await.expect("body");
    let reply = read_head(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 204"), "{reply}");
    assert_eq!(glance.image("c").as_deref(), Some(&data[..]));
    let put = glance
        .seen()
        .into_iter()
        .find(|r| r.method == "PUT")
        .expect("seen");
    assert!(
        put.headers.get("expect").is_none(),
        "Expect is hop-by-hop here"
    );
}

#[tokio::test]
async fn downloads_stream_with_content_length_and_chunked() {
    let glance = FakeGlance::start().await;
    // With the cache off, the download framing passes through as Glance chose it.
    let proxy = TestProxy::start(config(&[&glance.url], "[cache]\nenabled = false\n")).await;
    let data = pattern(16 << 20, 3);
    glance.add_image("img", data.clone());
    for chunked in [false, true] {
        glance.set_faults(Faults {
            chunked,
            ..Default::default()
        });
        let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
        assert_eq!(got.status, 200);
        assert!(got.body_error.is_none());
        assert_eq!(got.body.len(), data.len(), "chunked={chunked}");
        assert!(got.body == data, "bytes differ, chunked={chunked}");
        assert_eq!(got.headers.contains_key("content-length"), !chunked);
        assert!(got.headers.contains_key("content-md5"));
        assert_eq!(got.headers["content-type"], "application/octet-stream");
    }
}

#[tokio::test]
async fn links_follow_each_requests_host_when_hosts_alternate() {
    // The proxy keeps the last Host's URL parsed: alternating Hosts must each get their own.
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let addr = proxy.url.trim_start_matches("http://").to_string();
    // The version document's first link, asked with exactly one Host header.
    let first_link = |host: &'static str| {
        let addr = addr.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let req =
                format!("GET /versions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.expect("read");
            let text = String::from_utf8_lossy(&raw).to_string();
            let body = text.split("\r\n\r\n").nth(1).expect("a body").to_string();
            let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
            doc["versions"][0]["links"][0]["href"].clone()
        }
    };
    for host in [
        "a.example:8292",
        "b.example",
        "a.example:8292",
        "[::1]:9",
        "b.example",
    ] {
        assert_eq!(
            first_link(host).await,
            format!("http://{host}/v2/"),
            "{host}"
        );
    }
    // A Host that is no URL authority falls back to the listen address, and is not kept.
    assert_eq!(first_link("bad host").await, format!("{}/v2/", proxy.url));
    assert_eq!(first_link("b.example").await, "http://b.example/v2/");
}

#[tokio::test]
async fn version_documents_and_locations_point_at_the_proxy() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;

    for (path, status) in [("/", 300), ("/versions", 200), ("/v1/images", 300)] {
        let got = get(&format!("{}{path}", proxy.url)).await;
        assert_eq!(got.status, status, "{path}");
        let text = String::from_utf8_lossy(&got.body).to_string();
        assert!(!text.contains(&glance.url), "{path}: {text}");
        for v in got.json()["versions"].as_array().expect("versions") {
            assert_eq!(v["links"][0]["href"], format!("{}/v2/", proxy.url));
        }
        let len: usize = got.headers["content-length"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("n");
        assert_eq!(len, got.body.len());
    }

    let got = get(&format!("{}/v2", proxy.url)).await;
    assert_eq!(got.status, 302);
    assert_eq!(got.headers["location"], format!("{}/v2/", proxy.url));

    let got = send(&format!("{}/v2/images", proxy.url), "POST", &[], "{}").await;
    assert_eq!(got.status, 201);
    let location = got.headers["location"].to_str().expect("ascii");
    assert!(
        location.starts_with(&format!("{}/v2/images/img-", proxy.url)),
        "{location}"
    );
}

#[tokio::test]
async fn configured_public_url_and_extra_origins_are_used() {
    let glance = FakeGlance::start().await;
    let extra = "[server]\npublic_url = \"https://images.example.com:8443/glance\"\n";
    let proxy = TestProxy::start(config(&[&glance.url], extra)).await;
    let got = get(&format!("{}/versions", proxy.url)).await;
    assert_eq!(
        got.json()["versions"][0]["links"][0]["href"],
        "https://images.example.com:8443/glance/v2/"
    );
    // X-Forwarded-* describe the public URL, so Glance itself builds the right links.
    let echo = get(&format!("{}/v2/echo", proxy.url)).await.json();
    assert_eq!(
        echo["headers"]["x-forwarded-host"][0],
        "images.example.com:8443"
    );
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
}

/// Read one response head (up to the blank line) from a raw socket.
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read");
        if n == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}
