//! Exit codes and the one place that turns an error into a message for a person.
//!
//! Code 2 (bad usage) is clap's own; it exits before any of this runs.

use std::{io, process::ExitCode};

/// Something failed at run time: a network error, a bad config, a failed resolution.
pub(crate) const FAILURE: u8 = 1;

/// Print `err` (with its causes) to stderr and choose the exit code.
///
/// A closed stdout (`edgekit kv scan | head`) is not a failure: the reader got what it wanted.
pub(crate) fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        return ExitCode::SUCCESS;
    }
    eprintln!("edgekit: {err:#}");
    ExitCode::from(FAILURE)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
    })
}
