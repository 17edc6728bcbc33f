//! The cache-management API and the prefetcher, against the fake Glance: every route's
//! statuses and bodies, Glance's authorization (admin 2xx, member 403, bad token 401, an
//! upstream without a cache API refused), version discovery, and the persistent queue across
//! restarts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::{config, get, pattern, send, until, FakeGlance, Faults, Got, TestProxy};

/// A Keystone stand-in: `POST /v3/auth/tokens` issues `tok-1`, `tok-2`, ... and records the
/// request bodies.
async fn fake_keystone() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = std::sync::Arc::clone(&seen2);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = std::sync::Arc::clone(&seen);
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v3/auth/tokens";
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut s = seen.lock().expect("lock");
                                s.push(serde_json::from_slice(&body).unwrap_or_default());
                                s.len()
                            };
                            let resp = http::Response::builder()
                                .status(if ok { 201 } else { 404 })
                                .header("x-subject-token", format!("tok-{n}"))
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(Bytes::from(
                                    r#"{"token": {"expires_at": "2099-01-01T00:00:00.000000Z"}}"#,
                                )))
                                .expect("response");
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn keystone_credentials_are_renewed_when_glance_refuses_them() {
    let (keystone, issued) = fake_keystone().await;
    let extra = format!(
        "[prefetch]\nauth_url = \"{keystone}/v3\"\nusername = \"svc\"\npassword = \"pw\"\nproject_name = \"service\"\n"
    );
    let (glance, proxy) = setup(&extra).await;
    glance.add_image("img-k", pattern(1 << 20, 11));
    // The first token Keystone issues is revoked by the time Glance sees it.
    glance.set_faults(Faults {
        revoked_token: Some("tok-1".into()),
        ..Faults::default()
    });
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-k", "admin").await.status,
        StatusCode::ACCEPTED
    );
    wait_cached(&proxy, "img-k").await;
    let bodies = issued.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 2, "one token, refused, then one more");
    let user = &bodies[0]["auth"]["identity"]["password"]["user"];
    assert_eq!(
        (user["name"].as_str(), user["password"].as_str()),
        (Some("svc"), Some("pw"))
    );
    assert_eq!(user["domain"]["name"], "Default");
    assert_eq!(bodies[0]["auth"]["scope"]["project"]["name"], "service");
    let download = glance
        .seen()
        .into_iter()
        .find(|s| s.path_and_query == "/v2/images/img-k/file" && !s.headers.contains_key("range"))
        .expect("the download");
    assert_eq!(download.headers["x-auth-token"], "tok-2");
}

const FAST_RETRY: &str = "[prefetch]\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n";

async fn setup(extra: &str) -> (FakeGlance, TestProxy) {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], &format!("{FAST_RETRY}{extra}"))).await;
    (glance, proxy)
}

async fn call(proxy: &TestProxy, method: &str, path: &str, token: &str) -> Got {
    call_with(proxy, method, path, &[("x-auth-token", token)]).await
}

async fn call_with(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    send(
        &format!("{}{path}", proxy.url),
        method,
        headers,
        Bytes::new(),
    )
    .await
}

