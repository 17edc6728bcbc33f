//! The image cache against the fake Glance: miss then hit, verification faults (nothing bad
//! served cleanly, nothing kept), coalescing, per-caller authorization, eviction by size,
//! deletes, and a restart that rebuilds the index from disk.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{config, get, pattern, send, FakeGlance, Faults, TestProxy};

fn file_url(proxy: &TestProxy, id: &str) -> String {
    format!("{}/v2/images/{id}/file", proxy.url)
}

/// Committed entries on disk (data files, not .meta records).
fn cached_ids(proxy: &TestProxy) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(proxy.cache_dir.join("images"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".meta"))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Wait (bounded) for a fill to be published or dropped after its last byte went out:
/// exactly `want` on disk, and in the index (where an entry lands a moment after its files).
async fn settle(proxy: &TestProxy, want: &[&str]) {
    let settled = || cached_ids(proxy) == want && want.iter().all(|id| proxy.is_cached(id));
    for _ in 0..500 {
        if settled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cached_ids(proxy), want);
    for id in want {
        assert!(proxy.is_cached(id), "{id} is on disk but not in the index");
    }
}

#[tokio::test]
async fn a_miss_fills_and_the_next_request_is_a_hit() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(5 << 20, 11);
    glance.add_image("img", data.clone());

    for round in 0..3 {
        let got = get(&file_url(&proxy, "img")).await;
        assert_eq!(got.status, 200, "round {round}");
        assert!(got.body_error.is_none());
        assert!(got.body == data, "round {round}: bytes differ");
        assert_eq!(got.headers["content-type"], "application/octet-stream");
        assert_eq!(
            got.headers["content-length"],
            data.len().to_string().as_str()
        );
        assert_eq!(
            got.headers["content-md5"],
            hex::encode(<md5::Md5 as sha2::Digest>::digest(&data)).as_str()
        );
        assert!(got.headers.contains_key("x-openstack-request-id"));
        settle(&proxy, &["img"]).await;
    }
    assert_eq!(glance.downloads("img"), 1, "hits must not download again");
}

#[tokio::test]
async fn bad_bytes_are_never_served_cleanly_nor_kept() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(3 << 20, 12);
    glance.add_image("img", data.clone());
    let faults = [
        (
            "flipped byte",
            Faults {
                flip_at: Some(1234),
                ..Default::default()
            },
        ),
        (
            "flipped last byte",
            Faults {
                flip_at: Some(data.len() - 1),
                ..Default::default()
            },
        ),
        (
            "short body",
            Faults {
                drop_after: Some(data.len() - 10),
                ..Default::default()
            },
        ),
        (
            "dropped early",
            Faults {
                drop_after: Some(4096),
                chunked: true,
                ..Default::default()
            },
        ),
    ];
    for (name, fault) in faults {
        glance.set_faults(fault);
        let got = get(&file_url(&proxy, "img")).await;
        assert_eq!(got.status, 200, "{name}");
        assert!(
            got.body_error.is_some(),
            "{name}: the response ended cleanly"
        );
        assert!(
            got.body.len() < data.len(),
            "{name}: the whole (bad) body was delivered"
        );
        settle(&proxy, &[]).await;
    }
    // Healthy again: the next request fills and commits.
    glance.set_faults(Faults::default());
    let got = get(&file_url(&proxy, "img")).await;
    assert!(got.body_error.is_none() && got.body == data);
    settle(&proxy, &["img"]).await;
}

#[tokio::test]
async fn a_stalled_fill_aborts_its_reader_and_keeps_nothing() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[upstream]\nbody_idle_timeout = \"300ms\"\n",
    ))
    .await;
    glance.add_image("img", pattern(1 << 20, 13));
    glance.set_faults(Faults {
        stall_after: Some(100_000),
        ..Default::default()
    });
    let got = tokio::time::timeout(Duration::from_secs(10), get(&file_url(&proxy, "img")))
        .await
        .expect("no hang");
    assert!(got.body_error.is_some());
    settle(&proxy, &[]).await;
}

