//! Choosing which authoritative server to ask: smoothed RTT per address (Unbound's infra cache),
//! exploration of unknown servers, and backoff for dead or lame ones; and how long to wait for
//! each one's reply (its smoothed RTT plus four times the RTT variation, as RFC 6298 and
//! Unbound's infra cache do).
//!
//! Also the upstream address policy: loopback, private, link-local and unspecified addresses are
//! refused unless the configuration allows them.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rand::Rng;

/// RTT assumed for a server never asked (Unbound uses 376 ms): low enough to get explored.
const UNKNOWN_RTT_MS: f64 = 376.0;
/// Servers within this much of the best are picked at random, so the second-best gets probed.
const SELECTION_BAND_MS: f64 = 400.0;
/// Longest a misbehaving server is avoided.
const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// Shortest query timeout, however fast a server has been (Unbound's `RTT_MIN_TIMEOUT`): below
/// this, ordinary scheduling jitter would read as a lost reply.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_millis(50);
/// Most addresses remembered (oldest-updated forgotten first when full).
const MAX_TRACKED_SERVERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct ServerState {
    /// Smoothed RTT for choosing servers; a failure raises it, so failing servers look slow.
    srtt_ms: f64,
    /// RTT measured from replies only (a failure does not touch it): what query timeouts use.
    measured: Option<RttEstimate>,
    failures: u32,
    avoid_until: Option<Instant>,
    updated: Instant,
}

/// RFC 6298's smoothed RTT and RTT variation, from real replies.
#[derive(Debug, Clone, Copy)]
struct RttEstimate {
    srtt_ms: f64,
    rttvar_ms: f64,
}

impl RttEstimate {
    fn first(sample_ms: f64) -> Self {
        Self {
            srtt_ms: sample_ms,
            rttvar_ms: sample_ms / 2.0,
        }
    }

    fn update(self, sample_ms: f64) -> Self {
        Self {
            srtt_ms: 0.875 * self.srtt_ms + 0.125 * sample_ms,
            rttvar_ms: 0.75 * self.rttvar_ms + 0.25 * (self.srtt_ms - sample_ms).abs(),
        }
    }

    fn timeout_ms(self) -> f64 {
        self.srtt_ms + 4.0 * self.rttvar_ms
    }
}

/// Per-address health, shared by all resolutions.
#[derive(Debug, Default)]
pub(crate) struct ServerSelection {
    servers: Mutex<HashMap<IpAddr, ServerState>>,
}

impl ServerSelection {
    /// Pick one of `candidates` (non-empty): the lowest smoothed RTT, randomised within a band,
    /// preferring servers not in backoff (if all are, the one whose backoff ends first).
    pub(crate) fn choose(&self, candidates: &[IpAddr]) -> Option<IpAddr> {
        let now = Instant::now();
        let servers = self.servers.lock();
        // No allocation: this runs once per upstream query.
        let score = |ip: &IpAddr| match servers.get(ip) {
            Some(state) => (
                state.srtt_ms,
                state.avoid_until.filter(|until| *until > now),
            ),
            None => (UNKNOWN_RTT_MS, None),
        };
        let best = candidates
            .iter()
            .map(score)
            .filter(|(_, avoid)| avoid.is_none())
            .map(|(rtt, _)| rtt)
            .reduce(f64::min);
        let Some(best) = best else {
            // Every candidate is in backoff: the one whose backoff ends first.
            return candidates.iter().min_by_key(|ip| score(ip).1).copied();
        };
        let in_band = |ip: &&IpAddr| {
            let (rtt, avoid) = score(ip);
            avoid.is_none() && rtt <= best + SELECTION_BAND_MS
        };
        let band = candidates.iter().filter(in_band).count();
        let index = rand::rng().random_range(0..band);
        candidates.iter().filter(in_band).nth(index).copied()
    }

    /// How long to wait for `ip`'s reply: its smoothed RTT plus four RTT variations, at least
    /// [`MIN_QUERY_TIMEOUT`], doubled for each failure since its last reply, and never more than
    /// `max` (the configured query timeout). A server never heard from gets `max`: nothing is
    /// known about how far away it is.
    pub(crate) fn query_timeout(&self, ip: IpAddr, max: Duration) -> Duration {
        let servers = self.servers.lock();
        let Some(state) = servers.get(&ip) else {
            return max;
        };
        let Some(measured) = state.measured else {
            return max;
        };
        let doublings = state.failures.min(16);
        // Doubled from the floor at least, so each retry of a fast server that went quiet
        // waits longer than the last.
        let floor_ms = MIN_QUERY_TIMEOUT.as_secs_f64() * 1000.0;
        let timeout_ms = measured.timeout_ms().max(floor_ms) * f64::from(1u32 << doublings);
        // Bounded above by `max` before converting, so the f64 is finite and in range.
        let timeout = Duration::from_secs_f64((timeout_ms / 1000.0).min(max.as_secs_f64()));
        timeout.max(MIN_QUERY_TIMEOUT).min(max)
    }