fn cached_ids(state: &serde_json::Value) -> Vec<String> {
    state["cached_images"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["image_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_cached(proxy: &TestProxy, id: &str) -> serde_json::Value {
    for _ in 0..200 {
        let state = call(proxy, "GET", "/v2/cache", "admin").await.json();
        if cached_ids(&state).iter().any(|c| c == id) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} was not cached in time");
}

#[tokio::test]
async fn queued_images_are_prefetched_listed_and_then_hits() {
    let (glance, proxy) = setup("").await;
    let data = pattern(3 << 20, 7);
    glance.add_image("img-a", data.clone());

    let put = call(&proxy, "PUT", "/v2/cache/img-a", "admin").await;
    assert_eq!(put.status, StatusCode::ACCEPTED);
    assert!(put.body.is_empty());
    let state = wait_cached(&proxy, "img-a").await;
    let entry = &state["cached_images"][0];
    assert_eq!(entry["size"], 3 << 20);
    assert_eq!(entry["hits"], 0);
    assert!(entry["last_accessed"].is_number() && entry["last_modified"].is_number());
    assert_eq!(state["queued_images"], serde_json::json!([]));
    assert_eq!(glance.downloads("img-a"), 1);

    // Served as a hit: no second download.
    let got = get(&format!("{}/v2/images/img-a/file", proxy.url)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, data);
    assert_eq!(glance.downloads("img-a"), 1);
    until(|| glance.requests() > 0).await;
    let state = call(&proxy, "GET", "/v2.14/cache", "admin").await.json();
    assert_eq!(state["cached_images"][0]["hits"], 1);

    // Queueing a cached image again is accepted and does nothing.
    let put = call(&proxy, "PUT", "/v2/cache/img-a", "admin").await;
    assert_eq!(put.status, StatusCode::ACCEPTED);
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(state["queued_images"], serde_json::json!([]));
    assert_eq!(glance.downloads("img-a"), 1);

    // The prefetcher's requests carried no caller credentials (none configured).
    let prefetch_download = glance
        .seen()
        .into_iter()
        .find(|s| s.path_and_query == "/v2/images/img-a/file" && !s.headers.contains_key("range"))
        .expect("the prefetch download");
    assert!(!prefetch_download.headers.contains_key("x-auth-token"));
}

#[tokio::test]
async fn the_prefetcher_uses_its_own_static_token() {
    let (glance, proxy) = setup("[prefetch]\ntoken = \"svc-token\"\n").await;
    glance.add_image("img-t", pattern(1 << 20, 1));
    let put = call(&proxy, "PUT", "/v2/cache/img-t", "admin").await;
    assert_eq!(put.status, StatusCode::ACCEPTED);
    wait_cached(&proxy, "img-t").await;
    let fetches: Vec<_> = glance
        .seen()
        .into_iter()
        .filter(|s| {
            s.path_and_query.starts_with("/v2/images/img-t") && !s.headers.contains_key("range")
        })
        .collect();
    // The PUT's own record lookup (caller's token) plus the prefetch's record and download.
    assert!(fetches.iter().any(|s| s.path_and_query.ends_with("/file")));
    for s in fetches
        .iter()
        .filter(|s| s.path_and_query.ends_with("/file"))
    {
        assert_eq!(s.headers["x-auth-token"], "svc-token");
    }
}

#[tokio::test]
async fn statuses_of_every_route() {
    let (glance, proxy) = setup("").await;
    glance.add_image("img-1", pattern(1 << 20, 2));
    glance.add_image("img-off", pattern(1 << 20, 3));
    glance.set_faults(Faults {
        inactive: Some("img-off".into()),
        ..Faults::default()
    });

    // 405 with Allow, before anything else.
    for (method, path, allow) in [
        ("POST", "/v2/cache", "GET, DELETE"),
        ("GET", "/v2/cache/img-1", "DELETE, PUT"),
        ("PUT", "/v2/cache/nodes/img-1", "GET"),
        ("PATCH", "/v2/cached_images", "GET, DELETE"),
        ("GET", "/v2/cached_images/img-1", "DELETE"),
        ("POST", "/v2/queued_images/img-1", "PUT, DELETE"),
    ] {
        let got = call(&proxy, method, path, "admin").await;
        assert_eq!(
            got.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(got.headers["allow"], allow, "{method} {path}");
        assert!(got.json()["message"].is_string());
    }

    // PUT: 404 unknown (before the policy), 400 not active, 403 member, 401 bad token.
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/nope", "admin").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/nope", "member").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-off", "admin")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-1", "member")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-1", "bad").await.status,
        StatusCode::UNAUTHORIZED
    );

    // GET /v2/cache: 403 member, 401 bad token, 400 with a body.
    assert_eq!(
        call(&proxy, "GET", "/v2/cache", "member").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&proxy, "GET", "/v2/cache", "bad").await.status,
        StatusCode::UNAUTHORIZED
    );
    let with_body = send(
        &format!("{}/v2/cache", proxy.url),
        "GET",
        &[("x-auth-token", "admin")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(with_body.status, StatusCode::BAD_REQUEST);

    // DELETE /v2/cache: the clear-target header.
    for (target, want) in [
        ("both", StatusCode::BAD_REQUEST),
        ("cached", StatusCode::BAD_REQUEST),
        ("", StatusCode::NO_CONTENT),
        ("CACHE", StatusCode::NO_CONTENT),
        ("queue", StatusCode::NO_CONTENT),
    ] {
        let got = call_with(
            &proxy,
            "DELETE",
            "/v2/cache",
            &[
                ("x-auth-token", "admin"),
                ("x-image-cache-clear-target", target),
            ],
        )
        .await;
        assert_eq!(got.status, want, "target {target:?}");
        if want == StatusCode::NO_CONTENT {
            assert!(got.body.is_empty());
        }
    }
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache", "member").await.status,
        StatusCode::FORBIDDEN
    );

    // DELETE /v2/cache/{id}: 404 only when neither Glance nor the cache knows it.
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache/nope", "admin")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache/img-1", "admin")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache/img-1", "member")
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    // clean, prune, nodes.
    let clean = call(&proxy, "POST", "/v2/cache/clean", "admin").await;
    assert_eq!(clean.status, StatusCode::OK);
    assert!(clean.body.is_empty());
    let prune = call(&proxy, "POST", "/v2/cache/prune", "admin").await;
    assert_eq!(prune.status, StatusCode::OK);
    assert_eq!(
        prune.json(),
        serde_json::json!({"total_files_pruned": 0, "total_bytes_pruned": 0})
    );
    assert_eq!(
        call(&proxy, "POST", "/v2/cache/prune", "member")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let nodes = call(&proxy, "GET", "/v2/cache/nodes/img-1", "admin").await;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(nodes.json(), serde_json::json!([]));
    assert_eq!(
        call(&proxy, "GET", "/v2/cache/nodes/nope", "admin")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-1", "admin").await.status,
        StatusCode::ACCEPTED
    );
    wait_cached(&proxy, "img-1").await;
    let nodes = call(&proxy, "GET", "/v2/cache/nodes/img-1", "admin").await;
    assert_eq!(nodes.json(), serde_json::json!([proxy.url.clone()]));

    // An orphan (cached, then deleted from Glance behind the proxy's back) can be removed.
    glance.remove_image("img-1");
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache/img-1", "admin")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert!(cached_ids(&state).is_empty());
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache/img-1", "admin")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn clear_targets_cache_queue_or_both() {
    let (glance, proxy) = setup("").await;
    glance.add_image("img-c", pattern(1 << 20, 4));
    glance.add_image("img-q", pattern(1 << 20, 5));
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-c", "admin").await.status,
        StatusCode::ACCEPTED
    );
    wait_cached(&proxy, "img-c").await;
    // Keep img-q queued: its downloads stall.
    glance.set_faults(Faults {
        stall_after: Some(0),
        ..Faults::default()
    });
    // Legacy queueing checks nothing and goes on the same queue.
    let q = call(&proxy, "PUT", "/v2/queued_images/img-q", "admin").await;
    assert_eq!(
        (q.status, q.json()),
        (StatusCode::OK, serde_json::Value::Null)
    );
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(state["queued_images"], serde_json::json!(["img-q"]));

    let clear = |target: &'static str| {
        let proxy = &proxy;
        async move {
            call_with(
                proxy,
                "DELETE",
                "/v2/cache",
                &[
                    ("x-auth-token", "admin"),
                    ("x-image-cache-clear-target", target),
                ],
            )
            .await
        }
    };
    assert_eq!(clear("queue").await.status, StatusCode::NO_CONTENT);
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(state["queued_images"], serde_json::json!([]));
    assert_eq!(cached_ids(&state), ["img-c"]);
    assert_eq!(clear("cache").await.status, StatusCode::NO_CONTENT);
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert!(cached_ids(&state).is_empty());
    assert!(!proxy.cache_dir.join("images/img-c").exists());

    // Both (no header).
    call(&proxy, "PUT", "/v2/queued_images/img-q", "admin").await;
    glance.set_faults(Faults::default());
    call(&proxy, "PUT", "/v2/cache/img-c", "admin").await;
    wait_cached(&proxy, "img-c").await;
    glance.set_faults(Faults {
        stall_after: Some(0),
        ..Faults::default()
    });
    call(&proxy, "PUT", "/v2/queued_images/img-x", "admin").await;
    assert_eq!(
        call(&proxy, "DELETE", "/v2/cache", "admin").await.status,
        StatusCode::NO_CONTENT
    );
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(
        state,
        serde_json::json!({"cached_images": [], "queued_images": []})
    );
}

