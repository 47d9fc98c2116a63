//! [`CounterNode`]: a replicated, durable counter service that apps can embed.

mod frame;
mod gossip;
mod hot_routes;
mod http;
mod journal;
mod tls;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use prometheus_client::{
    metrics::{counter::Counter as PromCounter, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};

pub use frame::{DEFAULT_MAX_FRAME_LEN, GOSSIP_PROTOCOL_VERSION, GossipError, decode_gossip_frame};
pub use tls::NodeTls;

use crate::{CounterSet, NodeId, PnCount, RetireError, RetireReport};

/// The longest counter key the node accepts, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// When an increment answered over HTTP (or by [`CounterNode::incr`]) is on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Journalled and fsynced (group-committed with concurrent increments) *before* it is
    /// applied and acknowledged: no acknowledged increment is ever lost. The default.
    #[default]
    Fsync,
    /// Journalled (written to the file, so it survives the process being killed) and applied,
    /// then acknowledged; the journal is fsynced every `Duration`. Like Redis's
    /// `appendfsync everysec`: a machine crash or power loss may lose the increments of the last
    /// interval, and increments made after such a restart, before the node has re-learned its
    /// own entry from peers that had seen the lost ones, may be absorbed by the per-node
    /// maximum (up to the same amount). A `kill -9` of the process alone loses nothing.
    /// The record is written (one small `write`, to the page cache) in the calling task, so
    /// increments cost no thread hand-off.
    FsyncEvery(Duration),
}

/// How a [`CounterNode`] runs. Build with [`CounterNodeConfig::new`], then [`validate`](Self::validate)
/// (done by [`CounterNode::start`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CounterNodeConfig {
    /// This node's stable id; a restart must reuse it (and its data directory).
    pub node_id: NodeId,
    /// Address for node-to-node gossip (port 0 picks one).
    pub listen: SocketAddr,
    /// Peers' gossip addresses.
    pub peers: Vec<SocketAddr>,
    /// Address for the HTTP API, if any (port 0 picks one).
    pub http: Option<SocketAddr>,
    /// Directory for the durable journal of this node's own entries.
    pub data_dir: PathBuf,
    /// Anti-entropy period: each peer gets a delta this often. Default 1 s.
    pub interval: Duration,
    /// Bound on one gossip frame's payload. Default 16 MiB.
    pub max_frame_len: usize,
    /// Mutual TLS for gossip links, both directions; `None` (the default) is clear text, which
    /// only belongs on loopback or a trusted network.
    pub tls: Option<NodeTls>,
    /// When increments are on disk relative to their acknowledgement. Default
    /// [`Durability::Fsync`].
    pub durability: Durability,
}

impl CounterNodeConfig {
    /// A config with the default interval and frame bound.
    pub fn new(node_id: NodeId, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            listen,
            peers: Vec::new(),
            http: None,
            data_dir: data_dir.into(),
            interval: Duration::from_secs(1),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            tls: None,
            durability: Durability::Fsync,
        }
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.interval.is_zero() || self.interval > Duration::from_secs(3600) {
            return Err(NodeError::Config(format!(
                "interval = {:?}: must be between 1 ns and 1 h",
                self.interval
            )));
        }
        if self.max_frame_len < 1024 || self.max_frame_len > u32::MAX as usize {
            return Err(NodeError::Config(format!(
                "max_frame_len = {}: must be between 1024 and {}",
                self.max_frame_len,
                u32::MAX
            )));
        }
        if let Durability::FsyncEvery(every) = self.durability
            && (every < Duration::from_millis(1) || every > Duration::from_secs(3600))
        {
            return Err(NodeError::Config(format!(
                "durability = fsync every {every:?}: must be between 1 ms and 1 h"
            )));
        }
        if self.peers.contains(&self.listen) {
            return Err(NodeError::Config(format!(
                "peers contains {}, this node's own listen address",
                self.listen
            )));
        }
        Ok(())
    }
}

