//! Hashing rate of this machine with the proxy's own `Digests` (sha512 + md5), one thread and
//! split over two threads as a fill does. `cargo bench --bench hashrate [MiB]` prints a table.

use std::time::Instant;

use glance_cache_proxy::cache::verify::{Digests, Expected, HashAlgo};

fn rate(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this only checks that it runs (1 MiB).
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    let mib: usize = args
        .iter()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(if benching { 1024 } else { 1 });
    let buf: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i * 2654435761) as u8)
        .collect();
    let total = mib << 20;
    let md5 = Expected {
        size: total as u64,
        md5: Some(String::new()),
        os_hash: None,
    };
    let sha = Expected {
        size: total as u64,
        md5: None,
        os_hash: Some((HashAlgo::Sha512, String::new())),
    };
    let both = Expected {
        size: total as u64,
        md5: Some(String::new()),
        os_hash: Some((HashAlgo::Sha512, String::new())),
    };

    let run = |e: &Expected| {
        let t = Instant::now();
        let mut d = Digests::for_expected(e);
        for _ in 0..mib {
            d.update(&buf);
        }
        let _ = d.verify(e);
        t.elapsed().as_secs_f64()
    };
    let t_md5 = run(&md5);
    let t_sha = run(&sha);
    let t_both = run(&both);
    let t = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| run(&md5));
        s.spawn(|| run(&sha));
    });
    let t_split = t.elapsed().as_secs_f64();

    println!("| hashing ({mib} MiB, in-memory) | GB/s |");
    println!("| --- | --- |");
    println!("| md5, 1 thread | {:.2} |", rate(total, t_md5));
    println!("| sha512, 1 thread | {:.2} |", rate(total, t_sha));
    println!("| sha512 + md5, 1 thread | {:.2} |", rate(total, t_both));
    println!(
        "| sha512 + md5, 2 threads (as a fill) | {:.2} |",
        rate(total, t_split)
    );
}
