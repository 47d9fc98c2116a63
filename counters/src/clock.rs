//! Where time comes from: the system clock in production, a hand-driven clock in tests.

use std::{
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A source of the current time, as a duration since the Unix epoch.
///
/// Rate-limit windows are aligned to this clock, so nodes that share a limit must agree on it
/// (NTP-synchronised wall clocks are enough: windows are seconds long). Tests inject a
/// [`ManualClock`] to make window edges deterministic.
pub trait Clock: Debug + Send + Sync {
    /// The time now, since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        // A clock before 1970 is a broken host; treating it as the epoch keeps counting going.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use edgekit_counters::{Clock, ManualClock};
///
/// let clock = ManualClock::new(Duration::from_secs(100));
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(101_500));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Duration) -> Self {
        let clock = Self::default();
        clock.set(start);
        clock
    }

    /// Show `now` from here on (may go backwards, to test that too).
    pub fn set(&self, now: Duration) {
        self.nanos.store(saturating_nanos(now), Ordering::SeqCst);
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