/// Why a node could not start, or an increment could not be made durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A config field is invalid.
    #[error("bad counter node config: {0}")]
    Config(String),
    /// The journal in the data directory could not be opened or written.
    #[error("journal {path}: {source}")]
    Journal {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The journal failed earlier; the node refuses increments it cannot make durable.
    #[error("journal failed, increments are refused until restart: {0}")]
    JournalFailed(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The TLS certificates could not be loaded, or do not form a usable configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// A retirement was refused or could not be made durable.
    #[error("retire: {0}")]
    Retire(#[from] RetireError),
}

/// What one configured peer link looks like now.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer's gossip address, as configured.
    pub addr: SocketAddr,
    /// Its node id, once a handshake succeeded.
    pub node_id: Option<String>,
    /// Milliseconds since the last completed exchange with it, if any.
    pub last_sync_age_ms: Option<u64>,
    /// The last error on the link, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct PeerState {
    addr: SocketAddr,
    node_id: Option<NodeId>,
    last_sync: Option<Instant>,
    last_error: Option<String>,
}

struct Metrics {
    registry: Registry,
    increments: PromCounter,
    exchanges: PromCounter,
    gossip_bytes_sent: PromCounter,
    gossip_bytes_received: PromCounter,
    gossip_connections_closed_on_error: PromCounter,
    keys: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("edgekit_counters");
        let metrics = Self {
            increments: PromCounter::default(),
            exchanges: PromCounter::default(),
            gossip_bytes_sent: PromCounter::default(),
            gossip_bytes_received: PromCounter::default(),
            gossip_connections_closed_on_error: PromCounter::default(),
            keys: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "increments",
            "Durable increments applied through this node",
            metrics.increments.clone(),
        );
        registry.register(
            "gossip_exchanges",
            "Completed push-pull exchanges with peers",
            metrics.exchanges.clone(),
        );
        registry.register(
            "gossip_sent_bytes",
            "Gossip bytes sent, frames included",
            metrics.gossip_bytes_sent.clone(),
        );
        registry.register(
            "gossip_received_bytes",
            "Gossip delta bytes received",
            metrics.gossip_bytes_received.clone(),
        );
        registry.register(
            "gossip_connection_errors",
            "Gossip connections closed because of an error (bad frame, timeout, I/O)",
            metrics.gossip_connections_closed_on_error.clone(),
        );
        registry.register("keys", "Counter keys held", metrics.keys.clone());
        Self {
            registry,
            ..metrics
        }
    }
}

struct IncrRequest {
    key: String,
    by: i64,
    reply: oneshot::Sender<Result<i64, NodeError>>,
}

/// Work for the single writer of this node's own entries.
enum Commit {
    Incr(IncrRequest),
    Retire {
        node: NodeId,
        reply: oneshot::Sender<Result<RetireReport, NodeError>>,
    },
}

pub(crate) struct Shared {
    counters: CounterSet<String>,
    config: CounterNodeConfig,
    peers: Mutex<Vec<PeerState>>,
    metrics: Metrics,
    commits: mpsc::Sender<Commit>,
    /// The journal of this node's own entries. Whoever appends holds this lock until the
    /// appended values are applied, so the in-memory own entry never runs ahead of the file.
    journal: Arc<Mutex<journal::Journal>>,
    /// Set once a journal write or fsync failed: increments are refused from then on.
    failed: Arc<AtomicBool>,
    limiters: Mutex<std::collections::HashMap<(u64, u64), crate::RateLimiter<String>>>,
    gossip_addr: SocketAddr,
    /// Bumped by [`CounterNode::sync_now`]; every peer link watches it. A counter rather than a
    /// `Notify`, so a link busy in an exchange when it is bumped still runs one more after.
    sync_requests: watch::Sender<u64>,
}

