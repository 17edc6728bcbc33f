//! Zero-copy hits: the bytes of every hit go out with sendfile (counted), byte-exact, with
//! keep-alive and pipelining intact, under backpressure, client aborts and shutdown.
//! Each proxy counts its own sendfile bytes (`TestProxy::sendfile_bytes`); one function's
//! scenarios run in order.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::{config, get, metric, pattern, send, FakeGlance, Faults, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Wait (bounded) until `id` is in the index: its files appear a moment earlier, and a
/// request then joins the fill instead of being a hit.
async fn cached(proxy: &TestProxy, id: &str) {
    support::until(|| proxy.is_cached(id)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_zero_copy_and_keep_http_semantics() {
    let glance = FakeGlance::start().await;
    let mut proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(24 << 20, 120);
    glance.add_image("img", data.clone());
    let url = format!("{}/v2/images/img/file", proxy.url);
    assert!(get(&url).await.body == data); // miss (the fill's own client: sendfile too)
    cached(&proxy, "img").await;

    // 1. A full hit and a ranged hit: every body byte went through sendfile.
    let before = proxy.sendfile_bytes();
    let got = get(&url).await;
    assert!(got.body_error.is_none() && got.body == data);
    let got = send(
        &url,
        "GET",
        &[("range", "bytes=1000-1999999")],
        Bytes::new(),
    )
    .await;
    assert!(got.body[..] == data[1000..2_000_000]);
    assert_eq!(
        proxy.sendfile_bytes() - before,
        (data.len() + 1_999_000) as u64
    );

    // 2. Keep-alive: metadata, hit, metadata, ranged hit on one connection.
    let mut sender = support::connection(proxy.addr).await;
    for (path, range, want) in [
        ("/v2/images", None, None),
        ("/v2/images/img/file", None, Some(&data[..])),
        ("/v2/images/img", None, None),
        (
            "/v2/images/img/file",
            Some("bytes=-4096"),
            Some(&data[data.len() - 4096..]),
        ),
    ] {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let resp = support::get_on(&mut sender, path, &headers).await;
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(status.is_success(), "{path}: {status}");
        if let Some(want) = want {
            assert!(body[..] == *want, "{path}");
        }
    }

    // 3. Pipelining: three requests in one write, answered in order, byte-exact.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(
        b"GET /v2/images/img HTTP/1.1\r\nHost: p\r\n\r\n\
          GET /v2/images/img/file HTTP/1.1\r\nHost: p\r\nRange: bytes=0-9\r\n\r\n\
          GET /v2/images/img HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("pipelined requests");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("responses");
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("HTTP/1.1 206 Partial Content").count(), 1);
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head");
    let second = &raw[at + 4..];
    let start = second
        .windows(10)
        .position(|w| w == &data[..10])
        .expect("the ten ranged bytes are on the wire");
    assert!(start > 0);

    // 4. A slow reader: backpressure, still byte-exact.
    let mut sender = support::connection(proxy.addr).await;
    let mut body = support::get_on(&mut sender, "/v2/images/img/file", &[])
        .await
        .into_body();
    let mut got = Vec::new();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(frame.expect("data").data_ref().expect("data"));
        frames += 1;
        if frames % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(got == data, "slow reader bytes differ");

    // 5. A client that hangs up mid-transfer does not hurt the next one.
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /v2/images/img/file HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .expect("req");
    let mut buf = vec![0u8; 64 * 1024];
    let _ = s.read(&mut buf).await.expect("some bytes");
    drop(s);
    assert!(get(&url).await.body == data);

    // 6. Shutdown mid-transfer: the hit finishes byte-exact.
    glance.set_faults(Faults::default());
    let mut sender = support::connection(proxy.addr).await;
    let mut body = support::get_on(&mut sender, "/v2/images/img/file", &[])
        .await
        .into_body();
    let first = body.frame().await.expect("frame").expect("data");
    let mut got = first.data_ref().expect("data").to_vec();
    let task = proxy.begin_shutdown();
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(
            frame
                .expect("no error while draining")
                .data_ref()
                .expect("data"),
        );
    }
    assert!(got == data, "hit cut by shutdown");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("drained")
        .expect("task");
}

/// A cold miss whose client is on a plain HTTP/1.1 connection: the client is fed the growing
/// file with sendfile spans (`Conn::file_chunk`), as the metrics page counts, byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_sent_to_its_own_client_with_sendfile() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let admin = proxy.admin_url.clone().expect("admin listener");
    let series = "glance_cache_proxy_sendfile_bytes_total";
    let data = pattern(3 << 20, 121);
    glance.add_image("img", data.clone());
    assert!(!proxy.is_cached("img"), "cold");
    let before = metric(&admin, series).await;
    let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
    let after = metric(&admin, series).await;
    assert_eq!(got.status, 200);
    assert!(got.body_error.is_none(), "{:?}", got.body_error);
    assert!(got.body == data, "the miss's bytes differ");
    assert_eq!(glance.downloads("img"), 1, "one download: a miss");
    assert_eq!(before, 0.0, "this proxy's own counter");
    assert_eq!(
        after,
        data.len() as f64,
        "every byte of the miss went out with sendfile"
    );
}

/// Issue 30: readers that join a miss in progress are sent the growing file with sendfile
/// too, byte-exact, while the fill runs; one download from Glance for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_readers_of_a_miss_are_sent_the_growing_file_with_sendfile() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(4 << 20, 122);
    glance.add_image("img", data.clone());
    // A slow Glance: the fill is still running when the others join.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Faults::default()
    });
    let url = format!("{}/v2/images/img/file", proxy.url);
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    let tmp = proxy.cache_dir.join("tmp");
    support::until(|| std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())).await;
    let joined: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut all = vec![first.await.expect("task")];
    for j in joined {
        all.push(j.await.expect("task"));
    }
    for (i, got) in all.iter().enumerate() {
        assert_eq!(got.status, 200, "reader {i}");
        assert!(got.body_error.is_none(), "reader {i}: {:?}", got.body_error);
        assert!(got.body == data, "reader {i}: other bytes");
    }
    assert_eq!(
        glance.downloads("img"),
        1,
        "the readers joined the one fill"
    );
    assert_eq!(
        proxy.sendfile_bytes(),
        4 * data.len() as u64,
        "every byte of every reader went out with sendfile"
    );
}

/// Issue 26: two proxies in one process count their own sendfile bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_in_one_process_count_their_own_bytes() {
    let glance = FakeGlance::start().await;
    let (a, b) = (
        TestProxy::start(config(&[&glance.url], "")).await,
        TestProxy::start(config(&[&glance.url], "")).await,
    );
    let data = pattern(1 << 20, 122);
    glance.add_image("img", data.clone());
    let len = data.len() as u64;
    for proxy in [&a, &a, &b] {
        let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
        assert!(got.body_error.is_none() && got.body == data);
        cached(proxy, "img").await;
    }
    assert_eq!(a.sendfile_bytes(), 2 * len, "a miss and a hit on a");
    assert_eq!(b.sendfile_bytes(), len, "a miss on b");
}
