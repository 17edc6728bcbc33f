//! Hostile clients (issue 19): a client must not be able to change what the proxy does for
//! anyone else. A broken or abandoned upload is the client's fault (400 or a closed
//! connection, never 502, every upstream's health unchanged); the forwarding headers Glance
//! sees are the proxy's, not the client's; no request target picks where the proxy connects;
//! Glance closing idle keep-alive connections costs no request; and a flood of long request
//! targets neither slows anyone else nor grows the process (the access log is bounded).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use support::{config, get, send, FakeGlance, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every network wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

/// Held by the tests that load the machine on purpose (floods), so that they do not run at
/// once and starve each other's measured clients.
static FLOOD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What came back on a raw connection: the response (head and body) or nothing.
struct Answer {
    text: String,
}

impl Answer {
    /// The status, or `None` when the connection closed without a response.
    fn status(&self) -> Option<u16> {
        self.text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }

    /// A client's fault, as the proxy answers it: 400, 408 or the connection closed; never a
    /// 5xx and never a word about the upstream.
    fn assert_client_fault(&self, what: &str, upstream: SocketAddr) {
        assert!(
            matches!(self.status(), None | Some(400) | Some(408)),
            "{what}: {}",
            self.text
        );
        assert!(
            !self.text.contains(&upstream.port().to_string()),
            "{what}: the answer names the upstream: {}",
            self.text
        );
    }
}

/// Read one response (its head, then `Content-Length` bytes) or until the connection ends.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if response_complete(&buf) {
                break;
            }
        }
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .expect("an answer or a closed connection within the limit");
    Answer {
        text: String::from_utf8_lossy(&buf).into_owned(),
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    buf.len() >= end + 4 + length
}

/// Send `request` as is on a new connection and read the answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The proxy may close before it has read everything: what it answers is what counts.
    let _ = stream.write_all(request).await;
    read_answer(&mut stream).await
}

/// The proxy's metrics page.
async fn scrape(proxy: &TestProxy) -> String {
    let admin = proxy.admin_url.as_ref().expect("admin listener");
    let page = get(&format!("{admin}/metrics")).await;
    String::from_utf8(page.body.to_vec()).expect("utf8")
}

