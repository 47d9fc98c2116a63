//! [`Delta`]: the unit of replication between counter sets, and its versioned wire format.
//!
//! The byte layout is documented in `docs/counters-format.md`; keep the two in step.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{NodeId, PnCount, PnState};

/// The wire format version written as the first byte of every encoded [`Delta`] that carries
/// no [`Retirement`].
pub const DELTA_FORMAT_VERSION: u8 = 1;

/// The format version of a [`Delta`] that carries [`Retirement`]s: version 1's layout followed by
/// the list of retirements. Written only when there are retirements, so sets that never retire a
/// node keep speaking version 1.
pub const DELTA_FORMAT_WITH_RETIREMENTS: u8 = 2;

/// A tombstone: `retired`'s entries were folded into `survivor`'s own entries, so every node
/// must drop `retired`'s entries and ignore them from then on (see
/// [`CounterSet::retire`](crate::CounterSet::retire) and docs/counters-format.md).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Retirement {
    /// The node whose entries are gone.
    pub retired: NodeId,
    /// The node whose own entries absorbed them.
    pub survivor: NodeId,
}

/// Everything a counter set changed between two of its versions, or its full state.
///
/// Produced by [`CounterSet::delta_since`](crate::CounterSet::delta_since) and absorbed by
/// [`CounterSet::merge`](crate::CounterSet::merge). A delta is itself a CRDT state (a part of the
/// sender's full state), so merging it is always safe, whatever order or how many times deltas
/// arrive; the versions only tell the receiver whether it has *everything* up to
/// [`until`](Self::until) from the sender, or must ask for a full state.
///
/// For each changed key a delta carries the sender's whole per-node state of that key (its own
/// entry and every entry it learned), so state spreads transitively through any node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta<K> {
    pub(crate) origin: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) since: u64,
    pub(crate) until: u64,
    /// The node ids that `keys` refer to by index.
    pub(crate) nodes: Vec<NodeId>,
    pub(crate) keys: Vec<(K, Vec<(u32, PnCount)>)>,
    /// Every retirement the sender knows; a receiver applies them before merging `keys`.
    pub(crate) retired: Vec<Retirement>,
}

/// Why bytes are not a valid encoded [`Delta`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is empty.
    #[error("delta is empty (0 bytes)")]
    Empty,
    /// The first byte names a format this version does not read.
    #[error(
        "delta format version {found} is not supported (this build reads versions {DELTA_FORMAT_VERSION} and {DELTA_FORMAT_WITH_RETIREMENTS})"
    )]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// The bytes do not decode as a delta (truncated, corrupt, or a bad node id or key).
    #[error("delta does not decode: {0}")]
    Malformed(#[from] postcard::Error),
    /// Bytes remain after a complete delta.
    #[error("{0} unexpected bytes after the end of the delta")]
    TrailingBytes(usize),
    /// A key refers to a node index outside the delta's node table.
    #[error("a key refers to node #{index}, but the delta lists only {nodes} nodes")]
    NodeIndexOutOfRange {
        /// The bad index.
        index: u32,
        /// The number of nodes listed.
        nodes: usize,
    },
    /// `since` is greater than `until`.
    #[error("delta covers versions {since}..{until}, which is backwards")]
    BackwardsRange {
        /// The claimed start.
        since: u64,
        /// The claimed end.
        until: u64,
    },
}

#[derive(Serialize)]
struct WireRef<'a, K> {
    format: u8,
    origin: &'a NodeId,
    incarnation: u64,
    since: u64,
    until: u64,
    nodes: &'a [NodeId],
    keys: &'a [(K, Vec<(u32, PnCount)>)],
}

#[derive(Serialize)]
struct WireRefWithRetirements<'a, K> {
    base: WireRef<'a, K>,
    retired: &'a [Retirement],
}

#[derive(Deserialize)]
struct WireOwned<K> {
    format: u8,
    origin: NodeId,
    incarnation: u64,
    since: u64,
    until: u64,
    nodes: Vec<NodeId>,
    keys: Vec<(K, Vec<(u32, PnCount)>)>,
}

