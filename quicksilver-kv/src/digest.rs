//! The whole-store digest: the sum, modulo 2^256, of `BLAKE3(len(key) || key || value)` over every
//! pair. A put or delete updates it in O(1), so it is maintained with every batch; two stores at
//! the same sequence must have equal digests.

use std::fmt;

/// A 256-bit digest of the whole store (see the module docs and `docs/kv-format.md`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StoreDigest(pub(crate) [u8; 32]);

impl StoreDigest {
    /// The digest of the empty store.
    pub const EMPTY: Self = Self([0; 32]);

    /// The digest's bytes (a little-endian 256-bit integer).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuild from bytes (as stored in `meta` or sent by a peer).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Lower-case hex, as shown by `/v1/status`.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }

    pub(crate) fn add_pair(&mut self, key: &[u8], value: &[u8]) {
        let term = pair_hash(key, value);
        let mut carry = 0u16;
        for (acc, byte) in self.0.iter_mut().zip(term) {
            let sum = u16::from(*acc) + u16::from(byte) + carry;
            *acc = sum as u8;
            carry = sum >> 8;
        }
    }

    pub(crate) fn remove_pair(&mut self, key: &[u8], value: &[u8]) {
        let term = pair_hash(key, value);
        let mut borrow = 0i16;
        for (acc, byte) in self.0.iter_mut().zip(term) {
            let mut diff = i16::from(*acc) - i16::from(byte) - borrow;
            borrow = 0;
            if diff < 0 {
                diff += 256;
                borrow = 1;
            }
            *acc = diff as u8;
        }
    }
}

fn pair_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    // The key's length prefix keeps ("ab","c") and ("a","bc") apart.
    hasher.update(&(key.len() as u32).to_be_bytes());
    hasher.update(key);
    hasher.update(value);
    *hasher.finalize().as_bytes()
}

impl fmt::Debug for StoreDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDigest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_remove_is_identity_and_order_does_not_matter() {
        let mut a = StoreDigest::EMPTY;
        a.add_pair(b"k1", b"v1");
        a.add_pair(b"k2", b"v2");
        let mut b = StoreDigest::EMPTY;
        b.add_pair(b"k2", b"v2");
        b.add_pair(b"k1", b"v1");
        assert_eq!(a, b);
        assert_ne!(a, StoreDigest::EMPTY);
        a.remove_pair(b"k1", b"v1");
        a.remove_pair(b"k2", b"v2");
        assert_eq!(a, StoreDigest::EMPTY);
    }

    #[test]
    fn key_value_boundary_matters() {
        let mut a = StoreDigest::EMPTY;
        a.add_pair(b"ab", b"c");
        let mut b = StoreDigest::EMPTY;
        b.add_pair(b"a", b"bc");
        assert_ne!(a, b);
    }
}
