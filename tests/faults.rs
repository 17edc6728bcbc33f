//! The fault matrix's disk and crash cells, driven by fault-injection points (`fail` crate,
//! built with `--features failpoints`): EIO and ENOSPC on the cache's writes and reads and on
//! sendfile, SIGKILL in the middle of an eviction. In every case a client gets either the
//! whole correct image or a visibly broken transfer, never wrong bytes with a clean end, and
//! nothing wrong is kept.
#![cfg(feature = "failpoints")]

mod support;

use std::time::Duration;

use support::{config, get, pattern, until, FakeGlance, Faults, ProxyProcess, TestProxy, BIN};

/// Fail points are process-wide: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn file_url(proxy: &TestProxy, id: &str) -> String {
    format!("{}/v2/images/{id}/file", proxy.url)
}

fn entries(cache_dir: &std::path::Path) -> Vec<String> {
    support::files_in(&cache_dir.join("images"))
}

#[tokio::test]
async fn a_write_error_mid_fill_still_serves_the_whole_image_and_keeps_nothing() {
    let _serial = SERIAL.lock().await;
    for (case, action) in [
        ("eio", "1*off->return"),
        ("enospc", "2*off->return(enospc)"),
    ] {
        let scenario = fail::FailScenario::setup();
        let glance = FakeGlance::start().await;
        let proxy = TestProxy::start(config(&[&glance.url], "")).await;
        let data = pattern(3 << 20, 701);
        glance.add_image("img", data.clone());
        // The first chunks are written, a later write fails.
        fail::cfg("cache::write", action).expect("failpoint");
        let got = get(&file_url(&proxy, "img")).await;
        fail::remove("cache::write");
        assert_eq!(got.status, 200, "{case}");
        assert!(got.body_error.is_none(), "{case}: {:?}", got.body_error);
        assert!(got.body == data, "{case}: the client got other bytes");
        // The fill has ended once its temporary file is gone (renamed into images/ or deleted).
        until(|| support::files_in(&proxy.cache_dir.join("tmp")).is_empty()).await;
        assert!(
            entries(&proxy.cache_dir).is_empty(),
            "{case}: a failed fill was kept"
        );
        // The next request fills the cache normally.
        assert!(get(&file_url(&proxy, "img")).await.body == data);
        until(|| entries(&proxy.cache_dir).len() == 2).await;
        scenario.teardown();
    }
}

/// A coalesced reader on a plain connection is sent the growing file with sendfile (issue
/// 30); a read error there (EIO from sendfile) continues from Glance as a read error of a
/// reader in user space does (`body::follow`'s unit tests): the connection's IO writes the
/// rest from Glance's ranged answer. Fail points are process-wide, so the error may meet the
/// fill's own client instead, which continues the same way.
#[tokio::test]
async fn a_read_error_for_a_coalesced_reader_continues_from_glance() {
    let _serial = SERIAL.lock().await;
    let scenario = fail::FailScenario::setup();
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(4 << 20, 702);
    glance.add_image("img", data.clone());
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(10)),
        ..Faults::default()
    });
    // The first client starts the fill; a second one joins it and reads the fill's file.
    let url = file_url(&proxy, "img");
    let first = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    let tmp = proxy.cache_dir.join("tmp");
    until(|| std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())).await;
    fail::cfg("sendfile::send", "2*off->return").expect("failpoint");
    let second = get(&url).await;
    fail::remove("sendfile::send");
    let first = first.await.expect("task");
    for (who, got) in [("first", &first), ("second", &second)] {
        assert_eq!(got.status, 200, "{who}");
        assert!(got.body_error.is_none(), "{who}: {:?}", got.body_error);
        assert!(got.body == data, "{who}: other bytes");
    }
    // The second reader's rest came from Glance with a ranged request.
    let resumed = glance.seen().iter().any(|r| {
        r.headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("bytes=") && v != "bytes=0-0" && v.ends_with('-'))
    });
    assert!(
        resumed,
        "the read error was not injected or not recovered from Glance"
    );
    // The fill itself was fine: the image is cached, and nothing was quarantined (a fill's
    // read error says nothing about a committed entry).
    until(|| entries(&proxy.cache_dir).len() == 2).await;
    assert!(support::files_in(&proxy.cache_dir.join("quarantine")).is_empty());
    scenario.teardown();
}