/// A running counter node: durable local increments, push-pull anti-entropy with static peers
/// over TCP, and (optionally) the HTTP API. Dropping it (or [`shutdown`](Self::shutdown)) stops
/// its tasks.
///
/// **Durability** (default [`Durability::Fsync`]): an increment is journalled (fsynced,
/// group-committed with concurrent ones) *before* it is applied in memory, so peers only ever
/// see durable values of this node's entry; after `kill -9` or a power loss the node reloads its
/// entry from the journal and loses no acknowledged increment and counts none twice.
/// [`Durability::FsyncEvery`] trades the power-loss guarantee for throughput, like Redis's
/// `appendfsync everysec`.
///
/// ```
/// use edgekit_counters::{CounterNode, CounterNodeConfig, NodeId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let config = CounterNodeConfig::new(NodeId::new("edge-1")?, "127.0.0.1:0".parse()?, dir.path());
/// let node = CounterNode::start(config).await?;
/// assert_eq!(node.incr("hits", 2).await?, 2);
/// assert_eq!(node.counters().get("hits"), 2);
/// node.shutdown();
/// # Ok(())
/// # }
/// ```
pub struct CounterNode {
    shared: Arc<Shared>,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for CounterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterNode")
            .field("node_id", &self.shared.config.node_id)
            .field("gossip_addr", &self.shared.gossip_addr)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl CounterNode {
    /// Load the journal, bind the gossip (and HTTP) listeners, and start replicating.
    pub async fn start(config: CounterNodeConfig) -> Result<Self, NodeError> {
        config.validate()?;
        let (journal, (own_entries, retirements)) = journal::Journal::open(&config.data_dir)
            .map_err(|source| NodeError::Journal {
                path: config.data_dir.clone(),
                source,
            })?;
        let counters = CounterSet::<String>::new(config.node_id.clone());
        for retirement in &retirements {
            counters.restore_retirement(retirement);
        }
        for (key, count) in own_entries {
            counters.raise_own(key, count);
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let gossip_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let http_listener = match config.http {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let (commits, commit_queue) = mpsc::channel(65_536);
        let journal_path = journal.path().to_path_buf();
        let journal_error = |source| NodeError::Journal {
            path: journal_path.clone(),
            source,
        };
        let sync_file = match config.durability {
            Durability::FsyncEvery(_) => Some(journal.sync_handle().map_err(journal_error)?),
            _ => None,
        };
        let journal = Arc::new(Mutex::new(journal));
        let failed = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            counters: counters.clone(),
            peers: Mutex::new(
                config
                    .peers
                    .iter()
                    .map(|addr| PeerState {
                        addr: *addr,
                        node_id: None,
                        last_sync: None,
                        last_error: None,
                    })
                    .collect(),
            ),
            metrics: Metrics::new(),
            commits,
            journal: Arc::clone(&journal),
            failed: Arc::clone(&failed),
            limiters: Mutex::new(std::collections::HashMap::new()),
            gossip_addr,
            sync_requests: watch::Sender::new(0),
            config,
        });
        // The committer holds no `Shared`, so it ends once the node (the queue's sender) is gone.
        let committer_counters = shared.counters.clone();
        let committed = shared.metrics.increments.clone();
        // Keeps the syncer running; dropped by the committer when it ends.
        let mut syncer_alive = None;
        if let (Durability::FsyncEvery(every), Some(file)) = (shared.config.durability, sync_file) {
            let (alive, stopped) = std::sync::mpsc::channel::<()>();
            syncer_alive = Some(alive);
            let failed = Arc::clone(&failed);
            std::thread::Builder::new()
                .name("counters-fsync".into())
                .spawn(move || run_syncer(&file, every, &stopped, &failed))
                .map_err(journal_error)?;
        }
        let durability = shared.config.durability;
        std::thread::Builder::new()
            .name("counters-journal".into())
            .spawn(move || {
                run_committer(
                    &committer_counters,
                    &committed,
                    &journal,
                    commit_queue,
                    durability,
                    &failed,
                );
                drop(syncer_alive);
            })
            .map_err(journal_error)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(gossip::accept_loop(
            Arc::clone(&shared),
            listener,
            shutdown_rx.clone(),
        ));
        for (index, addr) in shared.config.peers.iter().enumerate() {
            tokio::spawn(gossip::peer_loop(
                Arc::clone(&shared),
                index,
                *addr,
                shutdown_rx.clone(),
            ));
        }
        let http_addr = match http_listener {
            Some(listener) => {
                let addr = listener.local_addr().map_err(|source| NodeError::Bind {
                    addr: gossip_addr,
                    source,
                })?;
                tokio::spawn(http::serve(Arc::clone(&shared), listener, shutdown_rx));
                Some(addr)
            }
            None => None,
        };
        Ok(Self {
            shared,
            http_addr,
            shutdown,
        })
    }

    /// The bound gossip address.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.gossip_addr
    }

