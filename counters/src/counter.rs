//! [`Counter`]: one counter, incremented from many threads at memory speed.

use std::sync::Arc;

use crate::{PnCount, adder::Adder};

/// A local counter that, once threads contend, increments a cache-padded cell the calling thread
/// owns: no lock, no locked instruction, no cache line shared with another counting thread.
///
/// This is the local layer (like Java's `LongAdder`): uncontended it is one pair of atomics;
/// once threads collide it gives each thread its own cache-padded cell (two per core).
/// Reading sums the cells, so reads cost more than increments: count on the hot path, read rarely.
/// Handles are cheap to clone and share one count.
///
/// Increments and decrements are kept apart as a [`PnCount`], each part saturating at
/// `u64::MAX`, so a counter can become a node's entry in a replicated [`PnState`](crate::PnState)
/// as is. For many counters by key, with replication, use [`CounterSet`](crate::CounterSet).
///
/// ```
/// let requests = edgekit_counters::Counter::new();
/// let handle = requests.clone();
/// std::thread::spawn(move || handle.add(2)).join().expect("thread panicked");
/// requests.incr();
/// requests.add(-1);
/// assert_eq!(requests.value(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Counter {
    adder: Arc<Adder>,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `by` (negative subtracts).
    #[inline]
    pub fn add(&self, by: i64) {
        self.adder.add(by);
    }

    /// Add one.
    #[inline]
    pub fn incr(&self) {
        self.adder.add(1);
    }

    /// Subtract one.
    #[inline]
    pub fn decr(&self) {
        self.adder.add(-1);
    }

    /// Everything added and subtracted so far, kept apart.
    pub fn totals(&self) -> PnCount {
        self.adder.sum()
    }

    /// Increments minus decrements, clamped to the `i64` range (see [`PnCount::value`] for exact).
    pub fn value(&self) -> i64 {
        self.totals().value_i64()
    }
}
