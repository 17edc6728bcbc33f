//! The real binary under process and disk faults: SIGKILL mid-fill and after a commit, then a
//! restart on the same directory; a disk that fills up mid-fill (a real ENOSPC from a small
//! tmpfs, mounted in a private user and mount namespace so no privileges are needed); and a
//! start under umask 022, after which everything it created is still private.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{files_in, get, pattern, FakeGlance, Faults, ProxyProcess, BIN};

fn args(glance: &FakeGlance, cache: &Path) -> Vec<String> {
    vec![
        "--upstream".into(),
        glance.url.clone(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ]
}

#[tokio::test]
async fn sigkill_mid_fill_and_after_commit_leaves_only_correct_bytes() {
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let data = pattern(4 << 20, 50);
    glance.add_image("img", data.clone());
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(20)),
        ..Default::default()
    });

    let mut proxy =
        ProxyProcess::start(BIN, &args(&glance, &cache), dir.path().join("1.log")).await;
    let url = format!("{}/v2/images/img/file", proxy.url);
    let client = tokio::spawn(async move { get(&url).await });
    // Wait until the fill has written part of the image, then kill the process hard.
    let tmp = cache.join("tmp");
    for _ in 0..500 {
        let partial = std::fs::read_dir(&tmp)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| e.metadata().ok())
            .is_some_and(|m| m.len() > 256 * 1024);
        if partial {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.kill9().await;
    let got = client.await.expect("client task");
    assert!(
        got.body_error.is_some(),
        "a killed fill must not end cleanly"
    );
    assert!(got.body.len() < data.len());
    assert!(
        !files_in(&tmp).is_empty(),
        "the kill should leave a partial file behind"
    );

    // Restart on the same directory: leftovers go, the image is fetched and verified again.
    glance.set_faults(Faults::default());
    let mut proxy =
        ProxyProcess::start(BIN, &args(&glance, &cache), dir.path().join("2.log")).await;
    assert!(
        files_in(&tmp).is_empty(),
        "leftovers must be removed at start"
    );
    assert!(files_in(&cache.join("images")).is_empty());
    let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
    assert!(got.body_error.is_none() && got.body == data);
    for _ in 0..500 {
        if files_in(&cache.join("images")) == ["img", "img.meta"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(files_in(&cache.join("images")), ["img", "img.meta"]);
    let downloads = glance.downloads("img");

    // Killed after the commit: the entry survives and is served as a hit.
    proxy.kill9().await;
    let proxy = ProxyProcess::start(BIN, &args(&glance, &cache), dir.path().join("3.log")).await;
    let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
    assert!(got.body_error.is_none() && got.body == data);
    assert_eq!(
        glance.downloads("img"),
        downloads,
        "served from disk after the restart"
    );
    // Access lines are written by their own thread, within a tick of the request's end.
    let hit_logged = || proxy.log_text().contains("cache=\"hit\"");
    support::until(hit_logged).await;
    let log = proxy.log_text();
    let hit = log
        .lines()
        .find(|l| l.contains("cache=\"hit\""))
        .unwrap_or_else(|| panic!("no hit logged: {log}"));
    assert!(hit.contains("outcome=\"complete\""), "{hit}");
}

/// Run the proxy with its cache on a 2 MiB tmpfs of its own (user + mount namespace).
fn tmpfs_wrapper(dir: &Path) -> Option<std::path::PathBuf> {
    let script = dir.join("with-small-disk.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\nmount -t tmpfs -o size=2m tmpfs \"$CACHE\"\nexec \"$@\"\n",
    )
    .ok()?;
    Command::new("chmod").arg("+x").arg(&script).status().ok()?;
    Some(script)
}

#[tokio::test]
async fn a_full_disk_mid_fill_still_serves_the_whole_image_and_keeps_nothing() {
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let data = pattern(6 << 20, 51); // 6 MiB onto a 2 MiB disk
    glance.add_image("img", data.clone());
    let script = tmpfs_wrapper(dir.path()).expect("wrapper script");

    let mut args = vec![
        "--user".to_string(),
        "--map-root-user".into(),
        "--mount".into(),
        "env".into(),
        format!("CACHE={}", cache.display()),
        script.display().to_string(),
        BIN.into(),
    ];
    args.extend(self::args(&glance, &cache));
    let proxy = ProxyProcess::start("unshare", &args, dir.path().join("disk.log")).await;

    for round in 0..2 {
        let got = get(&format!("{}/v2/images/img/file", proxy.url)).await;
        assert_eq!(got.status, 200);
        assert!(
            got.body_error.is_none(),
            "round {round}: {:?}\n{}",
            got.body_error,
            proxy.log_text()
        );
        assert!(
            got.body == data,
            "round {round}: the client must get the whole, right image"
        );
    }
    let log = proxy.log_text();
    assert_eq!(
        log.matches("cache write failed").count(),
        2,
        "one error line per failed fill:\n{log}"
    );
    assert!(log.contains("reason=\"no_space\""), "{log}");
    // Nothing was published: every request went to Glance (the rest by a ranged request).
    assert_eq!(glance.downloads("img"), 2);
}

#[tokio::test]
async fn sigkill_mid_prefetch_keeps_the_queue_and_the_next_start_finishes_it() {
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let data = pattern(4 << 20, 51);
    glance.add_image("img-q", data.clone());
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let mut proxy =
        ProxyProcess::start(BIN, &args(&glance, &cache), dir.path().join("1.log")).await;
    let put = support::send(
        &format!("{}/v2/cache/img-q", proxy.url),
        "PUT",
        &[("x-auth-token", "admin")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(put.status, http::StatusCode::ACCEPTED);
    // The prefetch is under way: kill the process hard.
    support::until(|| glance.downloads("img-q") == 1).await;
    proxy.kill9().await;
    assert_eq!(files_in(&cache.join("queue")), ["img-q"]);
    assert!(files_in(&cache.join("images")).is_empty());

    glance.set_faults(Faults::default());
    let mut proxy =
        ProxyProcess::start(BIN, &args(&glance, &cache), dir.path().join("2.log")).await;
    for _ in 0..300 {
        if files_in(&cache.join("queue")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        files_in(&cache.join("queue")).is_empty(),
        "{}",
        proxy.log_text()
    );
    assert_eq!(
        glance.downloads("img-q"),
        2,
        "fetched again after the restart"
    );
    let got = get(&format!("{}/v2/images/img-q/file", proxy.url)).await;
    assert_eq!(got.body, data);
    assert_eq!(glance.downloads("img-q"), 2, "then a hit");
    proxy.kill9().await;
}

/// Issue 26: started by hand with umask 022, everything the proxy creates is still private:
/// directories 0700, files 0600 (cached images and their records, the queue's markers, the
/// grants journal, quarantine reports, temporary files).
#[tokio::test]
async fn what_the_proxy_creates_is_private_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    glance.add_image("img", pattern(300_000, 52));
    glance.add_image("img-q", pattern(4 << 20, 53));
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, "[auth]\noffline_grace = \"1000s\"\n").expect("config");
    let mut args = vec![
        "-c".to_string(),
        "umask 022 && exec \"$@\"".into(),
        "sh".into(),
        BIN.into(),
        "--config".into(),
        config.display().to_string(),
    ];
    args.extend(self::args(&glance, &cache));
    let mut proxy = ProxyProcess::start("sh", &args, dir.path().join("umask.log")).await;
    let mode = |p: &Path| {
        let meta = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        meta.permissions().mode() & 0o777
    };
    let token = [("x-auth-token", "admin")];

    // An entry and its record; the grant it leaves is written within a second.
    let got = support::send(
        &format!("{}/v2/images/img/file", proxy.url),
        "GET",
        &token,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(got.status, 200);
    support::until(|| proxy.logged_cached("img")).await;
    support::until(|| cache.join("grants").exists()).await;
    // A prefetch under way: its queue marker and its temporary file.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(20)),
        ..Default::default()
    });
    let put = support::send(
        &format!("{}/v2/cache/img-q", proxy.url),
        "PUT",
        &token,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(put.status, http::StatusCode::ACCEPTED);
    support::until(|| files_in(&cache.join("tmp")).len() == 1).await;
    let tmp = cache.join("tmp").join(&files_in(&cache.join("tmp"))[0]);
    let created = [
        cache.clone(),
        cache.join("images"),
        cache.join("tmp"),
        cache.join("queue"),
        cache.join("quarantine"),
        cache.join("images/img"),
        cache.join("images/img.meta"),
        cache.join("grants"),
        cache.join("queue/img-q"),
        tmp,
    ];
    let private = |paths: &[std::path::PathBuf]| {
        for p in paths {
            let (m, want) = (mode(p), if p.is_dir() { 0o700 } else { 0o600 });
            assert_eq!(m, want, "{} is {m:o}, not {want:o}", p.display());
        }
    };
    private(&created);
    // A file changed behind the proxy's back is quarantined: a report.
    std::fs::OpenOptions::new()
        .append(true)
        .open(cache.join("images/img"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"))
        .expect("tamper");
    glance.set_faults(Faults::default());
    let again = support::send(
        &format!("{}/v2/images/img/file", proxy.url),
        "GET",
        &token,
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(again.status, 200);
    support::until(|| files_in(&cache.join("quarantine")).len() == 1).await;
    private(&[cache
        .join("quarantine")
        .join(&files_in(&cache.join("quarantine"))[0])]);
    proxy.kill9().await;
}
