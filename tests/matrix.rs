//! The fault matrix's upstream cells: Glance drops the connection, stalls, flips a byte or
//! drips, at several offsets of the image (first byte, inside the first read, at a 1 MiB
//! boundary, mid-image, the last byte), for a single client and for two clients sharing the
//! fill; and 5xx answers. Every response is either the whole correct image or visibly broken
//! (never wrong bytes with a clean end), and the cache keeps an entry only with the right
//! bytes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::{config, files_in, get, pattern, try_get, until, FakeGlance, Faults, Got, TestProxy};

const SIZE: usize = (2 << 20) + 12_345;

fn cached(proxy: &TestProxy) -> Option<Vec<u8>> {
    std::fs::read(proxy.cache_dir.join("images").join("img")).ok()
}

/// Whether a response ended cleanly as a 200 (then it must be the image). A connection closed
/// before the whole head arrived (`Err`) is visibly broken, and allowed only when Glance drops
/// the connection (`headless_ok`): early in the body, the proxy's head can still be queued when
/// the body fails. Stalls, flips, drips and 5xx must give every client a response head.
fn clean_and_right(case: &str, got: &Result<Got, String>, data: &Bytes, headless_ok: bool) -> bool {
    let got = match got {
        Ok(got) => got,
        Err(_) if headless_ok => return false,
        Err(e) => panic!("{case}: no response head: {e}"),
    };
    let clean = got.status == 200 && got.body_error.is_none();
    if clean {
        assert!(
            got.body == *data,
            "{case}: a clean response with other bytes"
        );
    }
    clean
}

#[tokio::test]
async fn upstream_faults_at_every_offset_never_yield_a_clean_wrong_answer() {
    let glance = FakeGlance::start().await;
    let data = pattern(SIZE, 801);
    let offsets = [0, 1, 65_535, 1 << 20, SIZE / 2, SIZE - 1];
    let mut cases: Vec<(String, Faults)> = Vec::new();
    for at in offsets {
        cases.push((
            format!("drop at {at}"),
            Faults {
                drop_after: Some(at),
                ..Faults::default()
            },
        ));
        cases.push((
            format!("drop at {at}, chunked"),
            Faults {
                drop_after: Some(at),
                chunked: true,
                ..Faults::default()
            },
        ));
        cases.push((
            format!("stall at {at}"),
            Faults {
                stall_after: Some(at),
                ..Faults::default()
            },
        ));
        cases.push((
            format!("flip at {at}"),
            Faults {
                flip_at: Some(at),
                ..Faults::default()
            },
        ));
    }
    cases.push((
        "slow drip".into(),
        Faults {
            drip: Some(Duration::from_millis(2)),
            ..Faults::default()
        },
    ));
    for status in [500, 502, 503] {
        cases.push((
            format!("{status} on the download"),
            Faults {
                deny_download: Some(status),
                ..Faults::default()
            },
        ));
    }
    for (case, fault) in cases {
        let drip = fault.drip.is_some();
        let headless_ok = fault.drop_after.is_some();
        let five_xx = fault.deny_download.is_some();
        let proxy = TestProxy::start(config(
            &[&glance.url],
            "[upstream]\nbody_idle_timeout = \"300ms\"\n",
        ))
        .await;
        glance.add_image("img", data.clone());
        glance.set_faults(fault);
        // Two clients: the first starts the fill, the second joins it (once Glance has the
        // fill's download request, the fill is registered).
        let url = format!("{}/v2/images/img/file", proxy.url);
        let downloads = || {
            glance
                .seen()
                .iter()
                .filter(|r| r.path_and_query == "/v2/images/img/file")
                .count()
        };
        let before = downloads();
        let first = tokio::spawn({
            let url = url.clone();
            async move { try_get(&url).await }
        });
        until(|| downloads() > before).await;
        let second = tokio::time::timeout(Duration::from_secs(20), try_get(&url))
            .await
            .unwrap_or_else(|_| panic!("{case}: the second client hung"));
        let first = tokio::time::timeout(Duration::from_secs(20), first)
            .await
            .unwrap_or_else(|_| panic!("{case}: the first client hung"))
            .expect("task");
        let clean = [("first", &first), ("second", &second)]
            .map(|(who, got)| clean_and_right(&format!("{case} ({who})"), got, &data, headless_ok));
        if drip {
            assert!(
                clean == [true, true],
                "{case}: a slow Glance is still a good one"
            );
        } else if five_xx {
            let status = first.as_ref().map(|got| got.status);
            assert!(
                status.is_ok_and(|s| s.is_server_error()),
                "{case}: {status:?}"
            );
        } else {
            // Glance never sent the whole image: nobody may see a clean end.
            assert!(clean == [false, false], "{case}: {clean:?}");
        }
        // Whatever is cached is the image, once the fill has ended (its temporary file is
        // gone: renamed into images/ or deleted).
        until(|| files_in(&proxy.cache_dir.join("tmp")).is_empty()).await;
        if let Some(kept) = cached(&proxy) {
            assert!(kept == data, "{case}: wrong bytes were kept");
        }
        glance.set_faults(Faults::default());
        // And the next request, with Glance healthy, gets the image.
        let after = get(&url).await;
        assert!(
            after.body == data && after.body_error.is_none(),
            "{case}: after"
        );
    }
}
