//! Reads: point gets, prefix scans, the log and whole-store verification, all from LMDB read
//! transactions, which never wait for the writer.

use std::{ops::Bound, path::Path, sync::Arc};

use heed::{RoTxn, WithoutTls};
use parking_lot::Mutex;

use crate::{
    Error, StoreDigest,
    entry::{CHECKSUM_LEN, LogEntry, chain_checksum, decode_entry},
    env::{self, Dbs, KvEnv, Meta},
    hex,
};

/// Idle read transactions a store's [`Reader`] keeps for [`Reader::get`]; more concurrent
/// readers than this just begin their own.
const POOLED_TXNS: usize = 64;

/// A handle for reading a store: cheap to clone, usable from any thread.
///
/// Get one from [`crate::Store::reader`] or, in another process on the same box,
/// [`Reader::open_read_only`].
#[derive(Clone)]
pub struct Reader {
    pub(crate) env: KvEnv,
    pub(crate) dbs: Dbs,
    /// Read transactions kept between [`Reader::get`] calls (store-owned readers only: the
    /// committer empties it after every commit, so an idle pooled transaction never pins old
    /// pages for long). `None` for [`Reader::open_read_only`], which has no committer.
    pub(crate) pool: Option<Arc<TxnPool>>,
}

/// See [`Reader::pool`].
#[derive(Default)]
pub(crate) struct TxnPool(Mutex<Vec<CachedTxn>>);

impl TxnPool {
    /// Drop every pooled transaction (they may pin a state older than the last commit).
    pub(crate) fn clear(&self) {
        let stale = std::mem::take(&mut *self.0.lock());
        drop(stale);
    }
}

impl Reader {
    /// Drop the pooled read transactions: called by the committer after every commit.
    pub(crate) fn release_pooled(&self) {
        if let Some(pool) = &self.pool {
            pool.clear();
        }
    }
}

/// A read transaction kept between reads, with the head sequence it observes.
pub(crate) struct CachedTxn {
    txn: RoTxn<'static, WithoutTls>,
    seq: u64,
}

impl CachedTxn {
    fn begin(env: &KvEnv, dbs: &Dbs) -> Result<Self, Error> {
        let txn = env.clone().static_read_txn().map_err(Error::Lmdb)?;
        let seq = env::read_head(&txn, dbs)?;
        Ok(Self { txn, seq })
    }

    /// Whether no write transaction committed since this one began: LMDB's last committed
    /// transaction id (read from the meta pages, no lock) is still the one it observes. Every
    /// batch commits in one transaction, so a current view misses no acknowledged batch and
    /// never shows part of one.
    fn is_current(&self, env: &KvEnv) -> bool {
        self.txn.id() == env.info().last_txn_id
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.env.path())
            .finish()
    }
}

/// A value and the sequence number of the store state it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The sequence the read observed (the last batch visible to it).
    pub seq: u64,
    /// What was read.
    pub value: T,
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The sequence this page was read at.
    pub seq: u64,
    /// Pairs in key order.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Pass this as `after` to get the next page; `None` when the prefix is exhausted.
    pub next_after: Option<Vec<u8>>,
}

/// The store's position and integrity values, read in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The store's cluster id (chosen when the root was created).
    pub cluster_id: [u8; 16],
    /// The last applied sequence.
    pub seq: u64,
    /// The chain checksum of entry `seq`.
    pub chain: [u8; 32],
    /// The whole-store digest at `seq`.
    pub digest: StoreDigest,
    /// The oldest sequence still in the log.
    pub log_first: u64,
    /// Bytes held by the log.
    pub log_bytes: u64,
}

impl Head {
    /// The cluster id as hex.
    pub fn cluster_id_hex(&self) -> String {
        hex::encode(&self.cluster_id)
    }

    /// The chain checksum as hex.
    pub fn chain_hex(&self) -> String {
        hex::encode(&self.chain)
    }
}

/// One log record exactly as stored: what a relay re-serves byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The entry's sequence.
    pub seq: u64,
    /// `BLAKE3(previous checksum || entry)`.
    pub checksum: [u8; 32],
    /// The encoded entry (`docs/kv-format.md`).
    pub entry: Vec<u8>,
}

impl LogRecord {
    /// Decode the entry's ops.
    pub fn decode(&self) -> Result<LogEntry, Error> {
        decode_entry(&self.entry)
    }

    /// Whether this record follows `previous` in the chain.
    pub fn follows(&self, previous: &[u8; 32]) -> bool {
        chain_checksum(previous, &self.entry) == self.checksum
    }
}

/// What a full verification checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The sequence verified at.
    pub seq: u64,
    /// Number of key/value pairs rescanned.
    pub pairs: u64,
    /// Number of log entries whose chain was checked.
    pub log_entries: u64,
    /// The digest recomputed from the data (equal to the stored one).
    pub digest: StoreDigest,
}

