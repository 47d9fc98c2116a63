//! The server's request path (everything before the engine) on arbitrary bytes, with the
//! invariants every reply must keep: for the fuzz target `dns_server_request` and the
//! proptest that feeds it garbage on every `cargo test`.

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use super::{Core, Fast, Tally, respond};

/// An invariant of the request path that a packet broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request path invariant broken ({transport}, client {client}): {what}")]
#[non_exhaustive]
pub struct RequestPathViolation {
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// The client address the packet was presented from.
    pub client: IpAddr,
    /// What went wrong.
    pub what: String,
}

/// A server core with no sockets and an empty cache, built once per process (the fuzzer calls
/// this millions of times).
fn core() -> &'static (tokio::runtime::Runtime, Arc<Core>) {
    static CORE: OnceLock<(tokio::runtime::Runtime, Arc<Core>)> = OnceLock::new();
    CORE.get_or_init(|| {
        // A runtime that is never driven: only needed because the core holds a handle to one.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|error| panic!("cannot build a tokio runtime: {error}"));
        let core = {
            let _entered = runtime.enter();
            Arc::new(Core::offline())
        };
        (runtime, core)
    })
}

/// Present `packet` to the server's request path over UDP and over TCP, from an allowed client
/// and from one outside the ACL, without sockets or upstream queries. Every reply must echo the
/// ID, be a response, parse as a DNS message and fit the transport; a packet handed on to the
/// engine must carry a decodable question. Never panics on any input.
pub fn check_request_path(packet: &[u8]) -> Result<(), RequestPathViolation> {
    let (_runtime, core) = core();
    let policy = core.policy_snapshot();
    let mut tally = Tally::default();
    let mut out = Vec::new();
    let clients = [
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([203, 0, 113, 9]), // outside the default ACL
    ];
    for client in clients {
        for udp in [true, false] {
            let violation = |what: String| RequestPathViolation {
                transport: if udp { "udp" } else { "tcp" },
                client,
                what,
            };
            match core.answer_fast(packet, client, udp, &mut out, &policy.policy, &mut tally) {
                Fast::Reply => {
                    if out.len() < respond::HEADER_LEN {
                        return Err(violation(format!("a {}-byte reply", out.len())));
                    }
                    if out[..2] != packet[..2] {
                        return Err(violation("the reply does not echo the ID".into()));
                    }
                    if out[2] & 0x80 == 0 {
                        return Err(violation("the reply is not a response".into()));
                    }
                    if let Err(error) = crate::wire::parse_message(&out) {
                        return Err(violation(format!("the reply does not parse: {error}")));
                    }
                    if udp && out.len() > core.max_udp_payload.max(512) {
                        return Err(violation(format!("a {}-byte UDP reply", out.len())));
                    }
                }
                Fast::Drop => {
                    if packet.len() >= respond::HEADER_LEN && packet[2] & 0x80 == 0 {
                        return Err(violation("a query was dropped without a reply".into()));
                    }
                }
                Fast::Miss(query, max_len) => {
                    if max_len < 512 {
                        return Err(violation(format!("a reply limit of {max_len} bytes")));
                    }
                    if respond::question(&query).is_none() {
                        return Err(violation(
                            "an undecodable question reached the engine".into(),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
