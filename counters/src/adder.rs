//! The local layer: a LongAdder-style striped pair of saturating atomics.
//!
//! An uncontended adder is two `u64`s. The first time two threads collide on it (a failed
//! compare-and-swap), it allocates a table of cache-padded cells; each thread then adds to the
//! cell its probe picks, and a collision there doubles the number of cells in use (up to the
//! available parallelism, rounded up to a power of two) and moves the thread to another cell.
//! Reading sums the base and every cell.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use crossbeam_utils::CachePadded;

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

impl PnCell {
    /// One compare-and-swap; `false` means another thread changed the part first (contention).
    #[inline]
    fn try_add(&self, by: i64) -> bool {
        let (slot, amount) = part(self, by);
        let current = slot.load(Relaxed);
        slot.compare_exchange(current, current.saturating_add(amount), Relaxed, Relaxed)
            .is_ok()
    }

    /// Add, retrying until it lands. Saturates at `u64::MAX` (see [`PnCount`]).
    #[inline]
    fn add(&self, by: i64) {
        let (slot, amount) = part(self, by);
        // `fetch_update` retries on contention; the closure never returns `None`.
        let _ = slot.fetch_update(Relaxed, Relaxed, |current| {
            Some(current.saturating_add(amount))
        });
    }

    fn add_parts(&self, increments: u64, decrements: u64) {
        let _ = self
            .increments
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(increments)));
        let _ = self
            .decrements
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(decrements)));
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
    /// How many cells threads spread over now: a power of two, at most `cells.len()`.
    in_use: AtomicUsize,
    cells: Box<[CachePadded<PnCell>]>,
}

/// Most cells a table grows to: the available parallelism rounded up to a power of two (>= 2).
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
            in_use: AtomicUsize::new(2),
            cells: (0..len)
                .map(|_| CachePadded::new(PnCell::default()))
                .collect(),
        }
    }

    #[inline]
    fn add(&self, by: i64) {
        let in_use = self.in_use.load(Relaxed);
        if self.cells[probe::current() & (in_use - 1)].try_add(by) {
            return;
        }
        // Another thread shares this cell: use more cells if allowed, and move elsewhere.
        if in_use < self.cells.len() {
            let _ = self
                .in_use
                .compare_exchange(in_use, in_use * 2, Relaxed, Relaxed);
        }
        let in_use = self.in_use.load(Relaxed);
        self.cells[probe::rehash() & (in_use - 1)].add(by);
    }

    fn sum(&self) -> PnCount {
        self.cells
            .iter()
            .fold(PnCount::ZERO, |sum, cell| sum.saturating_sum(cell.load()))
    }
}

/// A striped PN pair. Not `Clone`: share it behind an `Arc`.
#[derive(Debug, Default)]
pub(crate) struct Adder {
    base: PnCell,
    cells: OnceLock<Box<CellTable>>,
}

impl Adder {
    /// Add `by`: one compare-and-swap on the uncontended path.
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
        // Consecutive threads get consecutive probes, so the first threads land on distinct cells.
        static PROBE: Cell<usize> = Cell::new({
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            NEXT.fetch_add(1, Relaxed)
        });
    }

    #[inline]
    pub(super) fn current() -> usize {
        PROBE.with(Cell::get)
    }

    /// Move this thread to a pseudo-random other cell (xorshift), after a collision.
    pub(super) fn rehash() -> usize {
        PROBE.with(|probe| {
            let mut x = probe.get() as u64 | 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let next = x as usize;
            probe.set(next);
            next
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