    /// The bound HTTP address, if the API is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The replicated counters (read them freely; increment through [`incr`](Self::incr) so
    /// increments are durable).
    pub fn counters(&self) -> &CounterSet<String> {
        &self.shared.counters
    }

    /// Exchange with every connected peer now instead of at its next interval (anti-entropy on
    /// demand, e.g. before reading a total that must include a just-made change). Returns at
    /// once; a link that is down keeps its reconnect backoff. Returns how many peers are
    /// configured.
    pub fn sync_now(&self) -> usize {
        self.shared.request_sync()
    }

    /// Add `by` to `key` durably; returns the key's value as this node sees it afterwards.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64, NodeError> {
        self.shared.incr(key, by).await
    }

    /// Retire `node` (stopped for good): fold its entries into this node's own, durably, and
    /// spread the tombstone with every delta (see [`CounterSet::retire`]). No total changes.
    pub async fn retire(&self, node: &NodeId) -> Result<RetireReport, NodeError> {
        self.shared.retire(node).await
    }

    /// Append what `GET /metrics` serves (OpenMetrics text, ending in `# EOF`) to `out`, for a
    /// process that merges several services into one metrics endpoint.
    pub fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        let metrics = &self.shared.metrics;
        metrics
            .keys
            .set(i64::try_from(self.shared.counters.len()).unwrap_or(i64::MAX));
        prometheus_client::encoding::text::encode(out, &metrics.registry)
    }

    /// Every configured peer's link state.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.shared.peer_statuses()
    }

    /// Stop gossiping and serving HTTP.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for CounterNode {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Shared {
    fn request_sync(&self) -> usize {
        self.sync_requests.send_modify(|requests| *requests += 1);
        self.config.peers.len()
    }

    async fn incr(&self, key: &str, by: i64) -> Result<i64, NodeError> {
        if let Durability::FsyncEvery(_) = self.config.durability {
            return self.incr_unsynced(key, by);
        }
        let (reply, answer) = oneshot::channel();
        self.commits
            .send(Commit::Incr(IncrRequest {
                key: key.to_owned(),
                by,
                reply,
            }))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// [`Durability::FsyncEvery`]: journal (one `write` to the page cache, no fsync) and apply
    /// right here, in the caller's task. A hop to the committer thread and back costs more
    /// than the write (two thread wake-ups per batch and one per request, on 2 cores), and
    /// there is no fsync to share. The lock keeps the journal and the own entry in step with
    /// concurrent increments and with a retirement.
    fn incr_unsynced(&self, key: &str, by: i64) -> Result<i64, NodeError> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(NodeError::JournalFailed("an earlier write failed".into()));
        }
        let mut journal = self.journal.lock();
        // The syncer may have failed while we waited for the lock.
        if self.failed.load(Ordering::Relaxed) {
            return Err(NodeError::JournalFailed("an earlier write failed".into()));
        }
        let after = self.counters.own(key).plus(by);
        if let Err(err) = journal.append_one_unsynced(key, after) {
            // The file's state is unknown now, as in `run_committer`.
            tracing::error!(path = %journal.path().display(), error = %err, "journal write failed");
            self.failed.store(true, Ordering::Relaxed);
            return Err(NodeError::JournalFailed(err.to_string()));
        }
        self.counters.add(key, by);
        drop(journal);
        self.metrics.increments.inc();
        Ok(self.counters.get(key))
    }

    async fn retire(&self, node: &NodeId) -> Result<RetireReport, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commits
            .send(Commit::Retire {
                node: node.clone(),
                reply,
            })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)?
    }

    fn peer_statuses(&self) -> Vec<PeerStatus> {
        self.peers
            .lock()
            .iter()
            .map(|peer| PeerStatus {
                addr: peer.addr,
                node_id: peer.node_id.as_ref().map(|id| id.as_str().to_owned()),
                last_sync_age_ms: peer
                    .last_sync
                    .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                last_error: peer.last_error.clone(),
            })
            .collect()
    }
}

