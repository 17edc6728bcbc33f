//! Fuzz target: the cache API's inputs: its paths and methods (`route::classify` on
//! `/v2/cache...`, `cached_images`, `queued_images`), the `x-image-cache-clear-target` header,
//! and the Glance image record it reads (`ImageRecord::parse`).
#![no_main]

use glance_cache_proxy::route::{classify, clear_target, Route};
use glance_cache_proxy::upstream::glance::ImageRecord;
use libfuzzer_sys::fuzz_target;

const PREFIXES: &[&str] = &[
    "/v2/cache/",
    "/v2/cache/nodes/",
    "/v2.16/cache/",
    "/v2/cached_images/",
    "/v1/queued_images/",
];
const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let tail = String::from_utf8_lossy(rest);
    let path = format!("{}{}", PREFIXES[sel as usize % PREFIXES.len()], tail);
    let method = http::Method::from_bytes(METHODS[(sel as usize / 8) % METHODS.len()].as_bytes())
        .expect("a known method");
    if let Route::Cache(op) = classify(&method, &path, None) {
        let _ = format!("{op:?}");
    }
    let _ = clear_target(Some(rest));
    if let Some(record) = ImageRecord::parse(rest) {
        let _ = record.expected();
    }
});
