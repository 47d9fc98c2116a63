//! [`ShardLock`]: the read-mostly lock around one shard of a keyed set.
//!
//! Every keyed increment takes its shard's lock for reading, and with uniformly spread keys each
//! thread takes every shard's lock in turn. A plain reader-writer lock keeps its reader count in
//! one word, so two threads counting different keys of one shard still pass that word's cache
//! line back and forth: two read-modify-writes per increment on a line the other core wrote
//! last. crossbeam's `ShardedLock` gives each thread (by a per-thread index) its own cache-padded
//! reader lock, so readers touch only lines their own core keeps; a writer (inserting a key,
//! expiring keys) takes all of them in turn, which is rare next to counting.

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

/// A reader-writer lock whose read side scales with the number of threads; no poisoning.
pub(crate) struct ShardLock<T> {
    lock: ShardedLock<T>,
}

impl<T> ShardLock<T> {
    pub(crate) fn new(value: T) -> Self {
        Self {
            lock: ShardedLock::new(value),
        }
    }

    /// Shared access. A panic in another holder leaves the value as consistent as the
    /// structure's own panic safety makes it (as with `parking_lot`), so poisoning is ignored.
    #[inline]
    pub(crate) fn read(&self) -> ShardedLockReadGuard<'_, T> {
        self.lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exclusive access; waits for every reader. Poisoning is ignored, as for [`read`](Self::read).
    pub(crate) fn write(&self) -> ShardedLockWriteGuard<'_, T> {
        self.lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
