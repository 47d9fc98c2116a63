//! `edgekit node`: resolver, counter node and config store node in one process, on one tokio
//! runtime, with one admin HTTP server. Wiring only: each part is its library's own server.

mod admin;
mod config;

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Args;
use edgekit_counters::{CounterNode, NodeError};
use edgekit_dns::{DnsServer, Resolver};
use quicksilver_kv::{ReplTls, ReplicaStatus, Role, RootApi, Store};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
};

use self::{
    admin::{PartState, Parts, lock},
    config::{Loaded, NodeConfig},
};
use crate::args::GlobalOpts;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgekit node\n  edgekit node --config /etc/edgekit/node.toml\n  \
edgekit node --check-config /etc/edgekit/node.toml\n\n\
Without --config: data in ./edgekit-data, DNS on 127.0.0.1:5353, admin (/healthz, /readyz, \
/metrics) on 127.0.0.1:9090, kv API on 127.0.0.1:7380, counters API on 127.0.0.1:7381. Every \
key is in docs/configuration.md. Prints `<part> listening on ADDR` on stderr for each socket. \
SIGHUP re-reads --config and applies what can change while running; SIGTERM drains every part \
and exits 0 within 10 s."
)]
pub(crate) struct NodeArgs {
    /// The node's TOML config; without it the embedded defaults are used.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Validate a config file and exit without starting anything.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub(crate) check_config: Option<PathBuf>,
}

/// How long a SIGTERM may take, all parts together.
const DRAIN_BOUND: Duration = Duration::from_secs(10);
/// Of which answers being resolved get this long.
const DNS_DRAIN_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn run(args: NodeArgs, _global: &GlobalOpts) -> anyhow::Result<()> {
    if let Some(path) = &args.check_config {
        let prepared = prepare(Some(path))?;
        let config = &prepared.loaded.config;
        let on = |enabled| if enabled { "on" } else { "off" };
        writeln!(
            std::io::stdout().lock(),
            "{}: ok (dns {}, counters {}, kv {})",
            path.display(),
            on(config.dns.enabled),
            on(config.counters.enabled),
            on(config.kv.enabled)
        )?;
        return Ok(());
    }
    let prepared = prepare(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(prepared, args.config));
    // Blocking tasks (LMDB reads, a bootstrap) must not hold the exit past the drain bound.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Everything checked and read before anything is written or bound.
struct Prepared {
    loaded: Loaded,
    resolver: Option<Resolver>,
    tls: Option<ReplTls>,
}

fn prepare(path: Option<&Path>) -> anyhow::Result<Prepared> {
    let loaded = config::load(path)?;
    let config = &loaded.config;
    let resolver = if config.dns.enabled {
        let tables = config.dns.tables();
        Some(Resolver::new(tables.resolver).context("[dns.resolver]: cannot set up the resolver")?)
    } else {
        None
    };
    let tls = match (&config.kv.tls_cert, &config.kv.tls_key, &config.kv.tls_ca) {
        (Some(cert), Some(key), Some(ca)) if config.kv.enabled => Some(
            ReplTls::from_pem_files(cert, key, ca)
                .context("[kv] tls_cert, tls_key, tls_ca: cannot set up mutual TLS")?,
        ),
        _ => None,
    };
    Ok(Prepared {
        loaded,
        resolver,
        tls,
    })
}

async fn serve(prepared: Prepared, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let Prepared {
        loaded: mut running,
        resolver,
        tls,
    } = prepared;
    let config = running.config.clone();
    for (key, dir) in config.data_dirs() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{key} = \"{}\": cannot create it", dir.display()))?;
    }
    let parts = Arc::new(Parts::new(
        config.dns.enabled,
        config.counters.enabled,
        config.kv.enabled,
    ));
    let (stop, stopped) = watch::channel(false);

    let admin = bind(config.admin.listen, "[admin] listen").await?;
    eprintln!("admin listening on {}", admin.local_addr()?);
    let admin_task = tokio::spawn(
        axum::serve(admin, admin::router(Arc::clone(&parts)))
            .with_graceful_shutdown(stop_requested(stopped.clone()))
            .into_future(),
    );

    if let Some(resolver) = resolver {
        let server = DnsServer::start(config.dns.server.clone(), resolver)
            .await
            .context("[dns.server] listen: cannot start the DNS server")?;
        for address in server.udp_addresses() {
            eprintln!("dns listening on {address} (udp)");
        }
        for address in server.tcp_addresses() {
            eprintln!("dns listening on {address} (tcp)");
        }
        *lock(&parts.dns) = (PartState::Up, Some(server));
    }

    if config.counters.enabled {
        let node = CounterNode::start(config.counter_node_config()?)
            .await
            .map_err(|error| counters_start_error(&config, error))?;
        eprintln!("counters gossip listening on {}", node.gossip_addr());
        if let Some(http) = node.http_addr() {
            eprintln!("counters http listening on {http}");
        }
        *lock(&parts.counters) = (PartState::Up, Some(node));
    }

    let mut kv_task = if config.kv.enabled {
        Some(start_kv(&config, tls, Arc::clone(&parts), stopped.clone()).await?)
    } else {
        None
    };

    announce_ready(&parts);
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let failure = loop {
        tokio::select! {
            _ = terminate.recv() => break None,
            result = tokio::signal::ctrl_c() => {
                result.context("cannot listen for Ctrl-C")?;
                break None;
            }
            _ = hangup.recv() => reload(config_path.as_deref(), &mut running, &parts),
            finished = wait_task(&mut kv_task) => {
                kv_task = None;
                // The other parts still drain before the failure is reported.
                break Some(match finished {
                    Ok(Ok(())) => anyhow::anyhow!("the kv node stopped"),
                    Ok(Err(error)) => error,
                    Err(error) => error.context("the kv node failed"),
                });
            }
        }
    };
    eprintln!("stopping: draining every part");
    let drained = tokio::time::timeout(DRAIN_BOUND, drain(&parts, &stop, kv_task, admin_task));
    if drained.await.is_err() {
        tracing::warn!("parts were still draining after {DRAIN_BOUND:?}; exiting anyway");
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key} = \"{addr}\": cannot listen"))
}

