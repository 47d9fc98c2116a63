//! `edgekit dns ...`: the recursive caching DNS server.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Subcommand};
use edgekit_dns::{DnsServer, Resolver, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    args::GlobalOpts,
    dns_config::{self, ResolverOverrides},
};

#[derive(Debug, Subcommand)]
pub(crate) enum DnsCommand {
    /// Serve recursive DNS over UDP and TCP on every listen address.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgekit dns serve --listen 127.0.0.1:53\n  \
edgekit dns serve --config dns.toml --threads 2\n\n\
Prints `listening on ADDR (udp)` and `listening on ADDR (tcp)` on stderr once bound. \
SIGTERM or Ctrl-C stops it: answers being resolved are sent, then it exits 0. SIGHUP re-reads \
--config and applies `allow`, `prefetch_percent` and `stale_client_timeout_ms` without dropping \
the cache; other changes are reported as needing a restart (resolver settings always do)."
)]
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
    /// Port of the authoritative servers (test hierarchies that cannot bind port 53).
    #[arg(long, hide = true, env = "EDGEKIT_AUTHORITY_PORT", value_name = "PORT")]
    pub(crate) authority_port: Option<u16>,
}

/// How long answers being resolved at shutdown get to be sent.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn run(command: DnsCommand, _global: &GlobalOpts) -> anyhow::Result<()> {
    match command {
        DnsCommand::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = ResolverOverrides {
        root_hints: args.root_hints.clone(),
        allow_loopback: args.allow_loopback,
        authority_port: args.authority_port,
    };
    let threads = match args.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(threads) => threads,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let file = dns_config::load(args.config.as_deref(), &overrides)?;
    let server_config = server_config(file.server, &args, threads);
    let resolver = Resolver::new(file.resolver).context("cannot set up the resolver")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = DnsServer::start(server_config, resolver)
            .await
            .context("cannot start the DNS server")?;
        for address in server.udp_addresses() {
            eprintln!("listening on {address} (udp)");
        }
        for address in server.tcp_addresses() {
            eprintln!("listening on {address} (tcp)");
        }
        if let Some(address) = server.metrics_address() {
            eprintln!("metrics on http://{address}/metrics");
        }
        let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let stop = wait_for_stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                result = &mut stop => break result?,
                _ = hangup.recv() => reload(&server, &args, &overrides, threads),
            }
        }
        tracing::info!("stopping: draining answers in flight");
        if !server.shutdown(DRAIN_GRACE).await {
            tracing::warn!("some answers were still being resolved after {DRAIN_GRACE:?}");
        }
        Ok(())
    })
}

/// The `[server]` table with the flags applied over it.
fn server_config(mut config: ServerConfig, args: &ServeArgs, threads: usize) -> ServerConfig {
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    config.udp_sockets_per_address = threads;
    config
}

/// SIGHUP: re-read the config file and apply what can change while running. A bad file is
/// reported and the running configuration kept.
fn reload(server: &DnsServer, args: &ServeArgs, overrides: &ResolverOverrides, threads: usize) {
    let result = dns_config::load(args.config.as_deref(), overrides).and_then(|file| {
        let resolver_changed = file.resolver != *server.resolver().config();
        let config = server_config(file.server, args, threads);
        let mut needs_restart = server.reload(config)?;
        if resolver_changed {
            needs_restart.push("[resolver]");
        }
        Ok(needs_restart)
    });
    match result {
        Ok(needs_restart) if needs_restart.is_empty() => {
            eprintln!("reloaded the configuration");
        }
        Ok(needs_restart) => eprintln!(
            "reloaded the configuration; changes to {} apply only after a restart",
            needs_restart.join(", ")
        ),
        Err(error) => eprintln!(
            "reload failed, keeping the running configuration: {}",
            crate::exit::describe(&error)
        ),
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot listen for Ctrl-C")?,
    }
    Ok(())
}
