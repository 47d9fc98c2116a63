//! The writable store: open/create, group commit through one committer thread, log retention.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use heed::RwTxn;
use tokio::sync::{oneshot, watch};

use crate::{
    Batch, Error, LogRecord, Reader, SnapshotInfo, StoreConfig,
    config::MAX_KEY_LEN,
    entry::{Op, chain_checksum, encode_entry},
    env::{self, Dbs, Meta},
    reader::check_record,
};

/// Log entries trimmed per retention transaction, so a big trim never holds the write lock
/// for long and queued writers get in between chunks.
const TRIM_CHUNK: usize = 4096;

/// Received records a slow downstream session may fall behind by before it reads the log
/// instead.
const RECEIVED_BACKLOG: usize = 4096;

/// Longest a group commit waits for more concurrent writers (see `Committer::run`): small
/// next to a durable commit's two disk flushes (milliseconds), long enough for a burst of
/// HTTP writers to arrive.
const GATHER_MAX: Duration = Duration::from_micros(500);

/// A quicksilver-kv store opened for writing: the root's store (or, later, a replica's).
///
/// Cheap to clone; the committer thread stops when the last clone is dropped. One `Store` per
/// directory per process (LMDB's rule).
#[derive(Clone, Debug)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    core: Arc<Core>,
    requests: Option<mpsc::Sender<Job>>,
    committer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Core {
    reader: Reader,
    config: StoreConfig,
    head: watch::Sender<u64>,
    /// Records this replica received from its upstream, announced before they are committed
    /// here so a relay can pass them on at once (see `repl::serve_one`).
    received: tokio::sync::broadcast::Sender<Arc<LogRecord>>,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    groups: AtomicU64,
    ops: AtomicU64,
    trimmed: AtomicU64,
    failed: AtomicU64,
}

/// Counters since the store was opened (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Batches committed (each one log entry).
    pub batches: u64,
    /// Group commits (transactions, fsyncs) that carried them.
    pub groups: u64,
    /// Ops inside those batches.
    pub ops: u64,
    /// Log entries removed by retention.
    pub trimmed: u64,
    /// Batches refused by the committer (store full, bad replicated entry).
    pub failed: u64,
}

/// What the committer thread is asked to do.
enum Job {
    /// A batch or a replicated record, folded with others into a group commit.
    Batch(Request),
    /// Replace the whole store with a snapshot's state, in one transaction (see
    /// [`Store::replace_from_snapshot`]). Never grouped with batches.
    Replace {
        snapshot: std::fs::File,
        reply: oneshot::Sender<Result<SnapshotInfo, Error>>,
    },
}