/// The values of metric `name` (any labels) on `page`.
fn values(page: &str, name: &str) -> Vec<f64> {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// Wait until the proxy has counted `n` requests (each one's access record written).
async fn wait_for_requests(proxy: &TestProxy, n: f64) {
    for _ in 0..500 {
        let page = scrape(proxy).await;
        if values(&page, "glance_cache_proxy_requests_total")
            .iter()
            .sum::<f64>()
            >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy did not count {n} requests within 10 s");
}

/// Every upstream takes requests and none was failed over from.
async fn assert_upstreams_healthy(proxy: &TestProxy, what: &str) {
    let page = scrape(proxy).await;
    let up = values(&page, "glance_cache_proxy_upstream_up");
    assert!(
        !up.is_empty() && up.iter().all(|v| *v == 1.0),
        "{what}: {up:?}"
    );
    assert_eq!(
        values(&page, "glance_cache_proxy_upstream_failovers_total"),
        [0.0],
        "{what}"
    );
}

const UPLOAD_HEAD: &str = "PUT /v2/images/img-1/file HTTP/1.1\r\nHost: p\r\n\
    Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Issue 19 (4): malformed chunked bodies were blamed on Glance (upstream_up 0, 502).
#[tokio::test]
async fn malformed_chunked_uploads_are_the_clients_fault() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    // A good first chunk, so the upload to Glance is under way when the bad one comes.
    let cases: [(&str, &[u8]); 3] = [
        (
            "overflowing chunk size",
            b"3\r\nabc\r\nFFFFFFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "negative chunk size",
            b"3\r\nabc\r\n-5\r\nhello\r\n0\r\n\r\n",
        ),
        ("bare LF", b"3\r\nabc\r\n5\nhello\n0\n\n"),
    ];
    for (n, (what, chunks)) in cases.into_iter().enumerate() {
        let answer = raw(proxy.addr, &[UPLOAD_HEAD.as_bytes(), chunks].concat()).await;
        answer.assert_client_fault(what, glance.addr);
        wait_for_requests(&proxy, (n + 1) as f64).await;
        assert_upstreams_healthy(&proxy, what).await;
    }
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert_upstreams_healthy(&proxy, "after the bad uploads").await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_upload_is_not_an_upstream_failure() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(&[&glance.url], "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = "PUT /v2/images/img-1/file HTTP/1.1\r\nHost: p\r\n\
        Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[7u8; 65536]).await.expect("some body");
    // Time for the proxy to start the upload to Glance; the checks hold either way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    wait_for_requests(&proxy, 1.0).await;
    assert_upstreams_healthy(&proxy, "client gone mid-upload").await;
    let got = get(&format!("{}/v2/images", proxy.url)).await;
    assert_eq!(got.status, 200);
    assert_upstreams_healthy(&proxy, "after the abandoned upload").await;
}

#[tokio::test]
async fn a_client_that_stalls_its_upload_gets_408_not_504() {
    let glance = FakeGlance::start().await;
    let cfg = config(
        &[&glance.url],
        "[upstream]\nresponse_timeout = \"1s\"\n[server]\nclient_body_timeout = \"1s\"\n",
    );
    let proxy = TestProxy::start_with_admin(cfg).await;
    // A small body (read whole first, never sent to Glance) and an upload (streamed).
    for length in [1000, 1 << 20] {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!(
            "PUT /v2/images/img-1/file HTTP/1.1\r\nHost: p\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(b"0123456789").await.expect("some body");
        // ... and nothing more: after client_body_timeout without a byte, the proxy gives up.
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status(), Some(408), "{}", answer.text);
        answer.assert_client_fault("stalled upload", glance.addr);
        assert_upstreams_healthy(&proxy, "stalled upload").await;
    }
}

/// Issue 19 (5): Glance's http_proxy_to_wsgi prefers `Forwarded` and prefixes every link
/// with `X-Forwarded-Prefix`: links came back as https://evil.example/...
#[tokio::test]
async fn forwarding_headers_are_the_proxys_not_the_clients() {
    let glance = FakeGlance::start().await;
    let hostile: &[(&str, &str)] = &[
        ("forwarded", "for=203.0.113.9;proto=https;host=evil.example"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-server", "evil.example"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    for (trusted, chain) in [
        ("[]", "127.0.0.1"),
        ("[\"127.0.0.0/8\"]", "203.0.113.9, 127.0.0.1"),
    ] {
        let extra = format!("[server]\ntrusted_proxies = {trusted}\n");
        let proxy = TestProxy::start(config(&[&glance.url], &extra)).await;
        let got = send(&format!("{}/v2/echo", proxy.url), "GET", hostile, "").await;
        assert_eq!(got.status, 200);
        let seen = glance.seen().pop().expect("Glance saw the request");
        let h = &seen.headers;
        for dropped in [
            "forwarded",
            "x-forwarded-prefix",
            "x-forwarded-port",
            "x-forwarded-server",
        ] {
            assert!(h.get(dropped).is_none(), "{dropped} reached Glance: {h:?}");
        }
        assert_eq!(h["x-forwarded-for"], chain, "trusted {trusted}");
        assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}

/// Issue 19 (3): `GET *` made the proxy build `http://127.0.0.1:9700*` and connect to port 80.
#[tokio::test]
async fn a_request_target_never_picks_the_upstream() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "")).await;
    for request in [
        "GET * HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(proxy.addr, request.as_bytes()).await;
        assert!(
            answer.status().is_some_and(|s| s < 500),
            "{request:?}: {}",
            answer.text
        );
        answer.assert_client_fault(request, glance.addr);
    }
    assert_eq!(glance.requests(), 0, "nothing went upstream");
    // Absolute form: its path goes to the configured upstream, whatever authority it names.
    let answer = raw(
        proxy.addr,
        b"GET http://127.0.0.1:1/v2/echo?x=1 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text);
    let seen = glance.seen().pop().expect("Glance saw it");
    assert_eq!(seen.path_and_query, "/v2/echo?x=1");
}

/// A Glance behind gunicorn, for keep-alive: idle connections are closed after 500 ms, and
/// every third request on a connection finds it closing (read, never answered), as a
/// request sent just as the server closes an idle connection does.
struct ClosingGlance {
    addr: SocketAddr,
    /// Requests dropped unanswered.
    dropped: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ClosingGlance {
    async fn start() -> ClosingGlance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&dropped);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let dropped = Arc::clone(&counter);
                let served = Arc::new(AtomicUsize::new(0));
                let svc = service_fn(move |_req| {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    let dropped = Arc::clone(&dropped);
                    async move {
                        if n % 3 == 0 {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            return Err("closing");
                        }
                        Ok(Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{\"images\": []}")))
                            .expect("response"))
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(500))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::spawn(conn);
            }
        });
        ClosingGlance {
            addr,
            dropped,
            task,
        }
    }
}

