//! Log setup: `RUST_LOG` wins; otherwise `-v`/`-q` move the level from the default `warn`.

use anyhow::Context as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::args::GlobalOpts;

pub(crate) fn init(global: &GlobalOpts) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec)
            .with_context(|| format!("RUST_LOG={spec:?} is not a valid filter"))?,
        _ => EnvFilter::new(default_level(global.verbose, global.quiet)),
    };
    // Logs go to stderr so that stdout stays clean for answers and `--json` output.
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(global.verbose >= 2)
        .try_init()
        .map_err(|err| anyhow::anyhow!(err))
}

fn default_level(verbose: u8, quiet: bool) -> &'static str {
    if quiet {
        return "error";
    }
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}
