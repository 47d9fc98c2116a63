//! Opening the LMDB environment, its three named databases, and the `meta` record.

use std::path::Path;

use heed::{
    CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, RoTxn, RwTxn, WithoutTls, types::Bytes,
};

use crate::{Durability, Error, StoreDigest, entry::GENESIS_CHECKSUM};

/// The on-disk format this build writes and reads (`meta` key `format`).
pub const FORMAT_VERSION: u32 = 1;

pub(crate) type RawDb = Database<'static, Bytes, Bytes>;

/// The environment type: read transactions without thread-local reader slots (`MDB_NOTLS`),
/// so a thread may hold a cached read transaction ([`crate::CachedReader`]) and still open
/// views, and a read transaction may move between threads (tokio workers).
pub(crate) type KvEnv = Env<WithoutTls>;

/// The three named databases: `data` (key -> value), `log` (big-endian seq -> checksum || entry)
/// and `meta` (see [`Meta`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dbs {
    pub(crate) data: RawDb,
    pub(crate) log: RawDb,
    pub(crate) meta: RawDb,
}

/// The `meta` database, decoded. Written in the same transaction as every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) cluster_id: [u8; 16],
    pub(crate) head: u64,
    pub(crate) chain: [u8; 32],
    pub(crate) digest: StoreDigest,
    /// The oldest sequence still in `log` (head + 1 when the log is empty).
    pub(crate) log_first: u64,
    /// Bytes of all log values currently stored.
    pub(crate) log_bytes: u64,
    /// The chain checksum of entry `log_first - 1` (genesis when nothing was truncated), so
    /// the retained log verifies on its own.
    pub(crate) log_base: [u8; 32],
}

const KEY_FORMAT: &[u8] = b"format";
const KEY_CLUSTER: &[u8] = b"cluster_id";
const KEY_HEAD: &[u8] = b"head_seq";
const KEY_CHAIN: &[u8] = b"chain";
const KEY_DIGEST: &[u8] = b"digest";
const KEY_LOG_FIRST: &[u8] = b"log_first";
const KEY_LOG_BYTES: &[u8] = b"log_bytes";
const KEY_LOG_BASE: &[u8] = b"log_base";

pub(crate) enum Mode {
    /// Open for writing; when the store is new and `init` is given, write a fresh `meta` with
    /// that cluster id in the same transaction that creates the databases, so no other process
    /// ever sees a half-initialised store.
    Write {
        durability: Durability,
        init: Option<[u8; 16]>,
    },
    ReadOnly,
}

/// Open (and for writers create) the environment at `dir`.
pub(crate) fn open(
    dir: &Path,
    map_size: Option<usize>,
    mode: &Mode,
) -> Result<(KvEnv, Dbs), Error> {
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.max_dbs(3).max_readers(256);
    if let Some(map_size) = map_size {
        options.map_size(map_size);
    }
    match mode {
        Mode::Write { durability, .. } => {
            std::fs::create_dir_all(dir)?;
            match durability {
                // SAFETY: MDB_NOSYNC only skips fsync; LMDB stays consistent after a process
                // crash. The weaker guarantee on machine crash is documented on
                // `Durability::NoSync`, which is the only way to get here.
                Durability::NoSync => unsafe {
                    options.flags(EnvFlags::NO_SYNC);
                },
                // SAFETY: MDB_NOMETASYNC still flushes every transaction's data pages before
                // its meta page is written, so the store is never damaged; only the last
                // commit may be undone by a machine crash, as `Durability::DataSync` says.
                Durability::DataSync => unsafe {
                    options.flags(EnvFlags::NO_META_SYNC);
                },
                Durability::Fsync => {}
            }
        }
        Mode::ReadOnly => {
            // SAFETY: READ_ONLY is not one of the flags that weaken LMDB's guarantees.
            unsafe {
                options.flags(EnvFlags::READ_ONLY);
            }
        }
    }
    // SAFETY: the map is only unsound if the file is modified behind LMDB's back. Within this
    // process heed refuses a second open of the same path (`EnvAlreadyOpened`, mapped to
    // `Error::AlreadyOpen`); other processes go through LMDB's lock file (we never set
    // NO_LOCK), and we never write to the files except through LMDB.
    let env = unsafe { options.open(dir) }.map_err(|err| match err {
        heed::Error::EnvAlreadyOpened => Error::AlreadyOpen {
            path: dir.display().to_string(),
        },
        other => Error::Lmdb(other),
    })?;
    let dbs = match mode {
        Mode::Write { init, .. } => {
            let wtxn = env.write_txn().map_err(Error::Lmdb)?;
            env.create_databases_and_commit(wtxn, |opener, wtxn| {
                let data: Database<'_, Bytes, Bytes> =
                    opener.create_database(wtxn, Some("data"))?;
                let log = opener.create_database(wtxn, Some("log"))?;
                let meta = opener.create_database(wtxn, Some("meta"))?;
                if let Some(cluster_id) = init
                    && read_meta(wtxn, &meta)?.is_none()
                {
                    write_meta(wtxn, &meta, &fresh_meta(*cluster_id)).map_err(Error::Lmdb)?;
                }
                Ok::<_, Error>(CommitOrAbort::<_, ()>::Commit((data, log, meta)))
            })?
            .unwrap_commit()
        }
        Mode::ReadOnly => {
            let rtxn = env.read_txn().map_err(Error::Lmdb)?;
            env.open_databases_and_commit(rtxn, |opener, rtxn| {
                let data: Option<Database<'_, Bytes, Bytes>> =
                    opener.open_database(rtxn, Some("data"))?;
                let log = opener.open_database(rtxn, Some("log"))?;
                let meta = opener.open_database(rtxn, Some("meta"))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(
                    data.zip(log).zip(meta).map(|((d, l), m)| (d, l, m)),
                ))
            })
            .map_err(Error::Lmdb)?
            .unwrap_commit()
            .map(Ok)
            .unwrap_or_else(|| {
                Err(Error::Corrupt(format!(
                    "{} has no quicksilver-kv databases",
                    dir.display()
                )))
            })?
        }
    };
    let (data, log, meta) = dbs;
    Ok((env, Dbs { data, log, meta }))
}

