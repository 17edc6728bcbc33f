//! Process and connection lifecycle: graceful drain on shutdown, the connection limit (idle
//! and slowloris connections make room, busy ones do not), the header-read and keep-alive idle
//! timeouts, and the real binary's CLI (`--check-config`, config errors, SIGTERM).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{config, get, pattern, FakeGlance, Faults, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_glance-cache-proxy");

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_transfers_finish() {
    let glance = FakeGlance::start().await;
    let mut proxy = TestProxy::start(config(&[&glance.url], "")).await;
    let data = pattern(2 << 20, 7);
    glance.add_image("img", data.clone());
    // 32 chunks, 40 ms apart: the transfer takes about 1.3 s.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(40)),
        ..Default::default()
    });
    let url = format!("{}/v2/images/img/file", proxy.url);
    let transfer = tokio::spawn(async move { get(&url).await });
    support::until(|| glance.downloads("img") > 0).await;

    let task = proxy.begin_shutdown();
    support::until(|| std::net::TcpStream::connect(proxy.addr).is_err()).await;
    assert!(
        !transfer.is_finished(),
        "the listener must be closed once shutdown begins, while the transfer drains"
    );
    let got = transfer.await.expect("transfer task");
    assert!(
        got.body_error.is_none(),
        "in-flight transfer was cut: {:?}",
        got.body_error
    );
    assert!(got.body == data);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("proxy stops once drained")
        .expect("proxy task");
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown() {
    let glance = FakeGlance::start().await;
    let mut proxy = TestProxy::start(config(
        &[&glance.url],
        "[server]\ndrain_timeout = \"500ms\"\n",
    ))
    .await;
    glance.add_image("img", pattern(1 << 20, 8));
    glance.set_faults(Faults {
        stall_after: Some(64 << 10),
        ..Default::default()
    });
    let url = format!("{}/v2/images/img/file", proxy.url);
    let transfer = tokio::spawn(async move { get(&url).await });
    support::until(|| glance.downloads("img") > 0).await;
    let t = Instant::now();
    let task = proxy.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("shutdown must not wait past the drain deadline")
        .expect("proxy task");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    drop(transfer);
}

#[tokio::test]
async fn the_connection_limit_queues_clients_while_every_connection_is_busy() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[server]\nmax_connections = 1\n")).await;
    // The only slot is busy: Glance takes its time with this request.
    glance.set_faults(Faults {
        stall_head: Some(Duration::from_millis(1500)),
        ..Faults::default()
    });
    let busy_url = format!("{}/v2/a", proxy.url);
    let first = tokio::spawn(async move { get(&busy_url).await });
    support::until(|| glance.requests() == 1).await;
    glance.set_faults(Faults::default());

    let url = format!("{}/v2/b", proxy.url);
    let second = tokio::spawn(async move { get(&url).await });
    // No signal says a client waits for a slot (it is accepted, then waits unserved): the
    // sleep bounds this negative check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "served beyond max_connections");
    let got = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("first answered")
        .expect("task");
    assert_eq!(
        got.status, 200,
        "a busy connection is never closed to make room"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the first request is done")
        .expect("task");
    assert_eq!(got.status, 200);
}