/// A consistent read view: every read through it sees the same sequence.
///
/// Hold it briefly: an open view keeps old pages from being reused.
pub struct ReadView<'r> {
    txn: RoTxn<'r, WithoutTls>,
    dbs: Dbs,
    seq: u64,
}

impl std::fmt::Debug for ReadView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("seq", &self.seq).finish()
    }
}

impl ReadView<'_> {
    /// The sequence this view observes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The value of `key`, borrowed from the memory map.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, Error> {
        get_in(&self.txn, &self.dbs, key)
    }

    /// Up to `limit` pairs whose key starts with `prefix`, strictly after `after` if given.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, Error> {
        let start = match after {
            Some(after) if after >= prefix && !after.is_empty() => Bound::Excluded(after),
            // LMDB rejects zero-length keys even as a range bound.
            _ if prefix.is_empty() => Bound::Unbounded,
            _ => Bound::Included(prefix),
        };
        let range = (start, Bound::Unbounded);
        let mut items = Vec::new();
        let mut more = false;
        for pair in self
            .dbs
            .data
            .range(&self.txn, &range)
            .map_err(Error::Lmdb)?
        {
            let (key, value) = pair.map_err(Error::Lmdb)?;
            if !key.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push((key.to_vec(), value.to_vec()));
        }
        let next_after = if more {
            items.last().map(|(key, _)| key.clone())
        } else {
            None
        };
        Ok(ScanPage {
            seq: self.seq,
            items,
            next_after,
        })
    }

    /// Every pair in key order (for snapshots).
    pub(crate) fn for_each_pair(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for pair in self.dbs.data.iter(&self.txn).map_err(Error::Lmdb)? {
            let (key, value) = pair.map_err(Error::Lmdb)?;
            visit(key, value)?;
        }
        Ok(())
    }

    /// The full `meta` as of this view.
    pub(crate) fn meta(&self) -> Result<Meta, Error> {
        env::read_meta(&self.txn, &self.dbs.meta)?
            .ok_or_else(|| Error::Corrupt("the store has no meta record".into()))
    }
}

