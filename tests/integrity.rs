//! Bit rot and tampering: a cache file changed on disk is never served (found on the next
//! hit while running, or at start when it changed while the proxy was down), the scrubber
//! re-verifies entries and quarantines what no longer matches, and every such entry is
//! fetched again on demand. Clients that reset mid-hit (socket errors, not disk errors) leave
//! the entry alone. Nothing corrupt is served; nothing is lost.

mod support;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use support::{config, get, pattern, until, FakeGlance, TestProxy};

fn file_url(proxy: &TestProxy, id: &str) -> String {
    format!("{}/v2/images/{id}/file", proxy.url)
}

fn data_path(proxy: &TestProxy, id: &str) -> PathBuf {
    proxy.cache_dir.join("images").join(id)
}

/// Flip one byte of a committed file in place (same length), as rot seen through the
/// filesystem or a stray tool would.
fn flip_byte(path: &PathBuf, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open cached file");
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).expect("read byte");
    f.write_all_at(&[b[0] ^ 0x5a], at).expect("write byte");
    f.sync_all().expect("fsync");
}

fn quarantine_reports(proxy: &TestProxy) -> Vec<String> {
    std::fs::read_dir(proxy.cache_dir.join("quarantine"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

async fn metric(proxy: &TestProxy, series: &str) -> f64 {
    let admin = proxy.admin_url.as_ref().expect("admin listener");
    let page = get(&format!("{admin}/metrics")).await;
    let page = String::from_utf8(page.body.to_vec()).expect("utf8");
    page.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Wait (at most 10 s) until `series` is at least `value`; the caller asserts it after.
async fn reaches(proxy: &TestProxy, series: &str, value: f64) {
    for _ in 0..400 {
        if metric(proxy, series).await >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Wait (bounded) until `id` is in the index: its files appear a moment earlier (and its
/// fingerprint is taken right after the rename, so a test must not write the file before),
/// and a request then joins the fill instead of being a hit.
async fn cached(proxy: &TestProxy, id: &str) {
    until(|| proxy.is_cached(id)).await;
}

#[tokio::test]
async fn a_file_changed_while_running_is_quarantined_on_the_next_hit_and_refetched() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let data = pattern(3 << 20, 501);
    glance.add_image("img", data.clone());

    assert!(get(&file_url(&proxy, "img")).await.body == data);
    cached(&proxy, "img").await;
    flip_byte(&data_path(&proxy, "img"), 1 << 20);

    // The hit notices the file is no longer the one verified: the bytes come from Glance.
    let got = get(&file_url(&proxy, "img")).await;
    assert_eq!(got.status, 200);
    assert!(got.body_error.is_none());
    assert!(got.body == data, "a changed cache file was served");
    assert_eq!(glance.downloads("img"), 2);
    let reports = quarantine_reports(&proxy);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("changed_on_disk"));
    assert_eq!(
        metric(
            &proxy,
            "glance_cache_proxy_cache_quarantined_total{reason=\"changed_on_disk\"}"
        )
        .await,
        1.0
    );
    // That request refilled the cache: the next one is a hit on good bytes.
    cached(&proxy, "img").await;
    until(|| glance.downloads("img") == 2).await;
    let again = get(&file_url(&proxy, "img")).await;
    assert!(again.body == data);
    assert_eq!(glance.downloads("img"), 2, "the refilled entry serves hits");
}

#[tokio::test]
async fn rot_found_by_the_scrubber_is_quarantined_and_never_served() {
    let glance = FakeGlance::start().await;
    // Scrub every entry about once a second, fast enough for a test.
    let cfg = config(
        &[&glance.url],
        "[cache]\nscrub_interval = \"1s\"\nscrub_rate = \"64MiB\"\n",
    );
    let data = pattern(5 << 20, 502);
    glance.add_image("img", data.clone());
    let mut first = TestProxy::start_with_admin(cfg.clone()).await;
    assert!(get(&file_url(&first, "img")).await.body == data);
    cached(&first, "img").await;
    // Intact entries pass the scrubber (it reads the whole file from disk).
    reaches(
        &first,
        "glance_cache_proxy_scrub_verified_entries_total",
        1.0,
    )
    .await;
    assert!(metric(&first, "glance_cache_proxy_scrub_verified_entries_total").await >= 1.0);
    assert!(
        metric(&first, "glance_cache_proxy_scrub_verified_bytes_total").await >= (5 << 20) as f64
    );
    assert_eq!(
        metric(&first, "glance_cache_proxy_scrub_corruptions_total").await,
        0.0
    );
    first.begin_shutdown().await.expect("stopped");

    // Rot while the proxy is down, later than the commit's own renames: a file whose ctime
    // is within 2 s of its commit (the store's COMMIT_SLACK_MS) counts as unchanged.
    std::thread::sleep(Duration::from_millis(2100));
    flip_byte(&first.cache_dir.join("images").join("img"), 4 << 20);
    let second = TestProxy::start_with_admin(cfg.clone()).await;
    // Until the scrubber has looked, the entry is not trusted: Glance serves the request.
    let got = get(&file_url(&second, "img")).await;
    assert!(
        got.body == data,
        "a changed cache file was served after a restart"
    );
    reaches(&second, "glance_cache_proxy_scrub_corruptions_total", 1.0).await;
    assert_eq!(
        metric(&second, "glance_cache_proxy_scrub_corruptions_total").await,
        1.0
    );
    assert_eq!(
        metric(
            &second,
            "glance_cache_proxy_cache_quarantined_total{reason=\"hash_mismatch\"}"
        )
        .await,
        1.0
    );
    let reports = quarantine_reports(&second);
    assert!(
        reports.iter().any(|r| r.contains("hash_mismatch")),
        "{reports:?}"
    );
    // Fetched again on demand, then a hit on good bytes.
    let downloads = glance.downloads("img");
    assert!(get(&file_url(&second, "img")).await.body == data);
    cached(&second, "img").await;
    until(|| glance.downloads("img") == downloads + 1).await;
    assert!(get(&file_url(&second, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), downloads + 1);
    drop(first);
}

#[tokio::test]
async fn an_entry_touched_while_down_is_checked_then_served_again() {
    let glance = FakeGlance::start().await;
    let cfg = config(
        &[&glance.url],
        "[cache]\nscrub_interval = \"1h\"\nscrub_rate = \"64MiB\"\n",
    );
    let data = pattern(2 << 20, 503);
    glance.add_image("img", data.clone());
    let mut first = TestProxy::start_with_admin(cfg.clone()).await;
    assert!(get(&file_url(&first, "img")).await.body == data);
    cached(&first, "img").await;
    first.begin_shutdown().await.expect("stopped");

    // A chmod (say, an operator's chown -R) changes the inode, not the bytes; past the 2 s
    // of slack a commit's own renames get (COMMIT_SLACK_MS), so the ctime counts.
    std::thread::sleep(Duration::from_millis(2100));
    let path = first.cache_dir.join("images").join("img");
    let mut perms = std::fs::metadata(&path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o640);
    std::fs::set_permissions(&path, perms).expect("chmod");

    let second = TestProxy::start_with_admin(cfg).await;
    // The scrubber takes the suspect first, even with a long interval, and finds it intact.
    reaches(
        &second,
        "glance_cache_proxy_scrub_verified_entries_total",
        1.0,
    )
    .await;
    assert_eq!(
        metric(&second, "glance_cache_proxy_scrub_verified_entries_total").await,
        1.0
    );
    let downloads = glance.downloads("img");
    assert!(get(&file_url(&second, "img")).await.body == data);
    assert_eq!(
        glance.downloads("img"),
        downloads,
        "the checked entry is a hit again"
    );
    assert!(quarantine_reports(&second).is_empty());
    drop(first);
}

#[tokio::test]
async fn clients_that_reset_mid_hit_leave_the_entry_alone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let data = pattern(64 << 20, 711);
    glance.add_image("img", data.clone());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    cached(&proxy, "img").await;
    // Socket errors on a zero-copy hit (EPIPE, ECONNRESET) are the client's, not the disk's.
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /v2/images/img/file HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s); // RST with most of the image unsent
    }
    // The miss and the three reset hits have ended (each is counted when its body drops); a
    // disk error would have started the entry's quarantine before that.
    let admin = proxy.admin_url.as_deref().expect("admin listener");
    let finished = "glance_cache_proxy_requests_total{route=\"image_data\",status_class=\"2xx\"}";
    support::until_metric(admin, finished, 4.0).await;
    assert!(quarantine_reports(&proxy).is_empty());
    assert!(get(&file_url(&proxy, "img")).await.body == data);
    assert_eq!(glance.downloads("img"), 1, "still a hit");
}
