//! [`ProbeTable`]: an open-addressing hash table whose lookups usually touch one cache line.
//!
//! Why not `hashbrown`: a SwissTable keeps its control bytes apart from its slots, so a lookup
//! in a table far larger than the cache misses twice (the control group, then the slot). A
//! keyed increment on 1M random keys is nothing but that lookup, and on this project's 2-core
//! VM the second miss halved throughput (docs/benchmarks.md, "Session 5"). Here every slot holds
//! the full hash and the value inline, and collisions are resolved by linear probing, so a
//! lookup reads the home slot and, on a collision, the slots right after it: usually the same
//! or the adjacent cache line, which the hardware prefetches.
//!
//! The load factor stays at most 3/4 (linear probing degrades quickly past that), so there is
//! always an empty slot and every probe ends. Removal re-seats the remaining entries in place
//! rather than leaving tombstones, so lookups never walk over dead slots.

/// A hash table of `T`s keyed by a caller-computed 64-bit hash (the low bits pick the home
/// slot) and a caller-supplied equality test.
pub(crate) struct ProbeTable<T> {
    /// A power of two in length, or empty before the first insert.
    slots: Box<[Option<Hashed<T>>]>,
    len: usize,
}

struct Hashed<T> {
    hash: u64,
    value: T,
}

/// Where a probe for a hash ended.
enum Probe {
    Found(usize),
    Vacant(usize),
}

const MIN_CAPACITY: usize = 16;

impl<T> ProbeTable<T> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Box::default(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entry with this hash for which `eq` holds.
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        match self.probe(hash, eq) {
            Some(Probe::Found(index)) => self.slots[index].as_ref().map(|item| &item.value),
            _ => None,
        }
    }

    /// The entry with this hash that `eq` finds equal to `key`, inserting `make(key)` first if
    /// there is none.
    pub(crate) fn find_or_insert_with<Q>(
        &mut self,
        hash: u64,
        key: Q,
        eq: impl Fn(&T, &Q) -> bool,
        make: impl FnOnce(Q) -> T,
    ) -> &T {
        let index = match self.probe(hash, |value| eq(value, &key)) {
            Some(Probe::Found(index)) => index,
            Some(Probe::Vacant(index)) if fits(self.len + 1, self.slots.len()) => index,
            _ => {
                self.resize((self.slots.len() * 2).max(MIN_CAPACITY));
                self.vacant_from(hash)
            }
        };
        let slot = &mut self.slots[index];
        if slot.is_none() {
            self.len += 1;
        }
        &slot
            .get_or_insert_with(|| Hashed {
                hash,
                value: make(key),
            })
            .value
    }

    /// Every entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten().map(|item| &item.value)
    }

    /// Drop every entry for which `keep` returns false; returns how many were dropped.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut T) -> bool) -> usize {
        // Found before any removal: an empty slot no probe path crosses (see `reseat`).
        let Some(start) = self.slots.iter().position(Option::is_none) else {
            return 0; // no slots at all
        };
        let mut removed = 0;
        for slot in &mut self.slots {
            if let Some(item) = slot
                && !keep(&mut item.value)
            {
                *slot = None;
                removed += 1;
            }
        }
        if removed == 0 {
            return 0;
        }
        self.len -= removed;
        let wanted = capacity_for(self.len);
        if wanted < self.slots.len() / 4 {
            // Mostly emptied: give the memory back.
            self.resize(wanted);
        } else {
            self.reseat(start);
        }
        removed
    }

    /// Read the hash's home slot and let the result go: a plain load that brings the slot's
    /// cache line in, so that a batch can have several of these misses in flight at once
    /// before it looks any of them up.
    #[inline]
    pub(crate) fn touch(&self, hash: u64) {
        if let Some(mask) = self.slots.len().checked_sub(1) {
            std::hint::black_box(self.slots[hash as usize & mask].is_some());
        }
    }

    /// Probe from the hash's home slot to the entry or to the first empty slot; `None` when
    /// the table has no slots yet.
    #[inline]
    fn probe(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<Probe> {
        let mask = self.slots.len().checked_sub(1)?;
        // Truncation is the point: the low bits pick the home slot.
        let mut index = hash as usize & mask;
        loop {
            match &self.slots[index] {
                None => return Some(Probe::Vacant(index)),
                Some(item) if item.hash == hash && eq(&item.value) => {
                    return Some(Probe::Found(index));
                }
                Some(_) => index = (index + 1) & mask,
            }
        }
    }

    /// The first empty slot at or after the hash's home slot. The table must have one.
    fn vacant_from(&self, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut index = hash as usize & mask;
        while self.slots[index].is_some() {
            index = (index + 1) & mask;
        }
        index
    }

    fn resize(&mut self, capacity: usize) {
        let old = std::mem::replace(&mut self.slots, (0..capacity).map(|_| None).collect());
        for item in old.into_vec().into_iter().flatten() {
            let index = self.vacant_from(item.hash);
            self.slots[index] = Some(item);
        }
    }

    /// After removals left holes: move every entry to the first empty slot from its home, in
    /// place. `start` was empty *before* the removals, so no entry's probe path crosses it and,
    /// scanning from it, every entry's home comes at or before the entry. Each entry then moves
    /// only back, into a hole on its own path, and a later entry's move never empties a slot on
    /// an earlier entry's path: when the scan ends, every entry is reachable from its home.
    fn reseat(&mut self, start: usize) {
        let capacity = self.slots.len();
        for step in 1..capacity {
            let index = (start + step) & (capacity - 1);
            if let Some(item) = self.slots[index].take() {
                let to = self.vacant_from(item.hash);
                self.slots[to] = Some(item);
            }
        }
    }
}

