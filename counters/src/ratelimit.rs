//! [`RateLimiter`]: sliding-window limits per key that hold across nodes once replicated.

use std::{borrow::Borrow, hash::Hash, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{Clock, ConfigError, CounterSet, CounterSetConfig, NodeId};

/// A limit: at most `limit` units of cost per sliding `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RateLimit {
    /// Units of cost allowed per window (> 0).
    pub limit: u64,
    /// The window length (at least 1 ms). Every node sharing a limit must use the same window,
    /// since windows are aligned to the clock (multiples of the length since the Unix epoch).
    pub window: Duration,
}

impl RateLimit {
    /// `limit` units per `window`, validated.
    pub fn new(limit: u64, window: Duration) -> Result<Self, RateLimitError> {
        let rate = Self { limit, window };
        rate.validate()?;
        Ok(rate)
    }

    /// Check both fields, naming the bad one.
    pub fn validate(&self) -> Result<(), RateLimitError> {
        if self.limit == 0 {
            return Err(RateLimitError::ZeroLimit);
        }
        if self.window < Duration::from_millis(1) {
            return Err(RateLimitError::WindowTooShort(self.window));
        }
        Ok(())
    }
}

/// A rate-limit setting or request that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// `limit` is zero: nothing could ever pass.
    #[error("limit = 0: must be at least 1")]
    ZeroLimit,
    /// `window` is shorter than 1 ms.
    #[error("window = {0:?}: must be at least 1 ms")]
    WindowTooShort(Duration),
    /// A request costs more than the whole limit, so it can never be allowed.
    #[error("cost {cost} exceeds the limit of {limit} per window; it can never be allowed")]
    CostExceedsLimit {
        /// The request's cost.
        cost: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The counter set's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The answer to [`RateLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go ahead (its cost has then been counted).
    pub allowed: bool,
    /// Cost that could still be admitted right now, after this request.
    pub remaining: u64,
    /// When denied: how long until the same request would be allowed if nothing else arrives
    /// (a `Retry-After` hint). Zero when allowed.
    pub retry_after: Duration,
    /// The configured limit, for `RateLimit-Limit`-style headers.
    pub limit: u64,
}

/// The key of one time bucket: the limited key and the index of its window since the epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WindowKey<K> {
    /// The limited key (client, API key, ...).
    pub key: K,
    /// Window number: time since the Unix epoch divided by the window length.
    pub window: u64,
}

