//! The local layer: a LongAdder-style striped pair of saturating atomics.
//!
//! An uncontended adder is two `u64`s and a pointer. The first time two threads collide on it
//! (a failed compare-and-swap on the base pair), it allocates a table of cache-padded cells, two
//! per core; from then on each thread adds to the cell of its *thread slot*.
//!
//! Thread slots are process-wide small integers (see [`thread_slot`]): a live thread holds at
//! most one, no two live threads hold the same one, and a thread gives its slot back when it
//! exits. So the thread in slot `i` is the only writer of cell `i` of every table, and its add is
//! a relaxed load and a relaxed store (no locked read-modify-write, which on x86 costs ~20 cycles
//! and drains the store buffer even on an uncontended line). A thread whose slot is past the
//! table's end (more live counting threads than cells) adds to the base pair with a `fetch_add`,
//! as does a thread that counts from a thread-local destructor after its slot was returned.
//! Reading sums the base and every cell; each part only grows, so a read includes every add that
//! happened before it.
//!
//! Unlike Java's `LongAdder`, the table is allocated whole and used whole at once: its memory is
//! paid at allocation either way, and a fixed cell per thread means the hot path needs no
//! collision detection (no compare-and-swap, no growth check).

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

    /// Add with one `fetch_add`, saturating at `u64::MAX` (see [`PnCount`]). For cells that
    /// several threads may write.
    #[inline]
    fn add(&self, by: i64) {
        let (slot, amount) = part(self, by);
        saturating_fetch_add(slot, amount);
    }

    /// Add with a plain load and store, saturating exactly. Only for a cell the calling thread
    /// owns (its thread slot's cell): with no other writer, nothing can come between the two.
    #[inline]
    fn add_owned(&self, by: i64) {
        let (slot, amount) = part(self, by);
        slot.store(slot.load(Relaxed).saturating_add(amount), Relaxed);
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
    /// Cell `i` is written only by the thread holding thread slot `i`.
    cells: Box<[CachePadded<PnCell>]>,
}

/// Cells per table: two per core (at least 4), so that the threads of a pool sized to the core
/// count, plus a few others (a main thread, a thread just exiting whose slot is not back yet),
/// each own a cell.
pub(crate) fn cells_per_table() -> usize {
    static CELLS: OnceLock<usize> = OnceLock::new();
    *CELLS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(2, usize::from)
            .saturating_mul(2)
            .max(4)
    })
}

impl CellTable {
    fn new() -> Self {
        Self {
            cells: (0..cells_per_table())
                .map(|_| CachePadded::new(PnCell::default()))
                .collect(),
        }
    }

    #[inline]
    fn add(&self, by: i64, base: &PnCell) {
        match self.cells.get(thread_slot::current()) {
            Some(cell) => cell.add_owned(by),
            None => self.add_without_slot(by, base),
        }
    }

