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
    eprintln!("edgekit: {}", describe(err));
    ExitCode::from(FAILURE)
}

/// `err` and its causes, joined by ": ", each cause left out when the message before it already
/// ends with it: the libraries' errors say their cause in their own message (for callers that
/// print only that), and anyhow's `{:#}` would print it twice.
pub(crate) fn describe(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.is_empty() {
            message = text;
        } else if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the server: {source}")]
    struct Unreachable {
        source: io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let err = anyhow::Error::new(Unreachable { source: refused }).context("bench dns");
        assert_eq!(
            describe(&err),
            "bench dns: cannot reach the server: connection refused"
        );
        let plain = anyhow::anyhow!("disk full").context("cannot write the snapshot");
        assert_eq!(describe(&plain), "cannot write the snapshot: disk full");
    }
}
