//! The server's settings (the `[server]` table of the config file) and its access control list.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A server setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server setting `{field}` = {value}: {reason}")]
pub struct ServerConfigError {
    /// The config key.
    pub field: &'static str,
    /// The value found.
    pub value: String,
    /// What is allowed.
    pub reason: &'static str,
}

/// How the server listens and what it bounds. Validated once by [`ServerConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Addresses to serve UDP and TCP on (port 0: the OS picks one, the same for both).
    pub listen: Vec<SocketAddr>,
    /// UDP sockets per listen address, bound with SO_REUSEPORT so the kernel spreads clients
    /// over them (one per worker thread).
    pub udp_sockets_per_address: usize,
    /// Clients allowed to query. `None`: loopback plus the /24 (IPv4) or /64 (IPv6) of each
    /// specific listen address; everyone else gets REFUSED.
    pub allow: Option<Vec<Network>>,
    /// Upstream resolutions running at once; a miss beyond this is answered SERVFAIL at once
    /// rather than queued.
    pub max_concurrent_resolutions: usize,
    /// Client queries waiting on resolutions (coalesced ones included); beyond it, SERVFAIL.
    pub max_pending_queries: usize,
    /// Open TCP connections; a connection beyond this is closed on accept.
    pub max_tcp_connections: usize,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout_ms: u64,
    /// Largest UDP answer we send, whatever the client advertises (RFC 6891, DNS flag day 2020).
    pub max_udp_payload: u16,
    /// Bytes the wire-format answer cache may hold.
    pub packet_cache_bytes: usize,
    /// A cached answer asked for with less than this percentage of its lifetime left is
    /// refreshed in the background (prefetch; Unbound uses 10). 0 turns prefetch off.
    pub prefetch_percent: u8,
    /// Serve-stale (RFC 8767): for how long after expiry an answer may still be served when
    /// resolving it again fails or is slow. 0 (the default, as Unbound's) turns it off.
    pub serve_stale_max_seconds: u32,
    /// With serve-stale on, how long a client waits for a fresh answer before it gets a stale
    /// one (RFC 8767 suggests 1.8 s).
    pub stale_client_timeout_ms: u64,
    /// Queries per second one client (an IPv4 address, or an IPv6 /64) may send; past it (and
    /// the burst) its queries are dropped unanswered. 0 (the default) turns the limit off.
    pub rate_limit_per_client: u32,
    /// Queries a client may send at once before the rate applies (0: the same as the rate).
    pub rate_limit_burst: u32,
    /// Where to serve `GET /metrics` (Prometheus text format); off when unset. Not subject to
    /// `allow`: bind it to an admin-only address.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            udp_sockets_per_address: 1,
            allow: None,
            max_concurrent_resolutions: 1024,
            max_pending_queries: 8192,
            max_tcp_connections: 256,
            tcp_idle_timeout_ms: 10_000,
            max_udp_payload: 1232,
            packet_cache_bytes: 64 << 20,
            metrics_listen: None,
            prefetch_percent: 10,
            serve_stale_max_seconds: 0,
            stale_client_timeout_ms: 1800,
            rate_limit_per_client: 0,
            rate_limit_burst: 0,
        }
    }
}

impl ServerConfig {
    /// Check every field once, at load.
    pub fn validate(&self) -> Result<(), ServerConfigError> {
        let invalid = |field, value: String, reason| {
            Err(ServerConfigError {
                field,
                value,
                reason,
            })
        };
        if self.listen.is_empty() {
            return invalid("listen", "[]".into(), "at least one address is needed");
        }
        if !(1..=256).contains(&self.udp_sockets_per_address) {
            return invalid(
                "udp_sockets_per_address",
                self.udp_sockets_per_address.to_string(),
                "must be 1 to 256",
            );
        }
        if self.max_concurrent_resolutions == 0 {
            return invalid(
                "max_concurrent_resolutions",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.max_pending_queries < self.max_concurrent_resolutions {
            return invalid(
                "max_pending_queries",
                self.max_pending_queries.to_string(),
                "must be at least max_concurrent_resolutions",
            );
        }
        if self.max_tcp_connections == 0 {
            return invalid("max_tcp_connections", "0".into(), "must be at least 1");
        }
        if !(100..=600_000).contains(&self.tcp_idle_timeout_ms) {
            return invalid(
                "tcp_idle_timeout_ms",
                self.tcp_idle_timeout_ms.to_string(),
                "must be 100 to 600000",
            );
        }
        if self.max_udp_payload < 512 {
            return invalid(
                "max_udp_payload",
                self.max_udp_payload.to_string(),
                "must be at least 512",
            );
        }
        if self.serve_stale_max_seconds > 7 * 86_400 {
            return invalid(
                "serve_stale_max_seconds",
                self.serve_stale_max_seconds.to_string(),
                "must be at most 604800 (7 days)",
            );
        }
        if !(50..=30_000).contains(&self.stale_client_timeout_ms) {
            return invalid(
                "stale_client_timeout_ms",
                self.stale_client_timeout_ms.to_string(),
                "must be 50 to 30000",
            );
        }
        if self.prefetch_percent > 90 {
            return invalid(
                "prefetch_percent",
                self.prefetch_percent.to_string(),
                "must be 0 (off) to 90",
            );
        }
        if self.packet_cache_bytes < 64 << 10 {
            return invalid(
                "packet_cache_bytes",
                self.packet_cache_bytes.to_string(),
                "must be at least 65536",
            );
        }
        Ok(())
    }

    /// The networks allowed to query: the configured list, or the default described on
    /// [`ServerConfig::allow`].
    pub fn effective_acl(&self) -> Vec<Network> {
        if let Some(allow) = &self.allow {
            return allow.clone();
        }
        let mut networks = vec![
            Network::new(IpAddr::from([127, 0, 0, 0]), 8),
            Network::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128),
        ];
        for address in &self.listen {
            let ip = address.ip();
            if ip.is_unspecified() || ip.is_loopback() {
                continue;
            }
            let prefix = if ip.is_ipv4() { 24 } else { 64 };
            networks.push(Network::new(ip, prefix));
        }
        networks
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// Text that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a network in CIDR notation: {reason}")]
pub struct NetworkParseError {
    text: String,
    reason: &'static str,
}

impl Network {
    /// The network of `address` with `prefix` bits (capped at the address length).
    pub fn new(address: IpAddr, prefix: u8) -> Self {
        let max = if address.is_ipv4() { 32 } else { 128 };
        Self {
            address,
            prefix: prefix.min(max),
        }
    }

    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = NetworkParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| NetworkParseError {
            text: text.to_string(),
            reason,
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error("bad address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| error("prefix length out of range"))?,
            None => max,
        };
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_what_they_should() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let host: Network = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!(!host.contains("::2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nope/8".parse::<Network>().is_err());
    }

    #[test]
    fn default_acl_is_loopback_and_listen_networks() {
        let config = ServerConfig {
            listen: vec!["192.0.2.10:53".parse().unwrap()],
            ..ServerConfig::default()
        };
        let acl = config.effective_acl();
        let allowed = |ip: &str| acl.iter().any(|net| net.contains(ip.parse().unwrap()));
        assert!(allowed("127.0.0.1"));
        assert!(allowed("192.0.2.77"));
        assert!(!allowed("198.51.100.1"));
    }

    #[test]
    fn validation_names_the_field() {
        let config = ServerConfig {
            max_udp_payload: 100,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field, "max_udp_payload");
        assert!(ServerConfig::default().validate().is_ok());
    }
}
