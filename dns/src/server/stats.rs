//! The server's counters: plain relaxed atomics, read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queries: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) local_answers: AtomicU64,
    pub(crate) resolutions: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) servfail: AtomicU64,
    pub(crate) formerr: AtomicU64,
    pub(crate) notimp: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) badvers: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) tcp_rejected: AtomicU64,
}

/// The server's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerStatsSnapshot {
    /// Messages received (UDP datagrams and TCP frames).
    pub queries: u64,
    /// Answered from the packet cache.
    pub cache_hits: u64,
    /// Not in the packet cache: handed to the engine.
    pub cache_misses: u64,
    /// Special-use names (localhost, invalid, private reverse zones) answered locally.
    pub local_answers: u64,
    /// Resolutions the engine ran (one per coalesced group).
    pub resolutions: u64,
    /// Misses that joined a resolution already running for the same question.
    pub coalesced: u64,
    /// Misses answered SERVFAIL because the resolution or pending bound was reached.
    pub overloaded: u64,
    /// Answers sent with SERVFAIL after a resolution (overload included).
    pub servfail: u64,
    /// FORMERR replies (malformed queries).
    pub formerr: u64,
    /// NOTIMP replies (other opcodes, ANY, OPT).
    pub notimp: u64,
    /// REFUSED replies (ACL, zone transfers, classes other than IN).
    pub refused: u64,
    /// BADVERS replies (EDNS versions other than 0).
    pub badvers: u64,
    /// Answers cut to the header and question with TC set.
    pub truncated: u64,
    /// Messages not answered at all (shorter than a header, or responses).
    pub dropped: u64,
    /// TCP connections closed on accept because the bound was reached.
    pub tcp_rejected: u64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ServerStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStatsSnapshot {
            queries: read(&self.queries),
            cache_hits: read(&self.cache_hits),
            cache_misses: read(&self.cache_misses),
            local_answers: read(&self.local_answers),
            resolutions: read(&self.resolutions),
            coalesced: read(&self.coalesced),
            overloaded: read(&self.overloaded),
            servfail: read(&self.servfail),
            formerr: read(&self.formerr),
            notimp: read(&self.notimp),
            refused: read(&self.refused),
            badvers: read(&self.badvers),
            truncated: read(&self.truncated),
            dropped: read(&self.dropped),
            tcp_rejected: read(&self.tcp_rejected),
        }
    }
}