impl Drop for ClosingGlance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 19 (6): pooled connections idled 90 s while gunicorn closed them after 2 s; 7 of
/// about 600 requests got 502 "connection reset by peer".
#[tokio::test]
async fn glance_closing_keep_alive_connections_costs_no_request() {
    let glance = ClosingGlance::start().await;
    let url = format!("http://{}", glance.addr);
    // The default pool_idle_timeout, with one upstream: no failover to hide behind.
    let proxy = TestProxy::start_with_admin(config(&[&url], "")).await;
    for i in 0..100 {
        if [10, 11, 40, 75].contains(&i) {
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let got = get(&format!("{}/v2/images", proxy.url)).await;
        assert_eq!(
            got.status,
            200,
            "request {i}: {}",
            String::from_utf8_lossy(&got.body)
        );
    }
    assert!(
        glance.dropped.load(Ordering::Relaxed) >= 10,
        "the reused connections broke"
    );
    assert_upstreams_healthy(&proxy, "after broken keep-alive connections").await;
}

/// Issue 26: the access log cannot be flooded. 16 clients send 60 KB request targets as fast
/// as they can to the real binary, whose stderr is read slowly; each gets 414 (a
/// request line over 8 KiB), the lines that are written carry the target cut to 2 KiB, lines
/// the log cannot take are dropped and counted, and meanwhile another client's
/// `GET /versions` answers in normal time and the process's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_long_targets_neither_slows_others_nor_grows_memory() {
    let _alone = FLOOD.lock().await;
    let glance = FakeGlance::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (
        support::closed_port().await.port(),
        support::closed_port().await.port(),
    );
    let mut child = tokio::process::Command::new(support::BIN)
        .args(["--upstream", &glance.url, "--cache-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin_port}")])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn proxy");
    let pid = child.id().expect("pid");
    // stderr read slowly: 2 KiB every 16 ms (about 125 KB/s, a log shipper that lags);
    // what was read is kept.
    let mut stderr = child.stderr.take().expect("stderr");
    let read = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let read = Arc::clone(&read);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2 << 10];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                read.lock().expect("lock").extend_from_slice(&buf[..n]);
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
        })
    };
    let url = format!("http://127.0.0.1:{port}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = rss();

    let flood_for = Duration::from_secs(5);
    let target = format!("/v2/images/{}", "a".repeat(60_000));
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    let refused = Arc::new(AtomicUsize::new(0));
    let floods: Vec<_> = (0..16)
        .map(|_| {
            let (request, refused) = (request.clone(), Arc::clone(&refused));
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                while started.elapsed() < flood_for {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
                        continue;
                    };
                    for _ in 0..50 {
                        if s.write_all(request.as_bytes()).await.is_err() {
                            break;
                        }
                        let mut head = vec![0u8; 4096];
                        let n = tokio::time::timeout(LIMIT, s.read(&mut head)).await;
                        match n {
                            Ok(Ok(n)) if n >= 12 && head.starts_with(b"HTTP/1.1 414") => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                // The JSON body is small and comes with the head or next.
                                let body = String::from_utf8_lossy(&head[..n]).to_string();
                                if !body.contains("\"code\"") {
                                    let _ = tokio::time::timeout(LIMIT, s.read(&mut head)).await;
                                }
                            }
                            _ => break,
                        }
                    }
                }
            })
        })
        .collect();
    // Meanwhile another client's metadata requests answer in normal time.
    let mut slowest = Duration::ZERO;
    let mut peak = before;
    let started = std::time::Instant::now();
    while started.elapsed() < flood_for {
        let asked = std::time::Instant::now();
        let got = tokio::time::timeout(LIMIT, get(&format!("{url}/versions"))).await;
        let took = asked.elapsed();
        assert!(
            got.is_ok_and(|g| g.status == 200),
            "/versions during the flood"
        );
        slowest = slowest.max(took);
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for f in floods {
        f.await.expect("flood task");
    }
    peak = peak.max(rss());
    let dropped = support::metric(&admin, "glance_cache_proxy_access_log_dropped_total").await;
    child.kill().await.expect("kill");
    let _ = tokio::time::timeout(LIMIT, reader).await;
    let refused = refused.load(Ordering::Relaxed);
    let text = String::from_utf8_lossy(&read.lock().expect("lock")).to_string();
    println!(
        "flood: {refused} requests refused (414), {dropped} access lines dropped, \
         slowest /versions {slowest:?}, RSS {before} -> peak {peak} kB"
    );
    assert!(refused > 1000, "the flood ran: {refused}");
    assert!(
        dropped > 0.0,
        "the log could not keep up, so lines were dropped"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "/versions took {slowest:?} during the flood"
    );
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {before} to {peak} kB"
    );
    let cut = text
        .lines()
        .find(|l| l.contains(" access:") && l.contains("status=414"))
        .expect("a 414's access line was written");
    assert!(cut.contains("bytes cut]") && cut.len() < 3000, "{cut}");
}

