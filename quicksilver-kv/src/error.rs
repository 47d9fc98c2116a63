//! The one error type of the store, its reader and its HTTP node.

use std::io;

/// `EIO` on Linux and the BSDs.
const EIO: i32 = 5;

/// Everything that can go wrong opening, reading, writing or verifying a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// LMDB reported an error we do not map to anything more specific.
    #[error("LMDB: {0}")]
    Lmdb(#[from] heed::Error),
    /// The LMDB map (or the disk under it) is full: the write was refused, nothing was applied,
    /// and the store stays readable.
    #[error(
        "the store is full (LMDB map of {map_size} bytes or the disk): write refused, nothing applied"
    )]
    StoreFull {
        /// The configured map size in bytes.
        map_size: usize,
    },
    /// Writing the store's file failed mid-commit. LMDB reports a short write as EIO, which is
    /// what a full disk, a quota or a file-size limit (`RLIMIT_FSIZE`) look like, as well as a
    /// failing disk. The transaction was rolled back: nothing was applied and the store stays
    /// readable.
    #[error(
        "writing the store failed ({source}): the disk may be full, over a quota or file-size \
         limit, or failing; the commit was rolled back, nothing applied"
    )]
    WriteFailed {
        /// The error LMDB passed on.
        source: io::Error,
    },
    /// A file-system error outside LMDB (creating the directory, reading a snapshot).
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The environment at this path is already open in this process (LMDB allows one per
    /// process: close the other `Store` first).
    #[error("the store at {path} is already open in this process")]
    AlreadyOpen {
        /// The directory given to `open`.
        path: String,
    },
    /// A key is empty or longer than the limit.
    #[error("key of {len} bytes is not allowed: keys must be 1..={max} bytes")]
    BadKeyLength {
        /// The key's length.
        len: usize,
        /// [`crate::MAX_KEY_LEN`].
        max: usize,
    },
    /// A value is longer than the configured limit.
    #[error("value of {len} bytes for key {key:?} exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The key (lossy UTF-8), to name the culprit.
        key: String,
        /// The value's length.
        len: usize,
        /// The configured `max_value_len`.
        max: usize,
    },
    /// A batch has no operations, too many, or too many bytes.
    #[error("batch refused: {0}")]
    BadBatch(String),
    /// The requested history is no longer in the log (retention truncated it).
    #[error(
        "sequence {requested} was compacted: the log now starts at {first_retained} (take a snapshot instead)"
    )]
    Compacted {
        /// The first sequence the caller asked for.
        requested: u64,
        /// The oldest sequence still in the log.
        first_retained: u64,
    },
    /// A sequence beyond the store's head was requested.
    #[error("sequence {requested} is in the future: the head is {head}")]
    FutureSequence {
        /// The sequence asked for.
        requested: u64,
        /// The store's head.
        head: u64,
    },
    /// Stored or received bytes fail their checks: a log entry, the chain, the digest, a snapshot.
    #[error("corruption detected: {0}")]
    Corrupt(String),
    /// The store was written by an incompatible format version.
    #[error("unsupported store format version {found} (this build reads version {supported})")]
    UnsupportedFormat {
        /// The version found in the `meta` database.
        found: u32,
        /// [`crate::FORMAT_VERSION`].
        supported: u32,
    },
    /// A configuration field has an invalid value.
    #[error("invalid config: {field} = {value}: {reason}")]
    Config {
        /// The field's name.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The replication link failed or the upstream refused this replica. `fatal` errors (a
    /// foreign cluster, diverged histories) stop replication; others are retried.
    #[error("replication: {message}")]
    Replication {
        /// What happened.
        message: String,
        /// Whether retrying cannot help.
        fatal: bool,
    },
    /// Bytes received on a replication link are not a valid frame; the connection is closed.
    #[error("replication: bad frame: {0}")]
    BadFrame(#[from] crate::FrameError),
    /// The upstream no longer holds this replica's position in its log (retention truncated
    /// it): the replica must fetch a snapshot, which [`crate::follow`] does in place.
    #[error("replication: the upstream truncated this replica's position: {0}")]
    NeedsSnapshot(String),
    /// TLS material for replication links could not be loaded or used.
    #[error("replication TLS: {0}")]
    Tls(String),
    /// The store's committer has shut down (the store is closing).
    #[error("the store is closed")]
    Closed,
}

impl Error {
    /// True when the write was refused because the map or the disk is full.
    pub fn is_full(&self) -> bool {
        matches!(self, Self::StoreFull { .. } | Self::WriteFailed { .. })
    }

    /// True when the requested history was truncated from the log.
    pub fn is_compacted(&self) -> bool {
        matches!(self, Self::Compacted { .. })
    }

    /// True when the caller sent something invalid (key, value, batch, sequence).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::BadKeyLength { .. }
                | Self::ValueTooLarge { .. }
                | Self::BadBatch(_)
                | Self::FutureSequence { .. }
        )
    }

    /// True when stored or received bytes failed an integrity check.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt(_))
    }

    pub(crate) fn from_heed(err: heed::Error, map_size: usize) -> Self {
        match err {
            heed::Error::Mdb(heed::MdbError::MapFull) => Self::StoreFull { map_size },
            // ENOSPC, or EFBIG: the file may not grow (a quota, RLIMIT_FSIZE).
            heed::Error::Io(io_err)
                if matches!(
                    io_err.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::FileTooLarge
                ) =>
            {
                Self::StoreFull { map_size }
            }
            heed::Error::Io(source) if source.raw_os_error() == Some(EIO) => {
                Self::WriteFailed { source }
            }
            other => Self::Lmdb(other),
        }
    }
}