/// The most increments folded into one fsync.
const MAX_BATCH: usize = 4096;

/// The single writer of this node's own entries: journal a batch, fsync, then apply it.
/// Because nothing else adds to the own entry, its in-memory value never runs ahead of the
/// journal, so neither gossip nor a crash can expose an increment that was not made durable.
fn run_committer(
    counters: &CounterSet<String>,
    committed: &PromCounter,
    journal: &Mutex<journal::Journal>,
    mut queue: mpsc::Receiver<Commit>,
    durability: Durability,
    failed: &AtomicBool,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // A retirement taken off the queue while gathering a batch runs right after that batch.
    let mut retire_next = None;
    loop {
        let first = match retire_next.take() {
            Some(retire) => retire,
            None => match queue.blocking_recv() {
                Some(commit) => commit,
                None => return,
            },
        };
        match first {
            Commit::Incr(request) => batch.push(request),
            Commit::Retire { node, reply } => {
                let result = if failed.load(Ordering::Relaxed) {
                    Err(NodeError::JournalFailed("an earlier write failed".into()))
                } else {
                    let mut journal = journal.lock();
                    counters
                        .retire_with(&node, |retirement, own_after| {
                            journal
                                .append_retirement(retirement, own_after)
                                .map_err(|err| {
                                    // Unknown file state, as for increments below.
                                    failed.store(true, Ordering::Relaxed);
                                    err.into()
                                })
                        })
                        .map_err(NodeError::from)
                };
                let _ = reply.send(result);
                continue;
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Commit::Incr(request)) => batch.push(request),
                Ok(retire) => {
                    retire_next = Some(retire);
                    break;
                }
                Err(_) => break,
            }
        }
        if failed.load(Ordering::Relaxed) {
            for request in batch.drain(..) {
                let _ = request.reply.send(Err(NodeError::JournalFailed(
                    "an earlier write failed".into(),
                )));
            }
            continue;
        }
        let mut journal = journal.lock();
        let mut after: Vec<(String, PnCount)> = Vec::new();
        let mut slot_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for request in &batch {
            match slot_of.get(request.key.as_str()) {
                Some(&slot) => after[slot].1 = after[slot].1.plus(request.by),
                None => {
                    slot_of.insert(&request.key, after.len());
                    after.push((
                        request.key.clone(),
                        counters.own(&request.key).plus(request.by),
                    ));
                }
            }
        }
        let written = match durability {
            Durability::FsyncEvery(_) => journal.append_unsynced(&after),
            _ => journal.append(&after),
        };
        match written {
            Ok(()) => {
                for request in batch.drain(..) {
                    counters.add(&request.key, request.by);
                    committed.inc();
                    let value = counters.get(&request.key);
                    let _ = request.reply.send(Ok(value));
                }
            }
            Err(err) => {
                // The file's state is unknown now; counting on would risk acknowledging
                // increments that a reload would not see.
                tracing::error!(path = %journal.path().display(), error = %err, "journal write failed");
                failed.store(true, Ordering::Relaxed);
                for request in batch.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(NodeError::JournalFailed(err.to_string())));
                }
            }
        }
    }
}

