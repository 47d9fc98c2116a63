//! Replication between nodes: an upstream (the root or a relay) serves its log over a framed TCP
//! protocol; a replica verifies every entry's chained checksum before applying it. The protocol
//! is specified byte by byte in `docs/kv-replication.md`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter},
    net::{TcpListener, TcpStream},
};

use crate::{
    Error, Store, StoreConfig,
    frame::{Frame, check_frame_len, parse_frame},
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A replica that hears nothing for this long reconnects.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
const RECORDS_PER_READ: usize = 256;
/// Replicated records queued at the committer before the replica waits for the oldest.
const MAX_IN_FLIGHT: usize = 4096;

/// Why an upstream refused a replica (the `ERROR` frame's code).
const E_VERSION: u8 = 1;
const E_FOREIGN_CLUSTER: u8 = 2;
const E_DIVERGED: u8 = 3;
const E_COMPACTED: u8 = 4;
const E_AHEAD: u8 = 5;
const E_BAD_HELLO: u8 = 6;

/// Mutual TLS for replication links: every node presents a certificate signed by the cluster's
/// CA and accepts only peers whose certificate the same CA signed. Upstreams require a client
/// certificate; replicas verify the upstream's certificate against the upstream's IP address.
#[derive(Clone)]
pub struct ReplTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ReplTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplTls")
    }
}

impl ReplTls {
    /// Load this node's certificate chain and private key and the cluster CA, all PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, Error> {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let named = |path: &Path, err: &dyn std::fmt::Display| {
            Error::Tls(format!("{}: {err}", path.display()))
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|err| named(cert, &err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| named(cert, &err))?;
        if certs.is_empty() {
            return Err(named(cert, &"no certificate in the file"));
        }
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|err| named(key, &err))?;
        let mut roots = rustls::RootCertStore::empty();
        for authority in CertificateDer::pem_file_iter(ca).map_err(|err| named(ca, &err))? {
            roots
                .add(authority.map_err(|err| named(ca, &err))?)
                .map_err(|err| named(ca, &err))?;
        }
        if roots.is_empty() {
            return Err(named(ca, &"no CA certificate in the file"));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |err: rustls::Error| Error::Tls(err.to_string());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(|err| Error::Tls(err.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), private_key.clone_key())
            .map_err(tls)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, private_key)
            .map_err(tls)?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }
}

/// A replication byte stream: plain TCP or TLS over TCP.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// What a replica knows about its replication link, for `/v1/status` and metrics.
#[derive(Debug)]
pub struct ReplicaStatus {
    upstream: SocketAddr,
    upstream_head: AtomicU64,
    last_heard_ms: AtomicU64,
    connected: AtomicBool,
    received_bytes: AtomicU64,
    stopped: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    bootstrapping: AtomicBool,
    bootstrap_received: AtomicU64,
    bootstraps: AtomicU64,
    root_api: Mutex<Option<SocketAddr>>,
    tls: Option<ReplTls>,
}

/// Where the root's HTTP API is, as an upstream tells its replicas in WELCOME.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RootApi {
    /// This node is the root and its API listens here.
    Here(SocketAddr),
    /// This node is a relay: pass on what its own upstream said.
    Relayed(Arc<ReplicaStatus>),
    /// Not known.
    Unknown,
}

impl RootApi {
    fn current(&self) -> Option<SocketAddr> {
        match self {
            Self::Here(addr) => Some(*addr),
            Self::Relayed(status) => status.root_api(),
            Self::Unknown => None,
        }
    }
}

impl ReplicaStatus {
    /// A fresh status for a replica of `upstream`.
    pub fn new(upstream: SocketAddr) -> Self {
        Self {
            upstream,
            upstream_head: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            received_bytes: AtomicU64::new(0),
            stopped: Mutex::new(None),
            last_error: Mutex::new(None),
            bootstrapping: AtomicBool::new(false),
            bootstrap_received: AtomicU64::new(0),
            bootstraps: AtomicU64::new(0),
            root_api: Mutex::new(None),
            tls: None,
        }
    }

    /// A fresh status for a replica that reaches `upstream` over mutual TLS.
    pub fn with_tls(upstream: SocketAddr, tls: ReplTls) -> Self {
        Self {
            tls: Some(tls),
            ..Self::new(upstream)
        }
    }

