//! Integration tests of edgekit-counters, one binary (link time on 2 cores matters).

mod concurrency;
mod crdt_laws;
mod delta_format;
mod model;
mod node_sync;
mod node_tls;
mod rate_limiter;
mod retire;
mod set_basics;
