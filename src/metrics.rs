//! Prometheus metrics: the names, one `Metrics` (built against its own `Registry` at start,
//! shared through `Arc`), and `render`, which adds the values read from the components at
//! scrape time (`Snapshot`: cache usage, fills, queue, upstream health) to the counters and
//! histograms recorded as requests finish.
//!
//! Labels are bounded: route, status class, outcome, reason, source, result, decision and the
//! configured upstream URLs. Never an image id or a project.

use prometheus::core::Collector;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::outcome::{Decision, FillResult, Outcome, QuarantineReason, TlsPath};

const NS: &str = "glance_cache_proxy";

/// Latency buckets (seconds): 1 ms to 2 min.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// What a finished request contributes.
pub struct Finished {
    /// The route's label.
    pub route: &'static str,
    /// A cache-API call (its 2xx and 401/403 count as authorization decisions).
    pub cache_api: bool,
    pub status: u16,
    /// Image data: how it was answered.
    pub outcome: Option<Outcome>,
    /// Image data: on whose word a cached image went out or was refused.
    pub decision: Option<Decision>,
    pub bytes: u64,
    /// Seconds from the request head to the response head.
    pub ttfb: f64,
    /// Over HTTPS: how hits are encrypted; `None` for plain HTTP.
    pub tls: Option<TlsPath>,
}

/// Values read from the components when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub cache_enabled: bool,
    pub cache_bytes: u64,
    pub cache_reserved_bytes: u64,
    pub cache_entries: u64,
    pub cache_capacity_bytes: u64,
    pub cache_evictions: u64,
    /// Whether the cache's writes go through (`writable::DiskHealth`).
    pub cache_writable: bool,
    /// Fill results since start, by result.
    pub fills: Vec<(FillResult, u64)>,
    /// Image bytes received from Glance by fills.
    pub fetched_bytes: u64,
    pub sendfile_bytes: u64,
    pub cold_read_bytes: u64,
    pub prefetch_queued: u64,
    pub prefetch_in_flight: u64,
    pub prefetch_failures: u64,
    /// Per configured upstream: (URL, healthy).
    pub upstreams: Vec<(String, bool)>,
    pub failovers: u64,
    /// Uploads that waited for one of `upstream.max_uploads`, and those waiting now.
    pub upload_waits: u64,
    pub uploads_waiting: u64,
    /// Entries taken out of service, by reason.
    pub quarantined: Vec<(QuarantineReason, u64)>,
    pub scrub_verified_bytes: u64,
    pub scrub_verified_entries: u64,
    pub scrub_corruptions: u64,
    pub connections_open: u64,
    pub connections_shed: u64,
    /// Access-log lines dropped because the log could not keep up.
    pub access_log_dropped: u64,
    /// Log events (not access lines) dropped because the event queue was full.
    pub log_events_dropped: u64,
}

/// The results of `identity_resolutions_total`.
pub const IDENTITY_RESULTS: [&str; 4] = ["cached", "keystone", "invalid", "fallback"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    image_requests: IntCounterVec,
    served_bytes: IntCounterVec,
    ttfb: HistogramVec,
    upstream_seconds: Histogram,
    authorization: IntCounterVec,
    identity: IntCounterVec,
    keystone_seconds: Histogram,
    tls_hits: IntCounterVec,
    scrape_errors: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

/// Register `collector`. Registering fresh, uniquely named collectors cannot fail; if it ever
/// did, the metric would only be missing from the output.
fn registered<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    let _ = registry.register(Box::new(collector.clone()));
    collector
}

/// A labelled counter, registered.
fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
    registered(registry, vec)
}