/// [`Durability::FsyncEvery`]: fsync the journal every `every` until the committer ends (its
/// end of `stopped` is dropped), then once more.
fn run_syncer(
    file: &std::fs::File,
    every: Duration,
    stopped: &std::sync::mpsc::Receiver<()>,
    failed: &AtomicBool,
) {
    loop {
        let done = !matches!(
            stopped.recv_timeout(every),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if let Err(err) = file.sync_data() {
            // As for a failed write: what is on disk is unknown, so stop acknowledging.
            tracing::error!(error = %err, "journal fsync failed");
            failed.store(true, Ordering::Relaxed);
            return;
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(
        id: &str,
        dir: &std::path::Path,
        peers: Vec<SocketAddr>,
        listen: SocketAddr,
    ) -> Result<CounterNode, Box<dyn std::error::Error>> {
        let mut config = CounterNodeConfig::new(NodeId::new(id)?, listen, dir);
        config.peers = peers;
        config.interval = Duration::from_millis(50);
        Ok(CounterNode::start(config).await?)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_converge_and_a_restart_keeps_the_own_entry()
    -> Result<(), Box<dyn std::error::Error>> {
        let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let a = node("a", dir_a.path(), vec![], "127.0.0.1:0".parse()?).await?;
        let b = node(
            "b",
            dir_b.path(),
            vec![a.gossip_addr()],
            "127.0.0.1:0".parse()?,
        )
        .await?;
        a.incr("k", 5).await?;
        b.incr("k", -2).await?;
        b.incr("k", 10).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (a.counters().get("k"), b.counters().get("k")) != (13, 13) {
            assert!(
                Instant::now() < deadline,
                "no convergence: {} {}",
                a.counters().get("k"),
                b.counters().get("k")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Restart b from its journal alone (no peers): its own entry (+10, -2) is back.
        b.shutdown();
        let b = node("b", dir_b.path(), vec![], "127.0.0.1:0".parse()?).await?;
        assert_eq!(b.counters().get("k"), 8);
        assert_eq!(b.incr("k", 1).await?, 9);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsync_every_acknowledges_and_a_restart_reloads_every_acknowledged_increment()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let start = || async {
            let mut config =
                CounterNodeConfig::new(NodeId::new("a")?, "127.0.0.1:0".parse()?, dir.path());
            config.durability = Durability::FsyncEvery(Duration::from_millis(20));
            Ok::<_, Box<dyn std::error::Error>>(CounterNode::start(config).await?)
        };
        let a = start().await?;
        for _ in 0..50 {
            a.incr("k", 2).await?;
        }
        assert_eq!(a.incr("k", -1).await?, 99);
        a.shutdown();
        // The committer and syncer threads end with the node; the written journal reloads.
        let a = start().await?;
        assert_eq!(a.counters().get("k"), 99);

        let mut config =
            CounterNodeConfig::new(NodeId::new("a")?, "127.0.0.1:0".parse()?, dir.path());
        config.durability = Durability::FsyncEvery(Duration::ZERO);
        let err = config.validate().expect_err("zero interval");
        assert!(err.to_string().contains("fsync every"), "{err}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deltas_larger_than_a_frame_arrive_in_parts() -> Result<(), Box<dyn std::error::Error>>
    {
        let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let mut config =
            CounterNodeConfig::new(NodeId::new("a")?, "127.0.0.1:0".parse()?, dir_a.path());
        config.max_frame_len = 4096;
        let a = CounterNode::start(config).await?;
        for i in 0..5000 {
            a.counters().add(&format!("key-{i}"), 1);
        }
        // 5000 keys need ~60 kB: at least 15 frames of 4 kB.
        let mut config =
            CounterNodeConfig::new(NodeId::new("b")?, "127.0.0.1:0".parse()?, dir_b.path());
        config.max_frame_len = 4096;
        config.interval = Duration::from_millis(20);
        config.peers = vec![a.gossip_addr()];
        let b = CounterNode::start(config).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.counters().len() < 5000 {
            assert!(
                Instant::now() < deadline,
                "b holds only {} keys",
                b.counters().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.counters().get("key-4999"), 1);
        Ok(())
    }
}
