//! Stable node identities: the keys of every CRDT entry.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// The longest node id accepted, in bytes. Ids travel in every full state, so they stay short.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's stable identity, e.g. `"fra-edge-07"`.
///
/// A node must keep its id across restarts: its CRDT entry is keyed by it, and a node that comes
/// back under a new id starts a new entry (its old one stays valid and keeps counting in totals).
/// Ids are 1 to [`MAX_NODE_ID_LEN`] bytes of ASCII letters, digits, `.`, `_` and `-`, so they are
/// safe in logs, file names and URLs. Cloning is cheap (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(Arc<str>);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeIdError {
    /// The id is empty.
    #[error("node id is empty")]
    Empty,
    /// The id is longer than [`MAX_NODE_ID_LEN`] bytes.
    #[error("node id is {len} bytes long; the limit is {MAX_NODE_ID_LEN}")]
    TooLong {
        /// The id's length in bytes.
        len: usize,
    },
    /// The id holds a character outside `[A-Za-z0-9._-]`.
    #[error(
        "node id {id:?} contains {found:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
    )]
    BadCharacter {
        /// The rejected id.
        id: String,
        /// The first character that is not allowed.
        found: char,
    },
}

impl NodeId {
    /// Validate and wrap `id`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, NodeIdError> {
        let id = id.as_ref();
        if id.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(NodeIdError::TooLong { len: id.len() });
        }
        if let Some(found) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(NodeIdError::BadCharacter {
                id: id.to_owned(),
                found,
            });
        }
        Ok(Self(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = NodeIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        Self::new(id)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.as_str().to_owned()
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Self::new(id)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:?})", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_rejects_the_rest() {
        assert_eq!(
            NodeId::new("fra-edge_07.a").unwrap().as_str(),
            "fra-edge_07.a"
        );
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(
            NodeId::new("x".repeat(65)),
            Err(NodeIdError::TooLong { len: 65 })
        );
        assert!(matches!(
            NodeId::new("a b"),
            Err(NodeIdError::BadCharacter { found: ' ', .. })
        ));
    }

    #[test]
    fn decoding_validates_like_new() {
        let bytes = postcard::to_stdvec("bad id!").unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
        let bytes = postcard::to_stdvec("ok").unwrap();
        assert_eq!(
            postcard::from_bytes::<NodeId>(&bytes).unwrap(),
            NodeId::new("ok").unwrap()
        );
    }
}
