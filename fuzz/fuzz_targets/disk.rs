//! Fuzz target: what the proxy reads back from its own disk at start: an entry's `.meta`
//! record (JSON) beside a data file of some length, and prefetch queue markers. The scan
//! must never panic, and must keep an entry only when its record and data agree.
#![no_main]

use std::sync::OnceLock;

use glance_cache_proxy::cache::store::Store;
use glance_cache_proxy::prefetch::queue::Queue;
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&len, meta)) = data.split_first() else {
        return;
    };
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path();
    let store = Store::open(dir).expect("open");
    let images = dir.join("images");
    std::fs::write(images.join("img.meta"), meta).expect("meta");
    std::fs::write(images.join("img"), vec![7u8; len as usize]).expect("data");
    let scan = store.scan().expect("scan");
    for e in &scan.entries {
        assert_eq!(e.meta.image_id, "img");
        assert_eq!(e.meta.size, u64::from(len));
        let _ = e.meta.expected();
    }
    let _ = store.remove("img");
    // A queue marker whose name comes from the input.
    let name: String = String::from_utf8_lossy(meta)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if !name.is_empty() {
        Queue::open(dir).expect("queue dir");
        std::fs::write(dir.join("queue").join(&name), b"").expect("marker");
        let queue = Queue::open(dir).expect("queue");
        assert!(queue.ids().iter().all(|id| *id == name));
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
        });
        let queued = queue.ids().len();
        assert_eq!(runtime.block_on(queue.clear()), queued);
        assert!(Queue::open(dir).expect("queue").is_empty());
    }
});