#[tokio::test]
async fn slow_and_idle_connections_cannot_lock_clients_out() {
    let glance = FakeGlance::start().await;
    // A long header timeout: only the slot policy can help the honest client here.
    let proxy = TestProxy::start_with_admin(config(
        &[&glance.url],
        "[server]\nmax_connections = 8\nheader_read_timeout = \"60s\"\n",
    ))
    .await;
    // One idle keep-alive connection that already had an answer (the oldest idle one)...
    let mut keep = TcpStream::connect(proxy.addr).await.expect("connect");
    keep.write_all(b"GET /v2/a HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = keep.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // ... and a slowloris taking every other slot, one header byte now and then.
    let mut slow = Vec::new();
    for _ in 0..7 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        s.write_all(b"GET /v2/images HTTP/1.1\r\nHost: p\r\nX-A: ")
            .await
            .expect("partial head");
        slow.push(s);
    }
    // Every slot is taken before the honest clients come.
    let admin = proxy.admin_url.as_deref().expect("admin listener");
    support::until_metric(admin, "glance_cache_proxy_connections_open", 8.0).await;
    let dripping = tokio::spawn(async move {
        let mut closed = 0;
        for _ in 0..20 {
            for s in slow.iter_mut() {
                if s.write_all(b"a").await.is_err() {
                    closed += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed
    });
    // Eight honest clients, one after the other, each served at once.
    for i in 0..8 {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            get(&format!("{}/v2/honest{i}", proxy.url)),
        )
        .await
        .expect("an honest client is served while the slots are held");
        assert_eq!(got.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "client {i} waited {:?}",
            started.elapsed()
        );
    }
    // Slowloris connections (never a complete head) went first; the keep-alive that had
    // been served stayed open and still works.
    assert!(
        dripping.await.expect("task") > 0,
        "slowloris connections were closed"
    );
    keep.write_all(b"GET /v2/again HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(Duration::from_secs(5), keep.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the served keep-alive was closed before the slowloris ones"
    );
    // None of the slowloris requests ever reached Glance.
    assert!(glance
        .seen()
        .iter()
        .all(|r| !r.path_and_query.starts_with("/v2/images")));
}

/// Send `request` on blocking socket `s`: written before the proxy's tasks run again (these
/// tests run on Tokio's one-thread test runtime, which the proxy shares), so what the proxy
/// does next finds the bytes in its socket, unread.
fn send_now(s: &mut std::net::TcpStream, request: &str) {
    use std::io::Write;
    s.write_all(request.as_bytes()).expect("write");
}

/// The runtime's view of blocking socket `s` (the same socket, read while the proxy runs).
fn on_runtime(s: &std::net::TcpStream) -> TcpStream {
    let clone = s.try_clone().expect("clone");
    clone.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(clone).expect("tokio stream")
}

/// Read one whole response (its head, then `Content-Length` bytes): its head, lower-cased,
/// or what came before the connection ended. Bounded.
async fn answer(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Some(head);
                }
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer or a closed connection within 5 s");
    got.unwrap_or_else(|| format!("no whole answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// Whether the proxy ends connection `s` within 5 s (nothing more sent on it).
async fn ends(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// Issue 30: a connection closed to make room while its client's request had reached the
/// proxy (here: a new connection whose request was not read yet when the next client came)
/// must answer that request, say `Connection: close`, and only then close.
#[tokio::test]
async fn a_request_that_reached_a_connection_closed_to_make_room_is_answered() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[server]\nmax_connections = 1\n")).await;
    // Both connect and send before the proxy runs: it accepts the first, then the second
    // finds the house full while the first one's request waits unread.
    let mut first = std::net::TcpStream::connect(proxy.addr).expect("connect");
    send_now(&mut first, "GET /v2/first HTTP/1.1\r\nHost: p\r\n\r\n");
    let mut second = std::net::TcpStream::connect(proxy.addr).expect("connect");
    send_now(&mut second, "GET /v2/second HTTP/1.1\r\nHost: p\r\n\r\n");
    let mut first = on_runtime(&first);
    let head = answer(&mut first).await;
    assert!(
        head.starts_with("http/1.1 200"),
        "the first request was cut: {head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        ends(&mut first).await,
        "the connection closes after that answer"
    );
    let head = answer(&mut on_runtime(&second)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

/// Issue 30: a kept-alive connection that had been idle, chosen to make room just as its
/// client's next request arrived: that request is answered (`Connection: close`), not cut.
#[tokio::test]
async fn a_keep_alive_request_on_its_way_when_its_connection_is_chosen_is_answered() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(&[&glance.url], "[server]\nmax_connections = 1\n")).await;
    let mut kept = std::net::TcpStream::connect(proxy.addr).expect("connect");
    send_now(&mut kept, "GET /v2/one HTTP/1.1\r\nHost: p\r\n\r\n");
    let mut on = on_runtime(&kept);
    let head = answer(&mut on).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // Answered: the connection is idle. A newcomer connects, and then the kept connection's
    // next request arrives: the proxy learns of them in that order (one epoll batch), so it
    // chooses the kept connection to make room as its request waits unread.
    kept.set_nonblocking(false).expect("blocking");
    let mut newcomer = std::net::TcpStream::connect(proxy.addr).expect("connect");
    send_now(&mut kept, "GET /v2/two HTTP/1.1\r\nHost: p\r\n\r\n");
    send_now(&mut newcomer, "GET /v2/three HTTP/1.1\r\nHost: p\r\n\r\n");
    let head = answer(&mut on).await;
    assert!(
        head.starts_with("http/1.1 200"),
        "the request on its way was cut: {head}"
    );
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        ends(&mut on).await,
        "the connection closes after that answer"
    );
    let head = answer(&mut on_runtime(&newcomer)).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[server]\nheader_read_timeout = \"300ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /v2/a HTTP/1.1\r\nHost: p\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Nothing more is sent: the connection must not stay open for ever.
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "an idle keep-alive connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start(config(
        &[&glance.url],
        "[server]\nheader_read_timeout = \"300ms\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /v2/images HTTP/1.1\r\nHost: p\r\n")
        .await
        .expect("partial head");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the connection must be closed after the header timeout"
    );
    assert_eq!(glance.requests(), 0);
}

// === the real binary ===

#[test]
fn check_config_prints_the_effective_config() {
    let out = Command::new(BIN)
        .args([
            "--check-config",
            "--config",
            "config/glance-cache-proxy.toml",
        ])
        .args([
            "--upstream",
            "http://10.0.0.1:9292",
            "--upstream",
            "http://10.0.0.2:9292",
        ])
        .args(["--cache-max-size", "500MiB", "--listen", "0.0.0.0:9393"])
        .output()
        .expect("run binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"0.0.0.0:9393\""), "{text}");
    assert!(
        text.contains("urls = [\"http://10.0.0.1:9292/\", \"http://10.0.0.2:9292/\"]"),
        "{text}"
    );
    assert!(text.contains("max_size = 524288000"), "{text}");

    let out = Command::new(BIN)
        .arg("--check-config")
        .output()
        .expect("run binary");
    assert!(
        out.status.success(),
        "no config file: the defaults must work"
    );
}