/// Whether `len` entries fit `capacity` slots within the 3/4 load bound.
fn fits(len: usize, capacity: usize) -> bool {
    len.saturating_mul(4) <= capacity.saturating_mul(3)
}

/// The capacity to shrink to for `len` entries: at most half full, so growth is not immediate.
fn capacity_for(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.saturating_mul(2).next_power_of_two().max(MIN_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Hashes with few distinct low bits, so that probe chains collide, wrap around the end
    /// of the table and cross each other's homes.
    fn colliding_hash(key: u16) -> u64 {
        (u64::from(key) % 7) | (u64::from(key) << 32)
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        RemoveWhere(u16),
        Find(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u16>().prop_map(|k| Op::Insert(k % 300)),
            1 => any::<u16>().prop_map(|k| Op::RemoveWhere(k % 5)),
            3 => any::<u16>().prop_map(|k| Op::Find(k % 300)),
        ]
    }

    proptest! {
        /// Against a HashMap model: inserts, finds and removals (which re-seat or shrink) keep
        /// every entry reachable and nothing else.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 1..400)) {
            let mut table: ProbeTable<(u16, u32)> = ProbeTable::new();
            let mut model: HashMap<u16, u32> = HashMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                let step = u32::try_from(step).unwrap_or(u32::MAX);
                match op {
                    Op::Insert(key) => {
                        let got = *table.find_or_insert_with(
                            colliding_hash(key), key, |(k, _), key| k == key, |key| (key, step));
                        let want = *model.entry(key).or_insert(step);
                        prop_assert_eq!(got, (key, want));
                    }
                    Op::RemoveWhere(residue) => {
                        let removed = table.retain(|(k, _)| *k % 5 != residue);
                        let before = model.len();
                        model.retain(|k, _| *k % 5 != residue);
                        prop_assert_eq!(removed, before - model.len());
                    }
                    Op::Find(key) => {
                        let got = table.find(colliding_hash(key), |(k, _)| *k == key);
                        prop_assert_eq!(got.map(|(_, v)| *v), model.get(&key).copied());
                    }
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert!(table.slots.is_empty() || fits(table.len(), table.slots.len()));
            }
            let mut all: Vec<_> = table.iter().copied().collect();
            all.sort_unstable();
            let mut want: Vec<_> = model.into_iter().collect();
            want.sort_unstable();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn removing_everything_frees_the_slots() {
        let mut table = ProbeTable::new();
        for key in 0..1000u64 {
            table.find_or_insert_with(
                key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                key,
                |k, key| k == key,
                |key| key,
            );
        }
        assert!(table.slots.len() >= 1024);
        assert_eq!(table.retain(|_| false), 1000);
        assert_eq!(table.len(), 0);
        assert!(table.slots.is_empty());
        assert_eq!(table.find(7, |_| true), None);
    }
}
