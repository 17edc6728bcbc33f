//! Fuzz target: the `Range` header of image downloads (`serve::range::parse`), with the
//! answer checked against the image size.
#![no_main]

use glance_cache_proxy::image::range::{parse, RangeAnswer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let mut raw = [0u8; 8];
    raw.copy_from_slice(size);
    // Sizes from 0 to large, without overflow games beyond what Glance records.
    let size = u64::from_le_bytes(raw) >> 8;
    let header = String::from_utf8_lossy(header);
    let answer = parse(&header, size);
    if let RangeAnswer::Partial { start, end } = answer {
        assert!(
            start <= end && end < size,
            "{header:?} on {size}: {start}-{end}"
        );
    }
    let _ = answer.content_range(size);
});