#[tokio::test]
async fn upstream_refusals_pass_through_and_fill_nothing() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    glance.add_image("img", pattern(1 << 20, 14));
    // The record is fine but the download is refused (a reader-only role): 403, nothing cached.
    glance.set_faults(Faults {
        deny_download: Some(403),
        ..Default::default()
    });
    let got = get(&file_url(&proxy, "img")).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["message"], "download refused");
    settle(&proxy, &[]).await;
    // A 503 on the download itself (the record is fine).
    glance.set_faults(Faults {
        deny_download: Some(503),
        ..Default::default()
    });
    assert_eq!(get(&file_url(&proxy, "img")).await.status, 503);
    settle(&proxy, &[]).await;
    // A 503 on the record itself.
    glance.set_faults(Faults {
        status: Some((503, 1)),
        ..Default::default()
    });
    assert_eq!(get(&file_url(&proxy, "img")).await.status, 503);
    // Unknown image.
    glance.set_faults(Faults::default());
    assert_eq!(get(&file_url(&proxy, "nope")).await.status, 404);
}

#[tokio::test]
async fn a_hit_is_refused_when_glance_refuses_the_caller() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(1 << 20, 15);
    glance.add_image("img", data.clone());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    settle(&proxy, &["img"]).await;

    // Cached, but Glance now refuses downloads to this caller: the hit must refuse too.
    glance.set_faults(Faults {
        deny_download: Some(403),
        ..Default::default()
    });
    assert_eq!(get(&file_url(&proxy, "img")).await.status, 403);
    glance.set_faults(Faults::default());
    assert!(get(&file_url(&proxy, "img")).await.body == data);

    // Deleted in Glance (not through the proxy): 404, and the entry is evicted.
    glance.remove_image("img");
    assert_eq!(get(&file_url(&proxy, "img")).await.status, 404);
    settle(&proxy, &[]).await;
    assert_eq!(glance.downloads("img"), 1);
}

#[tokio::test]
async fn a_changed_image_is_refetched() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    glance.add_image("img", pattern(1 << 20, 16));
    get(&file_url(&proxy, "img")).await;
    settle(&proxy, &["img"]).await;
    // Same id, new bytes and digests (cannot happen to an active Glance image, but the
    // record is the truth): the old entry is dropped and the new bytes are served.
    let new = pattern(1 << 20, 17);
    glance.add_image("img", new.clone());
    let got = get(&file_url(&proxy, "img")).await;
    assert!(got.body == new);
    assert_eq!(glance.downloads("img"), 2);
}

/// A fake Glance with `faults` and a proxy that has cached `data` as "img".
async fn with_img_cached(data: &Bytes, faults: Faults) -> (FakeGlance, TestProxy) {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    glance.add_image("img", data.clone());
    glance.set_faults(faults);
    get(&file_url(&proxy, "img")).await;
    settle(&proxy, &["img"]).await;
    (glance, proxy)
}

/// The requests Glance saw after the first `before`: path and query, sorted.
fn asked_since(glance: &FakeGlance, before: usize) -> Vec<String> {
    let mut asked: Vec<String> = glance.seen()[before..]
        .iter()
        .map(|s| s.path_and_query.clone())
        .collect();
    asked.sort();
    asked
}

/// A hit on a verified entry asks Glance one question: the download probe, with the caller's
/// headers, whose head names the image's size and md5 (the record is not asked).
#[tokio::test]
async fn a_hit_asks_glance_the_download_probe_alone() {
    let data = pattern(1 << 20, 40);
    let (glance, proxy) = with_img_cached(&data, Faults::default()).await;
    let before = glance.seen().len();
    let hit = get(&file_url(&proxy, "img")).await;
    assert!(hit.status == 200 && hit.body == data);
    assert_eq!(asked_since(&glance, before), ["/v2/images/img/file"]);
    let probe = glance.seen().pop().expect("the probe");
    assert_eq!(probe.headers["range"], "bytes=0-0");
    assert_eq!(glance.downloads("img"), 1);
}

