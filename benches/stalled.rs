//! Stalled readers (issue 19): clients that request an image being filled and then never
//! read. Each holds at most what its connection queues (one reader chunk, 64 KiB, plus the
//! next), so the proxy's memory grows by a bounded amount per reader; and after
//! `server.send_timeout` without progress their connections are closed and the memory returned.
//!
//!   cargo bench --bench stalled -- [READERS]        (default 200; target: <= 64 MiB added)
//!
//! The release binary against the in-process fake Glance, which drips the image so the fill is
//! still running while the readers stall. Prints a table; exits non-zero past the target or if
//! a stalled connection outlives the send timeout. Under `cargo test` it runs 20 readers with
//! the debug binary and checks only that the connections are closed (a debug build's memory
//! says little about a release build's).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{pattern, FakeGlance, Faults};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The bound per stalled reader of a miss (issue 19: 256 KiB).
const PER_READER_KIB: u64 = 256;
const IMAGE: usize = 128 << 20;

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A connection that asks for `path` and then never reads (a small receive buffer, so the
/// kernel absorbs little of the response).
async fn stalled(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut s = socket.connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: p\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("request");
    s
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let readers = args
        .iter()
        .filter_map(|a| a.parse::<usize>().ok())
        .next()
        .unwrap_or(if benching { 200 } else { 20 });

    let glance = FakeGlance::start().await;
    glance.set_quiet();
    glance.add_image("img", pattern(IMAGE, 7));
    // 64 KiB every 2 ms (about 32 MB/s, 4 s for the image): the fill is still running while
    // the readers stall.
    glance.set_faults(Faults {
        drip: Some(Duration::from_millis(2)),
        ..Default::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, metrics) = (free_addr(), free_addr());
    let config = format!(
        "[server]\nlisten = \"{addr}\"\nmax_connections = 4096\nsend_timeout = \"5s\"\n\
         [upstream]\nurls = [\"{}\"]\n[cache]\ndir = \"{}\"\nmax_size = \"1GiB\"\n\
         [metrics]\nlisten = \"{metrics}\"\n[log]\nlevel = \"warn\"\n",
        glance.url,
        dir.path().join("cache").display()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glance-cache-proxy"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the proxy");
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = child.id();
    let trace = std::env::var_os("STALLED_TRACE").is_some();
    // The fake Glance computes (and remembers) the image's digests on its first record.
    let _ = support::get(&format!("{}/v2/images/img", glance.url)).await;

    // One reader starts the fill and stalls: the baseline is the proxy with a fill running.
    let first = stalled(addr, "/v2/images/img/file").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut conns = vec![first];
    for _ in 0..readers {
        conns.push(stalled(addr, "/v2/images/img/file").await);
    }
    if trace {
        eprintln!("{readers} more connected in {:?}", started.elapsed());
    }
    // Let every new reader's socket fill up and stall (within the send timeout), sampling
    // the peak.
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kib(pid));
        if trace {
            eprintln!("{:?} {}", started.elapsed(), rss_kib(pid));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the send timeout the stalled connections are closed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let open = open_connections(metrics).await;
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();

    let added = peak.saturating_sub(before);
    let per_reader = added / readers as u64;
    println!(
        "| stalled readers of a miss | RSS with the fill running | peak | added | per reader | connections open after send_timeout |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {readers} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {per_reader} KiB | {open} |",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        added as f64 / 1024.0,
    );
    let bound = PER_READER_KIB * readers as u64;
    if benching && added > bound {
        eprintln!("FAIL: {readers} stalled readers added {added} KiB (bound {bound} KiB)");
        std::process::exit(1);
    }
    if open != 0 {
        eprintln!("FAIL: {open} stalled connections outlived the send timeout");
        std::process::exit(1);
    }
}

/// `glance_cache_proxy_connections_open` from the metrics listener.
async fn open_connections(metrics: SocketAddr) -> u64 {
    let page = support::get(&format!("http://{metrics}/metrics")).await;
    String::from_utf8_lossy(&page.body)
        .lines()
        .find_map(|l| l.strip_prefix("glance_cache_proxy_connections_open "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(u64::MAX, |v| v as u64)
}
