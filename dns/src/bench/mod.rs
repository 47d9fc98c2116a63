//! A DNS load generator: dnsperf's query file, a fixed number of queries outstanding or a fixed
//! rate, over UDP (several sockets) or TCP (pipelined), and a report with rcodes and latency
//! percentiles from an HDR histogram.
//!
//! ```
//! use std::time::Duration;
//! use edgekit_dns::bench::{self, BenchConfig, LiveStats, Load, Stop};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queries = bench::parse_query_file("www.example.com A\nexample.net AAAA\n")?;
//! // Nothing listens on the discard port: every query is counted lost, and that is no error.
//! let mut config = BenchConfig::new("127.0.0.1:9".parse()?, Stop::Count(4));
//! config.load = Load::Concurrency(2);
//! config.timeout = Duration::from_millis(50);
//! let report = bench::run(&config, &queries, &LiveStats::default())?;
//! assert_eq!((report.sent, report.answered, report.lost), (4, 0, 4));
//! println!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! It runs on plain OS threads with blocking sockets: no async runtime sits between the clock
//! and the wire, which keeps the generator cheap enough not to be the bottleneck on the small
//! machines it shares with the server it measures. Each UDP socket has a sender and a receiver
//! thread, as in dnsperf, so that the two tools load a server the same way and read the same
//! qps from it; each TCP connection has one thread.

mod plot;
mod query_file;
mod report;
mod worker;

use std::{
    net::SocketAddr,
    sync::{
        Barrier, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use plot::latency_svg;
pub use query_file::{BenchQuery, QueryFileError, load_query_file, parse_query_file};
pub use report::{AnsweredQuery, LatencySummary, Report};

use worker::{RECEIVE_BATCH as MAX_RECEIVE_BATCH, Shared, WorkerStats};

/// Replies a UDP receiver takes per system call unless told otherwise: dnsperf's batch.
pub const DEFAULT_RECEIVE_BATCH: usize = 16;

/// How queries reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// Datagrams from several sockets; a query without a reply within the timeout is lost.
    Udp,
    /// Pipelined queries on persistent connections, each message framed by a 2-byte length.
    Tcp,
}

/// How much load to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Load {
    /// Keep this many queries outstanding in total (closed loop, like dnsperf's `-q`); at most
    /// 60 000 per socket, so that the 16-bit IDs on a socket tell its queries apart.
    Concurrency(usize),
    /// Send this many queries per second in total, whatever the replies do (open loop, `-Q`).
    Rate(u64),
}

/// When to stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// After this many queries have been sent.
    Count(u64),
    /// After this long; queries still outstanding then get their full timeout.
    Duration(Duration),
}

/// Everything a run needs besides the queries.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server to measure.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Closed loop (concurrency) or open loop (rate).
    pub load: Load,
    /// When to stop sending.
    pub stop: Stop,
    /// A query not answered within this is counted as lost; a later reply is ignored.
    pub timeout: Duration,
    /// UDP sockets or TCP connections to spread the load over, each served by its own threads
    /// (a sender and a receiver per UDP socket, one thread per TCP connection).
    pub sockets: usize,
    /// Most UDP replies a socket's receiver thread takes per system call (1 to 32; default 16,
    /// as many as dnsperf's receiver takes before it frees their slots). The receiver frees
    /// the slots of each batch to the sender at once, so a larger batch makes the load
    /// burstier.
    pub receive_batch: usize,
    /// Keep up to this many answered queries' send times, latencies and rcodes in
    /// [`Report::answered_queries`] (32 bytes each; 0, the default, keeps none). For
    /// finding where in a run the time went: a stall shows as a run of slow answers sent
    /// together. The limit is split over the sockets like the load; each keeps the first
    /// answers it saw.
    pub answer_log_limit: usize,
}

impl BenchConfig {
    /// UDP, 64 queries outstanding in total over 4 sockets, 5 s timeout: the load of
    /// `dnsperf -q 64 -c 4 -T 4 -t 5` (dnsperf's own defaults are 100 outstanding on one
    /// socket). Each socket has its own sender and receiver threads and an equal share of the
    /// outstanding queries, as dnsperf splits `-q` and `-c` over its `-T` thread pairs.
    pub fn new(server: SocketAddr, stop: Stop) -> Self {
        Self {
            server,
            transport: Transport::Udp,
            load: Load::Concurrency(64),
            stop,
            timeout: Duration::from_secs(5),
            sockets: 4,
            receive_batch: DEFAULT_RECEIVE_BATCH,
            answer_log_limit: 0,
        }
    }