#[test]
fn listen_takes_a_host_name_and_refuses_one_that_does_not_resolve() {
    let out = Command::new(BIN)
        .args(["--check-config", "--listen", "localhost:9393"])
        .output()
        .expect("run binary");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen = \"127.0.0.1:9393\"") || text.contains("listen = \"[::1]:9393\""),
        "the resolved address is printed: {text}"
    );

    let out = Command::new(BIN)
        .args(["--check-config", "--listen", "nosuchhost.invalid:1"])
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen") && err.contains("server.listen") && err.contains("nosuchhost"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key_and_file_and_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    for (text, key) in [
        (
            "[upstream]\nconnect_timeout = \"soon\"\n",
            "upstream.connect_timeout",
        ),
        ("[server]\nlisten_on = \"x\"\n", "listen_on"),
    ] {
        std::fs::write(&path, text).expect("write config");
        let out = Command::new(BIN)
            .args(["--check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run binary");
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains("bad.toml"), "{err}");
    }
    let out = Command::new(BIN)
        .args(["--check-config", "--cache-max-size", "huge"])
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cache-max-size") && err.contains("cache.max_size"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/glance-cache-proxy.toml"])
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn the_binary_serves_logs_and_exits_0_on_sigterm() {
    let glance = FakeGlance::start().await;
    let port = support::closed_port().await.port();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &glance.url,
        ])
        .args(["--metrics-listen", ""])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn binary");
    let url = format!("http://127.0.0.1:{port}/v2/images");
    let mut status = None;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            status = Some(get(&url).await.status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.map(|s| s.as_u16()), Some(200));

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert_eq!(exit.code(), Some(0));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    let access = stderr
        .lines()
        .find(|l| l.contains("access") && l.contains("path=\"/v2/images"))
        .unwrap_or_else(|| panic!("no access line in: {stderr}"));
    for field in [
        "method=\"GET\"",
        "status=200",
        "bytes=",
        "duration_ms=",
        "upstream=http://127.0.0.1:",
        "request_id=\"req-",
    ] {
        assert!(access.contains(field), "{field} missing from {access}");
    }
}

#[test]
fn a_busy_metrics_port_stops_the_start_naming_the_key() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .arg("--cache-dir")
        .arg(dir.path())
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.listen"), "{err}");
    drop(busy);
}

/// A client that sends a request for `path` and then never reads (a tiny receive buffer, so
/// the kernel takes little of the response off the proxy's hands).
async fn stalled_reader(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut s = socket.connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: p\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("request");
    s
}

/// Everything the server sends until it closes the connection (or 10 s pass).
async fn drain_until_closed(mut s: TcpStream) -> usize {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the stalled connection was not closed"),
        }
    }
}

/// Issue 19: clients that stop reading (a hit and a miss in progress) cannot hold their slots:
/// after `server.send_timeout` without progress their connections are closed, an honest client
/// gets a slot, and a stalled client that reads again finds its response cut short.
#[tokio::test]
async fn clients_that_stop_reading_give_their_slots_back_after_the_send_timeout() {
    let glance = FakeGlance::start().await;
    let proxy = TestProxy::start_with_admin(config(
        &[&glance.url],
        "[server]\nmax_connections = 6\nsend_timeout = \"1s\"\n",
    ))
    .await;
    let size = 48 << 20;
    glance.add_image("hot", pattern(size, 91));
    glance.add_image("cold", pattern(size, 92));
    assert_eq!(
        get(&format!("{}/v2/images/hot/file", proxy.url))
            .await
            .body
            .len(),
        size
    );
    // A slow upstream keeps the second image a fill in progress while its readers stall.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(5)),
        ..Default::default()
    });
    let mut stalled = Vec::new();
    for path in ["hot", "hot", "hot", "cold", "cold", "cold"] {
        stalled.push(stalled_reader(proxy.addr, &format!("/v2/images/{path}/file")).await);
    }
    let started = Instant::now();
    // Bounded generously: on a loaded 2-core CI machine the stalled fill's readers take
    // seconds to fill their socket buffers before the send timeout can start counting.
    let honest = tokio::time::timeout(
        Duration::from_secs(20),
        get(&format!("{}/v2/honest", proxy.url)),
    )
    .await
    .expect("an honest client gets a slot once the stalled ones time out");
    assert_eq!(honest.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "every slot was held by a stalled reader until the send timeout: {:?}",
        started.elapsed()
    );
    // Every stalled connection is closed by the proxy (the image's fill is still running).
    let admin = proxy.admin_url.clone().expect("admin listener");
    let deadline = Instant::now() + Duration::from_secs(20);
    while support::metric(&admin, "glance_cache_proxy_connections_open ").await > 0.0 {
        assert!(Instant::now() < deadline, "stalled connections still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for s in stalled {
        let got = drain_until_closed(s).await;
        assert!(
            got < size,
            "a stalled reader got the whole image ({got} bytes)"
        );
    }
}
