//! The local layer: a LongAdder-style striped pair of saturating atomics.
//!
//! An uncontended adder is two `u64`s and a pointer. The first time two threads collide on it
//! (a failed compare-and-swap on the base pair), it allocates a table of cache-padded cells, one
//! per core (the available parallelism rounded up to a power of two); from then on each thread
//! adds with one plain `fetch_add` to the cell its thread-local probe picks. Probes are handed out
//! consecutively, so up to one thread per core each gets a cell of its own. Reading sums the base
//! and every cell.
//!
//! Unlike Java's `LongAdder`, the table is allocated whole and used whole at once: its memory is
//! paid at allocation either way, and spreading over every cell from the start means the hot
//! path needs no collision detection (no compare-and-swap, no growth check).

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use crossbeam_utils::CachePadded;
use once_cell::race::OnceBox;

use crate::PnCount;

/// One `(increments, decrements)` pair of saturating atomics.
#[derive(Debug, Default)]
pub(crate) struct PnCell {
    increments: AtomicU64,
    decrements: AtomicU64,
}

fn part(cell: &PnCell, by: i64) -> (&AtomicU64, u64) {
    if by >= 0 {
        (&cell.increments, by.unsigned_abs())
    } else {
        (&cell.decrements, by.unsigned_abs())
    }
}

/// `fetch_add` that saturates at `u64::MAX` instead of wrapping.
///
/// The add that crosses the top wraps for an instant and then stores `u64::MAX`; adds racing
/// with it land on the wrapped value and are then overwritten by the maximum, which is where
/// they would have saturated anyway. A reader in that instant may see a small value; every
/// consumer takes per-part maxima, so it only delays the (saturated) value by one observation.
/// Reaching the top takes 1.8e19 increments, so this path exists for the overflow policy only.
#[inline]
fn saturating_fetch_add(slot: &AtomicU64, amount: u64) {
    let before = slot.fetch_add(amount, Relaxed);
    if before.checked_add(amount).is_none() {
        slot.store(u64::MAX, Relaxed);
    }
}

impl PnCell {
    /// One compare-and-swap; `false` means another thread changed the part first (contention).
    #[inline]
    fn try_add(&self, by: i64) -> bool {
        let (slot, amount) = part(self, by);
        let current = slot.load(Relaxed);
        slot.compare_exchange(current, current.saturating_add(amount), Relaxed, Relaxed)
            .is_ok()
    }

    /// Add with one `fetch_add`, saturating at `u64::MAX` (see [`PnCount`]).
    #[inline]
    fn add(&self, by: i64) {
        let (slot, amount) = part(self, by);
        saturating_fetch_add(slot, amount);
    }

    fn add_parts(&self, increments: u64, decrements: u64) {
        saturating_fetch_add(&self.increments, increments);
        saturating_fetch_add(&self.decrements, decrements);
    }

    fn load(&self) -> PnCount {
        PnCount {
            increments: self.increments.load(Relaxed),
            decrements: self.decrements.load(Relaxed),
        }
    }
}

#[derive(Debug)]
struct CellTable {
    /// `cells.len() - 1`; the length is a power of two.
    mask: usize,
    cells: Box<[CachePadded<PnCell>]>,
}

/// Cells per table: the available parallelism rounded up to a power of two (at least 2).
fn max_cells() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, usize::from)
            .max(2)
            .next_power_of_two()
    })
}

impl CellTable {
    fn new() -> Self {
        let len = max_cells();
        Self {
            mask: len - 1,
            cells: (0..len)
                .map(|_| CachePadded::new(PnCell::default()))
                .collect(),
        }
    }

    #[inline]
    fn add(&self, by: i64) {
        // `probe & mask` is always in bounds; `get` keeps the hot path free of a panic branch.
        if let Some(cell) = self.cells.get(probe::current() & self.mask) {
            cell.add(by);
        }
    }

    fn sum(&self) -> PnCount {
        self.cells
            .iter()
            .fold(PnCount::ZERO, |sum, cell| sum.saturating_sum(cell.load()))
    }
}

