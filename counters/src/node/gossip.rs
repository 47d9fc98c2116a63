//! Push-pull anti-entropy: every interval, each peer link sends the delta the peer has not
//! acknowledged; the peer merges it and answers with its acknowledgement and its own delta.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    time::{Instant, MissedTickBehavior, sleep, timeout},
};

use super::{
    Shared,
    frame::{GOSSIP_PROTOCOL_VERSION, GossipError, Message, read_message, write_message},
};
use crate::{Acknowledged, Delta, NodeId};

/// First retry delay after a failed link; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a peer may take to answer one frame.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// An answer this large may have been cut to fit a frame: exchange again without waiting.
const BIG_ANSWER_KEYS: usize = 10_000;
/// Concurrent inbound gossip connections; more are closed at once.
const MAX_INBOUND: usize = 256;

fn idle_timeout(shared: &Shared) -> Duration {
    (shared.config.interval * 10).max(Duration::from_secs(10))
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "gossip accept failed");
                sleep(MIN_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%remote, "too many gossip connections, closing this one");
            continue;
        };
        let shared = Arc::clone(&shared);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                result = serve_inbound(&shared, stream) => {
                    if let Err(err) = result {
                        shared.metrics.gossip_connections_closed_on_error.inc();
                        tracing::warn!(%remote, error = %err, "closing gossip connection");
                    }
                }
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// A gossip byte stream: plain TCP, or TLS over TCP.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

async fn read_within<S: Link>(
    stream: &mut S,
    limit: Duration,
    max_len: usize,
) -> Result<Message, GossipError> {
    timeout(limit, read_message(stream, max_len))
        .await
        .map_err(|_| GossipError::Timeout(limit))?
}

async fn handshake<S: Link>(shared: &Shared, stream: &mut S) -> Result<NodeId, GossipError> {
    let max = shared.config.max_frame_len;
    let hello = Message::Hello {
        protocol: GOSSIP_PROTOCOL_VERSION,
        node: shared.config.node_id.clone(),
    };
    write_message(stream, &hello, max).await?;
    match read_within(stream, ANSWER_TIMEOUT, max).await? {
        Message::Hello { protocol, node } => {
            if protocol != GOSSIP_PROTOCOL_VERSION {
                return Err(GossipError::ProtocolVersion { found: protocol });
            }
            if node == shared.config.node_id {
                return Err(GossipError::Protocol(format!(
                    "peer claims this node's own id {node}"
                )));
            }
            Ok(node)
        }
        Message::Exchange { .. } => Err(GossipError::Protocol("exchange before hello".into())),
    }
}

/// The encoded delta for a peer that has merged `peer_has` of us, kept under the frame bound:
/// when the whole delta does not fit, the earliest changes that do (the rest follows in the next
/// exchange). Returns the bytes and whether keys were left for a next exchange.
fn encode_delta(shared: &Shared, peer_has: Option<Acknowledged>) -> (Vec<u8>, bool) {
    // Room for the message around the delta.
    let room = shared.config.max_frame_len.saturating_sub(1024);
    // A typical key costs ~20 bytes; start generous and shrink until it fits.
    let mut max_keys = (room / 32).max(1);
    loop {
        let delta = shared.counters.delta_for_at_most(peer_has, max_keys);
        let truncated = delta.len() >= max_keys;
        let bytes = delta.encode();
        if bytes.len() <= room || max_keys == 1 {
            return (bytes, truncated);
        }
        max_keys = (max_keys / 4).max(1);
    }
}

/// Merge a peer's encoded delta, checking it comes from the node it handshook as.
/// [`encode_delta`] and then [`merge_from`] on the blocking pool: both scan or touch up to every
/// key (hundreds of ms for 1M keys), which must not stall the runtime's HTTP and gossip tasks.
async fn encode_off_runtime(
    shared: &Arc<Shared>,
    peer_has: Option<Acknowledged>,
) -> Result<(Vec<u8>, bool), GossipError> {
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || encode_delta(&shared, peer_has))
        .await
        .map_err(|err| GossipError::Io(std::io::Error::other(err)))
}

async fn merge_off_runtime(
    shared: &Arc<Shared>,
    peer: &NodeId,
    bytes: Vec<u8>,
) -> Result<usize, GossipError> {
    let (shared, peer) = (Arc::clone(shared), peer.clone());
    tokio::task::spawn_blocking(move || merge_from(&shared, &peer, &bytes))
        .await
        .map_err(|err| GossipError::Io(std::io::Error::other(err)))?
}

/// Returns how many keys the delta carried.
fn merge_from(shared: &Shared, peer: &NodeId, bytes: &[u8]) -> Result<usize, GossipError> {
    let delta = Delta::<String>::decode(bytes)?;
    if delta.origin() != peer {
        return Err(GossipError::Protocol(format!(
            "delta from {} on the link of {peer}",
            delta.origin()
        )));
    }
    shared
        .metrics
        .gossip_bytes_received
        .inc_by(bytes.len() as u64);
    let report = shared.counters.merge(&delta);
    if report.needs_full_state {
        tracing::debug!(%peer, "delta left a gap; the next exchange asks for full state");
    }
    shared
        .metrics
        .keys
        .set(i64::try_from(shared.counters.len()).unwrap_or(i64::MAX));
    Ok(delta.len())
}

async fn serve_inbound(shared: &Arc<Shared>, stream: TcpStream) -> Result<(), GossipError> {
    stream.set_nodelay(true)?;
    match &shared.config.tls {
        Some(tls) => {
            // A peer without a certificate the cluster CA signed fails here, before any frame.
            let stream = timeout(ANSWER_TIMEOUT, tls.acceptor.accept(stream))
                .await
                .map_err(|_| GossipError::Timeout(ANSWER_TIMEOUT))?
                .map_err(|err| GossipError::Tls(err.to_string()))?;
            converse_inbound(shared, stream).await
        }
        None => converse_inbound(shared, stream).await,
    }
}

