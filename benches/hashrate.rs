//! Hashing rates on this machine, one table from one run (issue 16):
//!
//! 1. SHA-512, SHA-256 and md5 by every implementation that could serve the proxy: RustCrypto's
//!    `sha2`/`md-5` as the proxy builds them, the assembly that their `asm` features would
//!    link (`sha2-asm`, `md5-asm`, called directly: cargo unifies a crate's features, so `sha2`
//!    with and without `asm` cannot both be in one binary), `ring::digest`, `aws-lc-rs` (md5
//!    through `aws-lc-sys`, as `aws-lc-rs` has none), and `openssl speed` as an outside
//!    reference where the command exists.
//! 2. The proxy's own `cache::verify::Digests`: sha512 alone, md5 alone, both on one thread,
//!    and both split over two threads as a fill does.
//!
//! Every implementation hashes the same 1 MiB buffer repeatedly. Rates are per CPU-second of
//! the hashing thread (what a core can do, and steadier than wall time on a shared machine;
//! `openssl speed` also divides by its CPU time) and per wall second; each is the median of the
//! repetitions, which run interleaved so that a busy machine slows them all alike. All
//! implementations of one algorithm must agree on the digest, or the bench panics.
//!
//! `cargo bench --bench hashrate [MiB per measurement, default 1024] [repetitions, default 5]`;
//! `cargo bench --bench hashrate -- --file PATH [REPS]`: SHA-512 of a file, one line
//! (`bench/miss.sh`).
//! Under `cargo test` it only checks that it runs (1 MiB, one repetition, no `openssl`).
#![allow(unsafe_code)] // aws-lc-sys's MD5_* functions, and clock_gettime for CPU time.

use std::process::Command;
use std::time::Instant;

use glance_cache_proxy::cache::verify::{Digests, Expected, HashAlgo, Mismatch};
use md5::Digest as _;

const MIB: usize = 1 << 20;

/// Hashes `n` copies of the buffer; returns the digest (checked across rows).
type HashFn = Box<dyn Fn(&Data, usize) -> Vec<u8>>;

/// One measurement of the proxy's `Digests`.
type Job<'a> = Box<dyn Fn() + 'a>;

/// One implementation of one algorithm.
struct Row {
    algo: &'static str,
    name: &'static str,
    run: HashFn,
}

/// The buffer, also as blocks for the bare compression functions.
struct Data {
    buf: Vec<u8>,
    blocks128: Vec<[u8; 128]>,
    blocks64: Vec<[u8; 64]>,
}

fn sha2_crate<D: sha2::Digest>(d: &Data, n: usize) -> Vec<u8> {
    let mut h = D::new();
    for _ in 0..n {
        h.update(&d.buf);
    }
    h.finalize().to_vec()
}

fn ring_digest(algo: &'static ring::digest::Algorithm, d: &Data, n: usize) -> Vec<u8> {
    let mut h = ring::digest::Context::new(algo);
    for _ in 0..n {
        h.update(&d.buf);
    }
    h.finish().as_ref().to_vec()
}

fn aws_lc_digest(algo: &'static aws_lc_rs::digest::Algorithm, d: &Data, n: usize) -> Vec<u8> {
    let mut h = aws_lc_rs::digest::Context::new(algo);
    for _ in 0..n {
        h.update(&d.buf);
    }
    h.finish().as_ref().to_vec()
}

fn openssl_hash(md: openssl::hash::MessageDigest, d: &Data, n: usize) -> Vec<u8> {
    let mut h = openssl::hash::Hasher::new(md).expect("openssl hasher");
    for _ in 0..n {
        h.update(&d.buf).expect("openssl update");
    }
    h.finish().expect("openssl finish").to_vec()
}

