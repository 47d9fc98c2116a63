//! The outcome of a run: counts, rate, rcodes and latency percentiles.

use std::{collections::BTreeMap, fmt, net::SocketAddr, time::Instant};

use hdrhistogram::Histogram;

use super::{BenchConfig, Load, Transport, worker::WorkerStats};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Fastest reply.
    pub min: f64,
    /// Mean over all replies.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    /// Slowest reply.
    pub max: f64,
}

/// One answered query, kept when [`BenchConfig::answer_log_limit`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredQuery {
    /// When it was sent, in microseconds after the run started.
    pub sent_micros: u64,
    /// From its send to its reply, in microseconds.
    pub latency_micros: u64,
    /// The reply's 4-bit header rcode.
    pub rcode: u8,
    /// Its index in the query slice the run was given.
    pub query: usize,
}

impl AnsweredQuery {
    /// The rcode's mnemonic (`NOERROR`, `NXDOMAIN`, ...), as in [`Report::rcodes`].
    pub fn rcode_name(&self) -> String {
        rcode_name(self.rcode)
    }
}

/// What a run measured. `sent == answered + lost` always holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The server measured.
    pub server: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Queries kept outstanding, if the run was closed-loop.
    pub concurrency: Option<usize>,
    /// Offered queries per second, if the run was open-loop.
    pub rate: Option<u64>,
    /// Queries sent.
    pub sent: u64,
    /// Queries whose reply arrived within the timeout.
    pub answered: u64,
    /// Queries with no reply within the timeout (or whose send failed).
    pub lost: u64,
    /// Replies that arrived after their query had been counted lost (ignored otherwise).
    pub late_replies: u64,
    /// Replies with the ID of a waiting query but another question: most likely a late reply
    /// to a lost query whose ID a new query has since been given (ignored otherwise).
    pub other_question_replies: u64,
    /// From the first send to the last reply, in seconds.
    pub elapsed_seconds: f64,
    /// Answered queries per second over `elapsed_seconds`: what dnsperf prints as "Queries per
    /// second" (completed queries from the start to the last reply). Lost queries do not count.
    pub qps: f64,
    /// Replies per response code, by name (`NOERROR`, `NXDOMAIN`, ...).
    pub rcodes: BTreeMap<String, u64>,
    /// Latency percentiles over answered queries, in milliseconds.
    pub latency_ms: LatencySummary,
    /// The full latency distribution, in microseconds (for charts).
    #[serde(skip)]
    pub latency_micros: Histogram<u64>,
    /// Answered queries in the order sent, up to [`BenchConfig::answer_log_limit`]; empty
    /// by default.
    #[serde(skip)]
    pub answered_queries: Vec<AnsweredQuery>,
    /// Answered queries left out of `answered_queries` because it was full.
    #[serde(skip)]
    pub answered_queries_not_kept: u64,
}

impl Report {
    pub(super) fn new(
        config: &BenchConfig,
        start: Instant,
        finish: Instant,
        stats: WorkerStats,
    ) -> Self {
        let end = stats.last_answer.unwrap_or(finish);
        let elapsed_seconds = end.duration_since(start).as_secs_f64();
        let qps = if elapsed_seconds > 0.0 {
            stats.answered as f64 / elapsed_seconds
        } else {
            0.0
        };
        let rcodes = stats
            .rcodes
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(code, count)| (rcode_name(code as u8), *count))
            .collect();
        let histogram = &stats.latency_micros;
        let millis = |micros: u64| micros as f64 / 1000.0;
        let latency_ms = if histogram.is_empty() {
            LatencySummary {
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
            }
        } else {
            LatencySummary {
                min: millis(histogram.min()),
                mean: histogram.mean() / 1000.0,
                p50: millis(histogram.value_at_quantile(0.50)),
                p90: millis(histogram.value_at_quantile(0.90)),
                p99: millis(histogram.value_at_quantile(0.99)),
                p99_9: millis(histogram.value_at_quantile(0.999)),
                max: millis(histogram.max()),
            }
        };
        let mut answered_queries = stats.answers;
        answered_queries.sort_by_key(|answer| answer.sent_micros);
        let (concurrency, rate) = match config.load {
            Load::Concurrency(window) => (Some(window), None),
            Load::Rate(rate) => (None, Some(rate)),
        };
        Self {
            server: config.server,
            transport: config.transport,
            concurrency,
            rate,
            sent: stats.sent,
            answered: stats.answered,
            lost: stats.lost,
            late_replies: stats.late_replies,
            other_question_replies: stats.other_question_replies,
            elapsed_seconds,
            qps,
            rcodes,
            latency_ms,
            latency_micros: stats.latency_micros,
            answered_queries,
            answered_queries_not_kept: stats.answers_not_logged,
        }
    }
}

/// The mnemonic dig and dnsperf print for a 4-bit header rcode.
fn rcode_name(code: u8) -> String {
    const NAMES: [&str; 11] = [
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
        "NXRRSET", "NOTAUTH", "NOTZONE",
    ];
    NAMES
        .get(usize::from(code))
        .map_or_else(|| format!("RCODE{code}"), |name| (*name).to_owned())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match self.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        };
        let load = match (self.concurrency, self.rate) {
            (Some(window), _) => format!("{window} outstanding"),
            (_, Some(rate)) => format!("{rate} qps offered"),
            _ => String::new(),
        };
        let percent = |part: u64| {
            if self.sent == 0 {
                0.0
            } else {
                100.0 * part as f64 / self.sent as f64
            }
        };
        writeln!(
            f,
            "Server:           {} over {transport}, {load}",
            self.server
        )?;
        writeln!(f, "Queries sent:     {}", self.sent)?;
        writeln!(
            f,
            "Queries answered: {} ({:.2}%)",
            self.answered,
            percent(self.answered)
        )?;
        writeln!(
            f,
            "Queries lost:     {} ({:.2}%)",
            self.lost,
            percent(self.lost)
        )?;
        if self.late_replies > 0 {
            writeln!(f, "Late replies:     {} (ignored)", self.late_replies)?;
        }
        if self.other_question_replies > 0 {
            writeln!(
                f,
                "Replies to another question: {} (ignored; their IDs had been reused)",
                self.other_question_replies
            )?;
        }
        writeln!(f, "Run time:         {:.3} s", self.elapsed_seconds)?;
        writeln!(f, "Queries/second:   {:.1}", self.qps)?;
        let rcodes: Vec<String> = self
            .rcodes
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        if self.answered == 0 {
            writeln!(f, "Response codes:   none (no replies)")?;
            return writeln!(f, "Latency (ms):     no replies");
        }
        writeln!(f, "Response codes:   {}", rcodes.join(", "))?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "Latency (ms):     min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.min, l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        )
    }
}
