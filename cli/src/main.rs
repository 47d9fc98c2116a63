//! The `edgekit` binary: parse arguments, run one subcommand, map the outcome to an exit code.
//!
//! Everything a subcommand does lives in the library crates; the modules here only parse, wire
//! and print, so each behaviour can be tested as a library call.

mod args;
mod cmd;
mod dns_config;
mod exit;
mod logging;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a cold DNS miss makes dozens of small allocations
/// (hickory-proto names and records), and with glibc they were a sixth of the resolver's
/// user-space CPU (docs/benchmarks.md, "DNS server vs Unbound", session 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if let Err(err) = logging::init(&cli.global) {
        eprintln!("edgekit: cannot set up logging: {err:#}");
        return ExitCode::from(exit::FAILURE);
    }
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report(&err),
    }
}
