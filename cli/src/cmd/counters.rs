//! `edgekit counters ...`: run a counter node, or talk to one over its HTTP API.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Subcommand};

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum CountersCommand {
    /// Run a counter node that replicates with its peers.
    Serve(ServeArgs),
    /// Add to a counter (negative values subtract).
    Incr(IncrArgs),
    /// Read a counter's converged value as one node sees it.
    Get(KeyArgs),
    /// Show a node's id, peers and how fresh each peer's state is.
    Status(NodeArgs),
    /// Fold a retired node's counts into a survivor, keeping every total.
    Retire(RetireArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// This node's stable id; a restart must reuse it.
    #[arg(long, value_name = "ID")]
    pub(crate) node_id: String,
    /// Address for node-to-node replication.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Peers' replication addresses, comma separated.
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub(crate) peers: Vec<SocketAddr>,
    /// Address for the HTTP API and metrics.
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: SocketAddr,
    /// Directory for this node's durable state.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's HTTP address.
    #[arg(long, value_name = "HTTPADDR")]
    pub(crate) node: SocketAddr,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The counter's key.
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct IncrArgs {
    /// The counter's key.
    pub(crate) key: String,
    /// Amount to add; negative subtracts.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub(crate) by: i64,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RetireArgs {
    /// The retired node's id.
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

pub(crate) fn run(command: CountersCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    let name = match command {
        CountersCommand::Serve(_) => "counters serve",
        CountersCommand::Incr(_) => "counters incr",
        CountersCommand::Get(_) => "counters get",
        CountersCommand::Status(_) => "counters status",
        CountersCommand::Retire(_) => "counters retire",
    };
    Err(super::not_built(name, 4))
}
