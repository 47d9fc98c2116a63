//! One module per subcommand group. Each exposes its clap arguments and a `run` function.

pub(crate) mod bench;
pub(crate) mod counters;
pub(crate) mod dns;
pub(crate) mod kv;
pub(crate) mod node;
pub(crate) mod resolve;

use crate::args::{Cli, Command};

/// Run the chosen subcommand.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Resolve(args) => resolve::run(args, &cli.global),
        Command::Dns(command) => dns::run(command, &cli.global),
        Command::Bench(command) => bench::run(command, &cli.global),
        Command::Counters(command) => counters::run(command, &cli.global),
        Command::Kv(command) => kv::run(command, &cli.global),
        Command::Node(args) => node::run(args, &cli.global),
    }
}