/// When the probe's `Content-MD5` is not the entry's md5 (here the record Glance sent with
/// the fill stated a wrong checksum, which the default `verify_md5 = false` keeps), the
/// record is asked too and decides: it still matches the entry, which is served.
#[tokio::test]
async fn a_probe_naming_another_md5_asks_the_record_too() {
    let data = pattern(1 << 20, 41);
    let wrong_md5 = Faults {
        record_md5: Some("0123456789abcdef0123456789abcdef".into()),
        ..Faults::default()
    };
    let (glance, proxy) = with_img_cached(&data, wrong_md5).await;
    let before = glance.seen().len();
    let hit = get(&file_url(&proxy, "img")).await;
    assert!(hit.status == 200 && hit.body == data);
    let asked = asked_since(&glance, before);
    assert_eq!(asked, ["/v2/images/img", "/v2/images/img/file"]);
    assert_eq!(glance.downloads("img"), 1, "the entry stands");
}

/// A hit with a query (`?prefer=`) asks the record too, and the probe carries the query.
#[tokio::test]
async fn a_hit_with_a_query_asks_the_record_and_the_probe_carries_the_query() {
    let data = pattern(1 << 20, 42);
    let (glance, proxy) = with_img_cached(&data, Faults::default()).await;
    let before = glance.seen().len();
    let hit = get(&format!("{}?prefer=fast", file_url(&proxy, "img"))).await;
    assert!(hit.status == 200 && hit.body == data);
    let asked = asked_since(&glance, before);
    assert_eq!(asked, ["/v2/images/img", "/v2/images/img/file?prefer=fast"]);
    assert_eq!(glance.downloads("img"), 1);
}

/// A deactivated image: Glance refuses its download to all but admins, and so does a hit.
#[tokio::test]
async fn a_hit_on_a_deactivated_image_is_refused_to_all_but_admins() {
    let data = pattern(1 << 20, 43);
    let (glance, proxy) = with_img_cached(&data, Faults::default()).await;
    glance.set_faults(Faults {
        inactive: Some("img".into()),
        ..Faults::default()
    });
    let url = file_url(&proxy, "img");
    let member = send(&url, "GET", &[("x-auth-token", "member")], Bytes::new()).await;
    assert_eq!(member.status, 403);
    let admin = send(&url, "GET", &[("x-auth-token", "admin")], Bytes::new()).await;
    assert!(admin.status == 200 && admin.body == data);
    assert_eq!(
        glance.downloads("img"),
        1,
        "the admin's copy came from the cache"
    );
}

#[tokio::test]
async fn a_delete_through_the_proxy_evicts() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    glance.add_image("img", pattern(1 << 20, 18));
    get(&file_url(&proxy, "img")).await;
    settle(&proxy, &["img"]).await;
    let got = send(
        &format!("{}/v2/images/img", proxy.url),
        "DELETE",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 200); // the fake echoes DELETE with 200
    settle(&proxy, &[]).await;
}

#[tokio::test]
async fn concurrent_cold_requests_make_one_upstream_download() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(4 << 20, 19);
    glance.add_image("img", data.clone());
    // Slow enough that every request arrives while the fill runs.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(10)),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let url = file_url(&proxy, "img");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        let got = t.await.expect("task");
        assert_eq!(got.status, 200);
        assert!(got.body_error.is_none());
        assert!(got.body == data);
    }
    assert_eq!(glance.downloads("img"), 1);
    settle(&proxy, &["img"]).await;
}

#[tokio::test]
async fn the_fill_survives_its_first_client_leaving() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(2 << 20, 20);
    glance.add_image("img", data.clone());
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Default::default()
    });
    let url = file_url(&proxy, "img");
    let first = tokio::spawn(async move { get(&url).await });
    fill_started(&proxy).await;
    first.abort(); // the client hangs up mid-transfer
    settle(&proxy, &["img"]).await;
    glance.set_faults(Faults::default());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 1);
}

#[tokio::test]
async fn least_recently_used_entries_are_evicted_and_too_large_images_pass() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[cache]\nmax_size = \"3MiB\"\n")).await;
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        glance.add_image(id, pattern(1 << 20, 30 + i as u64));
    }
    glance.add_image("huge", pattern(4 << 20, 40));
    for id in ["a", "b", "c"] {
        get(&file_url(&proxy, id)).await;
    }
    settle(&proxy, &["a", "b", "c"]).await;
    get(&file_url(&proxy, "a")).await; // a is now more recent than b
    glance.add_image("d", pattern(1 << 20, 41));
    get(&file_url(&proxy, "d")).await;
    settle(&proxy, &["a", "c", "d"]).await;

    let got = get(&file_url(&proxy, "huge")).await;
    assert!(got.body_error.is_none() && got.body.len() == 4 << 20);
    settle(&proxy, &["a", "c", "d"]).await;
}