    /// The upstream's address.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The upstream's head sequence as last reported (heartbeats carry it even when idle).
    pub fn upstream_head(&self) -> u64 {
        self.upstream_head.load(Ordering::Relaxed)
    }

    /// Milliseconds since the upstream was last heard from (`None` before first contact).
    pub fn millis_since_heard(&self) -> Option<u64> {
        match self.last_heard_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(now_ms().saturating_sub(at)),
        }
    }

    /// Whether a replication session is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Bytes of replication frames received.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Why replication stopped for good (a tampered entry, a foreign cluster...), if it did.
    pub fn stopped_reason(&self) -> Option<String> {
        self.stopped.lock().clone()
    }

    /// The error that ended the last replication session (the link went down, the store is
    /// full...), while the replica keeps retrying; cleared once a later session applies
    /// entries again.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Whether a snapshot is being received right now (a first bootstrap, or a re-bootstrap
    /// after the upstream truncated this replica's position).
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrapping.load(Ordering::Relaxed)
    }

    /// Snapshot bytes received by the current (or last) bootstrap.
    pub fn bootstrap_received_bytes(&self) -> u64 {
        self.bootstrap_received.load(Ordering::Relaxed)
    }

    /// Snapshots received and committed since the process started.
    pub fn bootstraps_completed(&self) -> u64 {
        self.bootstraps.load(Ordering::Relaxed)
    }

    /// The root's HTTP API address, as the upstream last said (where writes go).
    pub fn root_api(&self) -> Option<SocketAddr> {
        *self.root_api.lock()
    }

    fn welcomed(&self, head: u64, root_api: Option<SocketAddr>) {
        self.heard(head);
        if root_api.is_some() {
            *self.root_api.lock() = root_api;
        }
    }

    /// Entries apply again: whatever ended an earlier session is over.
    fn applied_again(&self) {
        let mut last_error = self.last_error.lock();
        if last_error.is_some() {
            *last_error = None;
        }
    }

    fn heard(&self, head: u64) {
        self.upstream_head.fetch_max(head, Ordering::Relaxed);
        self.last_heard_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Count a received frame's size on the wire (5-byte header plus payload).
fn count_received(status: &ReplicaStatus, frame: &Frame) {
    let payload = match frame {
        Frame::Record(record) => 40 + record.entry.len(),
        Frame::SnapshotChunk(bytes) => bytes.len(),
        Frame::Error { message, .. } => 1 + message.len(),
        Frame::Hello { .. } => 66,
        Frame::Welcome { .. } => 26,
        Frame::Heartbeat { .. } => 16,
        Frame::SnapshotEnd { .. } => 8,
    };
    status
        .received_bytes
        .fetch_add(payload as u64 + 5, Ordering::Relaxed);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn protocol(message: impl Into<String>) -> Error {
    Error::Replication {
        message: message.into(),
        fatal: false,
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(out: &mut W, frame: &Frame) -> Result<(), Error> {
    out.write_all(&frame.encode()).await?;
    Ok(())
}

/// Read one frame; a bad length, type or payload closes the connection (the caller drops it).
async fn read_frame<R: AsyncRead + Unpin>(input: &mut R) -> Result<Frame, Error> {
    let len = check_frame_len(input.read_u32().await?)?;
    let kind = input.read_u8().await?;
    let mut payload = vec![0; len - 1];
    input.read_exact(&mut payload).await?;
    Ok(parse_frame(kind, &payload)?)
}

// ---------------------------------------------------------------------------------------------
// Upstream side
// ---------------------------------------------------------------------------------------------

/// Serve the replication protocol on `listener` (the root, or a replica acting as a relay)
/// until `shutdown` resolves. Each replica gets its own task; a bad peer only closes its own
/// connection.
pub async fn serve_replication(
    store: Store,
    listener: TcpListener,
    root_api: RootApi,
    tls: Option<ReplTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let store = store.clone();
                let root_api = root_api.current();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match serve_one(store, socket, root_api, tls).await {
                        Ok(()) => tracing::debug!(%peer, "replica disconnected"),
                        Err(err) => tracing::info!(%peer, error = %err, "replication session ended"),
                    }
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn refuse<W: AsyncWrite + Unpin>(out: &mut W, code: u8, message: String) -> Error {
    let _ = write_frame(
        out,
        &Frame::Error {
            code,
            message: message.clone(),
        },
    )
    .await;
    let _ = out.flush().await;
    protocol(message)
}

async fn serve_one(
    store: Store,
    socket: TcpStream,
    root_api: Option<SocketAddr>,
    tls: Option<ReplTls>,
) -> Result<(), Error> {
    socket.set_nodelay(true)?;
    let link: Box<dyn Link> = match tls {
        Some(tls) => Box::new(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(socket))
                .await
                .map_err(|_| protocol("no TLS handshake within the handshake timeout"))?
                .map_err(|err| Error::Tls(format!("handshake with a replica failed: {err}")))?,
        ),
        None => Box::new(socket),
    };
    let (mut input, output) = tokio::io::split(link);
    let mut out = BufWriter::new(output);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut input))
        .await
        .map_err(|_| protocol("no HELLO within the handshake timeout"))?;
    let (version, cluster, after, chain) = match hello {
        Ok(Frame::Hello {
            version,
            cluster_id,
            after,
            chain,
        }) => (version, cluster_id, after, chain),
        Ok(other) => {
            let message = format!("expected a HELLO frame, got {}", other.name());
            return Err(refuse(&mut out, E_BAD_HELLO, message).await);
        }
        Err(Error::BadFrame(err)) => {
            let message = format!("expected a HELLO frame: {err}");
            return Err(refuse(&mut out, E_BAD_HELLO, message).await);
        }
        Err(err) => return Err(err),
    };
    if version != PROTOCOL_VERSION {
        return Err(refuse(
            &mut out,
            E_VERSION,
            format!(
                "protocol version {version} not supported (this node speaks {PROTOCOL_VERSION})"
            ),
        )
        .await);
    }
    let reader = store.reader().clone();
    let head = {
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || reader.head())
            .await
            .map_err(|_| Error::Closed)??
    };
    let bootstrap = cluster == [0; 16];
    if !bootstrap && cluster != head.cluster_id {
        return Err(refuse(
            &mut out,
            E_FOREIGN_CLUSTER,
            format!(
                "replica belongs to cluster {}, this is cluster {}",
                crate::hex::encode(&cluster),
                head.cluster_id_hex()
            ),
        )
        .await);
    }
    let welcome = Frame::Welcome {
        version: PROTOCOL_VERSION,
        cluster_id: head.cluster_id,
        head: head.seq,
        root_api,
    };
    let mut position = after;
    if bootstrap {
        write_frame(&mut out, &welcome).await?;
        position = stream_snapshot(&reader, &mut out).await?;
    } else {
        if after > head.seq {
            return Err(refuse(
                &mut out,
                E_AHEAD,
                format!(
                    "replica is at {after}, ahead of this node's head {}",
                    head.seq
                ),
            )
            .await);
        }
        let ours = {
            let reader = reader.clone();
            tokio::task::spawn_blocking(move || reader.chain_at(after))
                .await
                .map_err(|_| Error::Closed)?
        };
        match ours {
            Ok(ours) if ours == chain => {}
            Ok(_) => {
                return Err(refuse(
                    &mut out,
                    E_DIVERGED,
                    format!(
                        "replica's checksum at {after} differs from this node's: histories diverged"
                    ),
                )
                .await);
            }
            Err(err) if err.is_compacted() => {
                return Err(refuse(&mut out, E_COMPACTED, err.to_string()).await);
            }
            Err(err) => return Err(err),
        }
        write_frame(&mut out, &welcome).await?;
    }
    out.flush().await?;
    let mut head_rx = store.subscribe();
    // Subscribed before the first log read, so a record announced meanwhile is not missed.
    let mut passed_on = store.subscribe_received();
    loop {
        let local_head = *head_rx.borrow_and_update();
        // `position` may be ahead of our own head after passing records on (below).
        if position < local_head {
            let records = {
                let reader = reader.clone();
                tokio::task::spawn_blocking(move || reader.log_after(position, RECORDS_PER_READ))
                    .await
                    .map_err(|_| Error::Closed)??
            };
            if let Some(last) = records.last() {
                position = last.seq;
                for record in records {
                    write_frame(&mut out, &Frame::Record(record)).await?;
                }
                out.flush().await?;
                continue;
            }
        }
        let beat = Frame::Heartbeat {
            head: local_head.max(position),
            clock_ms: now_ms(),
        };
        write_frame(&mut out, &beat).await?;
        out.flush().await?;
        tokio::select! {
            changed = head_rx.changed() => changed.map_err(|_| Error::Closed)?,
            received = passed_on.recv() => match received {
                // The next record this replica needs, straight from our upstream.
                Ok(record) if record.seq == position + 1 => {
                    position = record.seq;
                    write_frame(&mut out, &Frame::Record((*record).clone())).await?;
                    out.flush().await?;
                }
                // Older, or after a gap: the log path above serves it once committed.
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(Error::Closed),
            },
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
}

/// Stream a snapshot as SNAPSHOT_CHUNK frames and a SNAPSHOT_END carrying its sequence.
async fn stream_snapshot<W: AsyncWrite + Unpin>(
    reader: &crate::Reader,
    out: &mut W,
) -> Result<u64, Error> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let reader = reader.clone();
    let producer = tokio::task::spawn_blocking(move || reader.write_snapshot(ChunkWriter(sender)));
    while let Some(chunk) = receiver.recv().await {
        write_frame(out, &Frame::SnapshotChunk(chunk)).await?;
    }
    let info = producer.await.map_err(|_| Error::Closed)??;
    write_frame(out, &Frame::SnapshotEnd { seq: info.seq }).await?;
    Ok(info.seq)
}

struct ChunkWriter(tokio::sync::mpsc::Sender<Vec<u8>>);

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let take = buf.len().min(1 << 20);
        self.0.blocking_send(buf[..take].to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "replica went away")
        })?;
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Replica side
// ---------------------------------------------------------------------------------------------

