//! The server's counters (prometheus-client counters: relaxed atomics), read as a snapshot or
//! scraped from `GET /metrics`.

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Replies by rcode, labelled with the mnemonic.
type RcodeFamily = Family<Vec<(String, String)>, Counter>;

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) queries: Counter,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    pub(crate) local_answers: Counter,
    pub(crate) prefetches: Counter,
    pub(crate) stale_answers: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) resolutions: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) overloaded: Counter,
    pub(crate) servfail: Counter,
    pub(crate) formerr: Counter,
    pub(crate) notimp: Counter,
    pub(crate) refused: Counter,
    pub(crate) badvers: Counter,
    pub(crate) truncated: Counter,
    pub(crate) dropped: Counter,
    pub(crate) tcp_rejected: Counter,
    /// Upstream queries sent by the server's resolutions.
    pub(crate) upstream_queries: Counter,
    /// Replies sent, indexed by the header's 4-bit rcode.
    pub(crate) rcodes: [Counter; 16],
    rcode_family: RcodeFamily,
    /// How long resolutions (misses) took.
    pub(crate) resolution_seconds: Histogram,
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
    /// Answered locally: special-use names (localhost, invalid, private reverse zones) and ANY
    /// questions (RFC 8482 HINFO).
    pub local_answers: u64,
    /// Refreshes started because a cached answer was asked for close to its expiry.
    pub prefetches: u64,
    /// Expired answers served because resolving again failed or was slow (RFC 8767).
    pub stale_answers: u64,
    /// Queries dropped by the per-client rate limit.
    pub rate_limited: u64,
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
    /// NOTIMP replies (other opcodes, OPT as the question type).
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
    pub(crate) fn new() -> Self {
        let rcode_family = RcodeFamily::default();
        let rcodes = std::array::from_fn(|code| {
            let low = u8::try_from(code).unwrap_or(0);
            let name = crate::trace::rcode_mnemonic(hickory_proto::op::ResponseCode::from_low(low));
            rcode_family
                .get_or_create(&vec![("rcode".to_string(), name)])
                .clone()
        });
        Self {
            queries: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            local_answers: Counter::default(),
            prefetches: Counter::default(),
            stale_answers: Counter::default(),
            rate_limited: Counter::default(),
            resolutions: Counter::default(),
            coalesced: Counter::default(),
            overloaded: Counter::default(),
            servfail: Counter::default(),
            formerr: Counter::default(),
            notimp: Counter::default(),
            refused: Counter::default(),
            badvers: Counter::default(),
            truncated: Counter::default(),
            dropped: Counter::default(),
            tcp_rejected: Counter::default(),
            upstream_queries: Counter::default(),
            rcodes,
            rcode_family,
            resolution_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        }
    }

    /// Every counter, under `edgekit_dns_`.
    pub(crate) fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("edgekit_dns");
        let counters: [(&str, &str, &Counter); 19] = [
            (
                "queries",
                "Messages received (UDP datagrams and TCP frames)",
                &self.queries,
            ),
            (
                "cache_hits",
                "Queries answered from the packet cache",
                &self.cache_hits,
            ),
            (
                "cache_misses",
                "Queries handed to the resolver engine",
                &self.cache_misses,
            ),
            (
                "local_answers",
                "Special-use names answered locally",
                &self.local_answers,
            ),
            (
                "rate_limited",
                "Queries dropped by the per-client rate limit",
                &self.rate_limited,
            ),
            (
                "stale_answers",
                "Expired answers served after a failed or slow resolution",
                &self.stale_answers,
            ),
            (
                "prefetches",
                "Refreshes of answers asked for close to expiry",
                &self.prefetches,
            ),
            (
                "resolutions",
                "Resolutions the engine ran",
                &self.resolutions,
            ),
            (
                "coalesced",
                "Misses that joined a running resolution",
                &self.coalesced,
            ),
            (
                "overloaded",
                "Misses refused with SERVFAIL by the bounds",
                &self.overloaded,
            ),
            (
                "servfail",
                "SERVFAIL answers after resolution",
                &self.servfail,
            ),
            ("formerr", "FORMERR replies", &self.formerr),
            ("notimp", "NOTIMP replies", &self.notimp),
            ("refused", "REFUSED replies", &self.refused),
            ("badvers", "BADVERS replies", &self.badvers),
            ("truncated", "Answers truncated with TC", &self.truncated),
            ("dropped", "Messages not answered", &self.dropped),
            (
                "tcp_rejected",
                "TCP connections closed by the bound",
                &self.tcp_rejected,
            ),
            (
                "upstream_queries",
                "Queries sent to authoritative servers",
                &self.upstream_queries,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "replies",
            "Replies sent, by rcode",
            self.rcode_family.clone(),
        );
        registry.register(
            "resolution_seconds",
            "Time to resolve a miss",
            self.resolution_seconds.clone(),
        );
        registry
    }

    pub(crate) fn bump(counter: &Counter) {
        counter.inc();
    }

    /// Count a reply by its rcode.
    pub(crate) fn count_reply(&self, reply: &[u8]) {
        if let Some(byte) = reply.get(3) {
            self.rcodes[usize::from(byte & 0x0F)].inc();
        }
    }

    pub(crate) fn snapshot(&self) -> ServerStatsSnapshot {
        let read = |counter: &Counter| counter.get();
        ServerStatsSnapshot {
            queries: read(&self.queries),
            cache_hits: read(&self.cache_hits),
            cache_misses: read(&self.cache_misses),
            local_answers: read(&self.local_answers),
            prefetches: read(&self.prefetches),
            stale_answers: read(&self.stale_answers),
            rate_limited: read(&self.rate_limited),
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
