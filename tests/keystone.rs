//! Grants that follow the Keystone identity (issue 29; README "Edge sites"), against the fake
//! Glance and a fake Keystone: a renewed token of the same identity uses the grant; while
//! Glance is down a token issued after the stop is served, another project's and a made-up
//! one are not; a revoked token stops being served within `identity_cache_ttl`; Keystone
//! unreachable or failing falls back to the exact credentials (never wider).

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{config, metric, pattern, send, FakeGlance, FakeKeystone, Faults, Got, TestProxy};

/// `identity_resolutions_total{result}`.
async fn resolutions(proxy: &TestProxy, result: &str) -> f64 {
    let admin = proxy.admin_url.as_deref().expect("admin listener");
    let series = format!("glance_cache_proxy_identity_resolutions_total{{result=\"{result}\"}}");
    metric(admin, &series).await
}

async fn get_as(proxy: &TestProxy, id: &str, token: &str) -> Got {
    let url = format!("{}/v2/images/{id}/file", proxy.url);
    send(&url, "GET", &[("x-auth-token", token)], Bytes::new()).await
}

async fn cached(proxy: &TestProxy, id: &str) {
    support::until(|| proxy.is_cached(id)).await;
}

/// Glance, Keystone (alice's two tokens, bob's in another project) and a proxy with these
/// `[auth]` settings and the Keystone URL; alice's first token has the image cached.
async fn setup(auth: &str) -> (FakeGlance, FakeKeystone, TestProxy, Bytes) {
    let glance = FakeGlance::start().await;
    let keystone = FakeKeystone::start().await;
    for (token, user, project) in [
        ("alice-1", "alice", "p1"),
        ("alice-2", "alice", "p1"),
        ("bob-1", "bob", "p2"),
    ] {
        keystone.issue(token, user, project, &["member", "reader"]);
    }
    let extra = format!("[auth]\nkeystone_url = \"{}/v3\"\n{auth}", keystone.url);
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], &extra)).await;
    let image = pattern(1 << 20, 29);
    glance.add_image("img", image.clone());
    let got = get_as(&proxy, "img", "alice-1").await;
    assert!(got.status == 200 && got.body == image, "the miss");
    cached(&proxy, "img").await;
    (glance, keystone, proxy, image)
}

#[tokio::test]
async fn a_renewed_token_of_the_same_identity_uses_the_grant() {
    let (glance, keystone, proxy, image) = setup("grant_ttl = \"60s\"\n").await;
    let got = get_as(&proxy, "img", "alice-2").await;
    assert!(got.status == 200 && got.body == image);
    assert_eq!(glance.asked("img", "alice-2"), 0, "Glance not asked");
    let got = get_as(&proxy, "img", "alice-2").await;
    assert_eq!(got.status, 200);
    assert_eq!(keystone.asked("alice-2"), 1, "validated once, then cached");
    let got = get_as(&proxy, "img", "bob-1").await;
    assert_eq!(got.status, 200);
    assert!(
        glance.asked("img", "bob-1") > 0,
        "another identity asks Glance"
    );
    // alice-1, alice-2, bob-1 asked; alice-2's second request cached.
    assert!(resolutions(&proxy, "keystone").await >= 3.0);
    assert!(resolutions(&proxy, "cached").await >= 1.0);
    assert_eq!(resolutions(&proxy, "fallback").await, 0.0);
    let admin = proxy.admin_url.as_deref().expect("admin listener");
    let timed = metric(admin, "glance_cache_proxy_keystone_response_seconds_count").await;
    assert!(timed >= 3.0, "{timed}");
}

#[tokio::test]
async fn while_glance_is_down_the_identity_is_served_and_nobody_else() {
    let (glance, keystone, proxy, image) = setup("offline_grace = \"1h\"\n").await;
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    keystone.issue("alice-3", "alice", "p1", &["reader", "member"]);
    let got = get_as(&proxy, "img", "alice-3").await;
    assert!(
        got.status == 200 && got.body == image,
        "a token issued after the stop"
    );
    assert_eq!(
        get_as(&proxy, "img", "bob-1").await.status,
        502,
        "another project"
    );
    assert_eq!(
        get_as(&proxy, "img", "made-up").await.status,
        502,
        "made up"
    );
    keystone.issue("alice-admin", "alice", "p1", &["admin", "member", "reader"]);
    assert_eq!(
        get_as(&proxy, "img", "alice-admin").await.status,
        502,
        "other roles: another identity"
    );
    assert!(resolutions(&proxy, "invalid").await >= 1.0, "made-up");
}