fn hello(cluster_id: [u8; 16], after: u64, chain: [u8; 32]) -> Frame {
    Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster_id,
        after,
        chain,
    }
}

fn upstream_error(code: u8, message: String) -> Error {
    if code == E_COMPACTED {
        return Error::NeedsSnapshot(message);
    }
    Error::Replication {
        message: format!("upstream refused: {message}"),
        // A replica ahead of a relay that is still catching up can simply retry.
        fatal: code != E_AHEAD,
    }
}

async fn connect(upstream: SocketAddr, tls: Option<&ReplTls>) -> Result<Box<dyn Link>, Error> {
    let socket = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| protocol(format!("connecting to {upstream} timed out")))??;
    socket.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(Box::new(socket));
    };
    // The upstream's certificate must name its IP address.
    let name = rustls_pki_types::ServerName::IpAddress(upstream.ip().into());
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector.connect(name, socket))
        .await
        .map_err(|_| protocol(format!("TLS handshake with {upstream} timed out")))?
        .map_err(|err| Error::Tls(format!("handshake with {upstream} failed: {err}")))?;
    Ok(Box::new(stream))
}

/// Open the replica's store in `dir`; when there is none yet, fetch a snapshot from `upstream`
/// (retrying with backoff and jitter until it succeeds or the upstream refuses for good) and
/// restore it first.
pub async fn open_or_bootstrap(
    dir: &Path,
    config: StoreConfig,
    upstream: SocketAddr,
    status: &ReplicaStatus,
) -> Result<Store, Error> {
    if dir.join("data.mdb").exists() {
        let dir = dir.to_path_buf();
        return tokio::task::spawn_blocking(move || Store::open(dir, config))
            .await
            .map_err(|_| Error::Closed)?;
    }
    let mut backoff = Backoff::new();
    loop {
        match bootstrap_once(dir, config.clone(), upstream, status).await {
            Ok(store) => return Ok(store),
            Err(err @ Error::Replication { fatal: true, .. }) => return Err(err),
            Err(err) => {
                tracing::warn!(%upstream, error = %err, "bootstrap failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn bootstrap_once(
    dir: &Path,
    config: StoreConfig,
    upstream: SocketAddr,
    status: &ReplicaStatus,
) -> Result<Store, Error> {
    let partial = partial_snapshot_path(dir);
    let received = download_snapshot(upstream, &partial, status, None).await?;
    let dir = dir.to_path_buf();
    let restored = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&partial)?;
        let result = Store::restore(&dir, file, config);
        let _ = std::fs::remove_file(&partial);
        result
    })
    .await
    .map_err(|_| Error::Closed)?;
    let (store, info) = restored?;
    status.bootstraps.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        seq = info.seq,
        pairs = info.pairs,
        bytes = received,
        "replica bootstrapped from a snapshot"
    );
    Ok(store)
}

