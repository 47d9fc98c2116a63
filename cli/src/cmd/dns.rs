//! `edgekit dns ...`: the recursive caching DNS server.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Subcommand};

use crate::args::GlobalOpts;

#[derive(Debug, Subcommand)]
pub(crate) enum DnsCommand {
    /// Serve recursive DNS over UDP and TCP on every listen address.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Resolver and server configuration (TOML); see docs/dns-config.md.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on (repeatable); overrides the config file.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Vec<SocketAddr>,
    /// Root hints file in the standard `named.root` format.
    #[arg(long, value_name = "FILE")]
    pub(crate) root_hints: Option<PathBuf>,
    /// Allow upstream servers on loopback and private addresses (test hierarchies).
    #[arg(long)]
    pub(crate) allow_loopback: bool,
    /// Worker threads, each with its own SO_REUSEPORT socket (default: one per core).
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
}

pub(crate) fn run(command: DnsCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    match command {
        DnsCommand::Serve(_) => Err(super::not_built("dns serve", 6)),
    }
}
