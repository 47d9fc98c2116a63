//! An in-process DNS hierarchy: authoritative servers serving zone-file text over UDP and TCP
//! on 127.0.0.x, with switches for misbehaviour (drop, delay, truncate, lie, wrong ID,
//! out-of-bailiwick records, REFUSED, lame) and a log of the questions each one received.

mod fixture;
mod hierarchy;
mod server;
mod zone;

pub use fixture::example_test_hierarchy;
pub use hierarchy::{DnsHierarchy, HierarchyBuilder, HintedHierarchy};
pub use server::{AuthServer, Behaviour, LoggedQuery};
pub use zone::Zone;
