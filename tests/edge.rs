//! Edge sites (README "Edge sites") against the fake Glance: within `auth.grant_ttl` a repeat
//! hit of the same caller asks Glance nothing, anyone else asks; refusals are never
//! remembered; a 404, a DELETE and an eviction drop an image's grants; with
//! `auth.offline_grace`, while no upstream answers (refused, timed out, 503), only a caller
//! Glance allowed the image is served a verified copy, also after a restart; after the grace,
//! nobody. The record (`GET /v2/images/{id}`) follows the same rule while Glance is down.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{config, metric, pattern, send, FakeGlance, Faults, Got, TestConfig, TestProxy};

const ALICE: &str = "token-alice";
const BOB: &str = "token-bob";

fn file_url(proxy: &TestProxy, id: &str) -> String {
    format!("{}/v2/images/{id}/file", proxy.url)
}

async fn get_as(proxy: &TestProxy, id: &str, token: &str) -> Got {
    send(
        &file_url(proxy, id),
        "GET",
        &[("x-auth-token", token)],
        Bytes::new(),
    )
    .await
}

/// Wait (bounded) until `id` is a committed entry.
async fn cached(proxy: &TestProxy, id: &str) {
    support::until(|| proxy.is_cached(id)).await;
}

async fn record_as(proxy: &TestProxy, token: &str) -> Got {
    let url = format!("{}/v2/images/img", proxy.url);
    send(&url, "GET", &[("x-auth-token", token)], Bytes::new()).await
}

async fn decisions(proxy: &TestProxy, decision: &str) -> f64 {
    let admin = proxy.admin_url.as_deref().expect("admin listener");
    let series =
        format!("glance_cache_proxy_authorization_decisions_total{{decision=\"{decision}\"}}");
    metric(admin, &series).await
}

#[tokio::test]
async fn repeat_hits_within_the_ttl_ask_glance_nothing_and_others_ask() {
    let glance = FakeGlance::start().await;
    let data = pattern(3 << 20, 5);
    glance.add_image("img", data.clone());
    let proxy =
        TestProxy::start_with_admin(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;

    assert!(get_as(&proxy, "img", ALICE).await.body == data);
    cached(&proxy, "img").await;
    let before = glance.asked("img", ALICE);
    for _ in 0..3 {
        let got = get_as(&proxy, "img", ALICE).await;
        assert_eq!(got.status, 200);
        assert!(got.body == data, "byte-exact from the cache");
        assert!(got.headers.contains_key("x-openstack-request-id"));
    }
    let ranged = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("x-auth-token", ALICE), ("range", "bytes=10-19")],
        Bytes::new(),
    )
    .await;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, data.slice(10..20));
    assert_eq!(
        glance.asked("img", ALICE),
        before,
        "no request to Glance within the TTL"
    );
    assert_eq!(decisions(&proxy, "cached").await, 4.0);

    // Another identity asks (the probe alone: a hit on a verified entry), and is then
    // remembered on its own.
    let got = get_as(&proxy, "img", BOB).await;
    assert!(got.body == data);
    assert_eq!(glance.asked("img", BOB), 1);
    assert_eq!(decisions(&proxy, "allowed").await, 1.0);
    // The same token with another identity header is another identity.
    let forged = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("x-auth-token", ALICE), ("x-roles", "admin")],
        Bytes::new(),
    )
    .await;
    assert_eq!(forged.status, 200);
    assert_eq!(decisions(&proxy, "allowed").await, 2.0, "asked Glance");
}

#[tokio::test]
async fn with_no_ttl_every_hit_asks_glance() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 6);
    glance.add_image("img", data.clone());
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
    cached(&proxy, "img").await;
    let before = glance.asked("img", ALICE);
    for _ in 0..3 {
        assert!(get_as(&proxy, "img", ALICE).await.body == data);
    }
    assert_eq!(glance.asked("img", ALICE), before + 3, "one question each");
    let probes = glance
        .seen()
        .iter()
        .filter(|s| s.headers.get("range").is_some_and(|r| r == "bytes=0-0"))
        .count();
    assert_eq!(
        probes, 3,
        "the download probe, whose head names the entry's size and md5"
    );
    assert_eq!(decisions(&proxy, "cached").await, 0.0);
}