    /// Check every field once, before anything is sent.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |field: &'static str, value: String, reason: &'static str| {
            Err(BenchError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        match self.load {
            Load::Concurrency(0) => {
                return invalid("concurrency", "0".into(), "must be at least 1");
            }
            Load::Rate(0) => return invalid("rate", "0".into(), "must be at least 1"),
            _ => {}
        }
        match self.stop {
            Stop::Count(0) => return invalid("count", "0".into(), "must be at least 1"),
            Stop::Duration(duration) if duration.is_zero() => {
                return invalid("duration", "0s".into(), "must be longer than zero");
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "0s".into(), "must be longer than zero");
        }
        if self.receive_batch == 0 || self.receive_batch > MAX_RECEIVE_BATCH {
            return invalid(
                "receive_batch",
                self.receive_batch.to_string(),
                "must be between 1 and 32",
            );
        }
        if self.sockets == 0 || self.sockets > 1024 {
            return invalid(
                "sockets",
                self.sockets.to_string(),
                "must be between 1 and 1024",
            );
        }
        if let Load::Concurrency(total) = self.load
            && total > worker::MAX_OUTSTANDING_PER_SOCKET * self.sockets
        {
            return invalid(
                "concurrency",
                total.to_string(),
                "more than 60000 per socket, which a socket's 16-bit IDs cannot tell apart: use more sockets",
            );
        }
        Ok(())
    }
}

/// Why a run could not happen. Queries that go unanswered are not errors: they are counted lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A config field has a value that cannot work.
    #[error("invalid {field} {value}: {reason}")]
    InvalidConfig {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot work.
        reason: &'static str,
    },
    /// There are no queries to send.
    #[error("no queries to send")]
    NoQueries,
    /// A socket could not be opened, or a TCP connection could not be made at all.
    #[error("cannot reach {server} over {transport}: {source}")]
    Connect {
        /// The server.
        server: SocketAddr,
        /// "UDP" or "TCP".
        transport: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The socket failed in a way that is not a lost query.
    #[error("socket error talking to {server}: {source}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The operating system would not start one of the generator's threads.
    #[error("cannot start a load generator thread: {0}")]
    Thread(std::io::Error),
}

/// Counters a caller can read while a run is going, e.g. to draw a progress bar.
#[derive(Debug, Default)]
pub struct LiveStats {
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
}

impl LiveStats {
    /// Queries sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Replies matched to a query so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
    /// Queries given up on so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Run the benchmark to completion on the calling thread (plus the sockets' threads).
///
/// Returns when sending has stopped and every query has been answered or has timed out, so
/// `sent == answered + lost` always holds in the report.
pub fn run(
    config: &BenchConfig,
    queries: &[BenchQuery],
    live: &LiveStats,
) -> Result<Report, BenchError> {
    config.validate()?;
    if queries.is_empty() {
        return Err(BenchError::NoQueries);
    }
    let sockets = match config.load {
        Load::Concurrency(total) => config.sockets.min(total),
        Load::Rate(_) => config.sockets,
    };
    let shared = Shared {
        config,
        queries,
        live,
        tickets: AtomicU64::new(0),
        ready: Barrier::new(sockets),
        started: OnceLock::new(),
    };
    let results: Vec<Result<WorkerStats, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..sockets)
            .map(|index| {
                let shared = &shared;
                let share = share_of(config.load, index, sockets);
                // The answer log split like the load.
                let log_limit = even_share(config.answer_log_limit, index, sockets);
                scope.spawn(move || worker::run(shared, share, log_limit))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let end = Instant::now();
    let mut total = WorkerStats::new();
    for result in results {
        total.merge(result?);
    }
    // Every worker passed the barrier and fixed the start; `end` stands in should none have.
    let start = shared.started.get().copied().unwrap_or(end);
    Ok(Report::new(config, start, end, total))
}

/// Part `index` of `total` split over `parts`: an equal share each, the remainder one apiece
/// to the first parts.
fn even_share(total: usize, index: usize, parts: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// This socket's part of the load: its outstanding queries; or, at a rate, the whole rate,
/// which the sockets keep together by sending the queries they claim on one schedule.
fn share_of(load: Load, index: usize, sockets: usize) -> worker::Share {
    match load {
        Load::Concurrency(total) => worker::Share::Window(even_share(total, index, sockets)),
        Load::Rate(total) => worker::Share::Rate(total as f64),
    }
}
