//! Pure `Range` parsing for image data, as Glance answers it: one byte range (`a-b`, `a-`,
//! or the suffix `-n`) gives 206; a range that cannot be satisfied, or a malformed header,
//! gives 416 with `Content-Range: bytes */SIZE`; several ranges (any comma) give 400, as
//! Glance's `get_range_from_request` refuses them.

/// What to send for a `Range` header on an image of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole image, 200.
    Full,
    /// Bytes `start..=end`, 206 with `Content-Range: bytes start-end/size`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
    /// Several ranges: 400 (`MULTIPLE_RANGES`).
    Multiple,
}

/// Glance's explanation for a multi-range request.
pub const MULTIPLE_RANGES: &str = "Requests with multiple ranges are not supported in Glance. \
     You may make multiple single-range requests instead.";

impl RangeAnswer {
    /// `Content-Range` value for this answer, if it has one.
    pub fn content_range(self, size: u64) -> Option<String> {
        match self {
            RangeAnswer::Full | RangeAnswer::Multiple => None,
            RangeAnswer::Partial { start, end } => Some(format!("bytes {start}-{end}/{size}")),
            RangeAnswer::Unsatisfiable => Some(format!("bytes */{size}")),
        }
    }
}

/// Decide the answer to `Range: <header>` for an image of `size` bytes.
pub fn parse(header: &str, size: u64) -> RangeAnswer {
    // Glance looks for a comma before anything else.
    if header.contains(',') {
        return RangeAnswer::Multiple;
    }
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Unsatisfiable;
    };
    match one(spec.trim(), size) {
        Some(Some((start, end))) => RangeAnswer::Partial { start, end },
        Some(None) | None => RangeAnswer::Unsatisfiable,
    }
}

/// One range spec: `None` if malformed, `Some(None)` if unsatisfiable, else the bounds.
fn one(spec: &str, size: u64) -> Option<Option<(u64, u64)>> {
    let (first, last) = spec.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    match (first, last) {
        ("", n) if digits(n) => {
            let n: u64 = n.parse().ok()?;
            Some((n > 0 && size > 0).then(|| (size.saturating_sub(n), size - 1)))
        }
        (a, "") if digits(a) => {
            let a: u64 = a.parse().ok()?;
            Some((a < size).then(|| (a, size - 1)))
        }
        (a, b) if digits(a) && digits(b) => {
            let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
            if a > b {
                return None;
            }
            Some((a < size).then(|| (a, b.min(size - 1))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeAnswer::*;

    fn check(header: &str, size: u64, want: RangeAnswer) {
        assert_eq!(parse(header, size), want, "{header:?} of {size}");
    }

    #[test]
    fn answers() {
        check("bytes=0-0", 100, Partial { start: 0, end: 0 });
        check(
            "bytes=100-199",
            5_000_000,
            Partial {
                start: 100,
                end: 199,
            },
        );
        check("bytes=10-", 100, Partial { start: 10, end: 99 });
        check("bytes=-10", 100, Partial { start: 90, end: 99 });
        check("bytes=-1000", 100, Partial { start: 0, end: 99 });
        check("bytes=50-1000", 100, Partial { start: 50, end: 99 });
        check(" bytes=1-2 ", 100, Partial { start: 1, end: 2 });
        check("bytes=100-", 100, Unsatisfiable);
        check("bytes=100-200", 100, Unsatisfiable);
        check("bytes=-0", 100, Unsatisfiable);
        check("bytes=0-0", 0, Unsatisfiable);
        check("bytes=5-2", 100, Unsatisfiable);
        check("bytes=x-2", 100, Unsatisfiable);
        check("bytes=1-2-3", 100, Unsatisfiable);
        check("items=1-2", 100, Unsatisfiable);
        check("bytes=", 100, Unsatisfiable);
        check("bytes=0-1,5-6", 100, Multiple);
        check("bytes=0-1,x", 100, Multiple);
        check(",", 100, Multiple);
        check("bytes=99999999999999999999999-", 100, Unsatisfiable);
        assert_eq!(
            Partial { start: 1, end: 2 }.content_range(9).as_deref(),
            Some("bytes 1-2/9")
        );
        assert_eq!(Unsatisfiable.content_range(9).as_deref(), Some("bytes */9"));
        assert_eq!(Full.content_range(9), None);
    }

    proptest! {
        #[test]
        fn partial_ranges_lie_within_the_image(header in "bytes=[0-9-, ]{0,24}", size in 0u64..10_000) {
            if let Partial { start, end } = parse(&header, size) {
                prop_assert!(start <= end && end < size);
            }
        }

        #[test]
        fn well_formed_ranges_round_trip(a in 0u64..20_000, len in 1u64..20_000, size in 1u64..10_000) {
            let b = a + len - 1;
            let got = parse(&format!("bytes={a}-{b}"), size);
            if a < size {
                prop_assert_eq!(got, Partial { start: a, end: b.min(size - 1) });
            } else {
                prop_assert_eq!(got, Unsatisfiable);
            }
        }

        #[test]
        fn any_text_is_answered(header in ".{0,64}", size in 0u64..u64::MAX) {
            let _ = parse(&header, size); // never panics
        }
    }
}
