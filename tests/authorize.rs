//! The authorization decision (`image::decide`) against the fake Glance, on the four faults a
//! hostile-client probe found: a refused caller evicts nothing (room is made only after
//! Glance's 200 to the download), and a fill without room still streams to its client; a slow
//! Glance is not an outage (`tests/edge.rs`), and client bodies cannot hold it (small ones
//! read whole first, a stalled one a 408 that never reaches Glance; uploads bounded per
//! upstream); the caller key holds every header Glance reads (`OpenStack-System-Scope`); a
//! caller Glance refuses the record but lets download (a member without the reader role) gets
//! Glance's answer to the download, cached or not.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{config, metric, pattern, send, until_metric, FakeGlance, Faults, Got, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALICE: &str = "token-alice";
const READER: &str = "token-reader";

fn file_url(proxy: &TestProxy, id: &str) -> String {
    format!("{}/v2/images/{id}/file", proxy.url)
}

async fn get_as(proxy: &TestProxy, id: &str, headers: &[(&str, &str)]) -> Got {
    send(&file_url(proxy, id), "GET", headers, Bytes::new()).await
}

/// Wait (bounded) until `id` is a committed entry.
async fn cached(proxy: &TestProxy, id: &str) {
    support::until(|| proxy.is_cached(id)).await;
}

#[tokio::test]
async fn a_refused_download_evicts_nothing() {
    let glance = FakeGlance::start().await;
    let (a, b) = (pattern(1 << 20, 1), pattern(1 << 20, 2));
    glance.add_image("a", a.clone());
    glance.add_image("b", b.clone());
    glance.add_image("big", pattern(2 << 20, 3));
    let proxy = TestProxy::start(config(&[&glance.url], "[cache]\nmax_size = \"3MiB\"")).await;
    for (id, data) in [("a", &a), ("b", &b)] {
        assert!(get_as(&proxy, id, &[("x-auth-token", ALICE)]).await.body == *data);
        cached(&proxy, id).await;
    }
    // Glance shows the record (200) and refuses the download (403), again and again.
    glance.set_faults(Faults {
        deny_download: Some(403),
        ..Faults::default()
    });
    for _ in 0..3 {
        let got = get_as(&proxy, "big", &[("x-auth-token", READER)]).await;
        assert_eq!(got.status, 403, "Glance's answer");
        assert!(
            proxy.is_cached("a") && proxy.is_cached("b"),
            "nothing evicted"
        );
    }
    // A 404 to the download evicts nothing either.
    glance.set_faults(Faults {
        deny_download: Some(404),
        ..Faults::default()
    });
    assert_eq!(
        get_as(&proxy, "big", &[("x-auth-token", READER)])
            .await
            .status,
        404
    );
    assert!(
        proxy.is_cached("a") && proxy.is_cached("b"),
        "nothing evicted"
    );
    // Allowed: room is made then (the bound holds), and the image is cached.
    glance.set_faults(Faults::default());
    let big = get_as(&proxy, "big", &[("x-auth-token", ALICE)]).await;
    assert_eq!(big.status, 200);
    cached(&proxy, "big").await;
    assert!(
        !(proxy.is_cached("a") && proxy.is_cached("b")),
        "3 MiB hold no more than 3 MiB"
    );
}

#[tokio::test]
async fn a_fill_without_room_still_streams_to_its_client() {
    let glance = FakeGlance::start().await;
    let (slow, other) = (pattern(2 << 20, 4), pattern(2 << 20, 5));
    glance.add_image("slow", slow.clone());
    glance.add_image("other", other.clone());
    let proxy =
        TestProxy::start_with_admin(config(&[&glance.url], "[cache]\nmax_size = \"3MiB\"")).await;
    let admin = proxy.admin_url.clone().expect("admin listener");
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(40)),
        ..Faults::default()
    });
    // `slow` fills (2 of the 3 MiB reserved) while `other` is asked: no room for it.
    let first = tokio::spawn({
        let url = file_url(&proxy, "slow");
        async move { send(&url, "GET", &[("x-auth-token", ALICE)], Bytes::new()).await }
    });
    until_metric(
        &admin,
        "glance_cache_proxy_cache_reserved_bytes",
        (2 << 20) as f64,
    )
    .await;
    let got = get_as(&proxy, "other", &[("x-auth-token", ALICE)]).await;
    assert_eq!(got.status, 200);
    assert!(got.body_error.is_none() && got.body == other, "byte-exact");
    let first = first.await.expect("first request");
    assert!(first.body == slow);
    cached(&proxy, "slow").await;
    assert!(!proxy.is_cached("other"), "streamed uncached");
}

