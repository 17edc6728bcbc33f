//! Pure LRU-by-bytes bookkeeping for the disk cache: which entries exist, how many bytes are
//! committed or reserved by fills in progress, and which entries to evict to make room.
//!
//! The index never touches the disk: `reserve` *returns* the victims and the caller deletes
//! them (pingora's eviction manager does the same). Recency is a caller-supplied tick (unix
//! milliseconds in production), so it can be restored from disk after a restart. Ticks never
//! go backwards: one not newer than the newest seen counts as just after it (a wall clock stepped
//! back must not make the entries used since look like the oldest).
//!
//! Invariant, checked after every operation in the tests: committed + reserved <= max_size.

use std::collections::{BTreeSet, HashMap};

/// One committed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// Last access, as given by the caller (larger = more recent).
    pub tick: u64,
}

/// The outcome of asking for room for a fill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Room is reserved; delete these evicted entries from disk.
    Granted { victims: Vec<String> },
    /// Larger than the whole cache: serve without caching.
    TooLarge,
    /// Other fills in progress hold the room that eviction cannot free now.
    NoRoom,
}

#[derive(Debug, Clone)]
pub struct Index {
    max_size: u64,
    committed: u64,
    reserved: u64,
    entries: HashMap<String, Entry>,
    /// (tick, id), oldest first.
    by_age: BTreeSet<(u64, String)>,
    evictions: u64,
    /// The newest tick seen.
    latest: u64,
}

impl Index {
    pub fn new(max_size: u64) -> Self {
        Index {
            max_size,
            committed: 0,
            reserved: 0,
            entries: HashMap::new(),
            by_age: BTreeSet::new(),
            evictions: 0,
            latest: 0,
        }
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn committed_bytes(&self) -> u64 {
        self.committed
    }

    pub fn reserved_bytes(&self) -> u64 {
        self.reserved
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted to make room, since start (a monotonic counter).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.entries.get(id).copied()
    }

    /// Entries, least recently used first.
    pub fn iter_lru(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.by_age
            .iter()
            .filter_map(|(_, id)| self.entries.get(id).map(|e| (id.as_str(), *e)))
    }

    /// Reserve `size` bytes for a fill, evicting least recently used entries as needed.
    pub fn reserve(&mut self, size: u64) -> Reservation {
        if size > self.max_size {
            return Reservation::TooLarge;
        }
        if self.reserved + size > self.max_size {
            return Reservation::NoRoom;
        }
        let mut victims = Vec::new();
        while self.committed + self.reserved + size > self.max_size {
            let Some((_, id)) = self.by_age.iter().next().cloned() else {
                break;
            };
            self.remove(&id);
            self.evictions += 1;
            victims.push(id);
        }
        self.reserved += size;
        Reservation::Granted { victims }
    }

    /// Give back a reservation whose fill did not commit.
    pub fn release(&mut self, size: u64) {
        self.reserved = self.reserved.saturating_sub(size);
    }

    /// `tick`, or just after the newest tick seen if the clock did not move on (or went
    /// back): strictly increasing, so recency ties never fall back to id order.
    fn monotonic(&mut self, tick: u64) -> u64 {
        self.latest = tick.max(self.latest.saturating_add(1));
        self.latest
    }

    /// Turn a reservation of `size` into the committed entry `id`; returns the tick used.
    pub fn commit(&mut self, id: &str, size: u64, tick: u64) -> u64 {
        self.release(size);
        self.remove(id);
        let tick = self.monotonic(tick);
        self.insert(id, Entry { size, tick });
        tick
    }

    /// Add an entry found on disk at startup. Returns the victims if the disk held more than
    /// `max_size` (e.g. after the bound was lowered).
    pub fn restore(&mut self, id: &str, entry: Entry) -> Vec<String> {
        self.remove(id);
        self.latest = self.latest.max(entry.tick);
        self.insert(id, entry);
        let mut victims = Vec::new();
        while self.committed + self.reserved > self.max_size {
            let Some((_, oldest)) = self.by_age.iter().next().cloned() else {
                break;
            };
            self.remove(&oldest);
            self.evictions += 1;
            victims.push(oldest);
        }
        victims
    }

    /// Mark `id` used at `tick`. Returns the tick recorded, or `None` if `id` is not in the
    /// index.
    pub fn touch(&mut self, id: &str, tick: u64) -> Option<u64> {
        let tick = self.monotonic(tick);
        let entry = self.entries.get_mut(id)?;
        self.by_age.remove(&(entry.tick, id.to_string()));
        entry.tick = entry.tick.max(tick);
        self.by_age.insert((entry.tick, id.to_string()));
        Some(entry.tick)
    }

    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.by_age.remove(&(entry.tick, id.to_string()));
        self.committed -= entry.size;
        Some(entry)
    }

