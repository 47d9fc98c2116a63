//! Sharded CRDT counters: count locally at memory speed, converge across nodes.
//!
//! (Being built: see issue #3.)
#![warn(missing_docs)]
