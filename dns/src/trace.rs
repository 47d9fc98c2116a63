//! A record of each upstream step of a resolution, for `edgekit resolve --trace` and debugging.

use std::{fmt, net::SocketAddr, time::Duration};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RecordType},
};

/// One query sent to one server, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceStep {
    /// Nesting level: 0 for the name asked, 1 for an NS name resolved on the way, ...
    pub depth: u8,
    /// The zone the server was asked as an authority for.
    pub zone: Name,
    /// The server's address.
    pub server: SocketAddr,
    /// The name sent (minimised names show here).
    pub qname: Name,
    /// The type sent.
    pub qtype: RecordType,
    /// What happened.
    pub outcome: StepOutcome,
    /// Time from sending to the reply (or to giving up).
    pub elapsed: Duration,
    /// Whether the reply came over TCP (after a truncated UDP reply).
    pub over_tcp: bool,
}

/// What one upstream query produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepOutcome {
    /// A referral to a zone below, with its NS names.
    Referral {
        /// The child zone.
        zone: Name,
        /// Its servers.
        servers: Vec<Name>,
    },
    /// An answer with this many records (after scrubbing).
    Answer {
        /// Records kept.
        records: usize,
    },
    /// NXDOMAIN.
    NxDomain,
    /// The name exists, no data of the type.
    NoData,
    /// The server is lame or refused: REFUSED, SERVFAIL, or a referral that does not go down.
    Lame {
        /// Why we think so.
        reason: String,
    },
    /// No reply in time, or a network error.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for TraceStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let indent = "  ".repeat(usize::from(self.depth));
        let transport = if self.over_tcp { ", tcp" } else { "" };
        let question = format!("{} {}", self.qname, self.qtype);
        write!(
            f,
            "{indent}{:<16} {:<21} {question:<34} -> {}  [{:.1} ms{transport}]",
            self.zone.to_string(),
            format!("@{}", self.server),
            self.outcome,
            self.elapsed.as_secs_f64() * 1000.0
        )
    }
}

impl fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Referral { zone, servers } => {
                let names: Vec<String> = servers.iter().map(ToString::to_string).collect();
                write!(f, "referral to {zone} ({})", names.join(", "))
            }
            Self::Answer { records } => write!(f, "answer ({records} records)"),
            Self::NxDomain => f.write_str("NXDOMAIN"),
            Self::NoData => f.write_str("NODATA"),
            Self::Lame { reason } => write!(f, "lame: {reason}"),
            Self::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// The mnemonic an operator knows from dig (`REFUSED`, `SERVFAIL`, ...).
pub fn rcode_mnemonic(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}
