//! `edgekit node`: resolver, counter node and config replica in one process.

use std::path::PathBuf;

use clap::Args;

use crate::args::GlobalOpts;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The node's TOML config; without it the embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Validate a config file and exit without starting anything.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub(crate) check_config: Option<PathBuf>,
}

pub(crate) fn run(_args: NodeArgs, _global: &GlobalOpts) -> anyhow::Result<()> {
    Err(super::not_built("node", 9))
}