#[tokio::test]
async fn a_read_error_during_a_zero_copy_hit_breaks_the_transfer_and_quarantines_the_entry() {
    let _serial = SERIAL.lock().await;
    let scenario = fail::FailScenario::setup();
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(8 << 20, 703);
    glance.add_image("img", data.clone());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    // In the index, so the next request is a zero-copy hit (its files appear a moment
    // earlier, when a request would still join the fill).
    until(|| proxy.is_cached("img")).await;
    // The second sendfile call fails with EIO.
    fail::cfg("sendfile::send", "1*off->return").expect("failpoint");
    let got = get(&file_url(&proxy, "img")).await;
    fail::remove("sendfile::send");
    assert_eq!(got.status, 200);
    assert!(
        got.body_error.is_some(),
        "a broken hit must not end cleanly"
    );
    assert!(got.body.len() < data.len());
    assert!(
        data.starts_with(&got.body),
        "the bytes that did arrive are the image's"
    );
    // A file the disk cannot read is not served again: the entry is quarantined (with a
    // report), the next request fetches the image afresh and caches it again.
    let quarantine = proxy.cache_dir.join("quarantine");
    until(|| support::files_in(&quarantine).len() == 1).await;
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 2, "refetched after the quarantine");
    until(|| proxy.is_cached("img")).await;
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 2, "then a hit again");
    scenario.teardown();
}

/// A miss's own client is sent the growing file with sendfile; when a sendfile call fails
/// (EIO), the connection's IO continues that client's response from Glance (a ranged
/// request from the first unsent byte), as for a reader in user space: the client gets the
/// whole image, in order (issue 30; before, its response was cut). The fill does not depend on
/// its client's read error: it completes, verifies and commits, nothing is quarantined (the
/// fill's client has no disk-error hook, unlike a hit's), and the next request is a hit on it.
#[tokio::test]
async fn a_sendfile_error_on_a_miss_continues_from_glance_and_the_fill_still_commits() {
    let _serial = SERIAL.lock().await;
    let scenario = fail::FailScenario::setup();
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(4 << 20, 706);
    glance.add_image("img", data.clone());
    // A slow Glance (about 0.3 s for the image): the fill is still running when its client's
    // sendfile fails, early on.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Faults::default()
    });
    // The miss's second sendfile call fails with EIO (a span is sent once 256 KiB more are
    // written; one call moves at most 2 MiB).
    fail::cfg("sendfile::send", "1*off->return").expect("failpoint");
    let got = tokio::time::timeout(Duration::from_secs(10), get(&file_url(&proxy, "img")))
        .await
        .expect("the miss's response ends");
    fail::remove("sendfile::send");
    assert_eq!(got.status, 200);
    assert!(got.body_error.is_none(), "{:?}", got.body_error);
    assert!(got.body == data, "the client got other bytes");
    let resumed = glance.seen().iter().any(|r| {
        r.headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("bytes=") && v != "bytes=0-0" && v.ends_with('-'))
    });
    assert!(resumed, "the rest did not come from Glance");
    until(|| proxy.is_cached("img")).await;
    assert!(support::files_in(&proxy.cache_dir.join("quarantine")).is_empty());
    let hit = get(&file_url(&proxy, "img")).await;
    assert!(hit.body_error.is_none() && hit.body == data);
    assert_eq!(
        glance.downloads("img"),
        1,
        "one download: the fill (and a ranged rest), then a hit"
    );
    scenario.teardown();
}

