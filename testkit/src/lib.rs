//! In-process fakes shared by edgekit's tests and benches.
//!
//! Nothing here is published; it exists so that every test builds its network on loopback from
//! the same parts: a fault-injecting TCP proxy today, a DNS hierarchy as the resolver lands.
#![warn(missing_docs)]

pub mod dns;
mod proxy;

pub use proxy::FaultProxy;