/// A sliding-window rate limiter per key, built on replicated counters.
///
/// Each key counts cost in time buckets one window long. The rate over the last window is
/// estimated Cloudflare-style as `previous x (1 - elapsed/window) + current`, in exact integer
/// arithmetic. Bucket counts are [`CounterSet`] entries, so merging another node's
/// [`counters`](Self::counters) delta makes this node count that node's traffic too: the limit
/// holds for the cluster, up to the traffic not yet replicated.
///
/// Within one node, concurrent checks of the same key may each see room for the last unit and
/// both pass: the limit can be exceeded by at most the number of threads racing at its edge.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use edgekit_counters::{ManualClock, NodeId, RateLimit, RateLimiter};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let clock = ManualClock::new(Duration::from_secs(1_000));
/// let limiter = RateLimiter::<String>::with_clock(
///     NodeId::new("edge-1")?,
///     RateLimit::new(2, Duration::from_secs(10))?,
///     Arc::new(clock.clone()),
/// );
/// assert!(limiter.check("client-a", 1)?.allowed);
/// assert!(limiter.check("client-a", 1)?.allowed);
/// let third = limiter.check("client-a", 1)?;
/// assert!(!third.allowed);
/// // Next window, the two count at full weight and fade linearly: room for one after 15 s.
/// assert_eq!(third.retry_after, Duration::from_secs(15));
/// assert!(limiter.check("client-b", 1)?.allowed, "keys are limited separately");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    buckets: CounterSet<WindowKey<K>>,
    rate: RateLimit,
    clock: Arc<dyn Clock>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A limiter for `node` using the system clock.
    pub fn new(node: NodeId, rate: RateLimit) -> Self {
        Self::with_clock(node, rate, Arc::new(crate::SystemClock))
    }

    /// A limiter reading time from `clock`.
    pub fn with_clock(node: NodeId, rate: RateLimit, clock: Arc<dyn Clock>) -> Self {
        let buckets =
            CounterSet::with_config(node, &CounterSetConfig::default(), Arc::clone(&clock))
                .unwrap_or_else(|_| unreachable!("the default counter set config is valid"));
        Self {
            buckets,
            rate,
            clock,
        }
    }

    /// The limit in force.
    pub fn rate(&self) -> RateLimit {
        self.rate
    }

    /// The replicated bucket counters: ship [`CounterSet::delta_since`] to the other nodes that
    /// share this limit, and [`CounterSet::merge`] theirs.
    pub fn counters(&self) -> &CounterSet<WindowKey<K>> {
        &self.buckets
    }

    /// Decide whether `key` may spend `cost` now; if so, count it.
    ///
    /// A `cost` of 0 only reports the state. A cost above the limit is an error: it could never
    /// pass.
    pub fn check<Q>(&self, key: &Q, cost: u64) -> Result<Decision, RateLimitError>
    where
        Q: ToOwned<Owned = K> + ?Sized,
        K: Borrow<Q>,
    {
        let limit = self.rate.limit;
        if cost > limit {
            return Err(RateLimitError::CostExceedsLimit { cost, limit });
        }
        let window_ns = self.rate.window.as_nanos();
        let now_ns = self.clock.now().as_nanos();
        let window = u64::try_from(now_ns / window_ns).unwrap_or(u64::MAX);
        let elapsed_ns = now_ns % window_ns;
        let current_key = WindowKey {
            key: key.to_owned(),
            window,
        };
        let previous = if window == 0 {
            0
        } else {
            self.bucket(&WindowKey {
                key: key.to_owned(),
                window: window - 1,
            })
        };
        let current = self.bucket(&current_key);
        let estimate = Estimate {
            previous: u128::from(previous),
            current: u128::from(current),
            limit: u128::from(limit),
            window_ns,
            elapsed_ns,
        };
        let cost_wide = u128::from(cost);
        if estimate.fits(cost_wide) {
            if cost > 0 {
                self.buckets
                    .add(&current_key, i64::try_from(cost).unwrap_or(i64::MAX));
            }
            let after = Estimate {
                current: estimate.current + cost_wide,
                ..estimate
            };
            return Ok(Decision {
                allowed: true,
                remaining: after.room(),
                retry_after: Duration::ZERO,
                limit,
            });
        }
        Ok(Decision {
            allowed: false,
            remaining: estimate.room(),
            retry_after: estimate.wait_for(cost_wide),
            limit,
        })
    }

    fn bucket(&self, key: &WindowKey<K>) -> u64 {
        // Buckets only ever receive increments; a negative total cannot happen.
        self.buckets.totals(key).increments
    }

    /// Forget buckets older than the previous window: they no longer affect any decision.
    /// Returns how many were removed. Call it periodically.
    pub fn expire_old_windows(&self) -> usize {
        let window_ns = self.rate.window.as_nanos();
        let window = u64::try_from(self.clock.now().as_nanos() / window_ns).unwrap_or(u64::MAX);
        self.buckets
            .retain(|bucket| bucket.window.saturating_add(1) >= window)
    }
}

/// The sliding-window arithmetic, all in integers scaled by the window length in nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    previous: u128,
    current: u128,
    limit: u128,
    window_ns: u128,
    elapsed_ns: u128,
}

impl Estimate {
    /// `previous x (window - elapsed) + current x window`: the estimate times the window length.
    fn scaled(&self) -> u128 {
        self.previous * (self.window_ns - self.elapsed_ns) + self.current * self.window_ns
    }

    fn fits(&self, cost: u128) -> bool {
        self.scaled() + cost * self.window_ns <= self.limit * self.window_ns
    }

    fn room(&self) -> u64 {
        let room = (self.limit * self.window_ns).saturating_sub(self.scaled()) / self.window_ns;
        u64::try_from(room).unwrap_or(u64::MAX)
    }

    /// Time until `cost` fits, assuming no further traffic (`cost <= limit`, and it does not fit now).
    fn wait_for(&self, cost: u128) -> Duration {
        let to_window_end = self.window_ns - self.elapsed_ns;
        let wait_ns = if self.current + cost <= self.limit {
            // It fits within this window once enough of the previous window has slid out:
            // previous x (window - elapsed - t) <= (limit - current - cost) x window.
            let allowed_previous_ns = (self.limit - self.current - cost) * self.window_ns;
            to_window_end.saturating_sub(allowed_previous_ns / self.previous.max(1))
        } else {
            // Only in the next window, where this window's count becomes the sliding part:
            // current x (window - t) + cost x window <= limit x window.
            let allowed_ns = (self.limit - cost) * self.window_ns / self.current.max(1);
            to_window_end + (self.window_ns - allowed_ns.min(self.window_ns))
        };
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }
}
