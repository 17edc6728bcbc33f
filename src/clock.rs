//! The wall clock, for what the proxy records and compares over time (LRU ticks, access and
//! verification times, token lifetimes): one place, so tests can step it (`clock::offset`
//! fault point, e.g. `return(-86400)` for a day back). Durations and timeouts use `Instant`,
//! which no clock step moves. File-system times that must agree with the kernel's (commit
//! time against ctime) read the system clock directly in `cache::store`.

use std::time::{Duration, SystemTime};

/// Now, as the rest of the proxy should see it.
pub fn now() -> SystemTime {
    fail::fail_point!("clock::offset", |secs| shifted(SystemTime::now(), secs));
    SystemTime::now()
}

/// `t` moved by a signed number of seconds (a fault point's argument; 0 if unreadable).
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn shifted(t: SystemTime, secs: Option<String>) -> SystemTime {
    let secs: i64 = secs.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let by = Duration::from_secs(secs.unsigned_abs());
    if secs < 0 {
        t.checked_sub(by).unwrap_or(t)
    } else {
        t.checked_add(by).unwrap_or(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_the_clock_both_ways() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            shifted(t, Some("-86400".into())),
            t - Duration::from_secs(86_400)
        );
        assert_eq!(shifted(t, Some("60".into())), t + Duration::from_secs(60));
        assert_eq!(shifted(t, Some("junk".into())), t);
        assert_eq!(shifted(t, None), t);
    }
}
