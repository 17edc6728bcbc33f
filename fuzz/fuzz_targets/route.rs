//! Fuzz target: request routing and Glance's version negotiation (`route::classify`,
//! `route::negotiate`) on arbitrary methods, paths and `Accept` headers.
#![no_main]

use glance_cache_proxy::route::{classify, negotiate, Route};
use libfuzzer_sys::fuzz_target;

const METHODS: &[&str] = &["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (path, accept) = match text.split_once('\n') {
        Some((p, a)) => (p, Some(a)),
        None => (&*text, None),
    };
    let method = http::Method::from_bytes(METHODS[m as usize % METHODS.len()].as_bytes())
        .expect("a known method");
    let route = classify(&method, path, accept);
    let _ = route.as_str();
    // An image id taken from a path never escapes into a file name.
    if let Route::ImageData { image_id } | Route::V1ImageData { image_id } = &route {
        assert!(!image_id.contains('/'), "{path} -> {image_id}");
    }
    if let (true, Some(negotiated)) = (path.starts_with('/'), negotiate(path, accept)) {
        // Glance routes under /v2, and a negotiated path negotiates to itself again.
        assert!(negotiated.path.starts_with("/v2"), "{path} -> {}", negotiated.path);
        assert_eq!(negotiate(&negotiated.path, None).map(|n| n.path), Some(negotiated.path));
    }
});
