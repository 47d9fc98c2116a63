//! The RRset cache's keys: a name in lowercase wire form, in which every ancestor's key is a
//! suffix of the name's.
//!
//! The cache looks up a name's ancestors on every miss: the RFC 8020 walk (an NXDOMAIN above
//! the name) and the search for the closest zone cut. Keyed by hickory `Name`s, each step built
//! the parent with `base_name`, which rebuilds the name label by label; in a callgrind count of
//! a cold batch that walk and the hashing of `Name`s were a fifth of the server's user-space
//! instructions (docs/benchmarks.md, session 10). Here the name is lowercased into a stack
//! buffer once, and each ancestor is a slice of it. Byte-slice keys hash in one call and
//! compare with `memcmp`.

use std::hash::BuildHasher;

use hickory_proto::rr::{Name, RecordType};

/// The longest name on the wire, the root's zero byte included (RFC 1035 3.1).
const MAX_NAME_LEN: usize = 255;
/// A name and the two bytes of a record type.
const MAX_KEY_LEN: usize = MAX_NAME_LEN + 2;
/// A name of 255 bytes has at most 127 labels, plus the root.
const MAX_ANCESTORS: usize = 128;

/// The keys of one name and its ancestors, built once.
pub(crate) struct NameKeys {
    /// The lowercased wire form (length-prefixed labels, the root's zero byte last), then room
    /// for a record type.
    bytes: [u8; MAX_KEY_LEN],
    name_len: usize,
    /// Where each ancestor starts in `bytes`: the name itself first, the root last.
    starts: [u8; MAX_ANCESTORS],
    ancestors: usize,
}

impl NameKeys {
    /// The keys of `name`, or `None` for a name too long for the wire (hickory does not build
    /// those; such a name is simply never cached).
    pub(crate) fn new(name: &Name) -> Option<Self> {
        let mut keys = Self {
            bytes: [0; MAX_KEY_LEN],
            name_len: 0,
            starts: [0; MAX_ANCESTORS],
            ancestors: 0,
        };
        for label in name.iter() {
            keys.push_ancestor()?;
            let start = keys.name_len;
            let end = start + 1 + label.len();
            // The root's zero byte must still fit.
            if end + 1 > MAX_NAME_LEN {
                return None;
            }
            keys.bytes[start] = u8::try_from(label.len()).ok()?;
            for (to, from) in keys.bytes[start + 1..end].iter_mut().zip(label) {
                *to = from.to_ascii_lowercase();
            }
            keys.name_len = end;
        }
        keys.push_ancestor()?;
        keys.bytes[keys.name_len] = 0;
        keys.name_len += 1;
        Some(keys)
    }

    fn push_ancestor(&mut self) -> Option<()> {
        *self.starts.get_mut(self.ancestors)? = u8::try_from(self.name_len).ok()?;
        self.ancestors += 1;
        Some(())
    }

    /// How many keys there are: the name, each ancestor, the root.
    pub(crate) fn ancestors(&self) -> usize {
        self.ancestors
    }

    /// The key of ancestor `ancestor`'s name alone (negative entries, learned cuts).
    pub(crate) fn name(&self, ancestor: usize) -> &[u8] {
        &self.bytes[usize::from(self.starts[ancestor])..self.name_len]
    }

    /// The key of ancestor `ancestor`'s RRset of `record_type`.
    pub(crate) fn rrset(&mut self, ancestor: usize, record_type: RecordType) -> &[u8] {
        let type_bytes = u16::from(record_type).to_be_bytes();
        self.bytes[self.name_len..self.name_len + 2].copy_from_slice(&type_bytes);
        &self.bytes[usize::from(self.starts[ancestor])..self.name_len + 2]
    }

    /// Which of `shard_count` (a power of two) shards holds ancestor `ancestor`'s entries, by
    /// the cache's own randomly seeded hash.
    ///
    /// Seeded because each shard has its own share of the entry bound: with a fixed hash, a
    /// client could pick names that land in the shard holding popular entries (a TLD's NS set
    /// and glue) and evict them with a sixteenth of the inserts a flush of the whole cache
    /// takes. foldhash, not the maps' SipHash: the maps inside the shard keep the strong keyed
    /// hash, and this one only spreads the locks.
    pub(crate) fn shard(
        &self,
        ancestor: usize,
        shard_count: usize,
        seed: &foldhash::fast::RandomState,
    ) -> usize {
        // The top bits are the best mixed.
        (seed.hash_one(self.name(ancestor)) >> 48) as usize & (shard_count - 1)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    #[test]
    fn each_ancestor_is_a_suffix_in_lowercase_wire_form() {
        let mut keys = NameKeys::new(&name("WWW.Example.test.")).unwrap();
        assert_eq!(keys.ancestors(), 4);
        assert_eq!(keys.name(0), b"\x03www\x07example\x04test\x00");
        assert_eq!(keys.name(1), b"\x07example\x04test\x00");
        assert_eq!(keys.name(2), b"\x04test\x00");
        assert_eq!(keys.name(3), b"\x00");
        assert_eq!(
            keys.rrset(1, RecordType::NS),
            b"\x07example\x04test\x00\x00\x02"
        );
        assert_eq!(
            keys.rrset(0, RecordType::A),
            b"\x03www\x07example\x04test\x00\x00\x01"
        );
        let root = NameKeys::new(&Name::root()).unwrap();
        assert_eq!((root.ancestors(), root.name(0)), (1, &b"\x00"[..]));
    }

    #[test]
    fn the_longest_names_fit() {
        // 127 one-byte labels: 254 bytes with the root, the most the wire allows.
        let longest = name(&"a.".repeat(127));
        let keys = NameKeys::new(&longest).unwrap();
        assert_eq!(keys.ancestors(), 128);
        assert_eq!(keys.name(0).len(), 255);
        let long_labels = name(&format!("{}.", vec!["x".repeat(63); 3].join(".")));
        assert_eq!(NameKeys::new(&long_labels).unwrap().name(0).len(), 193);
    }

    proptest! {
        /// Every spelling of a name has the same keys and the same shards, and different names
        /// have different keys. Labels are any bytes, as on the wire.
        #[test]
        fn keys_ignore_case_and_nothing_else(
            labels in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..6),
            other in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..6),
        ) {
            let spelled = |labels: &[Vec<u8>], case: fn(&u8) -> u8| {
                let labels: Vec<Vec<u8>> =
                    labels.iter().map(|label| label.iter().map(case).collect()).collect();
                Name::from_labels(labels).unwrap()
            };
            let upper = NameKeys::new(&spelled(&labels, u8::to_ascii_uppercase)).unwrap();
            let lower = NameKeys::new(&spelled(&labels, u8::to_ascii_lowercase)).unwrap();
            prop_assert_eq!(upper.name(0), lower.name(0));
            let seed = foldhash::fast::RandomState::default();
            prop_assert_eq!(upper.shard(0, 16, &seed), lower.shard(0, 16, &seed));
            let other_keys = NameKeys::new(&spelled(&other, u8::to_ascii_lowercase)).unwrap();
            let lowercase = |labels: &[Vec<u8>]| -> Vec<Vec<u8>> {
                labels.iter().map(|label| label.to_ascii_lowercase()).collect()
            };
            prop_assert_eq!(
                other_keys.name(0) == lower.name(0),
                lowercase(&other) == lowercase(&labels)
            );
        }
    }
}