impl Reader {
    /// Open a store read-only, typically from another process on the same box while the node
    /// keeps writing. Reads see every batch committed before each read began.
    ///
    /// LMDB allows one open environment per path per process: inside the node's own process
    /// use [`crate::Store::reader`] instead.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let (env, dbs) = env::open(dir.as_ref(), None, &env::Mode::ReadOnly)?;
        Ok(Self {
            env,
            dbs,
            pool: None,
        })
    }

    /// A reader for one thread's many point reads: it keeps its LMDB read transaction open
    /// between gets and begins a new one only when a write has committed since, so a get costs
    /// one B-tree lookup and no copy. See [`CachedReader`].
    pub fn cached(&self) -> CachedReader {
        CachedReader {
            env: self.env.clone(),
            dbs: self.dbs,
            cached: None,
        }
    }

    /// A consistent view for several reads at one sequence.
    pub fn view(&self) -> Result<ReadView<'_>, Error> {
        let txn = self.env.read_txn().map_err(Error::Lmdb)?;
        let seq = env::read_head(&txn, &self.dbs)?;
        Ok(ReadView {
            txn,
            dbs: self.dbs,
            seq,
        })
    }

    /// The value of `key` (copied), with the sequence it was read at.
    pub fn get(&self, key: &[u8]) -> Result<Versioned<Option<Vec<u8>>>, Error> {
        self.get_with(key, |value| value.map(<[u8]>::to_vec))
    }

    /// The value of `key`, lent to `read` (no copy), with the sequence it was read at.
    ///
    /// On a store's reader the read transaction comes from a small pool and is reused while
    /// no write has committed since it began, so a get is one B-tree lookup; readers never see
    /// part of a batch and always see every batch acknowledged before the call.
    pub fn get_with<R>(
        &self,
        key: &[u8],
        read: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<Versioned<R>, Error> {
        let cached = self.take_txn()?;
        let value = get_in(&cached.txn, &self.dbs, key)?;
        let read = Versioned {
            seq: cached.seq,
            value: read(value),
        };
        self.put_back(cached);
        Ok(read)
    }

    /// A current pooled transaction, or a new one.
    fn take_txn(&self) -> Result<CachedTxn, Error> {
        if let Some(pool) = &self.pool {
            let pooled = pool.0.lock().pop();
            if let Some(cached) = pooled
                && cached.is_current(&self.env)
            {
                return Ok(cached);
            }
        }
        CachedTxn::begin(&self.env, &self.dbs)
    }

    fn put_back(&self, cached: CachedTxn) {
        if let Some(pool) = &self.pool {
            let mut idle = pool.0.lock();
            if idle.len() < POOLED_TXNS {
                idle.push(cached);
            }
        }
    }

    /// A page of a prefix scan (see [`ReadView::scan`]).
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, Error> {
        self.view()?.scan(prefix, after, limit)
    }

    /// Position, chain checksum and digest.
    pub fn head(&self) -> Result<Head, Error> {
        let meta = self.view()?.meta()?;
        Ok(Head {
            cluster_id: meta.cluster_id,
            seq: meta.head,
            chain: meta.chain,
            digest: meta.digest,
            log_first: meta.log_first,
            log_bytes: meta.log_bytes,
        })
    }

    /// Up to `max` log records after sequence `after`, each checked against its predecessor's
    /// checksum. [`Error::Compacted`] when `after + 1` was truncated.
    pub fn log_after(&self, after: u64, max: usize) -> Result<Vec<LogRecord>, Error> {
        let view = self.view()?;
        let meta = view.meta()?;
        if after > meta.head {
            return Err(Error::FutureSequence {
                requested: after,
                head: meta.head,
            });
        }
        if after + 1 < meta.log_first {
            return Err(Error::Compacted {
                requested: after + 1,
                first_retained: meta.log_first,
            });
        }
        let mut previous = if after + 1 == meta.log_first {
            meta.log_base
        } else {
            stored_record(&view, after)?.checksum
        };
        let mut records = Vec::new();
        let start = (after + 1).to_be_bytes();
        let range = (Bound::Included(&start[..]), Bound::Unbounded);
        for pair in self.dbs.log.range(&view.txn, &range).map_err(Error::Lmdb)? {
            if records.len() == max {
                break;
            }
            let (key, value) = pair.map_err(Error::Lmdb)?;
            let record = parse_record(key, value)?;
            let expected = after + 1 + records.len() as u64;
            if record.seq != expected {
                return Err(Error::Corrupt(format!(
                    "log has entry {} where {expected} was expected",
                    record.seq
                )));
            }
            check_record(&record, &previous)?;
            previous = record.checksum;
            records.push(record);
        }
        Ok(records)
    }

    /// The chain checksum after entry `seq` (genesis for 0), if this store can still tell:
    /// [`Error::Compacted`] when `seq` is older than the retained log.
    pub fn chain_at(&self, seq: u64) -> Result<[u8; 32], Error> {
        let view = self.view()?;
        let meta = view.meta()?;
        if seq > meta.head {
            return Err(Error::FutureSequence {
                requested: seq,
                head: meta.head,
            });
        }
        if seq == meta.head {
            return Ok(meta.chain);
        }
        if seq + 1 == meta.log_first {
            return Ok(meta.log_base);
        }
        if seq + 1 < meta.log_first {
            return Err(Error::Compacted {
                requested: seq + 1,
                first_retained: meta.log_first,
            });
        }
        Ok(stored_record(&view, seq)?.checksum)
    }

    /// Recompute everything: rescan the data for the digest and walk the retained log's chain.
    /// Any disagreement with `meta` is [`Error::Corrupt`].
    pub fn verify(&self) -> Result<Verified, Error> {
        let view = self.view()?;
        let meta = view.meta()?;
        let mut digest = StoreDigest::EMPTY;
        let mut pairs = 0u64;
        view.for_each_pair(|key, value| {
            digest.add_pair(key, value);
            pairs += 1;
            Ok(())
        })?;
        if digest != meta.digest {
            return Err(Error::Corrupt(format!(
                "digest rescan {} differs from the stored digest {} at sequence {}",
                digest.to_hex(),
                meta.digest.to_hex(),
                meta.head
            )));
        }
        let mut previous = meta.log_base;
        let mut expected = meta.log_first;
        let mut log_bytes = 0u64;
        for pair in self.dbs.log.iter(&view.txn).map_err(Error::Lmdb)? {
            let (key, value) = pair.map_err(Error::Lmdb)?;
            let record = parse_record(key, value)?;
            if record.seq != expected {
                return Err(Error::Corrupt(format!(
                    "log has entry {} where {expected} was expected",
                    record.seq
                )));
            }
            check_record(&record, &previous)?;
            previous = record.checksum;
            expected += 1;
            log_bytes += value.len() as u64;
        }
        if expected != meta.head + 1 || previous != meta.chain {
            return Err(Error::Corrupt(format!(
                "log ends at {} with chain {}, meta says head {} chain {}",
                expected - 1,
                hex::encode(&previous),
                meta.head,
                hex::encode(&meta.chain)
            )));
        }
        if log_bytes != meta.log_bytes {
            return Err(Error::Corrupt(format!(
                "log holds {log_bytes} bytes, meta says {}",
                meta.log_bytes
            )));
        }
        Ok(Verified {
            seq: meta.head,
            pairs,
            log_entries: meta.head + 1 - meta.log_first,
            digest,
        })
    }
}