/// SHA-512 by `sha2-asm` alone. The message is whole blocks, so the padding is one block.
fn sha512_asm(d: &Data, n: usize) -> Vec<u8> {
    let mut state: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    for _ in 0..n {
        sha2_asm::compress512(&mut state, &d.blocks128);
    }
    let mut last = [0u8; 128];
    last[0] = 0x80;
    last[112..].copy_from_slice(&((n * d.buf.len()) as u128 * 8).to_be_bytes());
    sha2_asm::compress512(&mut state, &[last]);
    state.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn sha256_asm(d: &Data, n: usize) -> Vec<u8> {
    let mut state: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    for _ in 0..n {
        sha2_asm::compress256(&mut state, &d.blocks64);
    }
    let mut last = [0u8; 64];
    last[0] = 0x80;
    last[56..].copy_from_slice(&((n * d.buf.len()) as u64 * 8).to_be_bytes());
    sha2_asm::compress256(&mut state, &[last]);
    state.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn md5_asm(d: &Data, n: usize) -> Vec<u8> {
    let mut state: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    for _ in 0..n {
        md5_asm::compress(&mut state, &d.blocks64);
    }
    let mut last = [0u8; 64];
    last[0] = 0x80;
    last[56..].copy_from_slice(&((n * d.buf.len()) as u64 * 8).to_le_bytes());
    md5_asm::compress(&mut state, &[last]);
    state.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn md5_aws_lc(d: &Data, n: usize) -> Vec<u8> {
    use aws_lc_sys::{MD5_Final, MD5_Init, MD5_Update, MD5_CTX};
    let mut ctx = std::mem::MaybeUninit::<MD5_CTX>::uninit();
    let mut out = [0u8; 16];
    // SAFETY: MD5_Init initialises the context; the buffer outlives each call; `out` holds the
    // 16 bytes MD5_Final writes.
    unsafe {
        assert_eq!(MD5_Init(ctx.as_mut_ptr()), 1);
        for _ in 0..n {
            assert_eq!(
                MD5_Update(ctx.as_mut_ptr(), d.buf.as_ptr().cast(), d.buf.len()),
                1
            );
        }
        assert_eq!(MD5_Final(out.as_mut_ptr(), ctx.as_mut_ptr()), 1);
    }
    out.to_vec()
}

/// The proxy's `Digests` over what `e` names (no comparison: the expected values are empty).
fn digests(e: &Expected, d: &Data, n: usize) -> Vec<u8> {
    let mut h = Digests::for_expected(e);
    for _ in 0..n {
        h.update(&d.buf);
    }
    let _ = h.verify(e);
    Vec::new()
}

fn expected(total: usize, md5: bool, sha512: bool) -> Expected {
    Expected {
        size: total as u64,
        md5: md5.then(String::new),
        os_hash: sha512.then(|| (HashAlgo::Sha512, String::new())),
    }
}

/// `openssl speed -evp ALGO -bytes 1048576`: GB/s, or None without the command.
fn openssl_speed(algo: &str) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "2", "-bytes", "1048576", "-evp", algo])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: "sha512   1239786.92k" (thousands of bytes per second).
    let last = text.lines().rev().find(|l| l.starts_with(algo))?;
    let k: f64 = last
        .split_whitespace()
        .nth(1)?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    Some(k * 1e3 / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut f = Vec::new();
        if std::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::is_x86_feature_detected!("bmi2") {
            f.push("bmi2");
        }
        if std::is_x86_feature_detected!("sha") {
            f.push("sha-ni");
        }
        if std::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        f.join(" ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    String::from("(not x86_64)")
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this only checks that it runs.
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    if let Some(at) = args.iter().position(|a| a == "--file") {
        let reps = args.iter().skip(at + 2).find_map(|a| a.parse().ok());
        return hash_file(args.get(at + 1).expect("--file PATH"), reps.unwrap_or(3));
    }
    let mut numbers = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let mib = numbers.next().unwrap_or(if benching { 1024 } else { 1 });
    let reps = numbers
        .next()
        .unwrap_or(if benching { 5 } else { 1 })
        .max(1);

    let buf: Vec<u8> = (0..MIB).map(|i| (i * 2654435761) as u8).collect();
    let data = Data {
        blocks128: buf
            .chunks_exact(128)
            .map(|c| c.try_into().expect("128"))
            .collect(),
        blocks64: buf
            .chunks_exact(64)
            .map(|c| c.try_into().expect("64"))
            .collect(),
        buf,
    };
    let total = mib * MIB;

    let rows: Vec<Row> = vec![
        Row {
            algo: "sha512",
            name: "`sha2` 0.10 (in the tree; AVX2 picked at run time)",
            run: Box::new(sha2_crate::<sha2::Sha512>),
        },
        Row {
            algo: "sha512",
            name: "`sha2-asm` compress512 (what `sha2/asm` links)",
            run: Box::new(sha512_asm),
        },
        Row {
            algo: "sha512",
            name: "`ring::digest` 0.17",
            run: Box::new(|d, n| ring_digest(&ring::digest::SHA512, d, n)),
        },
        Row {
            algo: "sha512",
            name: "`aws-lc-rs::digest` 1",
            run: Box::new(|d, n| aws_lc_digest(&aws_lc_rs::digest::SHA512, d, n)),
        },
        Row {
            algo: "sha512",
            name: "`openssl` 0.10 (the system's libcrypto 3)",
            run: Box::new(|d, n| openssl_hash(openssl::hash::MessageDigest::sha512(), d, n)),
        },
        Row {
            algo: "sha256",
            name: "`sha2` 0.10 (in the tree; SHA-NI picked at run time)",
            run: Box::new(sha2_crate::<sha2::Sha256>),
        },
        Row {
            algo: "sha256",
            name: "`sha2-asm` compress256 (what `sha2/asm` links)",
            run: Box::new(sha256_asm),
        },
        Row {
            algo: "sha256",
            name: "`ring::digest` 0.17",
            run: Box::new(|d, n| ring_digest(&ring::digest::SHA256, d, n)),
        },
        Row {
            algo: "sha256",
            name: "`aws-lc-rs::digest` 1",
            run: Box::new(|d, n| aws_lc_digest(&aws_lc_rs::digest::SHA256, d, n)),
        },
        Row {
            algo: "sha256",
            name: "`openssl` 0.10 (the system's libcrypto 3)",
            run: Box::new(|d, n| openssl_hash(openssl::hash::MessageDigest::sha256(), d, n)),
        },
        Row {
            algo: "md5",
            name: "`md-5` 0.10 (in the tree; portable Rust)",
            run: Box::new(|d, n| {
                let mut h = md5::Md5::new();
                for _ in 0..n {
                    h.update(&d.buf);
                }
                h.finalize().to_vec()
            }),
        },
        Row {
            algo: "md5",
            name: "`md5-asm` compress (what `md-5/asm` links)",
            run: Box::new(md5_asm),
        },
        Row {
            algo: "md5",
            name: "`aws-lc-sys` MD5_Update",
            run: Box::new(md5_aws_lc),
        },
        Row {
            algo: "md5",
            name: "`openssl` 0.10 (the system's libcrypto 3)",
            run: Box::new(|d, n| openssl_hash(openssl::hash::MessageDigest::md5(), d, n)),
        },
    ];
    let e_md5 = expected(total, true, false);
    let e_sha = expected(total, false, true);
    let e_both = expected(total, true, true);
    let proxy: Vec<(&str, Job)> = vec![
        (
            "sha512 alone, 1 thread",
            Box::new(|| {
                digests(&e_sha, &data, mib);
            }),
        ),
        (
            "md5 alone, 1 thread",
            Box::new(|| {
                digests(&e_md5, &data, mib);
            }),
        ),
        (
            "sha512 + md5, 1 thread",
            Box::new(|| {
                digests(&e_both, &data, mib);
            }),
        ),
        (
            "sha512 + md5, 2 threads (as a fill)",
            Box::new(|| {
                std::thread::scope(|s| {
                    s.spawn(|| digests(&e_md5, &data, mib));
                    s.spawn(|| digests(&e_sha, &data, mib));
                });
            }),
        ),
    ];

    // Per measurement: (GB per CPU-second, GB per wall second).
    let mut rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); rows.len()];
    let mut proxy_rates: Vec<Vec<(f64, f64)>> = vec![Vec::new(); proxy.len()];
    let mut openssl: Vec<(&str, Vec<f64>)> = ["sha512", "sha256", "md5"]
        .iter()
        .map(|a| (*a, Vec::new()))
        .collect();
    let gb = total as f64 / 1e9;
    for _ in 0..reps {
        let mut digest_of: Vec<(&str, &str, Vec<u8>)> = Vec::new();
        for (row, r) in rows.iter().zip(&mut rates) {
            let (cpu, wall) = (cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID), Instant::now());
            let digest = (row.run)(&data, mib);
            let cpu = cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - cpu;
            r.push((gb / cpu, gb / wall.elapsed().as_secs_f64()));
            if let Some((_, first, want)) = digest_of.iter().find(|(a, _, _)| *a == row.algo) {
                assert_eq!(
                    hex::encode(want),
                    hex::encode(&digest),
                    "{} by {} differs from {first}",
                    row.algo,
                    row.name
                );
            } else {
                digest_of.push((row.algo, row.name, digest));
            }
        }
        for ((_, run), r) in proxy.iter().zip(&mut proxy_rates) {
            // The process's CPU time: the two-thread row spends it on two threads.
            let (cpu, wall) = (cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID), Instant::now());
            run();
            let cpu = cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu;
            r.push((gb / cpu, gb / wall.elapsed().as_secs_f64()));
        }
        if benching {
            for (algo, r) in &mut openssl {
                if let Some(rate) = openssl_speed(algo) {
                    r.push(rate);
                }
            }
        }
    }

    let cpu_of = |v: &[(f64, f64)]| median(&mut v.iter().map(|r| r.0).collect::<Vec<_>>());
    let wall_of = |v: &[(f64, f64)]| median(&mut v.iter().map(|r| r.1).collect::<Vec<_>>());
    println!("CPU features detected: {}", cpu_features());
    println!();
    println!(
        "| algorithm | implementation (one thread, {mib} MiB in 1 MiB updates) | GB per CPU-second | GB/s wall |"
    );
    println!("| --- | --- | --- | --- |");
    for algo in ["sha512", "sha256", "md5"] {
        for (row, r) in rows.iter().zip(&rates).filter(|(row, _)| row.algo == algo) {
            println!(
                "| {algo} | {} | {:.2} | {:.2} |",
                row.name,
                cpu_of(r),
                wall_of(r)
            );
        }
        if let Some((_, r)) = openssl
            .iter_mut()
            .find(|(a, r)| *a == algo && !r.is_empty())
        {
            println!(
                "| {algo} | `openssl speed -evp {algo} -bytes 1048576` (its user CPU time) | {:.2} | |",
                median(r)
            );
        }
    }
    println!();
    println!("| the proxy's `Digests` ({mib} MiB, in-memory) | GB/s wall | CPU-seconds per GB |");
    println!("| --- | --- | --- |");
    for ((name, _), r) in proxy.iter().zip(&proxy_rates) {
        println!("| {name} | {:.2} | {:.2} |", wall_of(r), 1.0 / cpu_of(r));
    }
    println!();
    println!("Medians of {reps} interleaved repetitions.");
}