async fn converse_inbound<S: Link>(shared: &Arc<Shared>, mut stream: S) -> Result<(), GossipError> {
    let max = shared.config.max_frame_len;
    // The initiator speaks first; answer its hello with ours.
    let peer = match read_within(&mut stream, ANSWER_TIMEOUT, max).await? {
        Message::Hello { protocol, node } => {
            if protocol != GOSSIP_PROTOCOL_VERSION {
                return Err(GossipError::ProtocolVersion { found: protocol });
            }
            if node == shared.config.node_id {
                // Its deltas would overwrite our own entry: a duplicated id or a loop to self.
                return Err(GossipError::Protocol(format!(
                    "peer claims this node's own id {node}"
                )));
            }
            node
        }
        Message::Exchange { .. } => {
            return Err(GossipError::Protocol("exchange before hello".into()));
        }
    };
    let hello = Message::Hello {
        protocol: GOSSIP_PROTOCOL_VERSION,
        node: shared.config.node_id.clone(),
    };
    write_message(&mut stream, &hello, max).await?;
    loop {
        let (ack, delta) = match read_within(&mut stream, idle_timeout(shared), max).await {
            Ok(Message::Exchange { ack, delta }) => (ack, delta),
            Ok(Message::Hello { .. }) => {
                return Err(GossipError::Protocol("second hello".into()));
            }
            // A clean close between frames is how an initiator ends a link.
            Err(GossipError::Io(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        merge_off_runtime(shared, &peer, delta).await?;
        let reply = Message::Exchange {
            ack: shared.counters.acknowledged(&peer),
            delta: encode_off_runtime(shared, ack).await?.0,
        };
        let sent = write_message(&mut stream, &reply, max).await?;
        shared.metrics.gossip_bytes_sent.inc_by(sent as u64);
        shared.metrics.exchanges.inc();
    }
}

pub(super) async fn peer_loop(
    shared: Arc<Shared>,
    index: usize,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let result = tokio::select! {
            result = run_link(&shared, index, addr, &mut backoff) => result,
            _ = shutdown.changed() => return,
        };
        if let Err(err) = result {
            shared.metrics.gossip_connections_closed_on_error.inc();
            tracing::warn!(peer = %addr, error = %err, retry_in = ?backoff, "gossip link failed");
            if let Some(peer) = shared.peers.lock().get_mut(index) {
                peer.last_error = Some(err.to_string());
            }
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection to a peer: handshake, then an exchange every interval until it fails.
async fn run_link(
    shared: &Arc<Shared>,
    index: usize,
    addr: SocketAddr,
    backoff: &mut Duration,
) -> Result<(), GossipError> {
    let stream = timeout(ANSWER_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| GossipError::Timeout(ANSWER_TIMEOUT))??;
    stream.set_nodelay(true)?;
    match &shared.config.tls {
        Some(tls) => {
            // The peer's certificate must be the cluster CA's and name the address we dialled.
            let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = timeout(ANSWER_TIMEOUT, tls.connector.connect(name, stream))
                .await
                .map_err(|_| GossipError::Timeout(ANSWER_TIMEOUT))?
                .map_err(|err| GossipError::Tls(err.to_string()))?;
            exchange_with(shared, index, stream, backoff).await
        }
        None => exchange_with(shared, index, stream, backoff).await,
    }
}

/// Handshake on an established link, then an exchange every interval until it fails.
async fn exchange_with<S: Link>(
    shared: &Arc<Shared>,
    index: usize,
    mut stream: S,
    backoff: &mut Duration,
) -> Result<(), GossipError> {
    let max = shared.config.max_frame_len;
    let peer = handshake(shared, &mut stream).await?;
    if let Some(state) = shared.peers.lock().get_mut(index) {
        state.node_id = Some(peer.clone());
    }
    // What the peer has merged of us; unknown on a new link, so the first delta is full state.
    let mut peer_has: Option<Acknowledged> = None;
    let mut ticker = tokio::time::interval(shared.config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // After an exchange that could not carry everything, the next one starts at once.
    let mut more = false;
    let mut sync_requests = shared.sync_requests.subscribe();
    loop {
        if !more {
            tokio::select! {
                _ = ticker.tick() => {}
                // The sender lives as long as `shared`, so this never ends in an error.
                Ok(()) = sync_requests.changed() => ticker.reset(),
            }
        }
        let (delta, truncated) = encode_off_runtime(shared, peer_has).await?;
        let push = Message::Exchange {
            ack: shared.counters.acknowledged(&peer),
            delta,
        };
        let sent = write_message(&mut stream, &push, max).await?;
        shared.metrics.gossip_bytes_sent.inc_by(sent as u64);
        let (ack, delta) = match read_within(&mut stream, ANSWER_TIMEOUT, max).await? {
            Message::Exchange { ack, delta } => (ack, delta),
            Message::Hello { .. } => return Err(GossipError::Protocol("second hello".into())),
        };
        let received_keys = merge_off_runtime(shared, &peer, delta).await?;
        // The peer's answer may have been cut to fit too; asking again at once costs one round.
        more = truncated || received_keys >= BIG_ANSWER_KEYS;
        peer_has = ack;
        shared.metrics.exchanges.inc();
        *backoff = MIN_BACKOFF;
        if let Some(state) = shared.peers.lock().get_mut(index) {
            state.last_sync = Some(Instant::now().into_std());
            state.last_error = None;
        }
    }
}