enum Request {
    Write {
        ops: Vec<Op>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Replicate {
        record: LogRecord,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

impl Request {
    fn encoded_len(&self) -> usize {
        match self {
            Self::Write { ops, .. } => Batch { ops: ops.clone() }.encoded_len(),
            Self::Replicate { record, .. } => record.entry.len(),
        }
    }

    fn reply(self, result: Result<u64, Error>) {
        let reply = match self {
            Self::Write { reply, .. } | Self::Replicate { reply, .. } => reply,
        };
        // The writer may have given up waiting; its batch is committed regardless.
        let _ = reply.send(result);
    }
}

impl Store {
    /// Open the store in `dir`, creating it (with a new random cluster id) when empty.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Self, Error> {
        Self::open_with(dir.as_ref(), config, None)
    }

    /// Open or create the store; a new store takes `cluster_id`, an existing one must have it.
    /// Replicas use this so they only ever hold their cluster's data.
    pub fn open_in_cluster(
        dir: impl AsRef<Path>,
        config: StoreConfig,
        cluster_id: [u8; 16],
    ) -> Result<Self, Error> {
        Self::open_with(dir.as_ref(), config, Some(cluster_id))
    }

    fn open_with(
        dir: &Path,
        config: StoreConfig,
        cluster: Option<[u8; 16]>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let init = Some(cluster.unwrap_or_else(rand::random));
        let (env, dbs) = env::open(
            dir,
            Some(config.map_size),
            &env::Mode::Write {
                durability: config.durability,
                init,
            },
        )?;
        let map_size = config.map_size;
        let rtxn = env
            .read_txn()
            .map_err(|err| Error::from_heed(err, map_size))?;
        let meta = match env::read_meta(&rtxn, &dbs.meta)? {
            Some(meta) => {
                if let Some(wanted) = cluster
                    && wanted != meta.cluster_id
                {
                    return Err(Error::Corrupt(format!(
                        "{} belongs to cluster {}, not {}",
                        dir.display(),
                        crate::hex::encode(&meta.cluster_id),
                        crate::hex::encode(&wanted)
                    )));
                }
                meta
            }
            None => {
                return Err(Error::Corrupt(format!(
                    "{} has no meta record",
                    dir.display()
                )));
            }
        };
        drop(rtxn);
        let (head, _) = watch::channel(meta.head);
        let (received, _) = tokio::sync::broadcast::channel(RECEIVED_BACKLOG);
        let core = Arc::new(Core {
            reader: Reader {
                env,
                dbs,
                pool: Some(Arc::default()),
            },
            config,
            head,
            received,
            stats: Counters::default(),
        });
        let (requests, queue) = mpsc::channel();
        let committer_core = Arc::clone(&core);
        let committer = std::thread::Builder::new()
            .name("kv-committer".into())
            .spawn(move || Committer::new(committer_core, meta).run(&queue))?;
        Ok(Self {
            shared: Arc::new(Shared {
                core,
                requests: Some(requests),
                committer: Some(committer),
            }),
        })
    }

    /// The read handle (shares the environment; reads never wait for writes).
    pub fn reader(&self) -> &Reader {
        &self.shared.core.reader
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.core.config
    }

    /// Watch the head sequence: changes after every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.core.head.subscribe()
    }

    /// Tell this node's downstream sessions about a record just received from upstream,
    /// before it is committed here. A relay forwards it at once: the record is already durable
    /// at the root (which only serves what it committed), and every replica checks the chain
    /// itself, so this takes the relay's own disk flush off the propagation path.
    pub(crate) fn announce_received(&self, record: &LogRecord) {
        if self.shared.core.received.receiver_count() > 0 {
            let _ = self.shared.core.received.send(Arc::new(record.clone()));
        }
    }

    /// Records announced by [`Store::announce_received`].
    pub(crate) fn subscribe_received(&self) -> tokio::sync::broadcast::Receiver<Arc<LogRecord>> {
        self.shared.core.received.subscribe()
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.core.stats;
        StoreStats {
            batches: c.batches.load(Ordering::Relaxed),
            groups: c.groups.load(Ordering::Relaxed),
            ops: c.ops.load(Ordering::Relaxed),
            trimmed: c.trimmed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Check a batch against the limits without writing it.
    pub fn check_batch(&self, batch: &Batch) -> Result<(), Error> {
        let config = &self.shared.core.config;
        if batch.ops.is_empty() {
            return Err(Error::BadBatch("a batch needs at least one op".into()));
        }
        if batch.ops.len() > config.max_batch_ops {
            return Err(Error::BadBatch(format!(
                "{} ops, the limit is {}",
                batch.ops.len(),
                config.max_batch_ops
            )));
        }
        for op in &batch.ops {
            let key = op.key();
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(Error::BadKeyLength {
                    len: key.len(),
                    max: MAX_KEY_LEN,
                });
            }
            if let Op::Put { value, .. } = op
                && value.len() > config.max_value_len
            {
                return Err(Error::ValueTooLarge {
                    key: String::from_utf8_lossy(key).into_owned(),
                    len: value.len(),
                    max: config.max_value_len,
                });
            }
        }
        let bytes = batch.encoded_len();
        if bytes > config.max_batch_bytes {
            return Err(Error::BadBatch(format!(
                "{bytes} bytes encoded, the limit is {}",
                config.max_batch_bytes
            )));
        }
        Ok(())
    }

    /// Commit a batch atomically and durably (per [`crate::Durability`]); returns its sequence.
    ///
    /// Blocks until the group commit that carries it is done. Do not call from inside an async
    /// task: use [`Store::write_async`] there.
    pub fn write(&self, batch: Batch) -> Result<u64, Error> {
        let reply = self.submit_write(batch)?;
        reply.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// [`Store::write`] for async callers.
    pub async fn write_async(&self, batch: Batch) -> Result<u64, Error> {
        let reply = self.submit_write(batch)?;
        reply.await.map_err(|_| Error::Closed)?
    }

    /// Put one key.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.write(Batch::new().put(key, value))
    }

    /// Delete one key.
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64, Error> {
        self.write(Batch::new().delete(key))
    }

    /// Apply a log record received from an upstream: it must be the next sequence and chain
    /// from this store's checksum, or it is refused ([`Error::Corrupt`]) and nothing changes.
    pub async fn apply_replicated(&self, record: LogRecord) -> Result<u64, Error> {
        self.submit_replicated(record)?.await
    }

    /// Queue a replicated record now and return a future for its outcome, so a replica can
    /// keep many records in flight: the committer folds queued records into one transaction
    /// and one fsync, in order. A refused record makes every later one refused too (they no
    /// longer chain), so nothing after a bad record is ever applied.
    pub fn submit_replicated(
        &self,
        record: LogRecord,
    ) -> Result<impl Future<Output = Result<u64, Error>> + Send + 'static, Error> {
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Replicate { record, reply })?;
        Ok(async move { receiver.await.map_err(|_| Error::Closed)? })
    }