/// A striped PN pair. Not `Clone`: share it behind an `Arc`. `repr(C)`: the base pair first,
/// where a keyed set's slot puts it right after the key.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct Adder {
    base: PnCell,
    cells: OnceBox<CellTable>,
}

impl Adder {
    /// Add `by`: one atomic operation (a compare-and-swap on the base pair until the first
    /// collision, then a `fetch_add` on this thread's cell).
    #[inline]
    pub(crate) fn add(&self, by: i64) {
        if let Some(table) = self.cells.get() {
            table.add(by);
        } else if !self.base.try_add(by) {
            self.cells
                .get_or_init(|| Box::new(CellTable::new()))
                .add(by);
        }
    }

    /// Raise the sum to at least `target` per part (the per-node maximum applied to our own entry).
    /// Returns whether anything was added.
    pub(crate) fn raise_to(&self, target: PnCount) -> bool {
        let current = self.sum();
        let increments = target.increments.saturating_sub(current.increments);
        let decrements = target.decrements.saturating_sub(current.decrements);
        self.base.add_parts(increments, decrements);
        increments > 0 || decrements > 0
    }

    /// Add a whole entry (both parts), saturating.
    pub(crate) fn add_parts(&self, count: PnCount) {
        self.base.add_parts(count.increments, count.decrements);
    }

    /// The sum of every cell. Each cell only grows, so the result includes every add that
    /// finished before this call started.
    pub(crate) fn sum(&self) -> PnCount {
        let base = self.base.load();
        match self.cells.get() {
            Some(table) => base.saturating_sum(table.sum()),
            None => base,
        }
    }

    /// Whether contention made this adder allocate its cell table.
    #[cfg(test)]
    pub(crate) fn is_striped(&self) -> bool {
        self.cells.get().is_some()
    }
}

/// The per-thread probe that picks a cell.
mod probe {
    use std::{
        cell::Cell,
        sync::atomic::{AtomicUsize, Ordering::Relaxed},
    };

    thread_local! {
        // 0 until this thread first needs a cell; a const initialiser keeps the access a plain
        // thread-local load (no lazy-initialisation check on every increment).
        static PROBE: Cell<usize> = const { Cell::new(0) };
    }

    /// This thread's probe. Consecutive threads get consecutive probes, so the first threads
    /// land on distinct cells.
    #[inline]
    pub(super) fn current() -> usize {
        PROBE.with(|probe| match probe.get() {
            0 => {
                static NEXT: AtomicUsize = AtomicUsize::new(1);
                let assigned = NEXT.fetch_add(1, Relaxed).max(1);
                probe.set(assigned);
                assigned
            }
            assigned => assigned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_positive_and_negative_apart() {
        let adder = Adder::default();
        adder.add(5);
        adder.add(-3);
        adder.add(0);
        assert_eq!(
            adder.sum(),
            PnCount {
                increments: 5,
                decrements: 3
            }
        );
    }

    #[test]
    fn raise_to_takes_the_maximum_per_part() {
        let adder = Adder::default();
        adder.add(10);
        assert!(adder.raise_to(PnCount {
            increments: 4,
            decrements: 2
        }));
        assert_eq!(
            adder.sum(),
            PnCount {
                increments: 10,
                decrements: 2
            }
        );
        assert!(!adder.raise_to(PnCount::ZERO));
    }

    #[test]
    fn saturates_at_the_top() {
        let adder = Adder::default();
        adder.add(i64::MAX);
        adder.add(i64::MAX);
        adder.add(i64::MAX);
        assert_eq!(adder.sum().increments, u64::MAX);
    }

    #[test]
    fn contention_spreads_threads_over_cells_and_loses_nothing() {
        let adder = Adder::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100_000 {
                        adder.add(1);
                        adder.add(-1);
                    }
                });
            }
        });
        let sum = adder.sum();
        assert!(
            adder.is_striped(),
            "four threads hammering one adder must stripe it"
        );
        assert_eq!(sum.increments, 400_000);
        assert_eq!(sum.decrements, 400_000);
    }
}