/// A point lookup; keys LMDB could not hold are simply absent.
fn get_in<'t>(
    txn: &'t RoTxn<'_, WithoutTls>,
    dbs: &Dbs,
    key: &[u8],
) -> Result<Option<&'t [u8]>, Error> {
    if key.is_empty() || key.len() > crate::MAX_KEY_LEN {
        return Ok(None);
    }
    dbs.data.get(txn, key).map_err(Error::Lmdb)
}

/// A reader for one thread's stream of point reads (a request handler's loop, a proxy's
/// config lookups): it keeps one LMDB read transaction open between gets and begins a new one
/// only when a write has committed since (LMDB's last transaction id moved), so a get is one
/// B-tree lookup, borrows the value from the memory map, and allocates nothing.
///
/// Every get sees every batch committed before it began and never part of a batch. An open
/// transaction keeps LMDB from reusing pages freed after it began: call
/// [`CachedReader::release`] before a thread goes idle for long while writes continue.
///
/// ```
/// use quicksilver_kv::{Store, StoreConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path(), StoreConfig::default())?;
/// let mut reader = store.reader().cached();
/// assert_eq!(reader.get(b"zones/example.com/waf")?.value, None);
/// store.put("zones/example.com/waf", "on")?;
/// let read = reader.get(b"zones/example.com/waf")?;
/// assert_eq!(read.value, Some(&b"on"[..]));
/// assert_eq!(read.seq, 1);
/// # Ok(())
/// # }
/// ```
pub struct CachedReader {
    env: KvEnv,
    dbs: Dbs,
    cached: Option<CachedTxn>,
}

impl std::fmt::Debug for CachedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedReader")
            .field("path", &self.env.path())
            .field("seq", &self.cached.as_ref().map(|cached| cached.seq))
            .finish()
    }
}

impl CachedReader {
    /// The value of `key`, borrowed from the memory map, with the sequence it was read at.
    pub fn get(&mut self, key: &[u8]) -> Result<Versioned<Option<&[u8]>>, Error> {
        let dbs = self.dbs;
        let cached = self.current()?;
        Ok(Versioned {
            seq: cached.seq,
            value: get_in(&cached.txn, &dbs, key)?,
        })
    }

    /// The sequence the next get would observe.
    pub fn seq(&mut self) -> Result<u64, Error> {
        Ok(self.current()?.seq)
    }

    /// Close the kept transaction (the next get begins a new one).
    pub fn release(&mut self) {
        self.cached = None;
    }

    fn current(&mut self) -> Result<&CachedTxn, Error> {
        // Close a stale transaction before beginning its successor: the reader slot is reused.
        let cached = match self.cached.take() {
            Some(cached) if cached.is_current(&self.env) => cached,
            stale => {
                drop(stale);
                CachedTxn::begin(&self.env, &self.dbs)?
            }
        };
        Ok(self.cached.insert(cached))
    }
}

fn stored_record(view: &ReadView<'_>, seq: u64) -> Result<LogRecord, Error> {
    let key = seq.to_be_bytes();
    let value = view
        .dbs
        .log
        .get(&view.txn, &key)
        .map_err(Error::Lmdb)?
        .ok_or_else(|| Error::Corrupt(format!("log entry {seq} is missing")))?;
    parse_record(&key, value)
}

pub(crate) fn parse_record(key: &[u8], value: &[u8]) -> Result<LogRecord, Error> {
    let seq = u64::from_be_bytes(
        key.try_into()
            .map_err(|_| Error::Corrupt(format!("log key of {} bytes", key.len())))?,
    );
    if value.len() < CHECKSUM_LEN {
        return Err(Error::Corrupt(format!(
            "log entry {seq} is {} bytes, shorter than its checksum",
            value.len()
        )));
    }
    let (checksum, entry) = value.split_at(CHECKSUM_LEN);
    let mut sum = [0; 32];
    sum.copy_from_slice(checksum);
    Ok(LogRecord {
        seq,
        checksum: sum,
        entry: entry.to_vec(),
    })
}

/// A record is sound when it chains from `previous` and decodes to its own sequence.
pub(crate) fn check_record(record: &LogRecord, previous: &[u8; 32]) -> Result<LogEntry, Error> {
    if !record.follows(previous) {
        return Err(Error::Corrupt(format!(
            "log entry {} fails its chained checksum",
            record.seq
        )));
    }
    let entry = record.decode()?;
    if entry.seq != record.seq {
        return Err(Error::Corrupt(format!(
            "log entry stored under {} says it is {}",
            record.seq, entry.seq
        )));
    }
    Ok(entry)
}