#[tokio::test]
async fn ranges_on_uncached_images_pass_through() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(1 << 20, 21);
    glance.add_image("img", data.clone());
    let got = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("range", "bytes=100-199")],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 206);
    assert_eq!(got.headers["content-range"], "bytes 100-199/1048576");
    assert!(got.body[..] == data[100..200]);
    settle(&proxy, &[]).await;
}

#[tokio::test]
async fn a_restart_keeps_committed_entries_and_drops_leftovers() {
    let glance = FakeGlance::start().await;
    let cfg = config(&[&glance.url], "");
    let data = pattern(1 << 20, 22);
    glance.add_image("img", data.clone());
    let mut first = TestProxy::start(cfg.clone()).await;
    get(&file_url(&first, "img")).await;
    settle(&first, &["img"]).await;
    first.begin_shutdown().await.expect("stopped");
    std::fs::write(cfg.cache.dir.join("tmp").join("img.partial"), b"leftover").expect("write");

    let second = TestProxy::start(cfg.clone()).await;
    let got = get(&file_url(&second, "img")).await;
    assert!(got.body == data);
    assert_eq!(glance.downloads("img"), 1, "served from the rebuilt index");
    assert_eq!(
        std::fs::read_dir(cfg.cache.dir.join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    drop(first);
}

#[tokio::test]
async fn eviction_never_breaks_a_transfer_in_progress() {
    use http_body_util::BodyExt;
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[cache]\nmax_size = \"40MiB\"\n")).await;
    let a = pattern(24 << 20, 60);
    let b = pattern(24 << 20, 61);
    glance.add_image("a", a.clone());
    glance.add_image("b", b.clone());
    get(&file_url(&proxy, "a")).await;
    settle(&proxy, &["a"]).await;

    // Start a hit of `a` and stop reading after the first piece (far more than the socket
    // buffers hold is still to come).
    let mut sender = support::connection(proxy.addr).await;
    let mut body = support::get_on(&mut sender, "/v2/images/a/file", &[])
        .await
        .into_body();
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        let frame = body.frame().await.expect("frame").expect("data");
        got.extend_from_slice(frame.data_ref().expect("data frame"));
    }

    // Filling `b` needs `a`'s room: `a` is evicted while its transfer is paused.
    assert!(get(&file_url(&proxy, "b")).await.body == b);
    settle(&proxy, &["b"]).await;

    // The paused transfer finishes, whole and right.
    while let Some(frame) = body.frame().await {
        got.extend_from_slice(
            frame
                .expect("no error after eviction")
                .data_ref()
                .expect("data"),
        );
    }
    assert!(got == a, "bytes differ after eviction");
}

#[tokio::test]
async fn a_caller_who_cannot_see_an_image_cannot_evict_it() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(1 << 20, 70);
    glance.add_image("img", data.clone());
    get(&file_url(&proxy, "img")).await;
    settle(&proxy, &["img"]).await;
    glance.set_faults(Faults {
        hidden_from_token: Some("stranger".into()),
        ..Default::default()
    });
    let got = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("x-auth-token", "stranger")],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 404);
    settle(&proxy, &["img"]).await;
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 1);
}

