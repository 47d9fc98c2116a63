//! Per-client-IP rate limit: a token bucket per address, in sharded maps whose size is bounded
//! (a shard that fills up forgets its clients, which only ever lets more queries through).

use std::{collections::HashMap, hash::BuildHasher, net::IpAddr, time::Instant};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Clients remembered per shard before it is cleared.
const MAX_CLIENTS_PER_SHARD: usize = 8192;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether `client` may have one more query now (and count it if so).
    pub(crate) fn allow(&self, client: IpAddr) -> bool {
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let now = Instant::now();
        let mut clients = shard.lock();
        if clients.len() >= MAX_CLIENTS_PER_SHARD && !clients.contains_key(&client) {
            clients.clear();
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_client() {
        let limiter = RateLimiter::new(1, 3);
        let a = IpAddr::from([192, 0, 2, 1]);
        let b = IpAddr::from([192, 0, 2, 2]);
        let passed = (0..10).filter(|_| limiter.allow(a)).count();
        assert_eq!(passed, 3);
        assert!(limiter.allow(b), "another client has its own bucket");
    }
}
