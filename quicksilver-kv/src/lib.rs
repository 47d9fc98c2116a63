//! A replicated configuration store after Cloudflare's Quicksilver: one writer (the root),
//! every box holding the whole dataset in LMDB and reading it locally in microseconds.
//!
//! ```
//! use quicksilver_kv::{Batch, Store, StoreConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), StoreConfig::default())?;
//!
//! // Every batch is atomic and gets the next sequence number.
//! let seq = store.write(
//!     Batch::new()
//!         .put("zones/example.com/waf", "on")
//!         .put("zones/example.com/ttl", "300"),
//! )?;
//! assert_eq!(seq, 1);
//!
//! // Reads come from LMDB read transactions and report the sequence they saw.
//! let read = store.reader().get(b"zones/example.com/waf")?;
//! assert_eq!(read.value.as_deref(), Some(&b"on"[..]));
//! assert_eq!(read.seq, 1);
//!
//! let page = store.reader().scan(b"zones/", None, 10)?;
//! assert_eq!(page.items.len(), 2);
//!
//! // The log chain and the incremental digest can be re-derived from scratch at any time.
//! let verified = store.reader().verify()?;
//! assert_eq!(verified.digest, store.reader().head()?.digest);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! - One LMDB environment, three named databases: `data`, `log` (big-endian sequence ->
//!   chained checksum + entry) and `meta` (head, chain checksum, digest, cluster id, format).
//!   A batch's data, its log entry and the new meta are committed in one transaction, so after
//!   any crash data and log agree with no repair step.
//! - One committer thread drains the queue of waiting batches into one transaction and one
//!   fsync (group commit), and answers every writer.
//! - `c_n = BLAKE3(c_{n-1} || entry_n)` chains the log; the store digest is the sum mod 2^256 of
//!   `BLAKE3(len(k) || k || v)` over all pairs, updated in O(1) per change.
//! - [`serve`] runs the HTTP API of a root node.
//!
//! The byte formats are specified in `docs/kv-format.md`.
#![warn(missing_docs)]

mod config;
mod digest;
mod entry;
mod env;
mod error;
mod frame;
mod hex;
mod http;
mod reader;
mod repl;
mod snapshot;
mod store;
mod watch;

pub use config::{Durability, MAX_KEY_LEN, Retention, StoreConfig};
pub use digest::StoreDigest;
pub use entry::{
    Batch, CHECKSUM_LEN, ENTRY_VERSION, GENESIS_CHECKSUM, LogEntry, Op, chain_checksum,
    decode_entry,
};
pub use env::FORMAT_VERSION;
pub use error::Error;
pub use frame::{
    Frame, FrameError, HELLO_MAGIC, MAX_FRAME_LEN, check_frame_len, decode_frame, parse_frame,
};
pub use http::{MAX_SCAN_LIMIT, Role, SEQ_HEADER, encode_metrics, router, serve};
pub use reader::{CachedReader, Head, LogRecord, ReadView, Reader, ScanPage, Verified, Versioned};
pub use repl::{
    PROTOCOL_VERSION, ReplTls, ReplicaStatus, RootApi, follow, open_or_bootstrap, serve_replication,
};
pub use snapshot::SnapshotInfo;
pub use store::{Store, StoreStats};
pub use watch::{Watch, filter_ops};