#[tokio::test]
async fn legacy_v1_downloads_are_cached_with_their_headers() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(2 << 20, 80);
    glance.add_image("v1img", data.clone());
    let url = format!("{}/v1/images/v1img", proxy.url);
    let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(&data));
    for round in 0..2 {
        let got = get(&url).await;
        assert_eq!(got.status, 200, "round {round}");
        assert!(
            got.body_error.is_none() && got.body == data,
            "round {round}"
        );
        assert_eq!(got.headers["x-image-meta-checksum"], md5.as_str());
        assert_eq!(got.headers["x-image-meta-property-foo"], "bar");
        assert_eq!(got.headers["etag"], md5.as_str());
        assert_eq!(
            got.headers["content-length"],
            data.len().to_string().as_str()
        );
        settle(&proxy, &["v1img"]).await;
    }
    assert_eq!(glance.downloads("v1img"), 1);

    // A flipped byte is caught by the md5 alone.
    let other = pattern(1 << 20, 81);
    glance.add_image("v1bad", other.clone());
    glance.set_faults(Faults {
        flip_at: Some(77),
        ..Default::default()
    });
    let got = get(&format!("{}/v1/images/v1bad", proxy.url)).await;
    assert!(got.body_error.is_some());
    settle(&proxy, &["v1img"]).await;

    // Refused downloads stay refused on a hit; a DELETE evicts.
    glance.set_faults(Faults {
        deny_download: Some(403),
        ..Default::default()
    });
    assert_eq!(get(&url).await.status, 403);
    glance.set_faults(Faults::default());
    let got = send(&url, "DELETE", &[], Bytes::new()).await;
    assert_eq!(got.status, 200);
    settle(&proxy, &[]).await;
}

#[tokio::test]
async fn the_query_goes_upstream_on_a_miss() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    glance.add_image("img", pattern(1 << 20, 90));
    let got = get(&format!("{}/v2/images/img/file?prefer=fs,ceph", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert!(glance
        .seen()
        .iter()
        .any(|r| r.path_and_query == "/v2/images/img/file?prefer=fs,ceph"));
}

#[tokio::test]
async fn images_without_digests_are_served_and_cached_only_when_allowed() {
    let glance = FakeGlance::start().await;
    glance.add_image("img", pattern(1 << 20, 91));
    glance.set_faults(Faults {
        no_digests: true,
        ..Default::default()
    });
    let strict = TestProxy::start(config(&[&glance.url], "")).await;
    for _ in 0..2 {
        let got = get(&file_url(&strict, "img")).await;
        assert!(got.body_error.is_none() && got.body.len() == 1 << 20);
    }
    settle(&strict, &[]).await;
    assert_eq!(glance.downloads("img"), 2);

    let lax = TestProxy::start(config(&[&glance.url], "[cache]\ncache_unverified = true\n")).await;
    for _ in 0..2 {
        assert!(get(&file_url(&lax, "img")).await.body.len() == 1 << 20);
    }
    settle(&lax, &["img"]).await;
    assert_eq!(glance.downloads("img"), 3);
}

#[tokio::test]
async fn an_abandoned_fill_stops_when_configured_to() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[cache]\nfinish_abandoned_fills = false\n",
    ))
    .await;
    glance.add_image("img", pattern(2 << 20, 92));
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Default::default()
    });
    let url = file_url(&proxy, "img");
    let client = tokio::spawn(async move { get(&url).await });
    fill_started(&proxy).await;
    client.abort();
    // The orphaned fill stops: its temporary file goes and nothing is published (a fill that
    // went on would only leave tmp/ empty after publishing the entry).
    let tmp = proxy.cache_dir.join("tmp");
    support::until(|| {
        std::fs::read_dir(&tmp)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    })
    .await;
    assert_eq!(cached_ids(&proxy), Vec::<String>::new());
    // The next request is served and fills anew: a fill is not orphaned before its own
    // client's reader exists (on this one-thread runtime the fill's task used to run first).
    glance.set_faults(Faults::default());
    for _ in 0..3 {
        let got = get(&file_url(&proxy, "img")).await;
        assert!(got.body_error.is_none() && got.body.len() == 2 << 20);
        settle(&proxy, &["img"]).await;
        let drop = format!("{}/v2/cache/img", proxy.url);
        send(&drop, "DELETE", &[("x-auth-token", "admin")], Bytes::new()).await;
        settle(&proxy, &[]).await;
    }
}