    /// This thread has no slot yet (claim one), or none that has a cell here (use the base).
    #[cold]
    fn add_without_slot(&self, by: i64, base: &PnCell) {
        let slot = match thread_slot::current() {
            thread_slot::UNASSIGNED => thread_slot::claim(),
            slot => slot,
        };
        match self.cells.get(slot) {
            Some(cell) => cell.add_owned(by),
            None => base.add(by),
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
    /// Add `by`: a compare-and-swap on the base pair until the first collision, then a plain
    /// load and store on this thread's own cell (a `fetch_add` on the base for a thread without
    /// a cell).
    #[inline]
    pub(crate) fn add(&self, by: i64) {
        if let Some(table) = self.cells.get() {
            table.add(by, &self.base);
        } else if !self.base.try_add(by) {
            self.cells
                .get_or_init(|| Box::new(CellTable::new()))
                .add(by, &self.base);
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

    /// An adder that is striped from the start (as if it had seen contention).
    #[cfg(test)]
    fn striped() -> Self {
        let adder = Self::default();
        adder.cells.get_or_init(|| Box::new(CellTable::new()));
        adder
    }

    /// Whether contention made this adder allocate its cell table.
    #[cfg(test)]
    pub(crate) fn is_striped(&self) -> bool {
        self.cells.get().is_some()
    }
}

/// Process-wide thread slots: the exclusive right to write cell `i` of every cell table.
///
/// A thread claims the lowest free slot the first time it adds to a striped adder and returns it
/// when it exits (a thread-local destructor), so slots stay as few as the threads that count at
/// once. The hand-over goes through the registry's mutex: the exiting thread's last store to a
/// cell happens before the next owner's first load of it, so no add is lost.
pub(crate) mod thread_slot {
    use std::{
        cell::Cell,
        cmp::Reverse,
        collections::BinaryHeap,
        sync::{Mutex, PoisonError},
    };

    /// No slot claimed yet.
    pub(crate) const UNASSIGNED: usize = usize::MAX;
    /// The slot was returned at thread exit; adds made after that (from other thread-local
    /// destructors) go to the shared base pair.
    const RETURNED: usize = usize::MAX - 1;

    struct Registry {
        /// Slots ever handed out: `0..issued`.
        issued: usize,
        /// Returned slots, lowest first.
        free: BinaryHeap<Reverse<usize>>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        issued: 0,
        free: BinaryHeap::new(),
    });

    fn registry() -> std::sync::MutexGuard<'static, Registry> {
        // The registry is consistent at every await-free step; a panic elsewhere cannot break it.
        REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds this thread's slot; returns it when the thread exits.
    struct Owner {
        slot: usize,
    }

    impl Owner {
        fn claim() -> Self {
            let mut registry = registry();
            let slot = match registry.free.pop() {
                Some(Reverse(slot)) => slot,
                None => {
                    registry.issued += 1;
                    registry.issued - 1
                }
            };
            drop(registry);
            // `SLOT` has a const initialiser and no destructor: always accessible.
            let _ = SLOT.try_with(|current| current.set(slot));
            Self { slot }
        }
    }

    impl Drop for Owner {
        fn drop(&mut self) {
            // Stop using the cell *before* giving the slot away.
            let _ = SLOT.try_with(|current| current.set(RETURNED));
            registry().free.push(Reverse(self.slot));
        }
    }

    thread_local! {
        // The hot path reads only this: a const initialiser and no destructor keep it one plain
        // thread-local load (no lazy-initialisation or destroyed-state check).
        static SLOT: Cell<usize> = const { Cell::new(UNASSIGNED) };
        // Lazily initialised on the first claim; its destructor returns the slot.
        static OWNER: Owner = Owner::claim();
    }

    /// This thread's slot, [`UNASSIGNED`], or a value past every table when it has none.
    #[inline]
    pub(crate) fn current() -> usize {
        SLOT.try_with(Cell::get).unwrap_or(RETURNED)
    }

    /// Claim a slot for this thread (once); a thread already tearing down its thread-locals gets
    /// none.
    #[cold]
    pub(crate) fn claim() -> usize {
        OWNER.try_with(|owner| owner.slot).unwrap_or(RETURNED)
    }

    /// Slots handed out so far (the highest slot ever held, plus one).
    #[cfg(test)]
    pub(crate) fn issued() -> usize {
        registry().issued
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        let start = std::sync::Barrier::new(4);
        let rounds_done = AtomicU64::new(0);
        // Each thread does 100 000 rounds, and goes on (up to the deadline) while the threads
        // have not collided yet: on a loaded 2-core machine the scheduler can run them one
        // after another for a while, and 100 000 rounds of one thread fit in one time slice.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    start.wait();
                    let mut rounds = 0_u64;
                    while rounds < 100_000
                        || (!adder.is_striped() && std::time::Instant::now() < deadline)
                    {
                        adder.add(1);
                        adder.add(-1);
                        rounds += 1;
                    }
                    rounds_done.fetch_add(rounds, Relaxed);
                });
            }
        });
        let sum = adder.sum();
        assert!(
            adder.is_striped(),
            "four threads hammering one adder must stripe it"
        );
        let rounds = rounds_done.load(Relaxed);
        assert!(rounds >= 400_000);
        assert_eq!(sum.increments, rounds);
        assert_eq!(sum.decrements, rounds);
    }

    /// This thread's slot after adding once to a striped adder.
    fn slot_after_adding(adder: &Adder) -> usize {
        adder.add(1);
        thread_slot::current()
    }

    #[test]
    fn exiting_threads_hand_their_cells_on_and_lose_nothing() {
        const THREADS: usize = 200;
        let adder = Adder::striped();
        let mut slots = std::collections::BTreeSet::new();
        for _ in 0..THREADS {
            // `join` waits until the thread's thread-locals are destroyed: its slot is free again.
            let slot = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let slot = slot_after_adding(&adder);
                        for _ in 1..1000 {
                            adder.add(1);
                        }
                        adder.add(-5);
                        slot
                    })
                    .join()
            });
            slots.insert(slot.expect("counting thread panicked"));
        }
        assert_eq!(
            adder.sum(),
            PnCount {
                increments: 200_000,
                decrements: 1000,
            }
        );
        // Without slot reuse every thread would hold a new slot (and soon none with a cell).
        // Other tests' threads hold a few slots at the same time, never dozens.
        assert!(
            slots.len() < THREADS / 4,
            "{} distinct slots for {THREADS} consecutive threads",
            slots.len()
        );
    }

    #[test]
    fn threads_beyond_the_cells_share_the_base_and_lose_nothing() {
        let threads = 3 * cells_per_table();
        let adder = Adder::striped();
        let all_hold_a_slot = std::sync::Barrier::new(threads);
        let slots: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let slot = slot_after_adding(&adder);
                        all_hold_a_slot.wait();
                        for _ in 1..20_000 {
                            adder.add(1);
                            adder.add(-1);
                        }
                        adder.add(-1);
                        slot
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("counting thread panicked"))
                .collect()
        });
        // All were alive at once with distinct slots, so most had no cell of their own.
        let mut distinct = slots.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), threads, "live threads shared a slot");
        assert!(slots.iter().any(|slot| *slot >= cells_per_table()));
        assert!(thread_slot::issued() >= threads);
        let expected = (threads * 20_000) as u64;
        assert_eq!(
            adder.sum(),
            PnCount {
                increments: expected,
                decrements: expected,
            }
        );
    }

    #[test]
    fn adds_from_a_thread_local_destructor_after_the_slot_is_returned_count() {
        struct AddOnExit(Arc<Adder>);
        impl Drop for AddOnExit {
            fn drop(&mut self) {
                self.0.add(7);
            }
        }
        thread_local! {
            static ON_EXIT: std::cell::RefCell<Option<AddOnExit>> =
                const { std::cell::RefCell::new(None) };
        }
        let adder = Arc::new(Adder::striped());
        for _ in 0..20 {
            let adder = Arc::clone(&adder);
            std::thread::spawn(move || {
                // Registered before the slot is claimed: destroyed after it is returned (the
                // usual last-in first-out destructor order), so its add finds no slot.
                ON_EXIT.with(|on_exit| *on_exit.borrow_mut() = Some(AddOnExit(Arc::clone(&adder))));
                for _ in 0..1000 {
                    adder.add(1);
                }
            })
            .join()
            .expect("counting thread panicked");
        }
        assert_eq!(adder.sum().increments, 20 * (1000 + 7));
    }
}
