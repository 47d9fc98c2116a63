//! `edgekit resolve NAME [TYPE]`: one recursive resolution with a fresh engine, printed like dig.

use std::path::PathBuf;

use clap::Args;

use crate::args::GlobalOpts;

/// Resolve NAME from the root servers down and print the answer.
#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    /// The domain name to resolve, e.g. `www.example.com`.
    pub(crate) name: String,
    /// The record type to ask for (A, AAAA, MX, TXT, NS, CNAME, SOA, ...).
    #[arg(default_value = "A")]
    pub(crate) record_type: String,
    /// Root hints file in the standard `named.root` format; IANA's hints are built in.
    #[arg(long, value_name = "FILE")]
    pub(crate) root_hints: Option<PathBuf>,
    /// Allow upstream servers on loopback and private addresses (test hierarchies).
    #[arg(long)]
    pub(crate) allow_loopback: bool,
    /// Show each step: which server was asked, what it answered, how long it took.
    #[arg(long)]
    pub(crate) trace: bool,
    /// Print only the record data, one per line.
    #[arg(long, conflicts_with = "json")]
    pub(crate) short: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn run(_args: ResolveArgs, _global: &GlobalOpts) -> anyhow::Result<()> {
    Err(super::not_built("resolve", 5))
}
