//! Hashing for maps keyed by hickory-proto `Name`s.
//!
//! hickory's `Hash for Name` feeds the hasher one byte at a time (`write_u8` per lowercased
//! label byte), and SipHash pays its per-call bookkeeping on each of them: on a cold cache,
//! where every question hashes a dozen names (the name and its ancestors, in the RRset cache,
//! the NXDOMAIN cut and the learned cuts), that was about a tenth of the resolver's user-space
//! CPU (docs/benchmarks.md, "DNS server vs Unbound", session 6). [`NameHashState`] keeps std's
//! keyed SipHash (names come from the network, so the key must stay secret) but collects the
//! small writes in a buffer and hands them to SipHash in one call.

use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};

/// A `BuildHasher` for `HashMap`s and `HashSet`s whose keys contain `Name`s: std's randomly
/// keyed SipHash, fed through [`BufferedHasher`].
#[derive(Debug, Clone, Default)]
pub(crate) struct NameHashState(RandomState);

impl BuildHasher for NameHashState {
    type Hasher = BufferedHasher;

    fn build_hasher(&self) -> BufferedHasher {
        BufferedHasher {
            inner: self.0.build_hasher(),
            buffer: [0; BUFFER_LEN],
            len: 0,
        }
    }
}

/// Room for a whole name (at most 255 bytes on the wire) plus the few bytes of the rest of a
/// key, so a key is hashed in one SipHash call.
const BUFFER_LEN: usize = 320;

/// A hasher that passes everything written to it on to `inner` in as few calls as it can. The
/// result is a function of the bytes written and their order only, however they were split
/// into calls.
#[derive(Debug, Clone)]
pub(crate) struct BufferedHasher {
    inner: DefaultHasher,
    buffer: [u8; BUFFER_LEN],
    len: usize,
}

impl BufferedHasher {
    fn flush(&mut self) {
        self.inner.write(&self.buffer[..self.len]);
        self.len = 0;
    }
}

impl Hasher for BufferedHasher {
    fn write(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > BUFFER_LEN {
            self.flush();
            if bytes.len() > BUFFER_LEN {
                self.inner.write(bytes);
                return;
            }
        }
        self.buffer[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn write_u8(&mut self, byte: u8) {
        if self.len == BUFFER_LEN {
            self.flush();
        }
        self.buffer[self.len] = byte;
        self.len += 1;
    }

    fn finish(&self) -> u64 {
        let mut inner = self.inner.clone();
        inner.write(&self.buffer[..self.len]);
        inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Splitting the same bytes into other calls (single bytes, slices of any length, some
        /// longer than the buffer) never changes the hash.
        #[test]
        fn the_hash_depends_on_the_bytes_not_on_how_they_were_written(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..8),
            as_single_bytes in any::<bool>(),
        ) {
            let state = NameHashState::default();
            let mut whole = state.build_hasher();
            whole.write(&chunks.concat());
            let mut pieces = state.build_hasher();
            for chunk in &chunks {
                if as_single_bytes {
                    chunk.iter().for_each(|&byte| pieces.write_u8(byte));
                } else {
                    pieces.write(chunk);
                }
            }
            prop_assert_eq!(whole.finish(), pieces.finish());
        }
    }

    #[test]
    fn names_are_found_whatever_their_case() {
        let mut map: HashMap<Name, u32, NameHashState> = HashMap::default();
        map.insert(Name::from_ascii("www.Example.TEST.").unwrap(), 1);
        map.insert(Name::from_ascii("example.test.").unwrap(), 2);
        assert_eq!(
            map.get(&Name::from_ascii("WWW.example.test.").unwrap()),
            Some(&1)
        );
        assert_eq!(
            map.get(&Name::from_ascii("Example.Test.").unwrap()),
            Some(&2)
        );
        assert_eq!(map.get(&Name::from_ascii("test.").unwrap()), None);
    }
}
