//! Snapshots: a streamed dump of every pair at one sequence, taken from a read transaction
//! while writes continue, and restore from it (format in `docs/kv-format.md`).

use std::{
    io::{self, Read, Write},
    path::Path,
};

use heed::RwTxn;

use crate::{Error, Reader, Store, StoreConfig, StoreDigest, config::MAX_KEY_LEN, env};

const MAGIC: &[u8; 8] = b"QSKVSNAP";
const SNAPSHOT_VERSION: u8 = 1;

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The cluster it came from.
    pub cluster_id: [u8; 16],
    /// The sequence it was taken at.
    pub seq: u64,
    /// The chain checksum at `seq`.
    pub chain: [u8; 32],
    /// The digest at `seq`.
    pub digest: StoreDigest,
    /// Number of pairs.
    pub pairs: u64,
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Reader {
    /// Stream a consistent snapshot to `out`. Writers keep committing meanwhile; the snapshot
    /// is exactly the state at the sequence it reports.
    pub fn write_snapshot(&self, out: impl Write) -> Result<SnapshotInfo, Error> {
        let view = self.view()?;
        let meta = view.meta()?;
        let mut out = Hashing {
            inner: io::BufWriter::new(out),
            hasher: blake3::Hasher::new(),
        };
        out.write_all(MAGIC)?;
        out.write_all(&[SNAPSHOT_VERSION])?;
        out.write_all(&meta.cluster_id)?;
        out.write_all(&meta.head.to_be_bytes())?;
        out.write_all(&meta.chain)?;
        out.write_all(meta.digest.as_bytes())?;
        let mut pairs = 0u64;
        view.for_each_pair(|key, value| {
            out.write_all(&(key.len() as u32).to_be_bytes())?;
            out.write_all(key)?;
            out.write_all(&(value.len() as u32).to_be_bytes())?;
            out.write_all(value)?;
            pairs += 1;
            Ok(())
        })?;
        // A zero key length ends the pairs (keys are never empty).
        out.write_all(&0u32.to_be_bytes())?;
        out.write_all(&pairs.to_be_bytes())?;
        let trailer = *out.hasher.finalize().as_bytes();
        out.inner.write_all(&trailer)?;
        out.inner.flush()?;
        Ok(SnapshotInfo {
            cluster_id: meta.cluster_id,
            seq: meta.head,
            chain: meta.chain,
            digest: meta.digest,
            pairs,
        })
    }
}

impl Store {
    /// Create a store in `dir` (which must not hold a store) from a snapshot. Everything is
    /// checked before anything is committed: the trailer hash, the pair count and the digest.
    /// The new store's log starts after the snapshot's sequence.
    pub fn restore(
        dir: impl AsRef<Path>,
        snapshot: impl Read,
        config: StoreConfig,
    ) -> Result<(Self, SnapshotInfo), Error> {
        let dir = dir.as_ref();
        config.validate()?;
        let info = {
            let (lmdb, dbs) = env::open(
                dir,
                Some(config.map_size),
                &env::Mode::Write {
                    durability: config.durability,
                    init: None,
                },
            )?;
            let map_size = config.map_size;
            let heed_err = |err| Error::from_heed(err, map_size);
            let mut txn = lmdb.write_txn().map_err(heed_err)?;
            if env::read_meta(&txn, &dbs.meta)?.is_some() {
                return Err(Error::Corrupt(format!(
                    "{} already holds a store; restore needs an empty directory",
                    dir.display()
                )));
            }
            let info = load_snapshot(&mut txn, &dbs, snapshot, map_size)?;
            env::write_meta(&mut txn, &dbs.meta, &info.meta()).map_err(heed_err)?;
            txn.commit().map_err(heed_err)?;
            info
        };
        // The restore environment is closed (dropped) above; reopen it as a normal store.
        let store = Self::open_in_cluster(dir, config, info.cluster_id)?;
        Ok((store, info))
    }
}

impl SnapshotInfo {
    /// The `meta` of a store restored from this snapshot: its log starts after `seq`.
    pub(crate) fn meta(&self) -> env::Meta {
        env::Meta {
            cluster_id: self.cluster_id,
            head: self.seq,
            chain: self.chain,
            digest: self.digest,
            log_first: self.seq + 1,
            log_bytes: 0,
            log_base: self.chain,
        }
    }
}

/// Read a whole snapshot into `txn`, whose `data` database must be empty, checking the trailer
/// hash, the pair count and the digest. On an error the caller drops `txn`: nothing is applied.
pub(crate) fn load_snapshot(
    txn: &mut RwTxn<'_>,
    dbs: &env::Dbs,
    snapshot: impl Read,
    map_size: usize,
) -> Result<SnapshotInfo, Error> {
    let heed_err = |err| Error::from_heed(err, map_size);
    let mut input = HashingReader {
        inner: io::BufReader::new(snapshot),
        hasher: blake3::Hasher::new(),
    };
    let magic: [u8; 8] = read_array(&mut input)?;
    let [version] = read_array(&mut input)?;
    if &magic != MAGIC || version != SNAPSHOT_VERSION {
        return Err(Error::Corrupt(format!(
            "not a version {SNAPSHOT_VERSION} quicksilver-kv snapshot"
        )));
    }
    let cluster_id: [u8; 16] = read_array(&mut input)?;
    let seq = u64::from_be_bytes(read_array(&mut input)?);
    let chain: [u8; 32] = read_array(&mut input)?;
    let digest = StoreDigest(read_array(&mut input)?);
    let mut computed = StoreDigest::EMPTY;
    let mut pairs = 0u64;
    let mut key = Vec::new();
    let mut value = Vec::new();
    loop {
        let key_len = u32::from_be_bytes(read_array(&mut input)?) as usize;
        if key_len == 0 {
            break;
        }
        if key_len > MAX_KEY_LEN {
            return Err(Error::Corrupt(format!("snapshot key of {key_len} bytes")));
        }
        read_vec(&mut input, &mut key, key_len)?;
        let value_len = u32::from_be_bytes(read_array(&mut input)?) as usize;
        if value_len > 64 << 20 {
            return Err(Error::Corrupt(format!(
                "snapshot value of {value_len} bytes"
            )));
        }
        read_vec(&mut input, &mut value, value_len)?;
        dbs.data.put(txn, &key, &value).map_err(heed_err)?;
        computed.add_pair(&key, &value);
        pairs += 1;
    }
    let count = u64::from_be_bytes(read_array(&mut input)?);
    let expected_trailer = *input.hasher.finalize().as_bytes();
    let mut trailer = [0; 32];
    input.inner.read_exact(&mut trailer).map_err(truncated)?;
    if trailer != expected_trailer {
        return Err(Error::Corrupt("snapshot trailer hash mismatch".into()));
    }
    if count != pairs || computed != digest {
        return Err(Error::Corrupt(format!(
            "snapshot content does not match its header: {pairs} pairs (trailer says \
             {count}), digest {} (header says {})",
            computed.to_hex(),
            digest.to_hex()
        )));
    }
    Ok(SnapshotInfo {
        cluster_id,
        seq,
        chain,
        digest,
        pairs,
    })
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn truncated(err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        Error::Corrupt("snapshot is truncated".into())
    } else {
        Error::Io(err)
    }
}

fn read_array<const N: usize>(input: &mut impl Read) -> Result<[u8; N], Error> {
    let mut out = [0; N];
    input.read_exact(&mut out).map_err(truncated)?;
    Ok(out)
}

fn read_vec(input: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> Result<(), Error> {
    buf.clear();
    buf.resize(len, 0);
    input.read_exact(buf).map_err(truncated)
}