/// Ask `upstream` for a snapshot and write it to `path`; returns the bytes received. With
/// `cluster`, an upstream of another cluster is refused before anything is downloaded.
async fn download_snapshot(
    upstream: SocketAddr,
    path: &Path,
    status: &ReplicaStatus,
    cluster: Option<[u8; 16]>,
) -> Result<u64, Error> {
    status.bootstrapping.store(true, Ordering::Relaxed);
    status.bootstrap_received.store(0, Ordering::Relaxed);
    let result = download_snapshot_inner(upstream, path, status, cluster).await;
    status.bootstrapping.store(false, Ordering::Relaxed);
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

async fn download_snapshot_inner(
    upstream: SocketAddr,
    path: &Path,
    status: &ReplicaStatus,
    cluster: Option<[u8; 16]>,
) -> Result<u64, Error> {
    let socket = connect(upstream, status.tls.as_ref()).await?;
    let (mut input, mut output) = tokio::io::split(socket);
    // A HELLO with cluster id 0 asks for a snapshot (see docs/kv-replication.md).
    write_frame(&mut output, &hello([0; 16], 0, [0; 32])).await?;
    let mut file = tokio::fs::File::create(path).await?;
    let mut received = 0u64;
    loop {
        let frame = tokio::time::timeout(SILENCE_LIMIT, read_frame(&mut input))
            .await
            .map_err(|_| protocol("upstream went silent during bootstrap"))??;
        count_received(status, &frame);
        match frame {
            Frame::Welcome {
                cluster_id: theirs,
                head,
                root_api,
                ..
            } => {
                if let Some(ours) = cluster
                    && ours != theirs
                {
                    return Err(Error::Replication {
                        message: format!(
                            "upstream belongs to cluster {}, this replica to {}",
                            crate::hex::encode(&theirs),
                            crate::hex::encode(&ours)
                        ),
                        fatal: true,
                    });
                }
                status.welcomed(head, root_api);
            }
            Frame::SnapshotChunk(payload) => {
                received += payload.len() as u64;
                status.bootstrap_received.store(received, Ordering::Relaxed);
                file.write_all(&payload).await?;
                tracing::debug!(received, "bootstrap snapshot progress");
            }
            Frame::SnapshotEnd { .. } => break,
            Frame::Error { code, message } => return Err(upstream_error(code, message)),
            other => {
                return Err(protocol(format!(
                    "unexpected {} frame during bootstrap",
                    other.name()
                )));
            }
        }
    }
    file.sync_all().await?;
    Ok(received)
}

/// Re-bootstrap a replica in place: download a snapshot next to the store, then swap the
/// store's state for it in one transaction, so reads see the old state until the new one is
/// committed.
async fn rebootstrap(
    store: &Store,
    upstream: SocketAddr,
    status: &ReplicaStatus,
) -> Result<(), Error> {
    let cluster = {
        let reader = store.reader().clone();
        tokio::task::spawn_blocking(move || reader.head())
            .await
            .map_err(|_| Error::Closed)??
            .cluster_id
    };
    let partial = store.reader().env.path().join("rebootstrap.snapshot");
    let received = download_snapshot(upstream, &partial, status, Some(cluster)).await?;
    let file = std::fs::File::open(&partial)?;
    let replaced = store.replace_from_snapshot(file).await;
    let _ = tokio::fs::remove_file(&partial).await;
    let info = replaced?;
    status.bootstraps.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        seq = info.seq,
        pairs = info.pairs,
        bytes = received,
        "replica re-bootstrapped in place from a snapshot"
    );
    Ok(())
}