#[tokio::test]
async fn a_revoked_token_stops_being_served_within_the_identity_cache_ttl() {
    let (glance, keystone, proxy, image) =
        setup("offline_grace = \"1h\"\nidentity_cache_ttl = \"500ms\"\n").await;
    glance.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    keystone.revoke("alice-1");
    let revoked = tokio::time::Instant::now();
    loop {
        let got = get_as(&proxy, "img", "alice-1").await;
        if got.status == 502 {
            break;
        }
        assert!(got.status == 200 && got.body == image);
        assert!(
            revoked.elapsed() < Duration::from_millis(1500),
            "still served {:?} after the revocation",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = get_as(&proxy, "img", "alice-2").await;
    assert_eq!(got.status, 200, "the same identity's other token still is");
    // Keystone's refusal ended the revoked token's own credentials' grant too: once Keystone
    // cannot be asked either, it is not served on it.
    keystone.stop();
    until_refused(&proxy, "alice-2").await;
    assert_eq!(get_as(&proxy, "img", "alice-1").await.status, 502);
}

/// Wait (at most 3 s) until `token`'s cached identity has expired with Keystone stopped: its
/// request for `img`, which only its identity's grant serves, is refused.
async fn until_refused(proxy: &TestProxy, token: &str) {
    let started = tokio::time::Instant::now();
    loop {
        let status = get_as(proxy, "img", token).await.status;
        if status == 502 {
            return;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{token} still served {:?} after Keystone stopped",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn with_keystone_down_too_the_granted_token_is_served_on_its_own_credentials() {
    let auth = "grant_ttl = \"60s\"\noffline_grace = \"1h\"\nidentity_cache_ttl = \"300ms\"\n";
    let (glance, keystone, proxy, image) = setup(auth).await;
    // alice-2 is served on the identity's grant, never granted by Glance itself.
    assert_eq!(get_as(&proxy, "img", "alice-2").await.status, 200);
    assert_eq!(glance.asked("img", "alice-2"), 0);
    glance.stop();
    keystone.stop();
    until_refused(&proxy, "alice-2").await;
    let got = get_as(&proxy, "img", "alice-1").await;
    assert!(
        got.status == 200 && got.body == image,
        "the granted token itself: {}",
        got.status
    );
    assert_eq!(get_as(&proxy, "img", "bob-1").await.status, 502);
    assert_eq!(get_as(&proxy, "img", "made-up").await.status, 502);
    assert!(resolutions(&proxy, "fallback").await >= 3.0);
}

#[tokio::test]
async fn a_refusal_ends_the_grant_under_the_identity_and_the_exact_credentials() {
    let auth = "offline_grace = \"1h\"\nidentity_cache_ttl = \"300ms\"\n";
    let (glance, keystone, proxy, _) = setup(auth).await;
    glance.set_faults(support::Faults {
        deny_download: Some(403),
        ..Default::default()
    });
    assert_eq!(get_as(&proxy, "img", "alice-1").await.status, 403);
    glance.stop();
    assert_eq!(
        get_as(&proxy, "img", "alice-1").await.status,
        502,
        "the identity's grant ended"
    );
    keystone.stop();
    tokio::time::sleep(Duration::from_millis(400)).await; // the identity cache's ttl
    assert_eq!(
        get_as(&proxy, "img", "alice-1").await.status,
        502,
        "and the exact credentials' grant"
    );
    assert!(resolutions(&proxy, "fallback").await >= 1.0);
}

#[tokio::test]
async fn keystone_failing_or_unreachable_falls_back_to_the_exact_credentials() {
    let (glance, keystone, proxy, _) = setup("grant_ttl = \"60s\"\n").await;
    keystone.fail(true);
    // Not resolved: keyed by the exact credentials, which Glance has not granted; asks Glance.
    assert_eq!(get_as(&proxy, "img", "alice-2").await.status, 200);
    assert!(
        glance.asked("img", "alice-2") > 0,
        "no widening: Glance asked"
    );
    keystone.stop();
    let before = glance.asked("img", "alice-2");
    assert_eq!(get_as(&proxy, "img", "alice-2").await.status, 200);
    assert_eq!(
        glance.asked("img", "alice-2"),
        before,
        "its own exact credentials' grant"
    );
    let got = get_as(&proxy, "img", "bob-1").await;
    assert_eq!(got.status, 200);
    assert!(glance.asked("img", "bob-1") > 0);
    assert!(resolutions(&proxy, "fallback").await >= 3.0);
}

#[tokio::test]
async fn concurrent_requests_with_a_new_token_validate_it_once() {
    let (_glance, keystone, proxy, image) = setup("grant_ttl = \"60s\"\n").await;
    keystone.issue("alice-9", "alice", "p1", &["member", "reader"]);
    keystone.delay(Duration::from_millis(300));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = format!("{}/v2/images/img/file", proxy.url);
        requests.spawn(async move {
            send(&url, "GET", &[("x-auth-token", "alice-9")], Bytes::new()).await
        });
    }
    while let Some(got) = requests.join_next().await {
        let got = got.expect("request task");
        assert!(got.status == 200 && got.body == image, "{}", got.status);
    }
    assert_eq!(keystone.asked("alice-9"), 1, "one validation for all eight");
    assert!(
        resolutions(&proxy, "cached").await >= 7.0,
        "the others waited for it"
    );
}

#[tokio::test]
async fn an_unreachable_keystone_is_not_asked_by_every_request() {
    let (glance, keystone, proxy, _) = setup("grant_ttl = \"60s\"\n").await;
    keystone.fail(true);
    assert_eq!(get_as(&proxy, "img", "alice-2").await.status, 200);
    assert_eq!(keystone.asked("alice-2"), 1);
    // Within glance_cache_proxy::identity::RETRY_AFTER: not asked, the exact credentials at once.
    assert_eq!(get_as(&proxy, "img", "bob-1").await.status, 200);
    assert_eq!(keystone.asked("bob-1"), 0, "Keystone asked again at once");
    assert!(
        glance.asked("img", "bob-1") > 0,
        "no widening: Glance asked"
    );
    assert!(resolutions(&proxy, "fallback").await >= 2.0);
    // Asked again after it.
    keystone.fail(false);
    let started = tokio::time::Instant::now();
    while keystone.asked("bob-1") == 0 {
        assert!(
            started.elapsed() < glance_cache_proxy::identity::RETRY_AFTER + Duration::from_secs(2),
            "Keystone not asked again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get_as(&proxy, "img", "bob-1").await.status, 200);
    }
}

/// Two values of a token header reach Glance joined into one (which Glance refuses): the
/// request uses neither token's grant; Glance is asked, as for any caller without one.
#[tokio::test]
async fn two_tokens_in_one_request_use_no_identity_grant() {
    let (glance, keystone, proxy, _) = setup("grant_ttl = \"60s\"\n").await;
    let about = |g: &FakeGlance| {
        g.seen()
            .iter()
            .filter(|s| s.path_and_query.starts_with("/v2/images/img"))
            .count()
    };
    let before = about(&glance);
    let url = format!("{}/v2/images/img/file", proxy.url);
    let two = [("x-auth-token", "alice-1"), ("x-auth-token", "junk")];
    let _ = send(&url, "GET", &two, Bytes::new()).await;
    assert!(about(&glance) > before, "Glance asked: no grant used");
    assert_eq!(keystone.asked("junk"), 0, "neither token resolved alone");
    // Nothing for Keystone to answer, here or without a token: not counted as Keystone
    // failing (no client can raise the "Keystone unreachable" alert).
    let _ = send(&url, "GET", &[], Bytes::new()).await;
    assert_eq!(resolutions(&proxy, "fallback").await, 0.0);
}

/// Issue 29, hostile probe A: a token's identity cached as [reader], its roles changed to
/// [member, reader] in Keystone and Glance (which validates afresh) says yes: the grant is not
/// kept under the cached [reader] identity, so a new reader-only token of the same user, which
/// Glance refuses, is not served from it. Keystone is asked again (the cache updated); the same
/// identity again: kept under it.
#[tokio::test]
async fn a_grant_is_not_kept_under_an_identity_from_the_cache_that_keystone_no_longer_gives() {
    let (glance, keystone, proxy, image) = setup("grant_ttl = \"60s\"\n").await;
    let deny = |status| Faults {
        deny_download: status,
        ..Faults::default()
    };
    keystone.issue("carol-1", "carol", "p1", &["reader"]);
    glance.set_faults(deny(Some(403)));
    assert_eq!(get_as(&proxy, "img", "carol-1").await.status, 403, "reader");
    // The member role added: Glance says yes to carol-1, whose [reader] identity is cached.
    keystone.issue("carol-1", "carol", "p1", &["member", "reader"]);
    glance.set_faults(deny(None));
    let got = get_as(&proxy, "img", "carol-1").await;
    assert!(got.status == 200 && got.body == image, "{}", got.status);
    assert_eq!(
        keystone.asked("carol-1"),
        2,
        "asked again after Glance's yes"
    );
    // The role removed again: a new reader-only token of carol.
    keystone.issue("carol-2", "carol", "p1", &["reader"]);
    glance.set_faults(deny(Some(403)));
    let got = get_as(&proxy, "img", "carol-2").await;
    assert_eq!(
        got.status, 403,
        "served from a grant kept under a stale identity"
    );
    // carol-1's identity, asked again, is cached as [member, reader]: Glance's yes to it is
    // kept under that identity (Keystone gives the same), which a new token of it reads.
    glance.set_faults(deny(None));
    assert_eq!(get_as(&proxy, "img", "carol-1").await.status, 200);
    assert_eq!(keystone.asked("carol-1"), 3);
    keystone.issue("carol-3", "carol", "p1", &["member", "reader"]);
    glance.set_faults(deny(Some(403)));
    let got = get_as(&proxy, "img", "carol-3").await;
    assert!(got.status == 200 && got.body == image, "{}", got.status);
    assert_eq!(glance.asked("img", "carol-3"), 0, "on the identity's grant");
}

/// Issue 29, hostile probe B: a Keystone that accepts and never answers holds a request up
/// for `auth.keystone_timeout`, not `upstream.response_timeout`; then the exact credentials,
/// and Keystone rests for `RETRY_AFTER`.
#[tokio::test]
async fn a_hung_keystone_holds_a_request_up_for_keystone_timeout_only() {
    let (glance, keystone, proxy, image) = setup("keystone_timeout = \"300ms\"\n").await;
    keystone.issue("alice-7", "alice", "p1", &["member", "reader"]);
    keystone.delay(Duration::from_secs(8));
    let started = tokio::time::Instant::now();
    let got = get_as(&proxy, "img", "alice-7").await;
    assert!(got.status == 200 && got.body == image, "{}", got.status);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} for Keystone",
        started.elapsed()
    );
    assert!(glance.asked("img", "alice-7") > 0, "Glance asked");
    assert!(resolutions(&proxy, "fallback").await >= 1.0);
    // Within RETRY_AFTER: not asked again, the exact credentials at once.
    let started = tokio::time::Instant::now();
    assert_eq!(get_as(&proxy, "img", "bob-1").await.status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(keystone.asked("bob-1"), 0);
}

/// Issue 29, hostile probe A: Glance says yes to a token whose identity is cached and Keystone,
/// asked again, cannot say: the grant is kept under the token's exact credentials alone, so
/// another token of that identity, which Glance refuses, is not served from it.
#[tokio::test]
async fn a_cached_identity_keystone_cannot_confirm_keeps_the_grant_on_the_exact_credentials() {
    let (glance, keystone, proxy, _) = setup("grant_ttl = \"60s\"\n").await;
    let deny = |status| Faults {
        deny_download: status,
        ..Faults::default()
    };
    keystone.issue("dave-1", "dave", "p1", &["member", "reader"]);
    glance.set_faults(deny(Some(403)));
    assert_eq!(get_as(&proxy, "img", "dave-1").await.status, 403);
    keystone.fail(true);
    glance.set_faults(deny(None));
    assert_eq!(get_as(&proxy, "img", "dave-1").await.status, 200);
    assert_eq!(
        keystone.asked("dave-1"),
        2,
        "asked again after Glance's yes"
    );
    keystone.fail(false);
    tokio::time::sleep(glance_cache_proxy::identity::RETRY_AFTER + Duration::from_millis(100))
        .await;
    keystone.issue("dave-2", "dave", "p1", &["member", "reader"]);
    glance.set_faults(deny(Some(403)));
    assert_eq!(
        get_as(&proxy, "img", "dave-2").await.status,
        403,
        "served on a grant Keystone did not confirm"
    );
    assert_eq!(keystone.asked("dave-2"), 1);
}
