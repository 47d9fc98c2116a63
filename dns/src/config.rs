//! The resolver's configuration: a plain serde struct, validated once when the resolver is built.
//!
//! The CLI reads TOML into this struct; the library never parses configuration text itself.
//! Every key, its default and an example are listed in `docs/dns-config.md`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How much of the query name is shown to servers above the final zone (RFC 9156).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum QnameMinimisation {
    /// Send the full name to every server (classic resolvers).
    Off,
    /// Minimise; when a server answers a minimised query with NXDOMAIN or an error, ask it the
    /// full name instead (works around broken servers, as Unbound does by default).
    #[default]
    Relaxed,
    /// Minimise and believe every answer to a minimised query, NXDOMAIN included.
    Strict,
}

/// Settings of the iterative resolver engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Root hints file in `named.root` format; `None` uses IANA's hints built into the crate.
    pub root_hints_file: Option<PathBuf>,
    /// UDP/TCP port of authoritative servers. Only tests change it (they cannot bind port 53).
    pub authority_port: u16,
    /// Allow upstream addresses in 127.0.0.0/8 and ::1 (test hierarchies). Off by default.
    pub allow_loopback: bool,
    /// Allow upstream addresses in private ranges (RFC 1918, fc00::/7). Off by default.
    pub allow_private: bool,
    /// Query upstream servers over IPv4.
    pub do_ip4: bool,
    /// Query upstream servers over IPv6.
    pub do_ip6: bool,
    /// The longest wait for one upstream reply before trying another server, in milliseconds.
    /// Servers with replies on record get less: their smoothed RTT plus four RTT variations,
    /// at least 50 ms, doubled per timeout since their last reply, capped at this value.
    pub query_timeout_ms: u64,
    /// Wall-time budget of one whole resolution, nested work included, in milliseconds.
    pub resolution_timeout_ms: u64,
    /// Upstream queries one resolution may send in total, nested work included.
    pub max_queries_per_resolution: u32,
    /// How deep nested work (resolving a glueless NS name, which may need its own) may go.
    pub max_depth: u8,
    /// CNAME and DNAME links followed before giving up.
    pub max_cname_chain: u8,
    /// EDNS(0) UDP payload size we advertise (the DNS flag day 2020 value is 1232).
    pub edns_buffer_size: u16,
    /// QNAME minimisation mode.
    pub qname_minimisation: QnameMinimisation,
    /// Extra queries minimisation may add to one resolution (RFC 9156 suggests 10).
    pub max_minimisation_queries: u8,
    /// Randomise the case of query names (draft-vixie-dnsext-dns0x20) as extra spoofing defence.
    pub use_0x20: bool,
    /// Most entries (RRsets plus negative entries) the cache holds before evicting.
    pub cache_max_entries: usize,
    /// Upper bound on any cached TTL, in seconds.
    pub cache_max_ttl: u32,
    /// Upper bound on negative-answer TTLs, in seconds (RFC 2308 suggests at most 3 hours;
    /// we allow at most 3600).
    pub negative_max_ttl: u32,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            root_hints_file: None,
            authority_port: 53,
            allow_loopback: false,
            allow_private: false,
            do_ip4: true,
            do_ip6: true,
            query_timeout_ms: 1_500,
            resolution_timeout_ms: 10_000,
            max_queries_per_resolution: 100,
            max_depth: 5,
            max_cname_chain: 12,
            edns_buffer_size: 1232,
            qname_minimisation: QnameMinimisation::Relaxed,
            max_minimisation_queries: 10,
            use_0x20: false,
            cache_max_entries: 100_000,
            cache_max_ttl: 86_400,
            negative_max_ttl: 3_600,
        }
    }
}

impl ResolverConfig {
    /// A configuration for a test hierarchy on loopback: loopback allowed, authorities on `port`.
    pub fn for_loopback_hierarchy(port: u16) -> Self {
        Self {
            authority_port: port,
            allow_loopback: true,
            do_ip6: false,
            query_timeout_ms: 300,
            resolution_timeout_ms: 5_000,
            ..Self::default()
        }
    }

    /// Check every field; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
            ConfigError::Invalid {
                field,
                value: value.to_string(),
                reason,
            }
        }
        if self.authority_port == 0 {
            return Err(bad(
                "authority_port",
                0,
                "must be a port between 1 and 65535",
            ));
        }
        if !self.do_ip4 && !self.do_ip6 {
            return Err(bad(
                "do_ip4",
                false,
                "do_ip4 and do_ip6 cannot both be false",
            ));
        }
        if !(10..=60_000).contains(&self.query_timeout_ms) {
            return Err(bad(
                "query_timeout_ms",
                self.query_timeout_ms,
                "must be between 10 and 60000",
            ));
        }
        if self.resolution_timeout_ms < self.query_timeout_ms
            || self.resolution_timeout_ms > 600_000
        {
            return Err(bad(
                "resolution_timeout_ms",
                self.resolution_timeout_ms,
                "must be at least query_timeout_ms and at most 600000",
            ));
        }
        if !(1..=10_000).contains(&self.max_queries_per_resolution) {
            return Err(bad(
                "max_queries_per_resolution",
                self.max_queries_per_resolution,
                "must be between 1 and 10000",
            ));
        }
        if !(1..=16).contains(&self.max_depth) {
            return Err(bad("max_depth", self.max_depth, "must be between 1 and 16"));
        }
        if !(1..=64).contains(&self.max_cname_chain) {
            return Err(bad(
                "max_cname_chain",
                self.max_cname_chain,
                "must be between 1 and 64",
            ));
        }
        if !(512..=4096).contains(&self.edns_buffer_size) {
            return Err(bad(
                "edns_buffer_size",
                self.edns_buffer_size,
                "must be between 512 and 4096",
            ));
        }
        if self.max_minimisation_queries > 64 {
            return Err(bad(
                "max_minimisation_queries",
                self.max_minimisation_queries,
                "must be at most 64",
            ));
        }
        if self.cache_max_entries == 0 {
            return Err(bad("cache_max_entries", 0, "must be at least 1"));
        }
        if self.cache_max_ttl == 0 {
            return Err(bad("cache_max_ttl", 0, "must be at least 1"));
        }
        if self.negative_max_ttl > 3_600 {
            return Err(bad(
                "negative_max_ttl",
                self.negative_max_ttl,
                "must be at most 3600 (RFC 2308 cap)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ResolverConfig::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let config = ResolverConfig {
            edns_buffer_size: 100,
            ..ResolverConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("edns_buffer_size"), "{message}");
        assert!(message.contains("100"), "{message}");
        let config = ResolverConfig {
            negative_max_ttl: 7200,
            ..ResolverConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("negative_max_ttl")
        );
    }

    const DOC: &str = include_str!("../../docs/dns-config.md");

    #[test]
    fn every_key_is_documented() {
        let config = ResolverConfig {
            root_hints_file: Some("named.root".into()),
            ..ResolverConfig::default()
        };
        let table: toml::Table = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(table.len(), 18);
        for key in table.keys() {
            assert!(
                DOC.contains(&format!("| `{key}` |")),
                "docs/dns-config.md lacks `{key}`"
            );
        }
    }

    #[test]
    fn documented_example_is_valid() {
        #[derive(Deserialize)]
        struct File {
            resolver: ResolverConfig,
        }
        let example = DOC
            .split("```toml")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let file: File = toml::from_str(example).unwrap();
        file.resolver.validate().unwrap();
        assert_eq!(file.resolver.qname_minimisation, QnameMinimisation::Strict);
        assert_eq!(file.resolver.negative_max_ttl, 900);
    }
}