/// `--file PATH [REPS]` (bench/miss.sh): the proxy's `Digests`, SHA-512 alone on one thread,
/// over the bytes of PATH (read into memory first, as a fill's hasher gets them) in 256 KiB
/// updates (a fill's batch); prints one line: the medians of REPS runs in GB per CPU-second
/// of the hashing thread and GB per wall second, then the digest in hex.
fn hash_file(path: &str, reps: usize) {
    let bytes = std::fs::read(path).expect("read --file");
    let e = expected(bytes.len(), false, true);
    let gb = bytes.len() as f64 / 1e9;
    let (mut cpu_rates, mut wall_rates) = (Vec::new(), Vec::new());
    let mut hex = String::new();
    for _ in 0..reps.max(1) {
        let (cpu, wall) = (cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID), Instant::now());
        let mut h = Digests::for_expected(&e);
        for chunk in bytes.chunks(256 << 10) {
            h.update(chunk);
        }
        let wall = wall.elapsed().as_secs_f64();
        cpu_rates.push(gb / (cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) - cpu));
        wall_rates.push(gb / wall);
        // The mismatch names the actual digest (the expected one is empty).
        if let Err(Mismatch::Digest { actual, .. }) = h.verify(&e) {
            hex = actual;
        }
    }
    println!(
        "{:.3} {:.3} {hex}",
        median(&mut cpu_rates),
        median(&mut wall_rates)
    );
}

/// Seconds of CPU time on `clock` (a thread's or the process's).
fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