#[tokio::test]
async fn a_member_without_the_reader_role_gets_glances_answer_to_the_download() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 6);
    glance.add_image("img", data.clone());
    let proxy = TestProxy::start(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;
    // Glance 33 with a member-only token: the record 404, the download 200.
    glance.set_faults(Faults {
        record_status: Some(404),
        ..Faults::default()
    });
    let member = [("x-auth-token", "token-member")];
    let got = get_as(&proxy, "img", &member).await;
    assert_eq!(
        got.status, 200,
        "uncached: Glance answers the download itself"
    );
    assert!(got.body == data);
    assert!(
        !proxy.is_cached("img"),
        "no record: nothing to verify against"
    );
    // Cached for someone who can read the record: the probe decides for the member.
    glance.set_faults(Faults::default());
    assert!(get_as(&proxy, "img", &[("x-auth-token", ALICE)]).await.body == data);
    cached(&proxy, "img").await;
    glance.set_faults(Faults {
        record_status: Some(404),
        ..Faults::default()
    });
    let got = get_as(&proxy, "img", &member).await;
    assert_eq!(got.status, 200, "cached: the probe allows");
    assert!(got.body == data);
    // The member's record 404 evicts nothing, even now that the member is granted.
    let record = format!("{}/v2/images/img", proxy.url);
    assert_eq!(
        send(&record, "GET", &member, Bytes::new()).await.status,
        404
    );
    assert!(proxy.is_cached("img"));
}

#[tokio::test]
async fn openstack_system_scope_is_part_of_the_caller_and_of_the_question() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 7);
    glance.add_image("img", data.clone());
    let proxy = TestProxy::start(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;
    assert!(get_as(&proxy, "img", &[("x-auth-token", ALICE)]).await.body == data);
    cached(&proxy, "img").await;
    let scoped = [("x-auth-token", ALICE), ("openstack-system-scope", "all")];
    // Glance's 404 to Alice with the header: another caller, whom no grant names, so nothing
    // is evicted (and Alice's grant does not answer for it).
    glance.set_faults(Faults {
        deny_download: Some(404),
        record_status: Some(404),
        ..Faults::default()
    });
    assert_eq!(get_as(&proxy, "img", &scoped).await.status, 404);
    assert!(proxy.is_cached("img"), "nothing evicted");
    glance.set_faults(Faults::default());
    let before = glance.seen().len();
    let got = get_as(&proxy, "img", &scoped).await;
    assert_eq!(got.status, 200);
    let asked: Vec<_> = glance.seen().into_iter().skip(before).collect();
    assert!(
        !asked.is_empty(),
        "another caller: Glance is asked, not the grant"
    );
    assert!(
        asked.iter().all(|s| s
            .headers
            .get("openstack-system-scope")
            .is_some_and(|v| v == "all")),
        "the proxy's own questions carry the header Glance reads"
    );
}

/// Send a request head with a `Content-Length` and `sent` bytes of its body, then nothing.
async fn stalled(
    proxy: &TestProxy,
    method: &str,
    path: &str,
    length: usize,
    sent: usize,
) -> TcpStream {
    let addr = proxy.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: p\r\nX-Auth-Token: {ALICE}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&vec![b'{'; sent]).await.expect("body");
    stream
}

/// The response's status line, read within `within`.
async fn status_of(stream: &mut TcpStream, within: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_stalled_json_body_is_a_408_that_never_reaches_glance() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[server]\nclient_body_timeout = \"500ms\"",
    ))
    .await;
    let mut creates = Vec::new();
    for _ in 0..6 {
        creates.push(stalled(&proxy, "POST", "/v2/images", 1000, 9).await);
    }
    for create in &mut creates {
        let line = status_of(create, Duration::from_secs(5)).await;
        assert!(line.contains(" 408 "), "{line}");
    }
    assert_eq!(glance.heads("POST"), 0, "no stalled create reached Glance");
    // A whole small body goes through.
    let url = format!("{}/v2/images", proxy.url);
    let got = send(
        &url,
        "POST",
        &[("x-auth-token", ALICE)],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_ne!(got.status, 408);
    assert_eq!(glance.heads("POST"), 1);
}