    fn insert(&mut self, id: &str, entry: Entry) {
        self.committed += entry.size;
        self.by_age.insert((entry.tick, id.to_string()));
        self.entries.insert(id.to_string(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_stepped_back_does_not_make_recent_entries_the_oldest() {
        let mut ix = Index::new(90);
        ix.commit("a", 30, 1_000);
        ix.commit("b", 30, 2_000);
        // The wall clock steps back a day: b's use and c's commit still rank as newest.
        assert_eq!(ix.touch("a", 500), Some(2_001));
        ix.reserve(30);
        assert_eq!(ix.commit("c", 30, 600), 2_002);
        // b is now the least recently used, a and c are not.
        assert_eq!(
            ix.iter_lru().next().map(|(id, _)| id.to_string()),
            Some("b".into())
        );
        match ix.reserve(30) {
            Reservation::Granted { victims } => assert_eq!(victims, vec!["b".to_string()]),
            other => panic!("{other:?}"),
        }
    }
    use proptest::prelude::*;

    fn granted(r: Reservation) -> Vec<String> {
        match r {
            Reservation::Granted { victims } => victims,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut ix = Index::new(100);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            assert!(granted(ix.reserve(30)).is_empty());
            ix.commit(id, 30, i as u64);
        }
        assert!(ix.touch("a", 10).is_some()); // a is now the most recent
        assert_eq!(granted(ix.reserve(30)), vec!["b"]);
        ix.commit("d", 30, 11);
        assert_eq!(ix.committed_bytes(), 90);
        // Exactly enough is evicted: 30 committed + 70 reserved fill the bound.
        assert_eq!(granted(ix.reserve(70)), vec!["c", "a"]);
        assert_eq!(ix.reserved_bytes(), 70);
        ix.release(70);
        assert_eq!(
            (ix.committed_bytes(), ix.reserved_bytes(), ix.len()),
            (30, 0, 1)
        );
        assert_eq!(ix.evictions(), 3);
    }

    #[test]
    fn too_large_and_no_room() {
        let mut ix = Index::new(100);
        assert_eq!(ix.reserve(101), Reservation::TooLarge);
        assert!(granted(ix.reserve(60)).is_empty());
        // 60 bytes are held by a fill in progress: nothing evictable frees them.
        assert_eq!(ix.reserve(50), Reservation::NoRoom);
        assert!(ix.touch("missing", 1).is_none());
    }

    #[test]
    fn restore_trims_to_the_bound() {
        let mut ix = Index::new(50);
        assert!(ix.restore("old", Entry { size: 30, tick: 1 }).is_empty());
        assert_eq!(ix.restore("new", Entry { size: 30, tick: 2 }), vec!["old"]);
        let order: Vec<&str> = ix.iter_lru().map(|(id, _)| id).collect();
        assert_eq!(order, vec!["new"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u64),
        Commit(u8),
        Release,
        Touch(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..150).prop_map(Op::Reserve),
            (0u8..8).prop_map(Op::Commit),
            Just(Op::Release),
            (0u8..8).prop_map(Op::Touch),
            (0u8..8).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn bound_and_bookkeeping_hold(ops in proptest::collection::vec(op(), 1..200)) {
            let mut ix = Index::new(100);
            // Reservations granted and not yet committed or released, as the fills hold them.
            let mut held: Vec<u64> = Vec::new();
            for (tick, op) in ops.into_iter().enumerate() {
                let tick = tick as u64;
                match op {
                    Op::Reserve(size) => {
                        if let Reservation::Granted { victims } = ix.reserve(size) {
                            held.push(size);
                            for v in victims {
                                prop_assert!(ix.get(&v).is_none());
                            }
                        }
                    }
                    Op::Commit(i) => {
                        if let Some(size) = held.pop() {
                            ix.commit(&format!("e{i}"), size, tick);
                        }
                    }
                    Op::Release => {
                        if let Some(size) = held.pop() {
                            ix.release(size);
                        }
                    }
                    Op::Touch(i) => { ix.touch(&format!("e{i}"), tick); }
                    Op::Remove(i) => { ix.remove(&format!("e{i}")); }
                }
                prop_assert!(ix.committed_bytes() + ix.reserved_bytes() <= ix.max_size());
                prop_assert_eq!(ix.reserved_bytes(), held.iter().sum::<u64>());
                let sum: u64 = ix.iter_lru().map(|(_, e)| e.size).sum();
                prop_assert_eq!(sum, ix.committed_bytes());
                prop_assert_eq!(ix.iter_lru().count(), ix.len());
                let ticks: Vec<u64> = ix.iter_lru().map(|(_, e)| e.tick).collect();
                prop_assert!(ticks.windows(2).all(|w| w[0] <= w[1]));
            }
        }
    }
}
