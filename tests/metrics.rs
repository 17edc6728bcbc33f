//! The operations listener: `/metrics` after real traffic (requests, cache outcomes, bytes by
//! source, fills, usage, upstream health, histograms), `/healthz`, `/readyz` following the
//! upstream, and the Grafana dashboard naming only exported metrics.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use support::{config, get, pattern, send, until, FakeGlance, TestProxy};

fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{page}"))
}

/// Metric names the page declares (`# TYPE name kind`), histograms with their series.
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn metrics_follow_the_traffic() {
    let glance = FakeGlance::start().await;
    let data = pattern(2 << 20, 21);
    glance.add_image("img-m", data.clone());
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let admin = proxy.admin_url.clone().expect("admin url");
    let file = format!("{}/v2/images/img-m/file", proxy.url);
    assert_eq!(get(&file).await.body, data); // miss
    until(|| proxy.is_cached("img-m")).await;
    assert_eq!(get(&file).await.body, data); // hit
    get(&format!("{}/v2/images", proxy.url)).await; // passthrough
    let member = send(
        &format!("{}/v2/cache", proxy.url),
        "GET",
        &[("x-auth-token", "member")],
        Bytes::new(),
    )
    .await;
    assert_eq!(member.status, 403);

    // Requests are counted when their bodies are done: wait for the last one.
    let mut scrape = get(&format!("{admin}/metrics")).await;
    for _ in 0..100 {
        if String::from_utf8_lossy(&scrape.body).contains("route=\"cache_api\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        scrape = get(&format!("{admin}/metrics")).await;
    }
    assert_eq!(scrape.status, 200);
    assert!(scrape.headers["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/plain"));
    let page = String::from_utf8(scrape.body.to_vec()).expect("utf8");
    let n = |s: &str| value(&page, s);
    assert_eq!(
        n("glance_cache_proxy_requests_total{route=\"image_data\",status_class=\"2xx\"}"),
        2.0
    );
    assert_eq!(
        n("glance_cache_proxy_requests_total{route=\"passthrough\",status_class=\"2xx\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_requests_total{route=\"cache_api\",status_class=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_image_requests_total{outcome=\"miss\",reason=\"\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_image_requests_total{outcome=\"hit\",reason=\"\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_served_bytes_total{source=\"cache\"}"),
        data.len() as f64
    );
    assert_eq!(
        n("glance_cache_proxy_served_bytes_total{source=\"upstream\"}"),
        data.len() as f64
    );
    assert_eq!(
        n("glance_cache_proxy_upstream_fetched_bytes_total"),
        data.len() as f64
    );
    assert_eq!(
        n("glance_cache_proxy_fills_total{result=\"committed\"}"),
        1.0
    );
    assert_eq!(n("glance_cache_proxy_cache_entries"), 1.0);
    assert_eq!(n("glance_cache_proxy_cache_bytes"), data.len() as f64);
    assert!(n("glance_cache_proxy_cache_capacity_bytes") > 0.0);
    assert_eq!(
        n("glance_cache_proxy_ttfb_seconds_count{outcome=\"hit\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_ttfb_seconds_count{outcome=\"miss\"}"),
        1.0
    );
    assert!(n("glance_cache_proxy_upstream_response_seconds_count") >= 4.0);
    assert_eq!(
        n("glance_cache_proxy_authorization_decisions_total{decision=\"allowed\"}"),
        1.0
    );
    assert_eq!(
        n("glance_cache_proxy_authorization_decisions_total{decision=\"denied\"}"),
        1.0
    );
    assert_eq!(
        n(&format!(
            "glance_cache_proxy_upstream_up{{upstream=\"{}/\"}}",
            glance.url
        )),
        1.0
    );
    assert_eq!(n("glance_cache_proxy_prefetch_queue_depth"), 0.0);
    assert!(n("process_resident_memory_bytes") > 0.0);
    assert!(n("process_open_fds") > 0.0);
    // No image id ever becomes a label.
    assert!(!page.contains("img-m"), "an image id leaked into a label");

    assert_eq!(get(&format!("{admin}/healthz")).await.status, 200);
    assert_eq!(get(&format!("{admin}/readyz")).await.status, 200);
    assert_eq!(get(&format!("{admin}/nope")).await.status, 404);
    // No upstream answers: not ready, still alive.
    let down = support::closed_port().await;
    let orphan = TestProxy::start_with_admin(config(&[&format!("http://{down}")], "")).await;
    let orphan_admin = orphan.admin_url.clone().expect("admin url");
    assert_eq!(get(&format!("{orphan_admin}/readyz")).await.status, 503);
    assert_eq!(get(&format!("{orphan_admin}/healthz")).await.status, 200);
}

#[tokio::test]
async fn every_dashboard_expression_names_an_exported_metric() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let admin = proxy.admin_url.clone().expect("admin url");
    // Some traffic, so that labelled families have series.
    glance.add_image("img-d", pattern(1 << 20, 22));
    get(&format!("{}/v2/images/img-d/file", proxy.url)).await;
    let mut page = String::new();
    for _ in 0..100 {
        page =
            String::from_utf8(get(&format!("{admin}/metrics")).await.body.to_vec()).expect("utf8");
        if page.contains("glance_cache_proxy_requests_total{") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let exported = exported(&page);

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("grafana/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let doc: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
        let mut exprs = Vec::new();
        collect_exprs(&doc, &mut exprs);
        assert!(
            exprs.len() >= 10,
            "{}: only {} expressions",
            path.display(),
            exprs.len()
        );
        for expr in &exprs {
            for name in metric_names(expr) {
                assert!(
                    exported.contains(&name),
                    "{}: `{expr}` names {name}, which the proxy does not export",
                    path.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no dashboard checked");

    // The alert rules too: every `expr:` (one line, or a `|` block) of deploy/prometheus.
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .expect("alerts.yml");
    let mut alert_exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut text = expr.trim().to_string();
        if text == "|" {
            let indent = line.len() - line.trim_start().len();
            while let Some(next) = lines.peek() {
                if next.len() - next.trim_start().len() <= indent && !next.trim().is_empty() {
                    break;
                }
                text.push_str(next);
                lines.next();
            }
        }
        alert_exprs.push(text);
    }
    assert!(alert_exprs.len() >= 10, "{alert_exprs:?}");
    for expr in &alert_exprs {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "alerts.yml: `{expr}` names {name}, which the proxy does not export"
            );
        }
    }
    assert!(
        rules.contains("glance_cache_proxy_cache_writable == 0"),
        "an alert on an unwritable cache"
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression that are metric names of ours or process metrics.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("glance_cache_proxy_") || word.starts_with("process_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}
