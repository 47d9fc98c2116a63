//! Per-client rate limit: a token bucket per IPv4 address or IPv6 /64, in sharded maps whose
//! size is bounded.
//!
//! A full shard forgets the clients whose buckets have refilled (to them a fresh bucket is the
//! same) and, if that frees less than an eighth of it, those with the most tokens left, down to
//! seven eighths: the clients being limited are forgotten last. Clearing the whole shard, as
//! this did before, let anyone who spoofed a few thousand one-off sources into a limited
//! client's shard hand that client a fresh burst; now one-off sources only push out each other,
//! and displacing a limited client takes sources that are themselves limited harder. Each
//! clean-up frees an eighth of the shard or more, so its cost is spread over that many new
//! clients.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::{IpAddr, Ipv6Addr},
    time::Instant,
};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Clients remembered per shard.
const MAX_CLIENTS_PER_SHARD: usize = 8192;
/// Clients a clean-up leaves in a shard, at most.
const CLIENTS_AFTER_CLEAN_UP: usize = MAX_CLIENTS_PER_SHARD / 8 * 7;

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
        self.allow_at(client, Instant::now())
    }

    fn allow_at(&self, client: IpAddr, now: Instant) -> bool {
        let client = limited_unit(client);
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut clients = shard.lock();
        if clients.len() >= MAX_CLIENTS_PER_SHARD && !clients.contains_key(&client) {
            self.clean_up(&mut clients, now);
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }

    fn clean_up(&self, clients: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let mut by_tokens: Vec<(f64, IpAddr)> = clients
            .iter()
            .map(|(client, bucket)| (self.refilled(bucket, now), *client))
            .collect();
        let refilled = by_tokens
            .iter()
            .filter(|(tokens, _)| *tokens >= self.burst)
            .count();
        let forget = refilled.max(clients.len().saturating_sub(CLIENTS_AFTER_CLEAN_UP));
        if forget < by_tokens.len() {
            // The `forget` clients with the most tokens first, in no particular order.
            by_tokens.select_nth_unstable_by(forget, |a, b| b.0.total_cmp(&a.0));
        }
        for (_, client) in &by_tokens[..forget] {
            clients.remove(client);
        }
    }
}

/// What one bucket covers: an IPv4 address, or an IPv6 /64 (one host's or one site's
/// network: a client given a /64 could otherwise take a fresh bucket per address).
fn limited_unit(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
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

    #[test]
    fn an_ipv6_slash_64_shares_one_bucket() {
        let limiter = RateLimiter::new(1, 2);
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        assert!(limiter.allow(host(1)));
        assert!(limiter.allow(host(2)));
        assert!(
            !limiter.allow(host(3)),
            "a third address of the /64 gets no fresh burst"
        );
        let next_net = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(limiter.allow(next_net));
        // A v4-mapped address is the IPv4 client it maps.
        let v4 = IpAddr::from([192, 0, 2, 9]);
        let mapped = IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0209]);
        assert!(limiter.allow(v4) && limiter.allow(mapped));
        assert!(!limiter.allow(v4));
    }

    #[test]
    fn a_flood_of_new_sources_does_not_give_a_limited_client_a_fresh_burst() {
        let limiter = RateLimiter::new(1, 2);
        let start = Instant::now();
        let victim = IpAddr::from([192, 0, 2, 1]);
        while limiter.allow_at(victim, start) {}
        // Over the next 1.9 s, one query each from enough spoofed sources to fill every shard
        // three times over, while the victim keeps asking (as a client being limited does).
        // It earns 1.9 queries in that time; each time it was forgotten would give it 2 more.
        let sources = (SHARDS * MAX_CLIENTS_PER_SHARD * 3) as u32;
        let step = std::time::Duration::from_millis(1900) / sources;
        let mut victim_allowed = 0;
        for n in 0..sources {
            let now = start + step * n;
            let source = IpAddr::from((0x0a00_0000 | n).to_be_bytes());
            assert!(limiter.allow_at(source, now));
            if n % 64 == 0 {
                while limiter.allow_at(victim, now) {
                    victim_allowed += 1;
                }
            }
        }
        assert!(
            limiter
                .shards
                .iter()
                .all(|shard| shard.lock().len() <= MAX_CLIENTS_PER_SHARD)
        );
        assert!(
            victim_allowed <= 2,
            "the flood made the limiter forget the client it was limiting: {victim_allowed} \
             queries passed where its rate allowed 1"
        );
    }
}
