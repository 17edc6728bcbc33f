//! Test support, shared by every integration test (`mod support;`) and by benches/load.rs:
//! `fake_glance` (the in-process Glance stand-in and its fault injection), `proxy` (the proxy
//! library on port 0 and test configs), `fake_keystone` (token validation), `process` (the real binary as a child process),
//! `client` (raw HTTP client helpers); and here, small helpers every part uses.
#![allow(dead_code)] // each test file uses a different part of this module

mod client;
mod fake_glance;
mod fake_keystone;
mod process;
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

// Re-exported for the test files, each of which uses a different part (so some go unused).
#[allow(unused_imports)]
pub use client::{
    connection, get, get_on, metric, read, send, try_get, try_send, until_metric, Got,
};
#[allow(unused_imports)]
pub use fake_glance::{FakeGlance, Faults, Seen};
#[allow(unused_imports)]
pub use fake_keystone::FakeKeystone;
#[allow(unused_imports)]
pub use process::{files_in, ProxyProcess, BIN};
#[allow(unused_imports)]
pub use proxy::{config, TestConfig, TestProxy};

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A 127.0.0.1 port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// Wait until `cond` holds, polling every 10 ms, for at most 10 s (then fail).
pub async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}