#[tokio::test]
async fn legacy_routes_answer_with_their_bodies() {
    let (glance, proxy) = setup("").await;
    glance.add_image("img-l", pattern(1 << 20, 6));
    for prefix in ["/v2", "/v1"] {
        assert_eq!(
            call(&proxy, "PUT", "/v2/cache/img-l", "admin").await.status,
            StatusCode::ACCEPTED
        );
        wait_cached(&proxy, "img-l").await;
        let cached = call(&proxy, "GET", &format!("{prefix}/cached_images"), "admin").await;
        assert_eq!(cached.status, StatusCode::OK);
        assert_eq!(cached.json()["cached_images"][0]["image_id"], "img-l");
        assert!(cached.json().get("queued_images").is_none());
        let del = call(
            &proxy,
            "DELETE",
            &format!("{prefix}/cached_images/img-l"),
            "admin",
        )
        .await;
        assert_eq!(
            (del.status, del.json()),
            (StatusCode::OK, serde_json::Value::Null)
        );
        let cleared = call(
            &proxy,
            "DELETE",
            &format!("{prefix}/cached_images"),
            "admin",
        )
        .await;
        assert_eq!(cleared.json(), serde_json::json!({"num_deleted": 0}));

        glance.set_faults(Faults {
            stall_after: Some(0),
            ..Faults::default()
        });
        let q = call(
            &proxy,
            "PUT",
            &format!("{prefix}/queued_images/img-l"),
            "admin",
        )
        .await;
        assert_eq!(
            (q.status, q.json()),
            (StatusCode::OK, serde_json::Value::Null)
        );
        let queued = call(&proxy, "GET", &format!("{prefix}/queued_images"), "admin").await;
        assert_eq!(
            queued.json(),
            serde_json::json!({"queued_images": ["img-l"]})
        );
        let un = call(
            &proxy,
            "DELETE",
            &format!("{prefix}/queued_images/img-l"),
            "admin",
        )
        .await;
        assert_eq!(
            (un.status, un.json()),
            (StatusCode::OK, serde_json::Value::Null)
        );
        call(
            &proxy,
            "PUT",
            &format!("{prefix}/queued_images/img-l"),
            "admin",
        )
        .await;
        let cleared = call(
            &proxy,
            "DELETE",
            &format!("{prefix}/queued_images"),
            "admin",
        )
        .await;
        assert_eq!(cleared.json(), serde_json::json!({"num_deleted": 1}));
        assert_eq!(
            call(&proxy, "GET", &format!("{prefix}/queued_images"), "member")
                .await
                .status,
            StatusCode::FORBIDDEN
        );
        glance.set_faults(Faults::default());
    }
}

