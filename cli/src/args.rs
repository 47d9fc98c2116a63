//! The top of the command line: global flags and one variant per subcommand group.
//!
//! Each group's own flags live in its module under `cmd/`, next to the code that runs it.

use clap::{Args, Parser, Subcommand};

use crate::cmd;

/// edgekit: the edge box toolkit — recursive DNS, replicated counters, replicated config.
#[derive(Debug, Parser)]
#[command(
    name = "edgekit",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(after_help = "Exit codes: 0 success, 1 failure, 2 bad usage.\n\
Logging: RUST_LOG=<filter> overrides -v/-q; logs go to stderr.")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalOpts,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags that every subcommand accepts.
#[derive(Debug, Args)]
pub(crate) struct GlobalOpts {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Resolve a name recursively from the root, like dig +trace but with our own engine.
    Resolve(cmd::resolve::ResolveArgs),
    /// Run the recursive caching DNS server.
    #[command(subcommand)]
    Dns(cmd::dns::DnsCommand),
    /// Measure a service: lookups per second and latency percentiles.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run a counter node, or increment and read counters on one.
    #[command(subcommand)]
    Counters(cmd::counters::CountersCommand),
    /// Run a replicated config store node, or read and write keys on one.
    #[command(subcommand)]
    Kv(cmd::kv::KvCommand),
    /// Run everything an edge box needs in one process: resolver, counter node, config replica.
    Node(cmd::node::NodeArgs),
}