#[tokio::test]
async fn stalled_uploads_take_at_most_max_uploads_of_glance() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(
        &[&glance.url],
        "[upstream]\nmax_uploads = 2\n[server]\nclient_body_timeout = \"30s\"",
    ))
    .await;
    let admin = proxy.admin_url.clone().expect("admin listener");
    let mut uploads = Vec::new();
    for i in 0..6 {
        let path = format!("/v2/images/img{i}/file");
        uploads.push(stalled(&proxy, "PUT", &path, 1 << 20, 9).await);
    }
    until_metric(&admin, "glance_cache_proxy_upstream_uploads_waiting", 4.0).await;
    for _ in 0..200 {
        if glance.heads("PUT") >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        glance.heads("PUT"),
        2,
        "two uploads reach Glance, four wait"
    );
    assert_eq!(
        metric(&admin, "glance_cache_proxy_upstream_upload_waits_total").await,
        4.0
    );
    // Everyone else still gets Glance.
    let started = std::time::Instant::now();
    let got = send(
        &format!("{}/v2/images", proxy.url),
        "GET",
        &[("x-auth-token", READER)],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(uploads);
}

#[tokio::test]
async fn a_requests_max_age_bounds_the_grant_and_a_node_sends_its_own() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 8);
    glance.add_image("img", data.clone());
    // A site proxy with a long grant_ttl, and a node in front of it that says max-age=0.
    let site = TestProxy::start(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;
    let node = TestProxy::start(config(
        &[&site.url],
        "[upstream]\nmax_age = \"0s\"\n[cache]\nenabled = false",
    ))
    .await;
    let alice = [("x-auth-token", ALICE)];
    assert!(get_as(&site, "img", &alice).await.body == data);
    cached(&site, "img").await;
    // Within the window the site answers Alice on her grant...
    let before = glance.seen().len();
    assert!(get_as(&site, "img", &alice).await.body == data);
    assert_eq!(glance.seen().len(), before, "the grant answered");
    // ... but not a request that accepts no answer older than 0 s: Glance is asked.
    let fresh = [("x-auth-token", ALICE), ("cache-control", "max-age=0")];
    assert!(get_as(&site, "img", &fresh).await.body == data);
    assert!(glance.seen().len() > before, "Glance asked");
    // The node's own questions (here its passthrough) carry max-age=0, so the site asks
    // Glance for them: a revocation at Glance reaches the node at once.
    glance.set_faults(Faults {
        revoked_token: Some(ALICE.into()),
        ..Faults::default()
    });
    assert_eq!(
        get_as(&site, "img", &alice).await.status,
        200,
        "the site's own grant"
    );
    assert_eq!(
        get_as(&node, "img", &alice).await.status,
        401,
        "through the node: Glance's"
    );
}

#[tokio::test]
async fn an_identity_header_spelled_with_underscores_never_reaches_glance_nor_a_grant() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 9);
    glance.add_image("img", data.clone());
    let proxy = TestProxy::start(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;
    assert!(get_as(&proxy, "img", &[("x-auth-token", ALICE)]).await.body == data);
    cached(&proxy, "img").await;
    let before = glance.seen().len();
    // Alice's token spelled `X_Auth_Token` (a WSGI server may drop it, or read it as
    // X-Auth-Token): it is not Alice, and Glance never sees it.
    let _ = get_as(&proxy, "img", &[("x_auth_token", ALICE)]).await;
    let _ = get_as(
        &proxy,
        "img",
        &[("x_auth_token", ALICE), ("x-auth-token", READER)],
    )
    .await;
    let seen = glance.seen();
    assert!(seen.len() > before, "not answered on Alice's grant");
    assert!(
        seen.iter().all(|s| !s.headers.contains_key("x_auth_token")),
        "the underscore spelling never reaches Glance"
    );
}

#[tokio::test]
async fn a_slow_glance_behind_a_site_proxy_is_no_outage_at_the_node() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 10);
    glance.add_image("img", data.clone());
    let site = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nresponse_timeout = \"500ms\"",
    ))
    .await;
    let node = TestProxy::start(config(
        &[&site.url],
        "[auth]\noffline_grace = \"1h\"\n[upstream]\nresponse_timeout = \"5s\"",
    ))
    .await;
    let alice = [("x-auth-token", ALICE)];
    assert!(get_as(&node, "img", &alice).await.body == data);
    cached(&node, "img").await;
    // Glance slow: the site's own question times out and it answers the node 504. That is a
    // slow answer, not an outage: the node does not serve on Alice's grace.
    glance.set_faults(Faults {
        stall_head: Some(Duration::from_secs(2)),
        ..Faults::default()
    });
    assert_eq!(get_as(&node, "img", &alice).await.status, 504);
    // Glance stopped: the site answers 502 (no upstream reachable), an outage at the node.
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = get_as(&node, "img", &alice).await;
    assert_eq!(got.status, 200, "served on the grace");
    assert!(got.body == data);
}