fn partial_snapshot_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".bootstrap-snapshot");
    dir.with_file_name(name)
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s, each wait +-50 %.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        let jitter = rand::random_range(0.5..1.5);
        tokio::time::sleep(self.0.mul_f64(jitter)).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}

/// Follow `upstream` forever: apply its log, reconnecting with backoff and jitter. Returns only
/// when replication must stop for good (a tampered or foreign stream), with the reason, which
/// is also kept in `status`.
pub async fn follow(store: Store, upstream: SocketAddr, status: Arc<ReplicaStatus>) -> Error {
    let mut backoff = Backoff::new();
    loop {
        let applied_before = store.stats().batches;
        let result = session(&store, upstream, &status).await;
        status.connected.store(false, Ordering::Relaxed);
        let err = match result {
            Ok(()) => protocol("upstream closed the connection"),
            Err(err) => err,
        };
        let err = match err {
            Error::NeedsSnapshot(reason) => {
                tracing::warn!(%upstream, %reason, "position truncated upstream; re-bootstrapping in place");
                match rebootstrap(&store, upstream, &status).await {
                    Ok(()) => {
                        backoff.reset();
                        continue;
                    }
                    Err(err) => err,
                }
            }
            other => other,
        };
        if err.is_corrupt() || matches!(err, Error::Replication { fatal: true, .. }) {
            tracing::error!(%upstream, error = %err, "replication stopped: refusing this upstream's stream");
            *status.stopped.lock() = Some(err.to_string());
            return err;
        }
        if err.is_full() {
            tracing::error!(%upstream, error = %err, "replica store full; retrying");
        } else {
            tracing::warn!(%upstream, error = %err, "replication link down; reconnecting");
        }
        if store.stats().batches > applied_before {
            backoff.reset();
        }
        *status.last_error.lock() = Some(err.to_string());
        backoff.wait().await;
    }
}