#[tokio::test]
async fn refusals_are_never_remembered() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 7);
    glance.add_image("img", data.clone());
    let proxy =
        TestProxy::start_with_admin(config(&[&glance.url], "[auth]\ngrant_ttl = \"60s\"")).await;
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
    cached(&proxy, "img").await;
    glance.set_faults(Faults {
        revoked_token: Some(BOB.into()),
        ..Faults::default()
    });
    for round in 1..=3 {
        assert_eq!(get_as(&proxy, "img", BOB).await.status, 401);
        assert_eq!(glance.asked("img", BOB), round, "each refusal was Glance's");
    }
    assert_eq!(decisions(&proxy, "denied").await, 3.0);
    // Allowed again: Glance is asked, and then Bob's own grant stands.
    glance.set_faults(Faults::default());
    assert!(get_as(&proxy, "img", BOB).await.body == data);
    assert_eq!(glance.asked("img", BOB), 4);
    assert!(get_as(&proxy, "img", BOB).await.body == data);
    assert_eq!(glance.asked("img", BOB), 4);
}

#[tokio::test]
async fn a_refusal_ends_a_grant_for_the_outage_too() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 7);
    glance.add_image("img", data.clone());
    let proxy = TestProxy::start(config(&[&glance.url], GRACE)).await;
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
    cached(&proxy, "img").await;
    assert!(get_as(&proxy, "img", BOB).await.body == data);
    glance.set_faults(Faults {
        revoked_token: Some(BOB.into()),
        ..Faults::default()
    });
    assert_eq!(get_as(&proxy, "img", BOB).await.status, 401);
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get_as(&proxy, "img", BOB).await.status,
        502,
        "refused, then not served"
    );
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
}

/// Alice's grant for `img` no longer stands: with the image back in the cache (refilled by
/// Bob, so a held image is no excuse to ask), her next download asks Glance.
async fn alice_must_ask_again(glance: &FakeGlance, proxy: &TestProxy, data: &Bytes, why: &str) {
    glance.add_image("img", data.clone());
    assert!(
        get_as(proxy, "img", BOB).await.body == *data,
        "{why}: Bob refills"
    );
    cached(proxy, "img").await;
    let before = glance.asked("img", ALICE);
    assert!(get_as(proxy, "img", ALICE).await.body == *data);
    assert!(
        glance.asked("img", ALICE) > before,
        "{why}: Alice asked again"
    );
}

async fn alice_and_bob_download(glance: &FakeGlance, proxy: &TestProxy, data: &Bytes) {
    glance.add_image("img", data.clone());
    assert!(get_as(proxy, "img", ALICE).await.body == *data);
    cached(proxy, "img").await;
    assert!(get_as(proxy, "img", BOB).await.body == *data);
}

#[tokio::test]
async fn a_404_to_an_allowed_caller_a_delete_and_an_eviction_drop_the_grants() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 8);
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[auth]\ngrant_ttl = \"60s\"\n[cache]\nmax_size = \"1500KiB\"",
    ))
    .await;

    // A 404 on the record evicts nothing, even to a caller Glance had allowed (a member
    // without the reader role cannot read the record of an image it may download); it ends
    // that caller's grant, so Bob's download asks Glance, whose 404 no longer names him.
    alice_and_bob_download(&glance, &proxy, &data).await;
    glance.remove_image("img");
    assert_eq!(record_as(&proxy, BOB).await.status, 404);
    assert!(proxy.is_cached("img"), "a record's 404 evicts nothing");
    assert_eq!(get_as(&proxy, "img", BOB).await.status, 404);
    assert!(proxy.is_cached("img"), "Bob's grant had ended");
    // A 404 to the download of a caller Glance had allowed (Alice, asking with a query, so
    // her grant does not answer): the image is gone (evicted, and every grant with it).
    let query = format!("{}?x=1", file_url(&proxy, "img"));
    let got = send(&query, "GET", &[("x-auth-token", ALICE)], Bytes::new()).await;
    assert_eq!(got.status, 404);
    assert!(!proxy.is_cached("img"), "evicted");
    alice_must_ask_again(&glance, &proxy, &data, "404").await;

    // A DELETE through the proxy.
    alice_and_bob_download(&glance, &proxy, &data).await;
    let deleted = send(
        &format!("{}/v2/images/img", proxy.url),
        "DELETE",
        &[("x-auth-token", BOB)],
        Bytes::new(),
    )
    .await;
    assert!(deleted.status.is_success());
    assert!(!proxy.is_cached("img"));
    alice_must_ask_again(&glance, &proxy, &data, "DELETE").await;

    // An eviction: another image takes the room.
    alice_and_bob_download(&glance, &proxy, &data).await;
    glance.add_image("other", pattern(1 << 20, 9));
    assert_eq!(get_as(&proxy, "other", BOB).await.status, 200);
    cached(&proxy, "other").await;
    assert!(!proxy.is_cached("img"), "evicted");
    alice_must_ask_again(&glance, &proxy, &data, "eviction").await;
}