#[tokio::test]
async fn sigkill_in_the_middle_of_an_eviction_leaves_a_consistent_cache() {
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let (a, b) = (pattern(3 << 20, 704), pattern(3 << 20, 705));
    glance.add_image("a", a.clone());
    glance.add_image("b", b.clone());
    let args = vec![
        "--upstream".to_string(),
        glance.url.clone(),
        "--cache-dir".into(),
        cache.display().to_string(),
        "--cache-max-size".into(),
        "4MiB".into(),
    ];
    // Evicting sleeps between removing an entry's record and its data.
    let mut proxy = ProxyProcess::start_with_env(
        BIN,
        &args,
        dir.path().join("1.log"),
        &[("FAILPOINTS", "store::remove=sleep(5000)")],
    )
    .await;
    assert!(get(&format!("{}/v2/images/a/file", proxy.url)).await.body == a);
    // Committed (not just on disk): b's fill can then evict a rather than find no room.
    until(|| proxy.logged_cached("a")).await;
    // b needs a's room: the eviction starts, and the process dies in the middle of it.
    let url = format!("{}/v2/images/b/file", proxy.url);
    let client = tokio::spawn(async move { get(&url).await });
    until(|| !cache.join("images").join("a.meta").exists()).await;
    assert!(
        cache.join("images").join("a").exists(),
        "killed mid-eviction"
    );
    proxy.kill9().await;
    let _ = client.await;

    // The next start drops the orphaned data file and serves both images correctly.
    let proxy = ProxyProcess::start(BIN, &args, dir.path().join("2.log")).await;
    assert!(
        !cache.join("images").join("a").exists(),
        "orphaned data was kept"
    );
    for (id, data) in [("a", &a), ("b", &b)] {
        let got = get(&format!("{}/v2/images/{id}/file", proxy.url)).await;
        assert!(got.body == *data, "{id}");
    }
}

#[tokio::test]
async fn wall_clock_steps_keep_lru_order_and_serve_correct_bytes() {
    let _serial = SERIAL.lock().await;
    let scenario = fail::FailScenario::setup();
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[cache]\nmax_size = \"7MiB\"\n")).await;
    let images: Vec<(&str, bytes::Bytes)> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, pattern(3 << 20, 710 + i as u64)))
        .collect();
    for (id, data) in &images {
        glance.add_image(id, data.clone());
    }
    let fetch = |id: &str| {
        let url = file_url(&proxy, id);
        async move { get(&url).await }
    };
    for (id, data) in &images[..2] {
        assert!(fetch(id).await.body == *data);
        // In the index (its files appear a moment earlier): b's commit may not follow a's hit.
        until(|| proxy.is_cached(id)).await;
    }
    // The clock steps back a day; a is used again, then c needs room: b (least recently
    // used) goes, not a.
    fail::cfg("clock::offset", "return(-86400)").expect("failpoint");
    let a_meta = proxy.cache_dir.join("images").join("a.meta");
    let a_used = || std::fs::metadata(&a_meta).and_then(|m| m.modified()).ok();
    let before = a_used();
    assert!(fetch("a").await.body == images[0].1);
    // The hit is recorded (a's .meta mtime is its LRU tick) before c needs room.
    until(|| a_used() != before).await;
    assert!(fetch("c").await.body == images[2].1);
    until(|| entries(&proxy.cache_dir).contains(&"c".to_string())).await;
    let now = entries(&proxy.cache_dir);
    assert!(now.contains(&"a".to_string()), "a was evicted: {now:?}");
    assert!(
        !now.contains(&"b".to_string()),
        "b should have been evicted: {now:?}"
    );
    // Then two days forward: hits and a fill still work and serve the right bytes.
    fail::cfg("clock::offset", "return(86400)").expect("failpoint");
    assert!(fetch("c").await.body == images[2].1);
    assert!(fetch("d").await.body == images[3].1);
    fail::remove("clock::offset");
    for (id, data) in &images {
        assert!(fetch(id).await.body == *data, "{id}");
    }
    scenario.teardown();
}