    /// Replace this store's whole state with `snapshot`'s, atomically: readers keep seeing the
    /// old data and sequence until the new state is committed in one LMDB transaction, and a
    /// snapshot that fails any check (trailer hash, pair count, digest, cluster id) changes
    /// nothing. The log restarts after the snapshot's sequence, which must not be behind this
    /// store's head. A replica whose position was truncated from its upstream's log uses this
    /// to re-bootstrap in place.
    pub async fn replace_from_snapshot(
        &self,
        snapshot: std::fs::File,
    ) -> Result<SnapshotInfo, Error> {
        let (reply, receiver) = oneshot::channel();
        self.shared
            .requests
            .as_ref()
            .ok_or(Error::Closed)?
            .send(Job::Replace { snapshot, reply })
            .map_err(|_| Error::Closed)?;
        receiver.await.map_err(|_| Error::Closed)?
    }

    /// Close the store: wait for queued batches to commit and release the environment.
    /// Dropping the last clone does the same.
    pub fn close(self) {
        drop(self);
    }

    fn submit_write(&self, batch: Batch) -> Result<oneshot::Receiver<Result<u64, Error>>, Error> {
        self.check_batch(&batch)?;
        let (reply, receiver) = oneshot::channel();
        self.send(Request::Write {
            ops: batch.ops,
            reply,
        })?;
        Ok(receiver)
    }

    fn send(&self, request: Request) -> Result<(), Error> {
        self.shared
            .requests
            .as_ref()
            .ok_or(Error::Closed)?
            .send(Job::Batch(request))
            .map_err(|_| Error::Closed)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue lets the committer finish what is queued and exit.
        self.requests.take();
        if let Some(committer) = self.committer.take()
            && committer.join().is_err()
        {
            tracing::error!("the kv committer thread panicked");
        }
    }
}

struct Committer {
    core: Arc<Core>,
    meta: Meta,
    /// A job taken from the queue that did not fit the previous group.
    carried: Option<Job>,
    /// Retention failed (e.g. store full); retry after the next successful commit.
    trim_blocked: bool,
    /// Writes (not replicated records) in the last group, for the gather wait.
    last_group_writes: usize,
}

impl Committer {
    fn new(core: Arc<Core>, meta: Meta) -> Self {
        Self {
            core,
            meta,
            carried: None,
            trim_blocked: false,
            last_group_writes: 0,
        }
    }