#[tokio::test]
async fn recency_survives_a_restart() {
    let glance = FakeGlance::start().await;
    let cfg = config(&[&glance.url], "[cache]\nmax_size = \"3MiB\"\n");
    for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
        glance.add_image(id, pattern(1 << 20, 93 + i as u64));
    }
    let mut first = TestProxy::start(cfg.clone()).await;
    for id in ["a", "b", "c"] {
        get(&file_url(&first, id)).await;
        settle_has(&first, id).await;
        tokio::time::sleep(Duration::from_millis(20)).await; // distinct mtimes
    }
    // a: the most recent. Its hit is recorded when the body ends: a's .meta mtime (its LRU
    // tick) then passes c's.
    get(&file_url(&first, "a")).await;
    support::until(|| used_at(&first, "a") > used_at(&first, "c")).await;
    first.begin_shutdown().await.expect("stopped");

    let second = TestProxy::start(cfg.clone()).await;
    get(&file_url(&second, "d")).await;
    settle(&second, &["a", "c", "d"]).await; // b was the least recently used
    drop(first);
}

/// When `id` was last used as the cache records it: the mtime of its `.meta` file.
fn used_at(proxy: &TestProxy, id: &str) -> std::time::SystemTime {
    let meta = proxy.cache_dir.join("images").join(format!("{id}.meta"));
    std::fs::metadata(&meta)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", meta.display()))
}

/// Wait (bounded) until a fill has a temporary file.
async fn fill_started(proxy: &TestProxy) {
    let tmp = proxy.cache_dir.join("tmp");
    support::until(|| std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())).await;
}

/// Wait (bounded) until `id` is in the index (its files are on disk a moment before).
async fn settle_has(proxy: &TestProxy, id: &str) {
    support::until(|| proxy.is_cached(id)).await;
}

#[tokio::test]
async fn a_failed_fill_aborts_every_coalesced_reader() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(2 << 20, 99);
    glance.add_image("img", data.clone());
    glance.set_faults(Faults {
        flip_at: Some(data.len() - 100),
        drip: Some(Duration::from_millis(10)),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = file_url(&proxy, "img");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        let got = t.await.expect("task");
        assert!(
            got.body_error.is_some(),
            "a reader of a bad fill ended cleanly"
        );
        assert!(got.body.len() < data.len());
    }
    assert_eq!(glance.downloads("img"), 1);
    settle(&proxy, &[]).await;
}

#[tokio::test]
async fn the_fill_survives_its_client_leaving_before_glance_answers() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(1 << 20, 100);
    glance.add_image("img", data.clone());
    // Glance takes 300 ms to answer; the client gives up after 100 ms.
    glance.set_faults(Faults {
        stall_head: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let url = file_url(&proxy, "img");
    let client = tokio::spawn(async move { get(&url).await });
    fill_started(&proxy).await;
    client.abort();
    settle(&proxy, &["img"]).await;
    glance.set_faults(Faults::default());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 1);
}

#[tokio::test]
async fn ranges_on_hits_are_served_from_the_cache() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(1 << 20, 110);
    let size = data.len();
    glance.add_image("img", data.clone());
    get(&file_url(&proxy, "img")).await;
    settle(&proxy, &["img"]).await;
    let ranged_upstream = || {
        glance
            .seen()
            .iter()
            .filter(|r| {
                r.path_and_query.ends_with("/file")
                    && r.headers.get("range").is_some_and(|v| v != "bytes=0-0")
            })
            .count()
    };
    let before = ranged_upstream();
    let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(&data));
    // (Range header, status, the bytes expected: None for the whole image)
    type Case<'a> = (&'a str, u16, Option<(usize, usize)>);
    let cases: &[Case] = &[
        ("bytes=100-199", 206, Some((100, 199))),
        ("bytes=0-0", 206, Some((0, 0))),
        ("bytes=-10", 206, Some((size - 10, size - 1))),
        ("bytes=1000-", 206, Some((1000, size - 1))),
    ];
    for (range, status, span) in cases {
        let got = send(
            &file_url(&proxy, "img"),
            "GET",
            &[("range", range)],
            Bytes::new(),
        )
        .await;
        assert_eq!(got.status, *status, "{range}");
        assert!(got.body_error.is_none(), "{range}");
        assert_eq!(
            got.headers["content-md5"],
            md5.as_str(),
            "{range}: whole image md5"
        );
        match span {
            Some((a, b)) => {
                assert!(got.body[..] == data[*a..=*b], "{range}");
                assert_eq!(
                    got.headers["content-range"],
                    format!("bytes {a}-{b}/{size}").as_str()
                );
                assert_eq!(
                    got.headers["content-length"],
                    (b - a + 1).to_string().as_str()
                );
            }
            None => assert!(got.body == data, "{range}"),
        }
    }
    // Several ranges: Glance 33's 400 (it serves no multipart answers), issue 19.
    let multi = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("range", "bytes=0-5,10-20")],
        Bytes::new(),
    )
    .await;
    assert_eq!(multi.status, 400);
    assert!(multi.json()["message"]
        .as_str()
        .is_some_and(|m| m.contains("multiple ranges are not supported")));
    for bad in ["bytes=2000000-", "bytes=5-2", "pages=1-2"] {
        let got = send(
            &file_url(&proxy, "img"),
            "GET",
            &[("range", bad)],
            Bytes::new(),
        )
        .await;
        assert_eq!(got.status, 416, "{bad}");
        assert_eq!(
            got.headers["content-range"],
            format!("bytes */{size}").as_str()
        );
    }
    assert_eq!(
        ranged_upstream(),
        before,
        "ranges on a hit must not reach Glance's data"
    );
    assert_eq!(glance.downloads("img"), 1);

    // The same authorization as a full hit.
    glance.set_faults(Faults {
        deny_download: Some(403),
        ..Default::default()
    });
    let got = send(
        &file_url(&proxy, "img"),
        "GET",
        &[("range", "bytes=0-9")],
        Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 403);
}

