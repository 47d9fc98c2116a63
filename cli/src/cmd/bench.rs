//! `edgekit bench ...`: load generators that measure a running service.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Subcommand};

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
    /// Stop after this many queries.
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Queries kept outstanding at once.
    #[arg(long, value_name = "N", default_value_t = 64, conflicts_with = "rate")]
    pub(crate) concurrency: usize,
    /// Send at a fixed rate instead of a fixed concurrency.
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
}

pub(crate) fn run(command: BenchCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    match command {
        BenchCommand::Dns(_) => Err(super::not_built("bench dns", 6)),
    }
}