    /// A reply arrived after `rtt`: fold it into the smoothed RTT (RFC 6298 weights) and clear
    /// any backoff.
    pub(crate) fn record_reply(&self, ip: IpAddr, rtt: Duration) {
        let sample = rtt.as_secs_f64() * 1000.0;
        self.update(ip, |state| {
            state.srtt_ms = if state.failures == 0 && state.srtt_ms == UNKNOWN_RTT_MS {
                sample
            } else {
                0.875 * state.srtt_ms + 0.125 * sample
            };
            state.measured = Some(match state.measured {
                Some(estimate) => estimate.update(sample),
                None => RttEstimate::first(sample),
            });
            state.failures = 0;
            state.avoid_until = None;
        });
    }

    /// Failures since the server's last reply, counted over every resolution that asked it.
    pub(crate) fn failures_since_reply(&self, ip: IpAddr) -> u32 {
        self.servers
            .lock()
            .get(&ip)
            .map_or(0, |state| state.failures)
    }

    /// No reply, or a lame/refusing answer: back off exponentially (5 s, 10 s, 20 s ... 120 s) and
    /// make the server look slow so others are preferred.
    pub(crate) fn record_failure(&self, ip: IpAddr, timeout: Duration) {
        self.update(ip, |state| {
            state.failures = state.failures.saturating_add(1);
            let backoff = Duration::from_secs(5u64 << state.failures.min(6).saturating_sub(1))
                .min(MAX_BACKOFF);
            state.avoid_until = Some(Instant::now() + backoff);
            state.srtt_ms = state.srtt_ms.max(timeout.as_secs_f64() * 1000.0);
        });
    }

    fn update(&self, ip: IpAddr, change: impl FnOnce(&mut ServerState)) {
        let now = Instant::now();
        let mut servers = self.servers.lock();
        if servers.len() >= MAX_TRACKED_SERVERS
            && !servers.contains_key(&ip)
            && let Some(oldest) = servers
                .iter()
                .min_by_key(|(_, state)| state.updated)
                .map(|(ip, _)| *ip)
        {
            servers.remove(&oldest);
        }
        let state = servers.entry(ip).or_insert(ServerState {
            srtt_ms: UNKNOWN_RTT_MS,
            measured: None,
            failures: 0,
            avoid_until: None,
            updated: now,
        });
        state.updated = now;
        change(state);
    }
}

/// Which upstream addresses we may send to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddressPolicy {
    pub(crate) allow_loopback: bool,
    pub(crate) allow_private: bool,
    pub(crate) do_ip4: bool,
    pub(crate) do_ip6: bool,
}

impl AddressPolicy {
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        match ip {
            IpAddr::V4(v4) => {
                self.do_ip4
                    && !v4.is_broadcast()
                    && !v4.is_link_local()
                    && (self.allow_loopback || !v4.is_loopback())
                    && (self.allow_private || !v4.is_private())
            }
            IpAddr::V6(v6) => {
                if let Some(mapped) = v6.to_ipv4_mapped() {
                    return self.permits(IpAddr::V4(mapped));
                }
                let segments = v6.segments();
                let link_local = segments[0] & 0xffc0 == 0xfe80;
                let unique_local = segments[0] & 0xfe00 == 0xfc00;
                self.do_ip6
                    && !link_local
                    && (self.allow_loopback || !v6.is_loopback())
                    && (self.allow_private || !unique_local)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_local_ranges() {
        let strict = AddressPolicy {
            allow_loopback: false,
            allow_private: false,
            do_ip4: true,
            do_ip6: true,
        };
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!strict.permits(ip(refused)), "{refused} must be refused");
        }
        for allowed in ["198.41.0.4", "2001:503:ba3e::2:30"] {
            assert!(strict.permits(ip(allowed)), "{allowed} must be allowed");
        }
        let loopback_ok = AddressPolicy {
            allow_loopback: true,
            ..strict
        };
        assert!(loopback_ok.permits(ip("127.0.0.9")));
        assert!(!loopback_ok.permits(ip("10.0.0.1")));
        let no_v6 = AddressPolicy {
            do_ip6: false,
            ..strict
        };
        assert!(!no_v6.permits(ip("2001:503:ba3e::2:30")));
    }