/// A latency histogram (`BUCKETS`), registered.
fn histogram_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NS)
        .buckets(BUCKETS.to_vec())
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            requests: counters(
                &registry,
                "requests_total",
                "Requests answered, by route and status class.",
                &["route", "status_class"],
            ),
            image_requests: counters(
                &registry,
                "image_requests_total",
                "Image-data requests by cache outcome (hit, miss, coalesced, bypass, denied) and bypass reason.",
                &["outcome", "reason"],
            ),
            served_bytes: counters(
                &registry,
                "served_bytes_total",
                "Image-data bytes sent to clients, by source (cache: hits; upstream: everything else).",
                &["source"],
            ),
            ttfb: registered(
                &registry,
                HistogramVec::new(
                    histogram_opts(
                        "ttfb_seconds",
                        "Time from request head to response head for image data, by cache outcome.",
                    ),
                    &["outcome"],
                )
                .expect("valid metric"),
            ),
            upstream_seconds: registered(
                &registry,
                Histogram::with_opts(histogram_opts(
                    "upstream_response_seconds",
                    "Time from sending a request to Glance to its response head.",
                ))
                .expect("valid metric"),
            ),
            authorization: counters(
                &registry,
                "authorization_decisions_total",
                "Who decided that a caller may have a cached image, or use the cache API: Glance asked now (allowed, denied), Glance's yes within auth.grant_ttl (cached), or within auth.offline_grace while no upstream answers (offline).",
                &["decision"],
            ),
            identity: counters(
                &registry,
                "identity_resolutions_total",
                "How callers' tokens were resolved for the grants' keys with auth.keystone_url: cached (an identity within auth.identity_cache_ttl), keystone (Keystone asked now), invalid (Keystone refused the token: no grant used), fallback (Keystone unreachable or failing: exact credentials). Requests without a token, or with two values of a token header, have nothing for Keystone to resolve and are not counted.",
                &["result"],
            ),
            keystone_seconds: registered(
                &registry,
                Histogram::with_opts(histogram_opts(
                    "keystone_response_seconds",
                    "Time for Keystone to answer a token validation (auth.keystone_url), answered or not.",
                ))
                .expect("valid metric"),
            ),
            tls_hits: counters(
                &registry,
                "tls_hits_total",
                "Cache hits served over HTTPS, by how their bytes were encrypted: ktls (kernel TLS, sent with sendfile) or userspace (read and encrypted by rustls).",
                &["path"],
            ),
            scrape_errors: registered(
                &registry,
                IntCounter::with_opts(opts(
                    "metrics_encode_errors_total",
                    "Failures to encode the metrics page.",
                ))
                .expect("valid metric"),
            ),
            registry,
        };
        let _ = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        m.zero_series();
        m
    }

    /// Series the dashboard and alerts read exist from the start (at zero).
    fn zero_series(&self) {
        for outcome in Outcome::LABELS {
            self.image_requests.with_label_values(&[outcome, ""]);
        }
        for outcome in [Outcome::Hit, Outcome::Miss, Outcome::Coalesced] {
            self.ttfb.with_label_values(&[outcome.as_str()]);
        }
        for source in ["cache", "upstream"] {
            self.served_bytes.with_label_values(&[source]);
        }
        for decision in Decision::ALL {
            self.authorization.with_label_values(&[decision.as_str()]);
        }
        for path in TlsPath::ALL {
            self.tls_hits.with_label_values(&[path.as_str()]);
        }
        for result in IDENTITY_RESULTS {
            self.identity.with_label_values(&[result]);
        }
    }

    /// A caller's token resolved (`identity`): one of `IDENTITY_RESULTS`.
    pub fn identity_resolved(&self, result: &str) {
        self.identity.with_label_values(&[result]).inc();
    }

    /// Time to Keystone's answer about a token (or to its failure).
    pub fn keystone_response(&self, seconds: f64) {
        self.keystone_seconds.observe(seconds);
    }

    /// Count a finished request (called once per request, when its body ends or drops).
    pub fn finished(&self, f: &Finished) {
        let class = match f.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[f.route, class]).inc();
        if let Some(outcome) = f.outcome {
            self.image_requests
                .with_label_values(&[outcome.as_str(), outcome.reason()])
                .inc();
            let source = if outcome.from_cache() {
                "cache"
            } else {
                "upstream"
            };
            self.served_bytes
                .with_label_values(&[source])
                .inc_by(f.bytes);
            self.ttfb
                .with_label_values(&[outcome.as_str()])
                .observe(f.ttfb);
            if let (true, Some(tls)) = (outcome.from_cache(), f.tls) {
                self.tls_hits.with_label_values(&[tls.as_str()]).inc();
            }
        }
        let decision = match (f.decision, f.cache_api, f.status) {
            (Some(decision), _, _) => Some(decision),
            (None, true, 401 | 403) => Some(Decision::Denied),
            (None, true, 200..=299) => Some(Decision::Allowed),
            _ => None,
        };
        if let Some(d) = decision {
            self.authorization.with_label_values(&[d.as_str()]).inc();
        }
    }

    /// Time to a response head from Glance.
    pub fn upstream_response(&self, seconds: f64) {
        self.upstream_seconds.observe(seconds);
    }

    /// The Prometheus text page: the recorded metrics plus `snap`.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut families = self.registry.gather();
        families.extend(snapshot_families(snap));
        // The text encoder refuses a family without series (and stops there).
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            self.scrape_errors.inc();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    values: Vec<(Vec<(&str, String)>, f64)>,
) -> MetricFamily {
    let mut fam = MetricFamily::default();
    fam.set_name(format!("{NS}_{name}"));
    fam.set_help(help.to_string());
    fam.set_field_type(kind);
    for (labels, value) in values {
        let mut m = Metric::default();
        let pairs: Vec<LabelPair> = labels
            .into_iter()
            .map(|(k, v)| {
                let mut p = LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v);
                p
            })
            .collect();
        m.set_label(pairs);
        if kind == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        fam.mut_metric().push(m);
    }
    fam
}

