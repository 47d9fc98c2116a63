//! A recursive caching DNS resolver, written on hickory-proto's wire format.
//!
//! The engine iterates from the root hints: it follows referrals, chases CNAME and DNAME
//! chains, resolves glueless NS names, scrubs every reply to the answering server's bailiwick
//! before using or caching it, and minimises query names (RFC 9156). Results are cached with
//! absolute expiry and handed back with decremented TTLs.
//!
//! [`DnsServer`] serves the engine to clients over UDP and TCP (`edgekit dns serve`): packet-cache
//! hits are answered from wire bytes, misses share one resolution per question.
//!
//! ```
//! use edgekit_dns::{ResolverConfig, Resolver, RootHints};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // IANA's root hints are built in; a test hierarchy would pass its own.
//! let hints = RootHints::iana();
//! assert_eq!(hints.servers().len(), 13);
//!
//! let config = ResolverConfig::default();
//! config.validate()?;
//! let resolver = Resolver::new(config)?;
//! assert!(resolver.cache().is_empty());
//! // resolver.resolve(&name, RecordType::A).await? walks the tree from the root.
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod cache;
mod cache_key;
mod clock;
mod config;
mod error;
mod name_hash;
mod resolver;
mod root_hints;
mod scrub;
mod servers;
mod shared_exchange;
mod stats;
mod trace;
mod transport;
mod wire;

/// The wire-format crate we build on, re-exported so users get exactly our version.
pub use hickory_proto as proto;

pub use cache::{Cache, CacheAnswer, Rank};
pub use clock::Clock;
pub use config::{QnameMinimisation, ResolverConfig};
pub use error::{ConfigError, ResolveError, RootHintsError};
pub use resolver::{FailedResolution, Resolution, Resolver};
pub use root_hints::{IANA_NAMED_ROOT, RootHints, RootServer};
pub use stats::StatsSnapshot;
pub use trace::{StepOutcome, TraceStep, rcode_mnemonic};
pub use wire::{
    MAX_MESSAGE_LEN, WireError, build_query, dname_rdata, dname_target, frame_tcp, parse_message,
    split_tcp_frames,
};

pub mod bench;
mod server;
pub use server::{
    DnsServer, Network, NetworkParseError, RequestPathViolation, ServerConfig, ServerConfigError,
    ServerError, ServerStatsSnapshot, check_request_path,
};
mod packet_cache;
pub use packet_cache::{
    CacheInsertError, ManualClock, MillisClock, MonotonicClock, PacketCache, PacketCacheConfig,
    PacketCacheConfigError, ParsedQuery, QueryEdns, QueryParseError, parse_query,
};
