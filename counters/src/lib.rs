//! Sharded CRDT counters: count locally at memory speed, converge across nodes.
//!
//! Count locally — no lock and no shared cache line per increment, from any number of threads:
//!
//! ```
//! use edgekit_counters::Counter;
//!
//! let hits = Counter::new();
//! std::thread::scope(|scope| {
//!     for _ in 0..2 {
//!         let hits = hits.clone();
//!         scope.spawn(move || (0..1000).for_each(|_| hits.incr()));
//!     }
//! });
//! assert_eq!(hits.value(), 2000);
//! ```
//!
//! Merge two nodes' states — counts by key, shipped as versioned deltas:
//!
//! ```
//! use edgekit_counters::{CounterSet, Delta, NodeId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = CounterSet::<String>::new(NodeId::new("a")?);
//! let b = CounterSet::<String>::new(NodeId::new("b")?);
//! a.add("10.0.0.1", 5);
//! b.add("10.0.0.1", 2);
//!
//! // b sends everything (version 0 = full state); a sends only what changed since b last heard.
//! let bytes = b.delta_since(0).encode();
//! a.merge(&Delta::decode(&bytes)?);
//! b.merge(&a.delta_for(b.acknowledged(a.node_id())));
//! assert_eq!((a.get("10.0.0.1"), b.get("10.0.0.1")), (7, 7));
//! # Ok(())
//! # }
//! ```
//!
//! Rate limit per key — a sliding window that holds across nodes once their counters merge:
//!
//! ```
//! use std::time::Duration;
//! use edgekit_counters::{NodeId, RateLimit, RateLimiter};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::<String>::new(
//!     NodeId::new("edge-1")?,
//!     RateLimit::new(100, Duration::from_secs(60))?,
//! );
//! let decision = limiter.check("api-key-42", 1)?;
//! assert!(decision.allowed);
//! assert_eq!(decision.remaining, 99);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! - [`Counter`]: the local layer, LongAdder-style cache-padded cells chosen per thread.
//! - [`PnCount`] / [`PnState`]: one node's entry (increments and decrements apart, saturating
//!   `u64`) and the per-key CRDT state `NodeId -> PnCount`, merged by per-node maximum.
//! - [`CounterSet`]: millions of keyed counters in sharded maps; [`Delta`]s with versions for
//!   delta-state replication and a full-state fallback. Wire format: `docs/counters-format.md`.
//! - [`RateLimiter`]: sliding windows (current + weighted previous bucket) on a `CounterSet`,
//!   with an injectable [`Clock`].
#![warn(missing_docs)]

mod adder;
mod clock;
mod counter;
mod delta;
mod node;
mod node_id;
mod pn;
mod probe_table;
mod ratelimit;
mod set;

pub use clock::{Clock, ManualClock, SystemClock};
pub use counter::Counter;
pub use delta::{
    DELTA_FORMAT_VERSION, DELTA_FORMAT_WITH_RETIREMENTS, DecodeError, Delta, Retirement,
};
pub use node::{
    CounterNode, CounterNodeConfig, DEFAULT_MAX_FRAME_LEN, Durability, GOSSIP_PROTOCOL_VERSION,
    GossipError, MAX_KEY_LEN, NodeError, NodeTls, PeerStatus, decode_gossip_frame,
};
pub use node_id::{MAX_NODE_ID_LEN, NodeId, NodeIdError};
pub use pn::{PnCount, PnState};
pub use ratelimit::{Decision, RateLimit, RateLimitError, RateLimiter, WindowKey};
pub use set::{
    Acknowledged, ConfigError, CounterSet, CounterSetConfig, MergeReport, RetireError, RetireReport,
};
