//! Wall-clock seconds for cache expiry, with a manual clock for tests and replays.
//!
//! Expiry is absolute wall-clock seconds (as Unbound keeps it) so a dumped cache means the same
//! thing after a restart.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// Where the cache reads "now" from.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `start_secs` until [`Clock::advance`] moves it.
    pub fn manual(start_secs: u64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicU64::new(start_secs))),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        match &self.manual {
            Some(now) => now.load(Ordering::Relaxed),
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
        }
    }

    /// Move a manual clock forward; a system clock ignores this (time moves by itself).
    pub fn advance(&self, secs: u64) {
        if let Some(now) = &self.manual {
            now.fetch_add(secs, Ordering::Relaxed);
        }
    }
}
