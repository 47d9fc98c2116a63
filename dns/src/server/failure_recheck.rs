//! RFC 8767's failure recheck timer: after a question's refresh has failed, its expired answer
//! is served at once for a while, instead of every asker starting another resolution against
//! authorities that just failed and waiting out the client timeout before getting it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// How long after a failed refresh the stale answer is served without trying again (RFC 8767
/// section 5 suggests 30 seconds).
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(30);
/// Questions remembered at most; past it, one more failure is simply not remembered (its
/// askers resolve as usual).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct FailureRecheck {
    failed_at: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Whether anything is remembered: while nothing is, a miss pays one load and no lock.
    any: AtomicBool,
}

impl FailureRecheck {
    /// The refresh of the question `key` failed at `now`.
    pub(crate) fn note_failure(&self, key: &[u8], now: Instant) {
        let mut failed_at = self.failed_at.lock();
        if failed_at.len() >= MAX_REMEMBERED {
            failed_at.retain(|_, at| now.saturating_duration_since(*at) < RECHECK_AFTER);
        }
        if failed_at.len() < MAX_REMEMBERED {
            failed_at.insert(key.to_vec(), now);
            self.any.store(true, Ordering::Release);
        }
    }

    /// Whether the question's refresh failed less than [`RECHECK_AFTER`] before `now`.
    pub(crate) fn failed_lately(&self, key: impl FnOnce() -> Vec<u8>, now: Instant) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let key = key();
        let mut failed_at = self.failed_at.lock();
        match failed_at.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < RECHECK_AFTER => true,
            Some(_) => {
                failed_at.remove(&key);
                if failed_at.is_empty() {
                    self.any.store(false, Ordering::Release);
                }
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_holds_for_the_recheck_time_then_is_forgotten() {
        let recheck = FailureRecheck::default();
        let start = Instant::now();
        assert!(!recheck.failed_lately(|| b"a".to_vec(), start));
        recheck.note_failure(b"a", start);
        assert!(recheck.failed_lately(|| b"a".to_vec(), start + RECHECK_AFTER / 2));
        assert!(!recheck.failed_lately(|| b"b".to_vec(), start));
        assert!(!recheck.failed_lately(|| b"a".to_vec(), start + RECHECK_AFTER));
        assert!(recheck.failed_at.lock().is_empty());
        assert!(!recheck.any.load(Ordering::Acquire));
    }

    #[test]
    fn it_remembers_a_bounded_number_and_makes_room_from_the_expired() {
        let recheck = FailureRecheck::default();
        let start = Instant::now();
        for n in 0..MAX_REMEMBERED + 5 {
            recheck.note_failure(&n.to_be_bytes(), start);
        }
        assert_eq!(recheck.failed_at.lock().len(), MAX_REMEMBERED);
        let later = start + RECHECK_AFTER;
        recheck.note_failure(b"new", later);
        assert_eq!(recheck.failed_at.lock().len(), 1);
        assert!(recheck.failed_lately(|| b"new".to_vec(), later));
    }
}
