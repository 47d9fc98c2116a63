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
    disable_transparent_huge_pages();
    let cli = args::Cli::parse();
    if let Err(err) = logging::init(&cli.global) {
        eprintln!("edgekit: cannot set up logging: {}", exit::describe(&err));
        return ExitCode::from(exit::FAILURE);
    }
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => exit::report(&err),
    }
}

/// Keep the kernel from backing this process's heap with transparent huge pages.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so the first touch of each 2
/// MiB of heap makes the kernel zero all of it inside one page fault. A freshly started DNS
/// server grows its heap by a few of those while it answers its first misses, and on a virtual
/// machine whose memory the host backs lazily one such fault stalled a worker thread for 6 to
/// 20 ms, with every question it held waiting. Without huge pages only the memory touched is
/// zeroed, 4 KiB at a time: a cold 1350-question batch's p99 fell from about 5.5 ms to 1.6 ms
/// and its time relative to Unbound's by 0.1-0.2, while cached throughput did not move
/// (docs/benchmarks.md, session 9). Redis advises the same for its latency. Setting
/// `MIMALLOC_ALLOW_THP` (mimalloc's own switch) leaves the choice to the operator.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // The kernel reads each argument as an unsigned long and rejects non-zero extras.
        let (on, unused) = (1 as libc::c_ulong, 0 as libc::c_ulong);
        // SAFETY: PR_SET_THP_DISABLE takes only integer arguments and touches no memory of ours;
        // it sets a flag on this process's address space, which its children inherit. A kernel
        // without it returns an error and keeps its default, which costs only latency.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) };
    }
}