    #[test]
    fn failing_server_is_avoided_while_another_is_usable() {
        let selection = ServerSelection::default();
        let (dead, alive) = (ip("192.0.2.1"), ip("192.0.2.2"));
        selection.record_failure(dead, Duration::from_millis(500));
        selection.record_reply(alive, Duration::from_millis(5));
        for _ in 0..50 {
            assert_eq!(selection.choose(&[dead, alive]), Some(alive));
        }
        // When every candidate is backed off, one is still probed rather than giving up.
        assert_eq!(selection.choose(&[dead]), Some(dead));
    }

    #[test]
    fn choice_is_random_within_the_band_of_the_fastest() {
        let selection = ServerSelection::default();
        let (fast, close, slow) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        selection.record_reply(fast, Duration::from_millis(5));
        selection.record_reply(
            close,
            Duration::from_millis(5) + Duration::from_secs_f64(SELECTION_BAND_MS / 2000.0),
        );
        selection.record_reply(
            slow,
            Duration::from_millis(5) + Duration::from_secs_f64(SELECTION_BAND_MS * 2.0 / 1000.0),
        );
        let mut chosen = HashMap::new();
        for _ in 0..200 {
            let ip = selection.choose(&[slow, close, fast]).unwrap();
            *chosen.entry(ip).or_insert(0) += 1;
        }
        assert!(chosen.get(&fast).is_some_and(|n| *n > 20), "{chosen:?}");
        assert!(chosen.get(&close).is_some_and(|n| *n > 20), "{chosen:?}");
        assert_eq!(chosen.get(&slow), None, "{chosen:?}");
        assert_eq!(selection.choose(&[]), None);
    }

    #[test]
    fn when_all_are_backed_off_the_first_to_recover_is_probed() {
        let selection = ServerSelection::default();
        let (twice, once) = (ip("192.0.2.1"), ip("192.0.2.2"));
        selection.record_failure(twice, Duration::from_millis(500));
        selection.record_failure(twice, Duration::from_millis(500));
        selection.record_failure(once, Duration::from_millis(500));
        for _ in 0..20 {
            assert_eq!(selection.choose(&[twice, once]), Some(once));
        }
    }

    #[test]
    fn query_timeout_follows_the_measured_rtt_within_bounds() {
        let selection = ServerSelection::default();
        let max = Duration::from_millis(1_500);
        let server = ip("192.0.2.7");
        // Never heard from: the configured maximum.
        assert_eq!(selection.query_timeout(server, max), max);
        // One 10 ms reply: 10 + 4 * 5 = 30 ms, raised to the 50 ms floor.
        selection.record_reply(server, Duration::from_millis(10));
        assert_eq!(selection.query_timeout(server, max), MIN_QUERY_TIMEOUT);
        // A 200 ms reply: srtt 33.75, rttvar 51.25, so 238.75 ms.
        selection.record_reply(server, Duration::from_millis(200));
        let timeout = selection.query_timeout(server, max).as_secs_f64() * 1000.0;
        assert!((timeout - 238.75).abs() < 0.01, "{timeout}");
        // Each failure doubles it, up to the maximum.
        selection.record_failure(server, Duration::from_millis(239));
        let doubled = selection.query_timeout(server, max).as_secs_f64() * 1000.0;
        assert!((doubled - 477.5).abs() < 0.01, "{doubled}");
        // A server fast enough for the floor backs off from the floor.
        let quick = ip("192.0.2.9");
        selection.record_reply(quick, Duration::from_millis(1));
        selection.record_failure(quick, MIN_QUERY_TIMEOUT);
        assert_eq!(selection.query_timeout(quick, max), 2 * MIN_QUERY_TIMEOUT);
        for _ in 0..5 {
            selection.record_failure(server, max);
        }
        assert_eq!(selection.query_timeout(server, max), max);
        // A reply ends the doubling and the estimate keeps its history.
        selection.record_reply(server, Duration::from_millis(30));
        let after = selection.query_timeout(server, max);
        assert!(after < Duration::from_millis(300), "{after:?}");
        // A failure does not make a server never heard from look measured.
        let silent = ip("192.0.2.8");
        selection.record_failure(silent, max);
        assert_eq!(selection.query_timeout(silent, max), max);
    }
}