    fn run(mut self, queue: &mpsc::Receiver<Job>) {
        loop {
            let job = match self.carried.take() {
                Some(request) => request,
                None if self.needs_trim() => match queue.try_recv() {
                    Ok(request) => request,
                    Err(mpsc::TryRecvError::Empty) => {
                        self.trim_chunk();
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => return,
                },
                None => match queue.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                },
            };
            let first = match job {
                Job::Batch(request) => request,
                Job::Replace { snapshot, reply } => {
                    let _ = reply.send(self.replace(snapshot));
                    continue;
                }
            };
            // Writers under concurrency come back in a burst right after their answers: if the
            // last group carried several writes, wait briefly for about as many again, so one
            // transaction and one round of syncs carries the whole burst instead of splitting
            // it across two. A lone writer (last group of one) and replicated records never wait.
            let gather_until = (matches!(first, Request::Write { .. })
                && self.last_group_writes > 1)
                .then(|| Instant::now() + GATHER_MAX);
            let mut bytes = first.encoded_len();
            let mut group = vec![first];
            while group.len() < self.core.config.max_group_batches {
                let polled = match queue.try_recv() {
                    Ok(job) => Some(job),
                    Err(mpsc::TryRecvError::Empty) => match gather_until {
                        Some(deadline) if group.len() < self.last_group_writes => deadline
                            .checked_duration_since(Instant::now())
                            .and_then(|left| queue.recv_timeout(left).ok()),
                        _ => None,
                    },
                    Err(mpsc::TryRecvError::Disconnected) => None,
                };
                let next = match polled {
                    Some(Job::Batch(next)) => next,
                    Some(replace) => {
                        self.carried = Some(replace);
                        break;
                    }
                    None => break,
                };
                bytes += next.encoded_len();
                if bytes > self.core.config.max_batch_bytes {
                    self.carried = Some(Job::Batch(next));
                    break;
                }
                group.push(next);
            }
            self.last_group_writes = group
                .iter()
                .filter(|request| matches!(request, Request::Write { .. }))
                .count();
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let saved = self.meta;
        match self.try_commit(&group) {
            Ok(results) => {
                let stats = &self.core.stats;
                stats.groups.fetch_add(1, Ordering::Relaxed);
                for (request, result) in group.into_iter().zip(results) {
                    match &result {
                        Ok(_) => {
                            stats.batches.fetch_add(1, Ordering::Relaxed);
                            if let Request::Write { ops, .. } = &request {
                                stats.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    request.reply(result);
                }
                self.trim_blocked = false;
                self.core.head.send_replace(self.meta.head);
                self.core.reader.release_pooled();
            }
            Err(err) => {
                self.meta = saved;
                if group.len() == 1 {
                    tracing::warn!(error = %err, "kv batch refused");
                    self.core.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if let Some(request) = group.into_iter().next() {
                        request.reply(Err(err));
                    }
                } else {
                    // One batch may be what overflowed the map: commit the rest one by one,
                    // so each writer gets its own answer.
                    for request in group {
                        self.commit_group(vec![request]);
                    }
                }
            }
        }
    }

    /// Apply every request in one transaction. Per-request refusals (a replicated record
    /// that does not chain) are in the returned list; an LMDB error fails the whole group.
    fn try_commit(&mut self, group: &[Request]) -> Result<Vec<Result<u64, Error>>, Error> {
        let map_size = self.core.config.map_size;
        let heed_err = |err| Error::from_heed(err, map_size);
        let reader = &self.core.reader;
        let mut txn = reader.env.write_txn().map_err(heed_err)?;
        let mut results = Vec::with_capacity(group.len());
        for request in group {
            let seq = self.meta.head + 1;
            match request {
                Request::Write { ops, .. } => {
                    let entry = encode_entry(seq, ops);
                    let checksum = chain_checksum(&self.meta.chain, &entry);
                    apply(
                        &mut txn,
                        &reader.dbs,
                        &mut self.meta,
                        ops,
                        seq,
                        checksum,
                        &entry,
                    )
                    .map_err(heed_err)?;
                    results.push(Ok(seq));
                }
                Request::Replicate { record, .. } => {
                    // A record out of sequence is a gap (an earlier one was not applied, e.g. the
                    // disk was full) or a duplicate, not tampering: the session restarts from
                    // this store's head. A record in sequence that does not chain is refused.
                    let checked = if record.seq == seq {
                        check_record(record, &self.meta.chain)
                    } else {
                        Err(Error::Replication {
                            message: format!(
                                "replicated entry {} does not follow head {}",
                                record.seq, self.meta.head
                            ),
                            fatal: false,
                        })
                    };
                    match checked {
                        Ok(decoded) => {
                            apply(
                                &mut txn,
                                &reader.dbs,
                                &mut self.meta,
                                &decoded.ops,
                                seq,
                                record.checksum,
                                &record.entry,
                            )
                            .map_err(heed_err)?;
                            results.push(Ok(seq));
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "refusing a replicated log entry");
                            results.push(Err(err));
                        }
                    }
                }
            }
        }
        env::write_meta(&mut txn, &reader.dbs.meta, &self.meta).map_err(heed_err)?;
        txn.commit().map_err(heed_err)?;
        Ok(results)
    }

    /// Swap the whole state for a snapshot's in one transaction (see
    /// [`Store::replace_from_snapshot`]).
    fn replace(&mut self, snapshot: std::fs::File) -> Result<SnapshotInfo, Error> {
        let map_size = self.core.config.map_size;
        let heed_err = |err| Error::from_heed(err, map_size);
        let reader = &self.core.reader;
        let mut txn = reader.env.write_txn().map_err(heed_err)?;
        reader.dbs.data.clear(&mut txn).map_err(heed_err)?;
        reader.dbs.log.clear(&mut txn).map_err(heed_err)?;
        let info = crate::snapshot::load_snapshot(&mut txn, &reader.dbs, snapshot, map_size)?;
        if info.cluster_id != self.meta.cluster_id {
            return Err(Error::Corrupt(format!(
                "the snapshot belongs to cluster {}, this store to {}",
                crate::hex::encode(&info.cluster_id),
                crate::hex::encode(&self.meta.cluster_id)
            )));
        }
        if info.seq < self.meta.head {
            return Err(Error::Replication {
                message: format!(
                    "the snapshot at {} is behind this store's head {}",
                    info.seq, self.meta.head
                ),
                fatal: false,
            });
        }
        let meta = info.meta();
        env::write_meta(&mut txn, &reader.dbs.meta, &meta).map_err(heed_err)?;
        txn.commit().map_err(heed_err)?;
        self.meta = meta;
        self.trim_blocked = false;
        self.core.head.send_replace(meta.head);
        self.core.reader.release_pooled();
        tracing::info!(
            seq = info.seq,
            pairs = info.pairs,
            "store replaced from a snapshot"
        );
        Ok(info)
    }

    fn needs_trim(&self) -> bool {
        let retention = self.core.config.retention;
        let entries = self.meta.head + 1 - self.meta.log_first;
        !self.trim_blocked
            && entries > 0
            && (entries > retention.max_entries || self.meta.log_bytes > retention.max_bytes)
    }

    /// Delete up to [`TRIM_CHUNK`] of the oldest log entries in one transaction.
    fn trim_chunk(&mut self) {
        let saved = self.meta;
        match self.try_trim() {
            Ok(trimmed) => {
                self.core.reader.release_pooled();
                self.core
                    .stats
                    .trimmed
                    .fetch_add(trimmed, Ordering::Relaxed);
            }
            Err(err) => {
                self.meta = saved;
                self.trim_blocked = true;
                tracing::warn!(error = %err, "log retention failed; retrying after the next commit");
            }
        }
    }

    fn try_trim(&mut self) -> Result<u64, Error> {
        let map_size = self.core.config.map_size;
        let heed_err = |err| Error::from_heed(err, map_size);
        let dbs = self.core.reader.dbs;
        let mut txn = self.core.reader.env.write_txn().map_err(heed_err)?;
        let mut trimmed = 0;
        while trimmed < TRIM_CHUNK as u64 && self.needs_trim() {
            let key = self.meta.log_first.to_be_bytes();
            let value = dbs.log.get(&txn, &key).map_err(heed_err)?.ok_or_else(|| {
                Error::Corrupt(format!("log entry {} is missing", self.meta.log_first))
            })?;
            let record = crate::reader::parse_record(&key, value)?;
            let len = value.len() as u64;
            dbs.log.delete(&mut txn, &key).map_err(heed_err)?;
            self.meta.log_first += 1;
            self.meta.log_bytes -= len;
            self.meta.log_base = record.checksum;
            trimmed += 1;
        }
        env::write_meta(&mut txn, &dbs.meta, &self.meta).map_err(heed_err)?;
        txn.commit().map_err(heed_err)?;
        Ok(trimmed)
    }
}

/// Apply one batch inside `txn`: the data changes, the digest, the log entry and the head.
fn apply(
    txn: &mut RwTxn<'_>,
    dbs: &Dbs,
    meta: &mut Meta,
    ops: &[Op],
    seq: u64,
    checksum: [u8; 32],
    entry: &[u8],
) -> Result<(), heed::Error> {
    for op in ops {
        match op {
            Op::Put { key, value } => {
                if let Some(old) = dbs.data.get(txn, key)? {
                    meta.digest.remove_pair(key, old);
                }
                dbs.data.put(txn, key, value)?;
                meta.digest.add_pair(key, value);
            }
            Op::Delete { key } => {
                if let Some(old) = dbs.data.get(txn, key)? {
                    meta.digest.remove_pair(key, old);
                    dbs.data.delete(txn, key)?;
                }
            }
        }
    }
    let mut stored = Vec::with_capacity(checksum.len() + entry.len());
    stored.extend_from_slice(&checksum);
    stored.extend_from_slice(entry);
    dbs.log.put(txn, &seq.to_be_bytes(), &stored)?;
    meta.head = seq;
    meta.chain = checksum;
    meta.log_bytes += stored.len() as u64;
    Ok(())
}