#[derive(Deserialize)]
struct WireOwnedWithRetirements<K> {
    base: WireOwned<K>,
    retired: Vec<Retirement>,
}

impl<K> Delta<K> {
    /// The retirements the sender knows (applied by the receiver before the keys).
    pub fn retirements(&self) -> &[Retirement] {
        &self.retired
    }

    /// The node that produced this delta.
    pub fn origin(&self) -> &NodeId {
        &self.origin
    }

    /// The producer's incarnation: a random number drawn when its set was created. Versions are
    /// only comparable within one incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The delta holds every change after this version. `0` means this is a full state.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// The delta holds every change up to and including this version: what the receiver
    /// acknowledges once it has merged it.
    pub fn until(&self) -> u64 {
        self.until
    }

    /// Whether this is the sender's full state rather than a delta.
    pub fn is_full_state(&self) -> bool {
        self.since == 0
    }

    /// How many keys it carries.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it carries no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Each key with the per-node state the delta carries for it.
    pub fn states(&self) -> impl Iterator<Item = (&K, PnState)> + '_ {
        self.keys.iter().map(|(key, entries)| {
            let mut state = PnState::new();
            for (index, count) in entries {
                // Indexes were validated when the delta was built or decoded.
                if let Some(node) = self.nodes.get(*index as usize) {
                    state.merge_entry(node, *count);
                }
            }
            (key, state)
        })
    }
}

impl<K: Serialize> Delta<K> {
    /// Encode to bytes (format [`DELTA_FORMAT_VERSION`], see `docs/counters-format.md`).
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRef {
            format: DELTA_FORMAT_VERSION,
            origin: &self.origin,
            incarnation: self.incarnation,
            since: self.since,
            until: self.until,
            nodes: &self.nodes,
            keys: &self.keys,
        };
        // Serializing plain data into a growable Vec cannot fail: postcard errors only on a full
        // fixed buffer or on types it cannot represent (maps with unknown length), which we avoid.
        if self.retired.is_empty() {
            return postcard::to_stdvec(&wire).unwrap_or_default();
        }
        let wire = WireRefWithRetirements {
            base: WireRef {
                format: DELTA_FORMAT_WITH_RETIREMENTS,
                ..wire
            },
            retired: &self.retired,
        };
        postcard::to_stdvec(&wire).unwrap_or_default()
    }
}

impl<K: DeserializeOwned> Delta<K> {
    /// Decode bytes from an untrusted peer, checking the version, the node table and the ranges.
    ///
    /// The caller bounds the input size; decoding allocates at most in proportion to it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (wire, retired, rest) = match bytes.first() {
            None => return Err(DecodeError::Empty),
            Some(&DELTA_FORMAT_VERSION) => {
                let (wire, rest): (WireOwned<K>, _) = postcard::take_from_bytes(bytes)?;
                (wire, Vec::new(), rest)
            }
            Some(&DELTA_FORMAT_WITH_RETIREMENTS) => {
                let (wire, rest): (WireOwnedWithRetirements<K>, _) =
                    postcard::take_from_bytes(bytes)?;
                (wire.base, wire.retired, rest)
            }
            Some(&found) => return Err(DecodeError::UnsupportedVersion { found }),
        };
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        debug_assert_eq!(Some(&wire.format), bytes.first());
        if wire.since > wire.until {
            return Err(DecodeError::BackwardsRange {
                since: wire.since,
                until: wire.until,
            });
        }
        let nodes = wire.nodes.len();
        if let Some(index) = wire
            .keys
            .iter()
            .flat_map(|(_, entries)| entries.iter().map(|(index, _)| *index))
            .find(|index| *index as usize >= nodes)
        {
            return Err(DecodeError::NodeIndexOutOfRange { index, nodes });
        }
        Ok(Self {
            origin: wire.origin,
            incarnation: wire.incarnation,
            since: wire.since,
            until: wire.until,
            nodes: wire.nodes,
            keys: wire.keys,
            retired,
        })
    }
}
