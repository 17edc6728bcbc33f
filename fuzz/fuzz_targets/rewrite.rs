//! Fuzz target: link rewriting (`Location` values, JSON bodies and version documents) from
//! upstream URLs to the proxy's public URL.
#![no_main]

use glance_cache_proxy::upstream::rewrite::LinkRewriter;
use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let upstreams = [
        Url::parse("http://glance.example:9292/").expect("url"),
        Url::parse("https://lb.example/image/").expect("url"),
    ];
    let public = Url::parse("http://127.0.0.1:9393/").expect("url");
    let rw = LinkRewriter::new(upstreams.iter());
    let text = String::from_utf8_lossy(data);
    if let Some(link) = rw.rewrite(&text, &public) {
        assert!(
            link.starts_with("http://127.0.0.1:9393"),
            "{text:?} -> {link:?}"
        );
    }
    if let Some(body) = rw.rewrite_json(data, &public) {
        serde_json::from_slice::<serde_json::Value>(&body).expect("rewritten JSON parses");
    }
    if let Some(body) = rw.rewrite_version_document(data, &public, &["v2.14", "v2.18"]) {
        serde_json::from_slice::<serde_json::Value>(&body).expect("rewritten document parses");
    }
});
