//! Write batches and their log entries: the byte format (see `docs/kv-format.md`) and the
//! chained checksum `c_n = BLAKE3(c_{n-1} || entry_n)`.

use crate::Error;

/// Version byte that opens every encoded log entry.
pub const ENTRY_VERSION: u8 = 1;
/// Length of a chained checksum.
pub const CHECKSUM_LEN: usize = 32;
/// The checksum "before" the first entry of a store.
pub const GENESIS_CHECKSUM: [u8; 32] = [0; 32];

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 4;

/// One change inside a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (a no-op when absent, but still logged).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The key this op touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Put { key, value } => 1 + 4 + key.len() + 4 + value.len(),
            Self::Delete { key } => 1 + 4 + key.len(),
        }
    }
}

/// A group of ops applied atomically under one sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The ops, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch; add ops with [`Batch::put`] and [`Batch::delete`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a put.
    pub fn put(mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::put(key, value));
        self
    }

    /// Add a delete.
    pub fn delete(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::delete(key));
        self
    }

    /// Bytes this batch occupies in its log entry.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.ops.iter().map(Op::encoded_len).sum::<usize>()
    }
}

/// A decoded log entry: the batch committed under `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The batch's sequence number.
    pub seq: u64,
    /// The batch's ops.
    pub ops: Vec<Op>,
}

/// Encode a batch as the log entry for `seq`.
pub(crate) fn encode_entry(seq: u64, ops: &[Op]) -> Vec<u8> {
    let len = HEADER_LEN + ops.iter().map(Op::encoded_len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(ENTRY_VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_be_bytes());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                out.push(TAG_PUT);
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
            Op::Delete { key } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(key);
            }
        }
    }
    out
}

/// Decode a log entry, checking every length against the bytes present.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, Error> {
    let mut cursor = Cursor { bytes, at: 0 };
    let version = cursor.take(1)?[0];
    if version != ENTRY_VERSION {
        return Err(Error::Corrupt(format!(
            "log entry version {version}, expected {ENTRY_VERSION}"
        )));
    }
    let seq = u64::from_be_bytes(cursor.array()?);
    let count = u32::from_be_bytes(cursor.array()?);
    // Each op takes at least 5 bytes, so a huge count in a short entry is rejected up front
    // rather than allocating for it.
    if count as usize > cursor.remaining() / 5 {
        return Err(Error::Corrupt(format!(
            "log entry {seq} claims {count} ops in {} bytes",
            cursor.remaining()
        )));
    }
    let mut ops = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let tag = cursor.take(1)?[0];
        let key_len = u32::from_be_bytes(cursor.array()?) as usize;
        let key = cursor.take(key_len)?.to_vec();
        match tag {
            TAG_PUT => {
                let value_len = u32::from_be_bytes(cursor.array()?) as usize;
                let value = cursor.take(value_len)?.to_vec();
                ops.push(Op::Put { key, value });
            }
            TAG_DELETE => ops.push(Op::Delete { key }),
            other => {
                return Err(Error::Corrupt(format!(
                    "log entry {seq}: unknown op tag {other}"
                )));
            }
        }
    }
    if cursor.remaining() != 0 {
        return Err(Error::Corrupt(format!(
            "log entry {seq}: {} trailing bytes",
            cursor.remaining()
        )));
    }
    Ok(LogEntry { seq, ops })
}

/// The next link of the checksum chain: `BLAKE3(previous || entry)`.
pub fn chain_checksum(previous: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(entry);
    *hasher.finalize().as_bytes()
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Error> {
        if len > self.remaining() {
            return Err(Error::Corrupt(format!(
                "log entry truncated: need {len} bytes at offset {}, have {}",
                self.at,
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 1..20),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(k, v)| Op::put(k, v)),
            proptest::collection::vec(any::<u8>(), 1..20).prop_map(Op::delete),
        ]
    }

    #[test]
    fn the_documented_example_entry_is_byte_exact() {
        // docs/kv-format.md, "Log entry".
        let bytes = encode_entry(1, &[Op::put("a", "xy")]);
        let expected: &[u8] = &[
            1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 2, b'x', b'y',
        ];
        assert_eq!(bytes, expected);
    }

    proptest! {
        #[test]
        fn entries_round_trip(seq in any::<u64>(), ops in proptest::collection::vec(op_strategy(), 0..8)) {
            let bytes = encode_entry(seq, &ops);
            prop_assert_eq!(bytes.len(), Batch { ops: ops.clone() }.encoded_len());
            let decoded = decode_entry(&bytes).unwrap();
            prop_assert_eq!(decoded, LogEntry { seq, ops });
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(&bytes);
        }

        #[test]
        fn truncation_is_detected(ops in proptest::collection::vec(op_strategy(), 1..4), cut in 1usize..10) {
            let bytes = encode_entry(7, &ops);
            let cut = cut.min(bytes.len());
            prop_assert!(decode_entry(&bytes[..bytes.len() - cut]).is_err());
        }
    }
}