/// A proxy process over `glance` with `cache.verify_md5 = verify_md5`, logging to `dir`.
async fn verifying_proxy(
    glance: &FakeGlance,
    dir: &std::path::Path,
    verify_md5: bool,
) -> support::ProxyProcess {
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[upstream]\nurls = [\"{}\"]\n[cache]\ndir = \"{}\"\nverify_md5 = {verify_md5}\n",
            glance.url,
            dir.join("cache").display()
        ),
    )
    .expect("config");
    let args = ["--config".to_string(), config.display().to_string()];
    support::ProxyProcess::start(support::BIN, &args, dir.join("proxy.log")).await
}

/// Issue 16: a fill hashes once, with the record's os_hash. A record whose md5 is wrong but
/// whose os_hash is right is cached under the default (Glance's Content-MD5 disagreeing with
/// the record is logged as a warning) and refused with `cache.verify_md5 = true`; a wrong
/// os_hash is refused either way.
#[tokio::test]
async fn fills_verify_the_os_hash_and_md5_only_when_asked() {
    let data = pattern(1 << 20, 16);
    let wrong_md5 = Faults {
        record_md5: Some("0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    let wrong_os_hash = Faults {
        record_os_hash: Some("ab".repeat(64)),
        ..Default::default()
    };
    // (verify_md5, faults, cached)
    let cases = [
        (false, wrong_md5.clone(), true),
        (true, wrong_md5, false),
        (false, wrong_os_hash.clone(), false),
        (true, wrong_os_hash, false),
    ];
    for (verify_md5, faults, kept) in cases {
        let glance = FakeGlance::start().await;
        glance.add_image("img", data.clone());
        glance.set_faults(faults);
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy = verifying_proxy(&glance, dir.path(), verify_md5).await;
        let url = format!("{}/v2/images/img/file", proxy.url);
        let first = support::try_get(&url).await;
        let case = format!("verify_md5 = {verify_md5}, expected cached: {kept}");
        if kept {
            let first = first.expect("a head");
            assert!(first.body_error.is_none() && first.body == data, "{case}");
            support::until(|| proxy.logged_cached("img")).await;
            let hit = get(&url).await;
            assert!(hit.body == data, "{case}");
            assert_eq!(glance.downloads("img"), 1, "{case}: the second was a hit");
            let log = proxy.log_text();
            assert!(
                log.contains("Content-MD5 differs from the image record's checksum"),
                "{case}: {log}"
            );
        } else {
            // Never a clean answer with bytes that failed verification, never kept.
            assert!(
                first.map_or(true, |got| got.body_error.is_some()),
                "{case}: a clean answer"
            );
            let _ = support::try_get(&url).await;
            assert_eq!(glance.downloads("img"), 2, "{case}: nothing was kept");
            assert!(!proxy.logged_cached("img"), "{case}");
        }
    }
}
