//! Upstream failures: failover across upstreams, backoff, 502/504 with Glance-shaped bodies,
//! and mid-body drops and stalls that must abort the client's response, never end it cleanly.

mod support;

use std::time::{Duration, Instant};

use support::{
    closed_port, config, get, pattern, send, until, FakeGlance, Faults, ProxyProcess, TestProxy,
};

const BIN: &str = env!("CARGO_BIN_EXE_glance-cache-proxy");

fn assert_glance_error(got: &support::Got, status: u16) {
    assert_eq!(got.status, status);
    assert_eq!(got.headers["content-type"], "application/json");
    let body = got.json();
    assert!(
        body["code"]
            .as_str()
            .is_some_and(|c| c.starts_with(&status.to_string())),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["message"].is_string(),
        "{body}"
    );
    let rid = got.headers["x-openstack-request-id"]
        .to_str()
        .expect("ascii");
    assert!(rid.starts_with("req-"), "{rid}");
}

#[tokio::test]
async fn refused_connection_fails_over_and_backs_off() {
    let dead = closed_port().await;
    let glance = FakeGlance::start().await;
    let dead_url = format!("http://{dead}");
    let proxy = TestProxy::start(config(&[&dead_url, &glance.url], "")).await;

    // A request with a body that was never sent can be replayed too.
    let got = send(&format!("{}/v2/x", proxy.url), "POST", &[], "payload").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["body_len"], 7);
    assert_eq!(glance.requests(), 1);

    // In backoff, the dead upstream is tried after the healthy one: no failover delay now.
    let t = Instant::now();
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn unavailable_answers_fail_over_while_the_request_can_be_replayed() {
    let first = FakeGlance::start().await;
    let second = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&first.url, &second.url], "")).await;

    // 503 before reading anything: replayed on the second upstream.
    first.set_faults(Faults {
        status: Some((503, 1)),
        ..Default::default()
    });
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert_eq!((first.requests(), second.requests()), (1, 1));

    // The first one is now in backoff: the second is preferred.
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert_eq!((first.requests(), second.requests()), (1, 2));
}

#[tokio::test]
async fn a_consumed_body_is_not_replayed() {
    let first = FakeGlance::start().await;
    let second = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&first.url, &second.url], "")).await;
    first.set_faults(Faults {
        status: Some((502, 1)),
        status_after_body: true,
        ..Default::default()
    });
    let body = pattern(1 << 20, 9);
    let got = send(&format!("{}/v2/images/z/file", proxy.url), "PUT", &[], body).await;
    // The body already went to the first upstream: its answer stands, nothing is resent.
    assert_eq!(got.status, 502);
    assert_eq!(got.json()["message"], "injected fault");
    assert_eq!(second.requests(), 0);
}

#[tokio::test]
async fn all_upstreams_unreachable_gives_502() {
    let a = format!("http://{}", closed_port().await);
    let b = format!("http://{}", closed_port().await);
    let proxy = TestProxy::start(config(&[&a, &b], "")).await;
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_glance_error(&got, 502);
}

#[tokio::test]
async fn a_silent_upstream_gives_504() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nresponse_timeout = \"300ms\"\n",
    ))
    .await;
    glance.set_faults(Faults {
        stall_head: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    let t = Instant::now();
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_glance_error(&got, 504);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_as_glance_sent_them() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    for code in [400u16, 401, 403, 404, 409, 500] {
        glance.set_faults(Faults {
            status: Some((code, 1)),
            ..Default::default()
        });
        let got = get(&format!("{}/v2/images", proxy.url)).await;
        assert_eq!(got.status, code);
        assert_eq!(got.json()["message"], "injected fault");
    }
    // With a single upstream, its 503 is passed on as well.
    glance.set_faults(Faults {
        status: Some((503, 1)),
        ..Default::default()
    });
    assert_eq!(get(&format!("{}/v2/images", proxy.url)).await.status, 503);
}

#[tokio::test]
async fn a_drop_mid_body_aborts_the_client_response() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(4 << 20, 4);
    glance.add_image("img", data.clone());
    for chunked in [false, true] {
        glance.set_faults(Faults {
            drop_after: Some(1 << 20),
            chunked,
            ..Default::default()
        });
        let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
        assert_eq!(got.status, 200);
        assert!(
            got.body_error.is_some(),
            "chunked={chunked}: the response ended cleanly"
        );
        assert!(got.body.len() < data.len());
        assert!(
            got.body[..] == data[..got.body.len()],
            "bytes before the drop must be right"
        );
    }
}