/// `seen` counts plus a zero for each `known` label value not seen yet (so rate() and alerts
/// have a series from the start), as (label, count) in label order.
fn with_known<K: Copy + PartialEq>(
    known: &[K],
    seen: &[(K, u64)],
    label: impl Fn(K) -> &'static str,
) -> Vec<(&'static str, u64)> {
    let mut all: Vec<(K, u64)> = seen.to_vec();
    for k in known {
        if !all.iter().any(|(r, _)| r == k) {
            all.push((*k, 0));
        }
    }
    let mut labelled: Vec<(&'static str, u64)> =
        all.into_iter().map(|(k, n)| (label(k), n)).collect();
    labelled.sort();
    labelled
}

/// One unlabelled value.
fn one(v: u64) -> Vec<(Vec<(&'static str, String)>, f64)> {
    vec![(Vec::new(), v as f64)]
}

/// Counts under one label.
fn by(
    label: &'static str,
    counts: Vec<(&'static str, u64)>,
) -> Vec<(Vec<(&'static str, String)>, f64)> {
    counts
        .into_iter()
        .map(|(value, n)| (vec![(label, value.to_string())], n as f64))
        .collect()
}

fn snapshot_families(s: &Snapshot) -> Vec<MetricFamily> {
    let mut out = listener_families(s);
    if s.cache_enabled {
        out.extend(cache_families(s));
        out.extend(background_families(s));
    }
    out
}

/// Upstreams, client connections and zero-copy bytes.
fn listener_families(s: &Snapshot) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    vec![
        family(
            "upstream_up",
            "1 if the upstream Glance is taking requests (not in failure backoff), else 0.",
            GAUGE,
            s.upstreams
                .iter()
                .map(|(u, up)| (vec![("upstream", u.clone())], if *up { 1.0 } else { 0.0 }))
                .collect(),
        ),
        family(
            "upstream_failovers_total",
            "Requests moved to the next upstream after a refused connection or a 502/503.",
            COUNTER,
            one(s.failovers),
        ),
        family(
            "upstream_upload_waits_total",
            "Request bodies streamed upstream (uploads) that waited for one of upstream.max_uploads.",
            COUNTER,
            one(s.upload_waits),
        ),
        family(
            "upstream_uploads_waiting",
            "Uploads waiting now for one of upstream.max_uploads.",
            GAUGE,
            one(s.uploads_waiting),
        ),
        family(
            "connections_open",
            "Client connections open on the API listener.",
            GAUGE,
            one(s.connections_open),
        ),
        family(
            "connections_shed_total",
            "Idle client connections closed to make room for a new one (server.max_connections reached).",
            COUNTER,
            one(s.connections_shed),
        ),
        family(
            "access_log_dropped_total",
            "Access-log lines dropped because the log could not keep up (its queue, bounded by lines and bytes, was full); a warning is logged at most every 10 s.",
            COUNTER,
            one(s.access_log_dropped),
        ),
        family(
            "log_events_dropped_total",
            "Log events (warnings, errors; not access lines) dropped because stderr could not keep up and their queue (8192 lines) was full.",
            COUNTER,
            one(s.log_events_dropped),
        ),
        family(
            "sendfile_bytes_total",
            "Bytes sent with sendfile(2) (zero-copy): cache hits, and the growing file to the client whose request started a fill.",
            COUNTER,
            one(s.sendfile_bytes),
        ),
        family(
            "cold_read_bytes_total",
            "Cached bytes read into the page cache off the request threads before sendfile.",
            COUNTER,
            one(s.cold_read_bytes),
        ),
    ]
}

/// The cache's usage and fills.
fn cache_families(s: &Snapshot) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let known_fills = [
        FillResult::Committed,
        FillResult::HashMismatch,
        FillResult::Short,
        FillResult::Long,
    ];
    vec![
            family("cache_bytes", "Bytes of committed cache entries.", GAUGE, one(s.cache_bytes)),
            family(
                "cache_reserved_bytes",
                "Bytes reserved by fills in progress.",
                GAUGE,
                one(s.cache_reserved_bytes),
            ),
            family("cache_entries", "Committed cache entries.", GAUGE, one(s.cache_entries)),
            family(
                "cache_capacity_bytes",
                "cache.max_size: bound on committed plus reserved bytes.",
                GAUGE,
                one(s.cache_capacity_bytes),
            ),
            family(
                "cache_writable",
                "1 while the cache directory takes writes; 0 after several cache writes failed in a row (/readyz says why), until a fill is committed or a probe of the directories passes.",
                GAUGE,
                one(u64::from(s.cache_writable)),
            ),
            family(
                "cache_evictions_total",
                "Entries evicted to make room (least recently used first).",
                COUNTER,
                one(s.cache_evictions),
            ),
            family(
                "fills_total",
                "Cache fills by result: committed, or why nothing was kept (hash_mismatch, short, long, upstream, aborted, no_space, io_error, rejected).",
                COUNTER,
                by("result", with_known(&known_fills, &s.fills, FillResult::as_str)),
            ),
            family(
                "upstream_fetched_bytes_total",
                "Image bytes received from Glance by cache fills.",
                COUNTER,
                one(s.fetched_bytes),
            ),
    ]
}

/// The prefetcher, quarantines and the scrubber.
fn background_families(s: &Snapshot) -> Vec<MetricFamily> {
    use MetricType::{COUNTER, GAUGE};
    let quarantined = with_known(
        QuarantineReason::ALL,
        &s.quarantined,
        QuarantineReason::as_str,
    );
    vec![
            family(
                "prefetch_queue_depth",
                "Images queued for the prefetcher (in flight included).",
                GAUGE,
                one(s.prefetch_queued),
            ),
            family(
                "prefetch_in_flight",
                "Images the prefetcher is fetching now.",
                GAUGE,
                one(s.prefetch_in_flight),
            ),
            family(
                "prefetch_failures_total",
                "Failed prefetch attempts (each is retried with backoff).",
                COUNTER,
                one(s.prefetch_failures),
            ),
            family(
                "cache_quarantined_total",
                "Entries taken out of service for good, by reason: changed_on_disk (found on a hit or by the scrubber), hash_mismatch, short, long, read_error (by the scrubber, or a hit whose read of the file failed).",
                COUNTER,
                by("reason", quarantined),
            ),
            family(
                "scrub_verified_bytes_total",
                "Bytes of committed entries re-read from disk and checked by the scrubber.",
                COUNTER,
                one(s.scrub_verified_bytes),
            ),
            family(
                "scrub_verified_entries_total",
                "Entries the scrubber checked in full and found intact.",
                COUNTER,
                one(s.scrub_verified_entries),
            ),
            family(
                "scrub_corruptions_total",
                "Entries the scrubber found corrupt or unreadable (each is quarantined).",
                COUNTER,
                one(s.scrub_corruptions),
            ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_recorded_and_snapshot_metrics() {
        let m = Metrics::new();
        m.finished(&Finished {
            route: "image_data",
            cache_api: false,
            status: 200,
            outcome: Some(Outcome::Hit),
            decision: Some(Decision::Allowed),
            bytes: 10,
            ttfb: 0.002,
            tls: None,
        });
        m.finished(&Finished {
            route: "image_data",
            cache_api: false,
            status: 200,
            outcome: Some(Outcome::Hit),
            decision: Some(Decision::Allowed),
            bytes: 5,
            ttfb: 0.002,
            tls: Some(TlsPath::Userspace),
        });
        m.upstream_response(0.01);
        let snap = Snapshot {
            cache_enabled: true,
            cache_writable: true,
            fills: vec![(FillResult::Committed, 3)],
            upstreams: vec![("http://g:9292/".into(), true)],
            ..Snapshot::default()
        };
        let page = m.render(&snap);
        for line in [
            "glance_cache_proxy_requests_total{route=\"image_data\",status_class=\"2xx\"} 2",
            "glance_cache_proxy_image_requests_total{outcome=\"hit\",reason=\"\"} 2",
            "glance_cache_proxy_served_bytes_total{source=\"cache\"} 15",
            "glance_cache_proxy_tls_hits_total{path=\"userspace\"} 1",
            "glance_cache_proxy_tls_hits_total{path=\"ktls\"} 0",
            "glance_cache_proxy_fills_total{result=\"committed\"} 3",
            "glance_cache_proxy_cache_writable 1",
            "glance_cache_proxy_upstream_up{upstream=\"http://g:9292/\"} 1",
            "glance_cache_proxy_authorization_decisions_total{decision=\"allowed\"} 2",
            "# TYPE glance_cache_proxy_ttfb_seconds histogram",
            "glance_cache_proxy_upstream_response_seconds_count 1",
        ] {
            assert!(page.contains(line), "missing {line}:\n{page}");
        }
    }
}