#[tokio::test]
async fn authorization_follows_the_upstream_with_its_cache_on_or_off_and_fails_closed() {
    let (glance, proxy) = setup("").await;
    for cache_on in [false, true] {
        glance.set_faults(Faults {
            upstream_cache_on: cache_on,
            ..Faults::default()
        });
        assert_eq!(
            call(&proxy, "GET", "/v2/cache", "admin").await.status,
            StatusCode::OK,
            "cache on: {cache_on}"
        );
        assert_eq!(
            call(&proxy, "GET", "/v2/cache", "member").await.status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&proxy, "GET", "/v2/cache", "bad").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // An upstream without a cache API cannot decide: refused, never allowed.
    glance.set_faults(Faults {
        no_cache_api: true,
        ..Faults::default()
    });
    let got = call(&proxy, "GET", "/v2/cache", "admin").await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(got.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("cache API")));

    // With the proxy's cache off: the policy still first, then Glance's 404.
    let glance2 = FakeGlance::start().await;
    let off = TestProxy::start(config(&[&glance2.url], "[cache]\nenabled = false\n")).await;
    let got = call(&off, "GET", "/v2/cache", "admin").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert!(got.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("not supported")));
    assert_eq!(
        call(&off, "GET", "/v2/cache", "member").await.status,
        StatusCode::FORBIDDEN
    );
    let versions = get(&format!("{}/versions", off.url)).await.json();
    let ids: Vec<&str> = versions["versions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert!(
        !ids.contains(&"v2.14"),
        "no cache API, not advertised: {ids:?}"
    );
}