#[tokio::test]
async fn a_stall_mid_body_aborts_after_the_idle_timeout() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nbody_idle_timeout = \"400ms\"\n",
    ))
    .await;
    glance.add_image("img", pattern(2 << 20, 5));
    for chunked in [false, true] {
        glance.set_faults(Faults {
            stall_after: Some(256 << 10),
            chunked,
            ..Default::default()
        });
        let t = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            get(&format!("{}/v2/images/img/file", proxy.url)),
        )
        .await
        .expect("the proxy must not hang on a stalled upstream");
        assert!(
            got.body_error.is_some(),
            "chunked={chunked}: a stalled body ended cleanly"
        );
        assert_eq!(got.body.len(), 256 << 10);
        assert!(t.elapsed() >= Duration::from_millis(400));
    }
}

#[tokio::test]
async fn a_slow_but_moving_body_is_not_cut() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nbody_idle_timeout = \"500ms\"\n",
    ))
    .await;
    let data = pattern(1 << 20, 6);
    glance.add_image("img", data.clone());
    // 16 chunks, 100 ms apart: 1.6 s in all, far over the idle limit, never idle that long.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
    assert!(got.body_error.is_none());
    assert_eq!(got.body, data);
}

/// The access line for `method path` number `nth` (0-based) in a text log.
fn access_line<'a>(log: &'a str, method: &str, path: &str, nth: usize) -> &'a str {
    let method = format!("method=\"{method}\"");
    let path = format!("path=\"{path}\" ");
    log.lines()
        .filter(|l| l.contains(" access:") && l.contains(&method) && l.contains(&path))
        .nth(nth)
        .unwrap_or_else(|| panic!("no access line {nth} for {method} {path} in:\n{log}"))
}

/// Issue 15: with the first upstream refusing connections, the access log names the upstream
/// that answered, for a miss, a hit, a range beyond the image (answered by the proxy after
/// Glance's probe) and a cache-API call (answered by the proxy after Glance's policy), and
/// durations are in milliseconds rounded to the microsecond.
#[tokio::test]
async fn the_access_log_names_the_upstream_that_answered() {
    let dead = closed_port().await;
    let glance = FakeGlance::start().await;
    let data = pattern(300_000, 15);
    glance.add_image("img", data.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let args: Vec<String> = [
        "--upstream",
        &format!("http://{dead}"),
        "--upstream",
        &glance.url,
        "--cache-dir",
        &dir.path().join("cache").display().to_string(),
    ]
    .map(str::to_string)
    .to_vec();
    let proxy = ProxyProcess::start(BIN, &args, dir.path().join("proxy.log")).await;
    let file = format!("{}/v2/images/img/file", proxy.url);
    let miss = get(&file).await;
    assert_eq!(miss.status, 200);
    assert!(miss.body == data);
    // Committed once the fill's task has published it.
    until(|| proxy.log_text().contains("cached")).await;
    let hit = get(&file).await;
    assert_eq!(hit.status, 200);
    assert!(hit.body == data);
    let beyond = send(&file, "GET", &[("range", "bytes=900000-")], "").await;
    assert_eq!(beyond.status, 416);
    let listing = get(&format!("{}/v2/cache", proxy.url)).await;
    assert_eq!(listing.status, 200);

    let answered = format!("upstream={}", glance.url.trim_end_matches('/'));
    until(|| proxy.log_text().matches(" access:").count() >= 4).await;
    let log = proxy.log_text();
    let lines = [
        access_line(&log, "GET", "/v2/images/img/file", 0),
        access_line(&log, "GET", "/v2/images/img/file", 1),
        access_line(&log, "GET", "/v2/images/img/file", 2),
        access_line(&log, "GET", "/v2/cache", 0),
    ];
    for (line, cache) in lines.iter().zip(["miss", "hit", "hit", ""]) {
        assert!(line.contains(&answered), "{answered} missing from {line}");
        assert!(line.contains(&format!("cache=\"{cache}\"")), "{line}");
        let ms = line
            .split("duration_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no duration_ms in {line}"));
        let decimals = ms.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "duration_ms={ms}: rounded to microseconds");
    }
}
