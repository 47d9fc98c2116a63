//! In-process fakes shared by edgekit's tests and benches.
//!
//! Nothing here is published; it exists so that every test builds its network on loopback from
//! the same parts: a fault-injecting TCP proxy, a DNS hierarchy, and throwaway CAs for mutual TLS.
#![warn(missing_docs)]

pub mod dns;
mod proxy;
mod tls;

pub use proxy::FaultProxy;
pub use tls::{TestCa, TlsFiles};
