//! Pure upstream health bookkeeping: which upstream to try first, and backoff after failures.
//!
//! Time is passed in, so tests drive it without sleeping.

use std::time::{Duration, Instant};

/// Per-upstream "failed until" marks. An upstream in backoff is tried only after every
/// healthy one, never skipped outright: with all upstreams failing, trying beats refusing.
#[derive(Debug, Clone)]
pub struct Health {
    failed_until: Vec<Option<Instant>>,
    backoff: Duration,
}

impl Health {
    pub fn new(upstreams: usize, backoff: Duration) -> Self {
        Health {
            failed_until: vec![None; upstreams],
            backoff,
        }
    }

    /// Upstream indices in the order to try them: healthy ones by preference, then those in
    /// backoff, soonest to recover first.
    pub fn order(&self, now: Instant) -> Vec<usize> {
        let mut healthy = Vec::new();
        let mut backing_off = Vec::new();
        for (i, until) in self.failed_until.iter().enumerate() {
            match until {
                Some(t) if *t > now => backing_off.push((*t, i)),
                _ => healthy.push(i),
            }
        }
        backing_off.sort();
        healthy.extend(backing_off.into_iter().map(|(_, i)| i));
        healthy
    }

    pub fn failed(&mut self, index: usize, now: Instant) {
        if let Some(slot) = self.failed_until.get_mut(index) {
            *slot = Some(now + self.backoff);
        }
    }

    pub fn succeeded(&mut self, index: usize) {
        if let Some(slot) = self.failed_until.get_mut(index) {
            *slot = None;
        }
    }

    /// Whether every upstream is in its backoff period at `now`: health tracking holds them
    /// all down across requests (a timeout then is part of an outage, not one slow answer).
    pub fn all_down(&self, now: Instant) -> bool {
        !self.failed_until.is_empty()
            && self
                .failed_until
                .iter()
                .all(|until| until.is_some_and(|t| t > now))
    }

    /// Whether `index` is outside its backoff period at `now`.
    pub fn is_healthy(&self, index: usize, now: Instant) -> bool {
        self.failed_until
            .get(index)
            .is_some_and(|until| until.is_none_or(|t| t <= now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_backoff_and_recovery() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut h = Health::new(3, Duration::from_secs(10));
        assert_eq!(h.order(t0), vec![0, 1, 2]);

        h.failed(0, t0);
        assert_eq!(h.order(t0 + s), vec![1, 2, 0]);
        assert!(!h.is_healthy(0, t0 + s));

        h.failed(1, t0 + 2 * s);
        // Both in backoff: 0 recovers first, so it is tried before 1.
        assert_eq!(h.order(t0 + 3 * s), vec![2, 0, 1]);

        // After the backoff, preference order again.
        assert_eq!(h.order(t0 + 20 * s), vec![0, 1, 2]);

        h.failed(2, t0 + 3 * s);
        h.succeeded(2);
        assert_eq!(h.order(t0 + 4 * s), vec![2, 0, 1]);
        h.failed(99, t0); // out of range: ignored
    }

    #[test]
    fn all_down_only_while_every_upstream_is_in_backoff() {
        let t0 = Instant::now();
        let mut h = Health::new(2, Duration::from_secs(10));
        assert!(!h.all_down(t0));
        h.failed(0, t0);
        assert!(!h.all_down(t0), "one still answers");
        h.failed(1, t0);
        assert!(h.all_down(t0 + Duration::from_secs(5)));
        assert!(!h.all_down(t0 + Duration::from_secs(11)), "backoff over");
        h.succeeded(0);
        assert!(!h.all_down(t0));
        assert!(!Health::new(0, Duration::from_secs(1)).all_down(t0));
    }
}