/// Issue 26: a stderr nobody reads never stops requests. With Glance unreachable every
/// request logs a warning ("upstream connection failed") on the runtime thread serving it;
/// with the pipe full, a warning written inline would block that thread (and, through
/// stderr's lock, every other that logs). Events go to their own writer thread instead:
/// beyond its backlog they are dropped and counted, and requests keep being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stderr_nobody_reads_never_stops_requests() {
    let _alone = FLOOD.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let glance = support::closed_port().await;
    let (port, admin_port) = (
        support::closed_port().await.port(),
        support::closed_port().await.port(),
    );
    let mut child = tokio::process::Command::new(support::BIN)
        .args(["--upstream", &format!("http://{glance}"), "--cache-dir"])
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin_port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn proxy");
    // Held open and never read: the pipe (64 KiB) fills within some hundreds of warnings,
    // the event queue (`logging::EVENT_LINES`, 8192) within 10,000 requests.
    let _stderr = child.stderr.take().expect("stderr");
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("http://127.0.0.1:{port}/v2/images");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..1250 {
                    let got = tokio::time::timeout(LIMIT, get(&url)).await;
                    assert!(
                        got.is_ok_and(|g| g.status == 502),
                        "answered with stderr unread (Glance unreachable: 502)"
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let admin = format!("http://127.0.0.1:{admin_port}");
    let dropped = support::metric(&admin, "glance_cache_proxy_log_events_dropped_total").await;
    child.kill().await.expect("kill");
    assert!(
        dropped > 0.0,
        "events beyond the backlog were dropped and counted"
    );
}

/// Issue 26: a request id that Glance echoes cannot add fields to the access line: in the
/// text format it is one quoted, escaped value; in JSON one escaped string.
#[tokio::test]
async fn a_forged_request_id_stays_one_field_in_both_log_formats() {
    let glance = FakeGlance::start().await;
    let forged = r#"req-1 status=200 upstream=evil injected="yes""#;
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, format!("[log]\nformat = \"{format}\"\n")).expect("config");
        let args: Vec<String> = vec![
            "--config".into(),
            config.display().to_string(),
            "--upstream".into(),
            glance.url.clone(),
            "--cache-dir".into(),
            dir.path().join("cache").display().to_string(),
        ];
        let mut proxy =
            support::ProxyProcess::start(support::BIN, &args, dir.path().join("log")).await;
        let got = send(
            &format!("{}/v2/images", proxy.url),
            "GET",
            &[("x-openstack-request-id", forged)],
            Bytes::new(),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK);
        support::until(|| proxy.log_text().contains("/v2/images")).await;
        let log = proxy.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("access") && l.contains("/v2/images"))
            .unwrap_or_else(|| panic!("no access line: {log}"));
        match format {
            "text" => {
                let quoted = r#"request_id="req-1 status=200 upstream=evil injected=\"yes\"""#;
                // One value, and the next field is the proxy's own.
                assert!(line.contains(&format!("{quoted} route=")), "{line}");
            }
            _ => {
                let json: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
                assert_eq!(json["request_id"], forged, "{line}");
                assert_eq!(json["status"], 200, "{line}");
                assert!(json.get("injected").is_none(), "{line}");
            }
        }
        proxy.kill9().await;
    }
}