/// Read only the head sequence: the one `meta` lookup on the read path.
pub(crate) fn read_head(txn: &RoTxn<'_>, dbs: &Dbs) -> Result<u64, Error> {
    match dbs.meta.get(txn, KEY_HEAD).map_err(Error::Lmdb)? {
        Some(bytes) => Ok(u64::from_be_bytes(fixed(bytes, "head_seq")?)),
        None => Ok(0),
    }
}

/// Read and check `meta`. `None` for a store that was never initialised.
pub(crate) fn read_meta(
    txn: &RoTxn<'_>,
    meta_db: &Database<'_, Bytes, Bytes>,
) -> Result<Option<Meta>, Error> {
    let get = |key: &[u8]| meta_db.get(txn, key).map_err(Error::Lmdb);
    let Some(format) = get(KEY_FORMAT)? else {
        return Ok(None);
    };
    let format = u32::from_be_bytes(fixed(format, "format")?);
    if format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let required = |key: &'static [u8]| -> Result<&[u8], Error> {
        get(key)?.ok_or_else(|| {
            Error::Corrupt(format!(
                "meta key {:?} missing",
                String::from_utf8_lossy(key)
            ))
        })
    };
    Ok(Some(Meta {
        cluster_id: fixed(required(KEY_CLUSTER)?, "cluster_id")?,
        head: u64::from_be_bytes(fixed(required(KEY_HEAD)?, "head_seq")?),
        chain: fixed(required(KEY_CHAIN)?, "chain")?,
        digest: StoreDigest(fixed(required(KEY_DIGEST)?, "digest")?),
        log_first: u64::from_be_bytes(fixed(required(KEY_LOG_FIRST)?, "log_first")?),
        log_bytes: u64::from_be_bytes(fixed(required(KEY_LOG_BYTES)?, "log_bytes")?),
        log_base: fixed(required(KEY_LOG_BASE)?, "log_base")?,
    }))
}

/// Write every `meta` key.
pub(crate) fn write_meta(
    txn: &mut RwTxn<'_>,
    meta_db: &Database<'_, Bytes, Bytes>,
    meta: &Meta,
) -> Result<(), heed::Error> {
    meta_db.put(txn, KEY_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
    meta_db.put(txn, KEY_CLUSTER, &meta.cluster_id)?;
    meta_db.put(txn, KEY_HEAD, &meta.head.to_be_bytes())?;
    meta_db.put(txn, KEY_CHAIN, &meta.chain)?;
    meta_db.put(txn, KEY_DIGEST, meta.digest.as_bytes())?;
    meta_db.put(txn, KEY_LOG_FIRST, &meta.log_first.to_be_bytes())?;
    meta_db.put(txn, KEY_LOG_BYTES, &meta.log_bytes.to_be_bytes())?;
    meta_db.put(txn, KEY_LOG_BASE, &meta.log_base)?;
    Ok(())
}

/// The `meta` of a brand-new store.
pub(crate) fn fresh_meta(cluster_id: [u8; 16]) -> Meta {
    Meta {
        cluster_id,
        head: 0,
        chain: GENESIS_CHECKSUM,
        digest: StoreDigest::EMPTY,
        log_first: 1,
        log_bytes: 0,
        log_base: GENESIS_CHECKSUM,
    }
}

fn fixed<const N: usize>(bytes: &[u8], what: &str) -> Result<[u8; N], Error> {
    bytes.try_into().map_err(|_| {
        Error::Corrupt(format!(
            "meta {what} has {} bytes, expected {N}",
            bytes.len()
        ))
    })
}