async fn session(store: &Store, upstream: SocketAddr, status: &ReplicaStatus) -> Result<(), Error> {
    let socket = connect(upstream, status.tls.as_ref()).await?;
    let (mut input, mut output) = tokio::io::split(socket);
    let head = {
        let reader = store.reader().clone();
        tokio::task::spawn_blocking(move || reader.head())
            .await
            .map_err(|_| Error::Closed)??
    };
    write_frame(&mut output, &hello(head.cluster_id, head.seq, head.chain)).await?;
    // Records in flight to the committer, oldest first (see `Store::submit_replicated`).
    let mut in_flight = InFlight::new();
    let result = receive(&mut input, store, status, &mut in_flight).await;
    // Whatever ended the session, let queued records land before the next HELLO reads our
    // head, or the next session would be offered records we already applied. A refusal among
    // them is the more important error.
    let mut drained: Result<(), Error> = Ok(());
    for pending in in_flight.drain(..) {
        if let Err(err) = pending.await {
            // The first refusal of a tampered entry wins over everything; otherwise the first
            // error (later records fail only because an earlier one was not applied).
            let refusal = err.is_corrupt();
            if drained.is_ok() || (refusal && !drained.as_ref().is_err_and(Error::is_corrupt)) {
                drained = Err(err);
            }
        }
    }
    match (result, drained) {
        (_, Err(err)) if err.is_corrupt() => Err(err),
        (Err(err), _) | (Ok(()), Err(err)) => Err(err),
        (Ok(()), Ok(())) => Ok(()),
    }
}

type InFlight =
    std::collections::VecDeque<std::pin::Pin<Box<dyn Future<Output = Result<u64, Error>> + Send>>>;

async fn receive<R: AsyncRead + Unpin>(
    input: &mut R,
    store: &Store,
    status: &ReplicaStatus,
    in_flight: &mut InFlight,
) -> Result<(), Error> {
    loop {
        // Collect finished applies without waiting, so a refusal surfaces promptly.
        while let Some(front) = in_flight.front_mut() {
            match futures::FutureExt::now_or_never(front) {
                Some(result) => {
                    // Popped before `?`: a finished future must never be polled again.
                    in_flight.pop_front();
                    result?;
                    status.applied_again();
                }
                None => break,
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            if let Some(front) = in_flight.pop_front() {
                front.await?;
            }
        }
        let frame = tokio::time::timeout(SILENCE_LIMIT, read_frame(input))
            .await
            .map_err(|_| protocol("upstream silent for too long"))??;
        count_received(status, &frame);
        match frame {
            Frame::Welcome { head, root_api, .. } => {
                status.welcomed(head, root_api);
                status.connected.store(true, Ordering::Relaxed);
            }
            Frame::Record(record) => {
                status.heard(record.seq);
                store.announce_received(&record);
                // Verified against our own chain inside the committer; refused = nothing applied.
                in_flight.push_back(Box::pin(store.submit_replicated(record)?));
            }
            Frame::Heartbeat { head, .. } => status.heard(head),
            Frame::Error { code, message } => return Err(upstream_error(code, message)),
            other => return Err(protocol(format!("unexpected {} frame", other.name()))),
        }
    }
}
