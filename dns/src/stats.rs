//! Counters of what the resolver did, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    upstream_queries: AtomicU64,
    dropped_replies: AtomicU64,
    tcp_retries: AtomicU64,
    upstream_timeouts: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    refused_upstream_addresses: AtomicU64,
}

/// A copy of the resolver's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Queries sent to authoritative servers (UDP attempts; a TCP retry is counted separately).
    pub upstream_queries: u64,
    /// Replies dropped because source address, ID, question or case did not match, or they were
    /// malformed (RFC 5452's unwanted replies).
    pub dropped_replies: u64,
    /// Truncated UDP replies retried over TCP.
    pub tcp_retries: u64,
    /// Upstream queries that got no reply in time.
    pub upstream_timeouts: u64,
    /// Resolutions answered entirely from the cache.
    pub cache_hits: u64,
    /// Resolutions that needed at least one upstream query.
    pub cache_misses: u64,
    /// Upstream addresses skipped because they are loopback/private and not allowed.
    pub refused_upstream_addresses: u64,
}

macro_rules! adders {
    ($($method:ident => $field:ident),* $(,)?) => {
        impl Stats {
            $(pub(crate) fn $method(&self) { self.$field.fetch_add(1, Ordering::Relaxed); })*
        }
    };
}

adders! {
    add_upstream_query => upstream_queries,
    add_dropped_reply => dropped_replies,
    add_tcp_retry => tcp_retries,
    add_upstream_timeout => upstream_timeouts,
    add_cache_hit => cache_hits,
    add_cache_miss => cache_misses,
    add_refused_address => refused_upstream_addresses,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            upstream_queries: self.upstream_queries.load(Ordering::Relaxed),
            dropped_replies: self.dropped_replies.load(Ordering::Relaxed),
            tcp_retries: self.tcp_retries.load(Ordering::Relaxed),
            upstream_timeouts: self.upstream_timeouts.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            refused_upstream_addresses: self.refused_upstream_addresses.load(Ordering::Relaxed),
        }
    }
}