#[tokio::test]
async fn versions_advertise_the_cache_api_and_its_prefixes_work() {
    let (glance, proxy) = setup("").await;
    for path in ["/versions", "/"] {
        let doc = get(&format!("{}{path}", proxy.url)).await.json();
        let versions = doc["versions"].as_array().expect("versions");
        let ids: Vec<&str> = versions.iter().filter_map(|v| v["id"].as_str()).collect();
        for want in ["v2.18", "v2.17", "v2.16", "v2.15", "v2.14", "v2.0"] {
            assert!(ids.contains(&want), "{path}: {ids:?}");
        }
        assert_eq!(ids[0], "v2.18");
        for v in versions {
            assert_eq!(v["links"][0]["href"], format!("{}/v2/", proxy.url));
        }
    }
    // Anything but the cache API goes upstream as sent: Glance negotiates `/v2.16/...` itself
    // (a 300 where its own cache is off), as it would without the proxy (issue 19).
    let got = get(&format!("{}/v2.16/images?limit=1", proxy.url)).await;
    assert_eq!(got.json()["path"], "/v2.16/images?limit=1");
    assert!(glance
        .seen()
        .iter()
        .any(|s| s.path_and_query == "/v2.16/images?limit=1"));
    // The cache API answers under its versions' prefixes.
    assert_eq!(
        call(&proxy, "GET", "/v2.18/cache", "admin").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn failed_prefetches_are_retried_and_gone_images_leave_the_queue() {
    let (glance, proxy) = setup("").await;
    glance.add_image("img-r", pattern(1 << 20, 8));
    // The record answers, then the first downloads fail.
    glance.set_faults(Faults {
        deny_download: Some(503),
        ..Faults::default()
    });
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-r", "admin").await.status,
        StatusCode::ACCEPTED
    );
    until(|| {
        glance
            .seen()
            .iter()
            .filter(|s| s.path_and_query == "/v2/images/img-r/file")
            .count()
            >= 2
    })
    .await;
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(
        state["queued_images"],
        serde_json::json!(["img-r"]),
        "still queued while failing"
    );
    glance.set_faults(Faults::default());
    wait_cached(&proxy, "img-r").await;

    // Queued without checks (legacy), but gone or not active: skipped and unqueued.
    glance.add_image("img-off", pattern(1 << 20, 12));
    glance.set_faults(Faults {
        inactive: Some("img-off".into()),
        ..Faults::default()
    });
    call(&proxy, "PUT", "/v2/queued_images/img-off", "admin").await;
    call(&proxy, "PUT", "/v2/queued_images/img-gone", "admin").await;
    for _ in 0..100 {
        let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
        if state["queued_images"] == serde_json::json!([]) {
            assert_eq!(glance.downloads("img-off"), 0);
            assert!(!cached_ids(&state).contains(&"img-off".to_string()));
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a gone image stayed queued");
}

#[tokio::test]
async fn a_prefetch_joins_a_client_download_of_the_same_image() {
    let (glance, proxy) = setup("").await;
    let data = pattern(4 << 20, 9);
    glance.add_image("img-j", data.clone());
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Faults::default()
    });
    let url = format!("{}/v2/images/img-j/file", proxy.url);
    let client = tokio::spawn(async move { get(&url).await });
    until(|| glance.downloads("img-j") == 1).await;
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-j", "admin").await.status,
        StatusCode::ACCEPTED
    );
    let got = client.await.expect("client");
    assert_eq!(got.body, data);
    wait_cached(&proxy, "img-j").await;
    assert_eq!(
        glance.downloads("img-j"),
        1,
        "one upstream download for both"
    );
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_a_half_done_prefetch_starts_again() {
    let glance = FakeGlance::start().await;
    let data = pattern(2 << 20, 10);
    glance.add_image("img-s", data.clone());
    glance.set_faults(Faults {
        stall_after: Some(1 << 20),
        ..Faults::default()
    });
    let config1 = config(&[&glance.url], FAST_RETRY);
    let dir = config1.cache.dir.clone();
    let mut proxy = TestProxy::start(config1.clone()).await;
    assert_eq!(
        call(&proxy, "PUT", "/v2/cache/img-s", "admin").await.status,
        StatusCode::ACCEPTED
    );
    until(|| glance.downloads("img-s") == 1).await;
    // Stop mid-download: the prefetch is cut short, its image stays queued.
    proxy.begin_shutdown().await.expect("shutdown");
    drop(proxy); // its cache directory stays: `config1` owns it
    assert!(dir.join("queue/img-s").exists(), "the marker is on disk");

    let proxy = TestProxy::start(config1.clone()).await;
    let state = call(&proxy, "GET", "/v2/cache", "admin").await.json();
    assert_eq!(state["queued_images"], serde_json::json!(["img-s"]));
    glance.set_faults(Faults::default());
    wait_cached(&proxy, "img-s").await;
    let got = get(&format!("{}/v2/images/img-s/file", proxy.url)).await;
    assert_eq!(got.body, data);
    assert!(!dir.join("queue/img-s").exists(), "unqueued once cached");
    assert!(glance.downloads("img-s") >= 2);
}