fn counters_start_error(config: &NodeConfig, error: NodeError) -> anyhow::Error {
    let key = match &error {
        NodeError::Bind { addr, .. } if *addr == config.counters.http => "[counters] http",
        NodeError::Bind { .. } => "[counters] listen",
        NodeError::Journal { .. } => "[counters] data_dir",
        _ => "[counters]",
    };
    anyhow::Error::new(error).context(format!("{key}: cannot start the counter node"))
}

/// Open (root) or bootstrap (replica, in the background) the store, bind its API and
/// replication listeners, and serve until `stopped`.
async fn start_kv(
    config: &NodeConfig,
    tls: Option<ReplTls>,
    parts: Arc<Parts>,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let section = &config.kv;
    let dir = config.kv_dir();
    let store_config = config.store_config();
    let api = bind(section.api, "[kv] api").await?;
    let api_addr = api.local_addr()?;
    eprintln!("kv api listening on {api_addr}");
    let repl = match section.repl_listen {
        Some(addr) => {
            let listener = bind(addr, "[kv] repl_listen").await?;
            eprintln!("kv replication listening on {}", listener.local_addr()?);
            Some(listener)
        }
        None => None,
    };
    // A root opens its store now, so a bad one stops the start; a replica may have to wait
    // for its upstream, which happens in the background while the node reports `starting`.
    let root_store = if section.upstream.is_none() {
        Some(
            Store::open(&dir, store_config.clone())
                .with_context(|| format!("[kv] cannot open the store in {}", dir.display()))?,
        )
    } else {
        None
    };
    let upstream = section.upstream;
    Ok(tokio::spawn(async move {
        let (store, role, follower) = match (root_store, upstream) {
            (Some(store), _) => (store, Role::Root, None),
            (None, Some(upstream)) => {
                let status = Arc::new(match &tls {
                    Some(tls) => ReplicaStatus::with_tls(upstream, tls.clone()),
                    None => ReplicaStatus::new(upstream),
                });
                let bootstrap =
                    quicksilver_kv::open_or_bootstrap(&dir, store_config, upstream, &status);
                let failed = || {
                    format!(
                        "[kv] upstream = \"{upstream}\": cannot open or bootstrap the replica in {}",
                        dir.display()
                    )
                };
                let store = tokio::select! {
                    store = bootstrap => store.with_context(failed)?,
                    () = stop_requested(stopped.clone()) => return Ok(()),
                };
                let follower = tokio::spawn(quicksilver_kv::follow(
                    store.clone(),
                    upstream,
                    Arc::clone(&status),
                ));
                let relay = repl.is_some();
                (store, Role::Replica { status, relay }, Some(follower))
            }
            (None, None) => bail!("[kv]: neither a root nor a replica"),
        };
        if let Some(listener) = repl {
            // Replicas learn the root's API address through the handshake, for their 403s.
            let root_api = match &role {
                Role::Replica { status, .. } => RootApi::Relayed(Arc::clone(status)),
                _ => RootApi::Here(api_addr),
            };
            tokio::spawn(quicksilver_kv::serve_replication(
                store.clone(),
                listener,
                root_api,
                tls,
                stop_requested(stopped.clone()),
            ));
        }
        *lock(&parts.kv) = (PartState::Up, Some((store.clone(), role.clone())));
        announce_ready(&parts);
        let served = quicksilver_kv::serve(store, role, api, stop_requested(stopped)).await;
        if let Some(follower) = follower {
            follower.abort();
        }
        served.context("[kv] api: the API server failed")
    }))
}

