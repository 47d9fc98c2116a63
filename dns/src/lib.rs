//! A recursive caching DNS resolver and server, written on hickory-proto's wire format.
//!
//! (Being built: see issue #5.)
#![warn(missing_docs)]

/// The wire-format crate we build on, re-exported so users get exactly our version.
pub use hickory_proto as proto;

pub mod bench;
mod packet_cache;
pub use packet_cache::{
    CacheInsertError, Clock, ManualClock, MonotonicClock, PacketCache, PacketCacheConfig,
    PacketCacheConfigError, ParsedQuery, QueryEdns, QueryParseError, parse_query,
};
