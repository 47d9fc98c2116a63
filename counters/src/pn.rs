//! One node's PN-Counter entry and the per-key CRDT state built from them.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// One node's contribution to one counter: everything it ever added and subtracted, kept apart.
///
/// Both parts only grow, so the merge of two observations of the same node's entry is the
/// per-part maximum. **Overflow policy:** each part is a `u64` that *saturates* at `u64::MAX`
/// (about 1.8e19) instead of wrapping; a wrapped part would look smaller and be discarded by
/// every merge, silently losing the whole count. Saturation keeps the order, so merges stay
/// correct, and [`value`](Self::value) is exact in `i128`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PnCount {
    /// Sum of every positive amount added (saturating).
    pub increments: u64,
    /// Sum of the magnitudes of every negative amount added (saturating).
    pub decrements: u64,
}

impl PnCount {
    /// Nothing counted.
    pub const ZERO: Self = Self {
        increments: 0,
        decrements: 0,
    };

    /// The entry after adding `by` (positive to `increments`, negative to `decrements`), saturating.
    #[must_use]
    pub fn plus(self, by: i64) -> Self {
        if by >= 0 {
            Self {
                increments: self.increments.saturating_add(by.unsigned_abs()),
                ..self
            }
        } else {
            Self {
                decrements: self.decrements.saturating_add(by.unsigned_abs()),
                ..self
            }
        }
    }

    /// Per-part sum, saturating: how totals across nodes are formed.
    #[must_use]
    pub fn saturating_sum(self, other: Self) -> Self {
        Self {
            increments: self.increments.saturating_add(other.increments),
            decrements: self.decrements.saturating_add(other.decrements),
        }
    }

    /// Per-part maximum: the CRDT merge of two observations of the same node's entry.
    #[must_use]
    pub fn merged(self, other: Self) -> Self {
        Self {
            increments: self.increments.max(other.increments),
            decrements: self.decrements.max(other.decrements),
        }
    }

    /// True when `self` already contains everything in `other` (merging it changes nothing).
    pub fn dominates(self, other: Self) -> bool {
        self.increments >= other.increments && self.decrements >= other.decrements
    }

    /// `increments - decrements`, exact.
    pub fn value(self) -> i128 {
        i128::from(self.increments) - i128::from(self.decrements)
    }

    /// `increments - decrements`, clamped to the `i64` range.
    pub fn value_i64(self) -> i64 {
        clamp_i64(self.value())
    }
}

pub(crate) fn clamp_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// The replicated state of one counter: every node's [`PnCount`], keyed by [`NodeId`].
///
/// Merge is the per-node maximum, so it is commutative, associative and idempotent: states may be
/// duplicated, reordered or lost and resent without changing the outcome. Entries are kept sorted
/// by node id, so equal states compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnState {
    entries: Vec<(NodeId, PnCount)>,
}

impl PnState {
    /// No node has counted anything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `by` to `node`'s own entry. Only the node itself should do this; everyone else merges.
    pub fn add(&mut self, node: &NodeId, by: i64) {
        let slot = self.slot(node);
        *slot = slot.plus(by);
    }

    /// Merge `other` into `self` (per-node maximum). Returns whether anything changed.
    pub fn merge(&mut self, other: &Self) -> bool {
        let mut changed = false;
        for (node, count) in &other.entries {
            changed |= self.merge_entry(node, *count);
        }
        changed
    }

    /// Merge a single node's entry. Returns whether anything changed.
    pub fn merge_entry(&mut self, node: &NodeId, count: PnCount) -> bool {
        let slot = self.slot(node);
        let merged = slot.merged(count);
        let changed = merged != *slot;
        *slot = merged;
        changed
    }

    /// The sum of every node's entry.
    pub fn totals(&self) -> PnCount {
        self.entries
            .iter()
            .fold(PnCount::ZERO, |sum, (_, count)| sum.saturating_sum(*count))
    }

    /// The counter's value across all nodes, exact.
    pub fn value(&self) -> i128 {
        self.totals().value()
    }

    /// One node's entry (zero if it never counted).
    pub fn get(&self, node: &NodeId) -> PnCount {
        self.entries
            .binary_search_by(|(id, _)| id.cmp(node))
            .map_or(PnCount::ZERO, |i| self.entries[i].1)
    }

    /// Every node's entry, sorted by node id.
    pub fn entries(&self) -> &[(NodeId, PnCount)] {
        &self.entries
    }

    fn slot(&mut self, node: &NodeId) -> &mut PnCount {
        let index = match self.entries.binary_search_by(|(id, _)| id.cmp(node)) {
            Ok(index) => index,
            Err(index) => {
                self.entries.insert(index, (node.clone(), PnCount::ZERO));
                index
            }
        };
        &mut self.entries[index].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_saturate_instead_of_wrapping() {
        let near = PnCount {
            increments: u64::MAX - 1,
            decrements: 0,
        };
        let full = near.plus(5);
        assert_eq!(full.increments, u64::MAX);
        // A wrapped part would be tiny and lose every merge; a saturated one keeps its place.
        assert_eq!(full.merged(near), full);
        assert_eq!(full.plus(i64::MAX).increments, u64::MAX);
        assert_eq!(PnCount::ZERO.plus(i64::MIN).decrements, 1 << 63);
        assert_eq!(full.value(), i128::from(u64::MAX));
        assert_eq!(full.value_i64(), i64::MAX);
        assert_eq!(
            PnCount::ZERO.plus(i64::MIN).plus(i64::MIN).value_i64(),
            i64::MIN
        );
    }

    #[test]
    fn merge_takes_the_per_node_maximum() {
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        let mut left = PnState::new();
        left.add(&a, 5);
        left.add(&a, -2);
        let mut right = PnState::new();
        right.add(&a, 3);
        right.add(&b, 7);
        assert!(left.merge(&right));
        assert_eq!(
            left.get(&a),
            PnCount {
                increments: 5,
                decrements: 2
            }
        );
        assert_eq!(left.value(), 3 + 7);
        assert!(!left.merge(&right), "merging again changes nothing");
    }
}
