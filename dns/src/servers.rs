//! Choosing which authoritative server to ask: smoothed RTT per address (Unbound's infra cache),
//! exploration of unknown servers, and backoff for dead or lame ones.
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
/// Most addresses remembered (oldest-updated forgotten first when full).
const MAX_TRACKED_SERVERS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct ServerState {
    srtt_ms: f64,
    failures: u32,
    avoid_until: Option<Instant>,
    updated: Instant,
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
        let scored: Vec<(IpAddr, f64, Option<Instant>)> = candidates
            .iter()
            .map(|ip| match servers.get(ip) {
                Some(state) => (
                    *ip,
                    state.srtt_ms,
                    state.avoid_until.filter(|until| *until > now),
                ),
                None => (*ip, UNKNOWN_RTT_MS, None),
            })
            .collect();
        drop(servers);
        let usable: Vec<&(IpAddr, f64, Option<Instant>)> = scored
            .iter()
            .filter(|(_, _, avoid)| avoid.is_none())
            .collect();
        if usable.is_empty() {
            return scored
                .iter()
                .min_by_key(|(_, _, avoid)| *avoid)
                .map(|(ip, _, _)| *ip);
        }
        let best = usable
            .iter()
            .map(|(_, rtt, _)| *rtt)
            .fold(f64::INFINITY, f64::min);
        let band: Vec<IpAddr> = usable
            .iter()
            .filter(|(_, rtt, _)| *rtt <= best + SELECTION_BAND_MS)
            .map(|(ip, _, _)| *ip)
            .collect();
        let index = rand::rng().random_range(0..band.len());
        band.get(index).copied()
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
            state.failures = 0;
            state.avoid_until = None;
        });
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
}
