//! `edgekit bench ...`: load generators that measure a running service.

use std::{
    io::{IsTerminal, Write},
    net::SocketAddr,
    path::PathBuf,
    sync::mpsc::RecvTimeoutError,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Subcommand};
use edgekit_dns::bench::{self, BenchConfig, Load, Stop, Transport};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Lookups per second and latency percentiles against any DNS resolver.
    Dns(BenchDnsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchDnsArgs {
    /// The resolver to measure, e.g. 127.0.0.1:5353.
    #[arg(long, value_name = "ADDR")]
    pub(crate) server: SocketAddr,
    /// Query file in dnsperf's format: one "name type" per line.
    #[arg(long, value_name = "FILE")]
    pub(crate) queries: PathBuf,
    /// How long to run, e.g. 10s.
    #[arg(long, value_name = "DURATION", conflicts_with = "count")]
    pub(crate) duration: Option<humantime::Duration>,
    /// Stop after this many queries. Without --count or --duration: each query in the file once.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Queries kept outstanding at once, in total over all sockets (dnsperf's -q).
    #[arg(long, value_name = "N", default_value_t = 64, conflicts_with = "rate")]
    pub(crate) concurrency: usize,
    /// Send at a fixed rate instead of a fixed concurrency: query k leaves k/QPS seconds after
    /// the start, from whichever socket claimed it (dnsperf's -Q).
    #[arg(long, value_name = "QPS")]
    pub(crate) rate: Option<u64>,
    /// Query over TCP instead of UDP.
    #[arg(long)]
    pub(crate) tcp: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write a latency-percentile chart (SVG).
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// A query without a reply within this long counts as lost (dnsperf's -t).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub(crate) timeout: humantime::Duration,
    /// UDP sockets (or TCP connections) to spread the queries over, each with its own threads
    /// (a sender and a receiver per UDP socket) and an equal share of --concurrency: the same
    /// load as dnsperf -c N -T N. On a small machine, pin the server and this generator to
    /// different cores (taskset) when comparing servers, or the generator's own CPU use decides
    /// the result.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub(crate) sockets: usize,
    /// Most UDP replies a socket's receiver thread takes per system call, 1 to 32. The default
    /// is dnsperf's batch; the receiver frees each batch's slots to the sender at once, so a
    /// larger batch makes the load burstier.
    #[arg(long, value_name = "N", default_value_t = edgekit_dns::bench::DEFAULT_RECEIVE_BATCH)]
    pub(crate) receive_batch: usize,
    /// Write every answered query as CSV, in the order sent: when it was sent (microseconds
    /// after the start), its latency (microseconds), rcode, name and type. A stall in the
    /// server shows as a run of slow answers sent together. Keeps at most 4 million answers
    /// (128 MiB while running, briefly up to twice that while they are gathered).
    #[arg(long, value_name = "FILE")]
    pub(crate) query_log: Option<PathBuf>,
}

/// Most answers `--query-log` keeps: 128 MiB while running, up to twice that while the
/// workers' logs are gathered. An hour at 200k qps would otherwise be 720 million of them.
const QUERY_LOG_LIMIT: usize = 4_000_000;

pub(crate) fn run(command: BenchCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    match command {
        BenchCommand::Dns(args) => bench_dns(&args),
    }
}

fn bench_dns(args: &BenchDnsArgs) -> anyhow::Result<()> {
    let queries = bench::load_query_file(&args.queries)?;
    // Without --duration or --count, go through the query file once, as dnsperf does.
    let stop = match (args.duration, args.count) {
        (Some(duration), _) => Stop::Duration(duration.into()),
        (None, Some(count)) => Stop::Count(count),
        (None, None) => Stop::Count(queries.len() as u64),
    };
    let mut config = BenchConfig::new(args.server, stop);
    config.load = match args.rate {
        Some(rate) => Load::Rate(rate),
        None => Load::Concurrency(args.concurrency),
    };
    config.transport = if args.tcp {
        Transport::Tcp
    } else {
        Transport::Udp
    };
    config.timeout = args.timeout.into();
    config.sockets = args.sockets;
    config.receive_batch = args.receive_batch;
    if args.query_log.is_some() {
        config.answer_log_limit = QUERY_LOG_LIMIT;
    }
    config.validate()?;

    // Created before the run, so a bad path fails now and not after a long run.
    let query_log = args
        .query_log
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("cannot write the query log to {}", path.display()))
        })
        .transpose()?;

    let live = bench::LiveStats::default();
    let progress = progress_bar(stop, !args.json && std::io::stderr().is_terminal());
    let report = std::thread::scope(|scope| {
        // The runner says when it is done, so the command returns as soon as the run does. (It
        // used to poll every 100 ms, which rounded every run's wall time up to the next 0.1 s:
        // the cold-cache batch of benches/compare-unbound.sh read 0.21 s for 0.10 s of work.)
        let (done, finished) = std::sync::mpsc::channel();
        let (config, queries, live) = (&config, &queries, &live);
        let runner = scope.spawn(move || {
            let report = bench::run(config, queries, live);
            // The receiver only goes away once this thread is joined.
            let _ = done.send(());
            report
        });
        while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_millis(100))
        {
            progress.set_position(live.sent());
            progress.set_message(format!(
                "answered {}, lost {}",
                live.answered(),
                live.lost()
            ));
        }
        runner
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    progress.finish_and_clear();
    let report = report?;

    if let Some(path) = &args.plot {
        std::fs::write(path, bench::latency_svg(&report))
            .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    }
    if let (Some(path), Some(file)) = (&args.query_log, query_log) {
        write_query_log(file, &report, &queries)
            .with_context(|| format!("cannot write the query log to {}", path.display()))?;
        if report.answered_queries_not_kept > 0 {
            tracing::warn!(
                logged = report.answered_queries.len(),
                not_logged = report.answered_queries_not_kept,
                "the query log holds only the first answers each socket saw; log a shorter run to see them all"
            );
        }
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{report}")?;
    }
    stdout.flush()?;
    if report.answered == 0 {
        anyhow::bail!("{} answered none of {} queries", args.server, report.sent);
    }
    Ok(())
}

/// `--query-log`: one CSV line per answered query, in send order.
fn write_query_log(
    file: std::fs::File,
    report: &bench::Report,
    queries: &[bench::BenchQuery],
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(file);
    writeln!(out, "sent_us,latency_us,rcode,name,type")?;
    for answer in &report.answered_queries {
        let (name, record_type) = queries
            .get(answer.query)
            .map(|query| {
                (
                    csv_field(&query.name.to_string()),
                    query.record_type.to_string(),
                )
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{},{},{},{name},{record_type}",
            answer.sent_micros,
            answer.latency_micros,
            answer.rcode_name()
        )?;
    }
    out.flush()
}

/// A CSV field: quoted (quotes doubled) only when it holds a comma, a quote or a line break,
/// which a DNS label may.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// A bar over queries sent (for --count) or a spinner (for --duration), on stderr only when a
/// person is watching it.
fn progress_bar(stop: Stop, visible: bool) -> ProgressBar {
    let bar = match stop {
        Stop::Count(count) => ProgressBar::new(count).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} sent, {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        _ => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} sent, {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    bar
}
