//! `edgekit kv ...`: run a quicksilver-kv node, or read and write keys on one.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Subcommand};

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum KvCommand {
    /// Run a node: the root (the only writer) or, with --upstream, a read-only replica.
    Serve(ServeArgs),
    /// Write a key at the root.
    Put(PutArgs),
    /// Read a key.
    Get(KeyArgs),
    /// Delete a key at the root.
    Del(KeyArgs),
    /// List keys under a prefix.
    Scan(ScanArgs),
    /// Stream changes as they are applied, from a sequence number.
    Watch(WatchArgs),
    /// Show a node's role, applied sequence, lag and digest.
    Status(NodeArgs),
    /// Save a consistent snapshot of a node's store to a file.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Directory holding the LMDB environment.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: PathBuf,
    /// Address for the HTTP API.
    #[arg(long, value_name = "ADDR")]
    pub(crate) api: SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's HTTP API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7380")]
    pub(crate) node: SocketAddr,
    /// Print machine-readable JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The key (any text; `/` is allowed).
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PutArgs {
    /// The key (any text; `/` is allowed).
    pub(crate) key: String,
    /// The value; use --file to read it from a file instead.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub(crate) value: Option<String>,
    /// Read the value from this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScanArgs {
    /// Only keys starting with this prefix.
    #[arg(default_value = "")]
    pub(crate) prefix: String,
    /// At most this many keys.
    #[arg(long, default_value_t = 1000)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Start after this sequence number (default: from now on).
    #[arg(long, value_name = "SEQ")]
    pub(crate) from: Option<u64>,
    /// Only keys starting with this prefix.
    #[arg(long, value_name = "P")]
    pub(crate) prefix: Option<String>,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    /// Where to write the snapshot.
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) node: NodeArgs,
}

pub(crate) fn run(command: KvCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    let name = match command {
        KvCommand::Serve(_) => "kv serve",
        KvCommand::Put(_) => "kv put",
        KvCommand::Get(_) => "kv get",
        KvCommand::Del(_) => "kv del",
        KvCommand::Scan(_) => "kv scan",
        KvCommand::Watch(_) => "kv watch",
        KvCommand::Status(_) => "kv status",
        KvCommand::Snapshot(_) => "kv snapshot",
    };
    Err(super::not_built(name, 7))
}
