//! RFC 8767's failure recheck timer: after a question's refresh has failed, its expired answer
//! is served at once for a while, instead of every asker starting another resolution against
//! authorities that just failed and waiting out the client timeout before getting it.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

/// How long after a failed refresh the stale answer is served without trying again (RFC 8767
/// section 5 suggests 30 seconds).
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(30);
/// Questions remembered at most; past it, one more failure is simply not remembered (its
/// askers resolve as usual).
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug)]
pub(crate) struct FailureRecheck {
    failed_at: Mutex<Remembered>,
    /// When the last failure was noted, in milliseconds after `base` (0: never): once that is
    /// [`RECHECK_AFTER`] ago, nothing remembered matters, and a miss pays one load and no lock.
    last_failure_ms: AtomicU64,
    base: Instant,
}

#[derive(Debug, Default)]
struct Remembered {
    by_question: HashMap<Vec<u8>, Instant>,
    /// While full of failures younger than [`RECHECK_AFTER`], no new one is noted before this,
    /// so a full map is not scanned on every failure.
    full_until: Option<Instant>,
}

impl Default for FailureRecheck {
    fn default() -> Self {
        Self {
            failed_at: Mutex::default(),
            last_failure_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }
}

impl FailureRecheck {
    /// The refresh of the question `key` failed at `now`.
    pub(crate) fn note_failure(&self, key: &[u8], now: Instant) {
        let mut remembered = self.failed_at.lock();
        if remembered.full_until.is_some_and(|until| now < until) {
            return;
        }
        if remembered.by_question.len() >= MAX_REMEMBERED {
            remembered
                .by_question
                .retain(|_, at| now.saturating_duration_since(*at) < RECHECK_AFTER);
            if remembered.by_question.len() >= MAX_REMEMBERED {
                let oldest = remembered.by_question.values().min().copied();
                remembered.full_until = oldest.map(|at| at + RECHECK_AFTER);
                return;
            }
            remembered.full_until = None;
        }
        remembered.by_question.insert(key.to_vec(), now);
        let since_base = now.saturating_duration_since(self.base).as_millis();
        let since_base = u64::try_from(since_base).unwrap_or(u64::MAX).max(1);
        self.last_failure_ms
            .fetch_max(since_base, Ordering::Release);
    }

    /// Whether the question's refresh failed less than [`RECHECK_AFTER`] before `now`; `key`
    /// is only built when some failure is that recent.
    pub(crate) fn failed_lately(&self, key: impl FnOnce() -> Vec<u8>, now: Instant) -> bool {
        if !self.any_lately(now) {
            return false;
        }
        let key = key();
        let mut remembered = self.failed_at.lock();
        match remembered.by_question.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < RECHECK_AFTER => true,
            Some(_) => {
                remembered.by_question.remove(&key);
                false
            }
            None => false,
        }
    }

    /// The question was answered: forget its failure, if one is remembered. Costs one load
    /// when no failure was ever noted.
    pub(crate) fn note_success(&self, key: &[u8]) {
        if self.last_failure_ms.load(Ordering::Acquire) != 0 && self.any_lately(Instant::now()) {
            self.failed_at.lock().by_question.remove(key);
        }
    }

    fn any_lately(&self, now: Instant) -> bool {
        let last = self.last_failure_ms.load(Ordering::Acquire);
        let since_base = now.saturating_duration_since(self.base).as_millis();
        let recheck_ms = RECHECK_AFTER.as_millis();
        last != 0 && since_base.saturating_sub(u128::from(last)) < recheck_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_holds_for_the_recheck_time_or_until_an_answer() {
        let recheck = FailureRecheck::default();
        let start = Instant::now();
        assert!(!recheck.failed_lately(|| unreachable!("nothing failed"), start));
        recheck.note_failure(b"a", start);
        assert!(recheck.failed_lately(|| b"a".to_vec(), start + RECHECK_AFTER / 2));
        assert!(!recheck.failed_lately(|| b"b".to_vec(), start));
        let later = start + RECHECK_AFTER + Duration::from_millis(1);
        assert!(!recheck.failed_lately(|| unreachable!("all too old"), later));
        recheck.note_failure(b"c", start);
        recheck.note_success(b"c");
        assert!(!recheck.failed_lately(|| b"c".to_vec(), start));
    }

    #[test]
    fn it_remembers_a_bounded_number_and_makes_room_from_the_expired() {
        let recheck = FailureRecheck::default();
        let start = Instant::now();
        for n in 0..MAX_REMEMBERED + 5 {
            recheck.note_failure(&n.to_be_bytes(), start);
        }
        assert_eq!(recheck.failed_at.lock().by_question.len(), MAX_REMEMBERED);
        // Full of recent failures: later ones are not noted, and not scanned for, until the
        // oldest expires.
        assert_eq!(
            recheck.failed_at.lock().full_until,
            Some(start + RECHECK_AFTER)
        );
        let later = start + RECHECK_AFTER;
        recheck.note_failure(b"new", later);
        assert_eq!(recheck.failed_at.lock().by_question.len(), 1);
        assert!(recheck.failed_lately(|| b"new".to_vec(), later));
    }
}