#[tokio::test]
async fn a_404_on_the_data_path_to_a_caller_whose_grant_expired_drops_every_grant() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 8);
    let proxy = TestProxy::start(config(&[&glance.url], "[auth]\ngrant_ttl = \"3s\"")).await;
    glance.add_image("img", data.clone());
    assert!(get_as(&proxy, "img", "token-carol").await.body == data);
    cached(&proxy, "img").await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(
        get_as(&proxy, "img", ALICE).await.body == data,
        "a fresh grant"
    );
    glance.remove_image("img");
    assert_eq!(get_as(&proxy, "img", "token-carol").await.status, 404);
    assert!(!proxy.is_cached("img"), "evicted");
    alice_must_ask_again(&glance, &proxy, &data, "404 to Carol").await;
}

#[tokio::test]
async fn refusals_and_deactivation_on_the_record_end_the_grant() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 13);
    let proxy = TestProxy::start(config(&[&glance.url], GRACE)).await;
    alice_and_bob_download(&glance, &proxy, &data).await;
    glance.add_image("img2", data.clone());
    assert!(get_as(&proxy, "img2", BOB).await.body == data);
    cached(&proxy, "img2").await;
    // Bob's token is refused on the record of img; img2 is deactivated (200, not active).
    glance.set_faults(Faults {
        revoked_token: Some(BOB.into()),
        ..Faults::default()
    });
    assert_eq!(record_as(&proxy, BOB).await.status, 401);
    glance.set_faults(Faults {
        inactive: Some("img2".into()),
        ..Faults::default()
    });
    let url = format!("{}/v2/images/img2", proxy.url);
    let got = send(&url, "GET", &[("x-auth-token", BOB)], Bytes::new()).await;
    assert_eq!(
        got.json()["status"],
        "deactivated",
        "passed through as Glance sent it"
    );
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_as(&proxy, "img", BOB).await.status, 502);
    assert_eq!(get_as(&proxy, "img2", BOB).await.status, 502);
    assert!(
        get_as(&proxy, "img", ALICE).await.body == data,
        "Alice's grant stands"
    );
}

#[tokio::test]
async fn a_probe_that_refuses_while_the_record_fails_ends_the_grant() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 14);
    let proxy = TestProxy::start(config(&[&glance.url], GRACE)).await;
    alice_and_bob_download(&glance, &proxy, &data).await;
    glance.set_faults(Faults {
        record_status: Some(503),
        deny_download: Some(403),
        ..Faults::default()
    });
    assert_eq!(
        get_as(&proxy, "img", BOB).await.status,
        403,
        "Glance's refusal of the download, not served offline"
    );
    // A first hit with a grace asks both (a record to keep): the probe's refusal is the
    // answer, not the record's failure.
    assert_eq!(get_as(&proxy, "img", "token-carol").await.status, 403);
    assert_eq!(glance.asked("img", "token-carol"), 2, "record and probe");
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_as(&proxy, "img", BOB).await.status, 502);
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
}

#[tokio::test]
async fn one_silent_upstream_is_no_outage_when_another_answers() {
    let (silent, live) = (FakeGlance::start().await, FakeGlance::start().await);
    let data = pattern(1 << 20, 15);
    silent.add_image("img", data.clone());
    let proxy = TestProxy::start(config(
        &[&silent.url, &live.url],
        "[upstream]\nresponse_timeout = \"500ms\"\n[auth]\noffline_grace = \"1h\"",
    ))
    .await;
    alice_and_bob_download(&silent, &proxy, &data).await;
    live.add_image("img", data.clone());
    silent.set_faults(Faults {
        stall_head: Some(Duration::from_secs(5)),
        ..Faults::default()
    });
    live.set_faults(Faults {
        revoked_token: Some(BOB.into()),
        ..Faults::default()
    });
    assert_eq!(
        get_as(&proxy, "img", BOB).await.status,
        401,
        "the live one decides"
    );
    assert!(get_as(&proxy, "img", ALICE).await.body == data);
}

/// Alice downloads `img` (allowed); Bob downloads `bobs` (never allowed to Alice). Both cached.
async fn two_cached_images(glance: &FakeGlance, proxy: &TestProxy) -> (Bytes, Bytes) {
    let (a, b) = (pattern(2 << 20, 10), pattern(1 << 20, 11));
    glance.add_image("img", a.clone());
    glance.add_image("bobs", b.clone());
    glance.add_image("never", pattern(1 << 10, 12));
    assert!(get_as(proxy, "img", ALICE).await.body == a);
    assert!(get_as(proxy, "bobs", BOB).await.body == b);
    cached(proxy, "img").await;
    cached(proxy, "bobs").await;
    (a, b)
}