/// The line scripts wait for, printed once, when the last enabled part is up.
fn announce_ready(parts: &Parts) {
    if parts.is_ready()
        && !parts
            .announced
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        eprintln!("node ready");
    }
}

/// Resolves with the task's outcome, or never when there is no task.
async fn wait_task(
    task: &mut Option<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<anyhow::Result<()>> {
    match task {
        Some(task) => Ok(task.await?),
        None => std::future::pending().await,
    }
}

async fn stop_requested(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// SIGTERM: stop taking work everywhere, let answers in flight go out, release the stores.
async fn drain(
    parts: &Parts,
    stop: &watch::Sender<bool>,
    kv_task: Option<JoinHandle<anyhow::Result<()>>>,
    admin_task: JoinHandle<std::io::Result<()>>,
) {
    let _ = stop.send(true);
    let dns = lock(&parts.dns).1.take();
    if let Some(server) = dns
        && !server.shutdown(DNS_DRAIN_GRACE).await
    {
        tracing::warn!("some DNS answers were still being resolved after {DNS_DRAIN_GRACE:?}");
    }
    if let Some(node) = lock(&parts.counters).1.take() {
        node.shutdown();
    }
    lock(&parts.kv).1 = None;
    if let Some(task) = kv_task {
        match task.await {
            Ok(Err(error)) => tracing::warn!(
                "the kv node stopped with an error: {}",
                crate::exit::describe(&error)
            ),
            Err(error) => tracing::warn!("the kv node task failed: {error}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = admin_task.await;
}

/// SIGHUP: re-read the file; apply what can change while running, name what needs a restart.
/// A file that does not load is reported and the running configuration kept.
fn reload(path: Option<&Path>, running: &mut Loaded, parts: &Parts) {
    let Some(path) = path else {
        eprintln!("reload: running on the embedded defaults, there is no --config file to re-read");
        return;
    };
    let new = match config::load(Some(path)) {
        Ok(new) => new,
        Err(error) => {
            eprintln!(
                "reload failed, keeping the running configuration: {}",
                crate::exit::describe(&error)
            );
            return;
        }
    };
    let changed = config::changed_keys(running, &new);
    let (applied, restart): (Vec<String>, Vec<String>) = changed
        .into_iter()
        .partition(|key| config::RELOADABLE.contains(&key.as_str()));
    if !applied.is_empty()
        && let Some(server) = &lock(&parts.dns).1
    {
        let mut server_config = running.config.dns.server.clone();
        server_config.allow.clone_from(&new.config.dns.server.allow);
        server_config.prefetch_percent = new.config.dns.server.prefetch_percent;
        server_config.stale_client_timeout_ms = new.config.dns.server.stale_client_timeout_ms;
        if let Err(error) = server.reload(server_config.clone()) {
            // A library error: its message already says its cause.
            eprintln!("reload failed, keeping the running configuration: {error}");
            return;
        }
        running.config.dns.server = server_config;
    }
    for key in &applied {
        match new.keys.get(key) {
            Some(value) => running.keys.insert(key.clone(), value.clone()),
            None => running.keys.remove(key),
        };
    }
    let list = |keys: &[String]| {
        if keys.is_empty() {
            "nothing".to_owned()
        } else {
            keys.join(", ")
        }
    };
    eprintln!(
        "reloaded the configuration: applied {}; changes to {} apply only after a restart",
        list(&applied),
        list(&restart)
    );
}