/// While Glance cannot answer: Alice gets her image, byte-exact; nobody else gets it, she
/// does not get Bob's, and a miss is not served.
async fn only_the_allowed_caller_is_served(proxy: &TestProxy, a: &Bytes, failed: u16) {
    let got = get_as(proxy, "img", ALICE).await;
    assert_eq!(got.status, 200);
    assert!(got.body_error.is_none() && got.body == *a, "byte-exact");
    for who in [BOB, "token-reader", "token-admin"] {
        let got = get_as(proxy, "img", who).await;
        assert_eq!(got.status, failed, "{who}");
    }
    assert_eq!(
        get_as(proxy, "bobs", ALICE).await.status,
        failed,
        "not hers"
    );
    assert_eq!(
        get_as(proxy, "never", ALICE).await.status,
        failed,
        "not cached"
    );
    assert_eq!(get_as(proxy, "img", "").await.status, failed, "no token");
    let ranged = send(
        &file_url(proxy, "img"),
        "GET",
        &[("x-auth-token", ALICE), ("range", "bytes=5-9")],
        Bytes::new(),
    )
    .await;
    assert_eq!((ranged.status.as_u16(), ranged.body), (206, a.slice(5..10)));
    let query = format!("{}?prefer=x", file_url(proxy, "img"));
    let got = send(&query, "GET", &[("x-auth-token", ALICE)], Bytes::new()).await;
    assert_eq!(got.status, failed, "a query needs Glance");
    // The record too (clients read it before the data), to Alice only.
    let got = record_as(proxy, ALICE).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(got.json()["id"], "img");
    assert_eq!(got.json()["size"], a.len());
    assert_eq!(record_as(proxy, BOB).await.status, failed);
}

const GRACE: &str = "[auth]\noffline_grace = \"1h\"";

#[tokio::test]
async fn offline_with_glance_stopped_serves_only_allowed_callers() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], GRACE)).await;
    let (a, _) = two_cached_images(&glance, &proxy).await;
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    only_the_allowed_caller_is_served(&proxy, &a, 502).await;
    assert_eq!(
        decisions(&proxy, "offline").await,
        3.0,
        "the data, a range and the record"
    );
}

/// With a grace, a caller whose first download is a hit (the image cached for someone else)
/// is asked the record too, so that Glance's record to that caller is kept for an outage;
/// once kept, the caller's hits ask the probe alone.
#[tokio::test]
async fn a_first_hit_keeps_the_callers_record_for_the_grace() {
    let glance = FakeGlance::start().await;
    let data = pattern(1 << 20, 16);
    let proxy = TestProxy::start(config(&[&glance.url], GRACE)).await;
    alice_and_bob_download(&glance, &proxy, &data).await;
    assert_eq!(glance.asked("img", BOB), 2, "record and probe");
    assert!(get_as(&proxy, "img", BOB).await.body == data);
    assert_eq!(glance.asked("img", BOB), 3, "then the probe alone");
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = record_as(&proxy, BOB).await;
    assert_eq!(
        got.status, 200,
        "Glance's record to Bob, kept with his grant"
    );
    assert_eq!(got.json()["size"], data.len());
    assert!(get_as(&proxy, "img", BOB).await.body == data);
}

#[tokio::test]
async fn offline_with_glance_answering_503_but_not_when_it_is_slow() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nresponse_timeout = \"500ms\"\n[auth]\noffline_grace = \"1h\"",
    ))
    .await;
    let (a, _) = two_cached_images(&glance, &proxy).await;
    glance.set_faults(Faults {
        stall_head: Some(Duration::from_secs(3)),
        ..Faults::default()
    });
    // One slow answer is not an outage (stalled uploads can make Glance slow for anyone):
    // nobody is served on the grace, Alice included.
    for who in [ALICE, BOB] {
        assert_eq!(get_as(&proxy, "img", who).await.status, 504, "{who}");
    }
    assert_eq!(record_as(&proxy, ALICE).await.status, 504);
    glance.set_faults(Faults {
        status: Some((503, 1_000)),
        ..Faults::default()
    });
    only_the_allowed_caller_is_served(&proxy, &a, 503).await;
    // A 503 to the probe alone (the record answered) counts the same.
    glance.set_faults(Faults {
        deny_download: Some(503),
        ..Faults::default()
    });
    assert!(get_as(&proxy, "img", ALICE).await.body == a);
    assert_eq!(get_as(&proxy, "img", BOB).await.status, 503);
}

#[tokio::test]
async fn without_a_grace_an_outage_fails_closed_as_before() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let (_, _) = two_cached_images(&glance, &proxy).await;
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_as(&proxy, "img", ALICE).await.status, 502);
    assert!(
        !proxy.cache_dir.join("grants").exists(),
        "nothing persisted"
    );
}

#[tokio::test]
async fn after_the_grace_nobody_is_served() {
    let glance = FakeGlance::start().await;
    let proxy =
        TestProxy::start(config(&[&glance.url], "[auth]\noffline_grace = \"1500ms\"")).await;
    let (a, _) = two_cached_images(&glance, &proxy).await;
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        get_as(&proxy, "img", ALICE).await.body == a,
        "within the grace"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_as(&proxy, "img", ALICE).await.status, 502);
}

/// The journal holds a grant for `id` (the saver writes every grace/1000: 3.6 s for 1h).
async fn persisted(cfg: &TestConfig, id: &str) {
    let path = cfg.to_config().cache.dir.join("grants");
    for _ in 0..1000 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().any(|l| l.ends_with(&format!(" {id}"))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no grant for {id} in {}", path.display());
}

#[tokio::test]
async fn a_restart_during_the_outage_keeps_the_grants() {
    let glance = FakeGlance::start().await;
    let cfg = config(&[&glance.url], GRACE);
    let proxy = TestProxy::start(cfg.clone()).await;
    let (a, _) = two_cached_images(&glance, &proxy).await;
    persisted(&cfg, "img").await;
    let text = std::fs::read_to_string(cfg.to_config().cache.dir.join("grants")).expect("read");
    assert!(!text.contains(ALICE), "no token on disk");
    glance.stop();
    // As after a kill -9: no clean stop (dropping the proxy aborts its task).
    drop(proxy);
    let proxy = TestProxy::start(cfg).await;
    only_the_allowed_caller_is_served(&proxy, &a, 502).await;
}

/// Issue 29: the journal's keys are HMACs with the secret beside it; restarted during the
/// outage without that secret (lost, or another install's), its grants serve nobody.
#[tokio::test]
async fn a_journal_without_its_secret_serves_nobody() {
    let glance = FakeGlance::start().await;
    let cfg = config(&[&glance.url], GRACE);
    let proxy = TestProxy::start(cfg.clone()).await;
    let _ = two_cached_images(&glance, &proxy).await;
    persisted(&cfg, "img").await;
    glance.stop();
    drop(proxy);
    let dir = cfg.to_config().cache.dir;
    let key = dir.join("grants.key");
    let secret = std::fs::read_to_string(&key).expect("the secret beside the journal");
    let text = std::fs::read_to_string(dir.join("grants")).expect("read");
    assert!(
        !text.contains(secret.trim_end()),
        "the secret is not in the journal"
    );
    std::fs::remove_file(&key).expect("rm");
    let proxy = TestProxy::start(cfg.clone()).await;
    assert_eq!(get_as(&proxy, "img", ALICE).await.status, 502, "no secret");
    drop(proxy);
    // Put back, after a start that made a new one: another secret, still nobody.
    let made = std::fs::read_to_string(&key).expect("a new secret");
    assert_ne!(made, secret);
    std::fs::write(dir.join("grants"), text).expect("write");
    let proxy = TestProxy::start(cfg).await;
    assert_eq!(
        get_as(&proxy, "img", ALICE).await.status,
        502,
        "another secret"
    );
}

#[tokio::test]
async fn without_a_grace_the_grants_file_is_deleted_and_a_bad_one_is_no_grant() {
    let glance = FakeGlance::start().await;
    let cfg = config(&[&glance.url], GRACE);
    let proxy = TestProxy::start(cfg.clone()).await;
    let (a, _) = two_cached_images(&glance, &proxy).await;
    persisted(&cfg, "img").await;
    drop(proxy);
    let file = cfg.to_config().cache.dir.join("grants");
    // Restarted with the grace off: the decisions do not outlive the setting.
    let off = cfg.clone().map(|c| c.auth.offline_grace = Duration::ZERO);
    let proxy = TestProxy::start(off).await;
    assert!(!file.exists(), "deleted at start");
    drop(proxy);
    // A file that is not a grants file, not UTF-8, or garbage: the proxy starts, with none.
    for junk in [
        &b"\xff\xfe\x00garbage\n"[..],
        b"glance-cache-proxy grants 2\ngrant x\n",
    ] {
        std::fs::write(&file, junk).expect("write");
        let proxy = TestProxy::start(cfg.clone()).await;
        assert!(get_as(&proxy, "img", ALICE).await.body == a, "Glance is up");
        drop(proxy);
    }
}
