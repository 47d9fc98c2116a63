//! The wire format: round trips, the documented bytes, and hostile input.

use edgekit_counters::{CounterSet, DELTA_FORMAT_VERSION, DecodeError, Delta, NodeId};
use proptest::prelude::*;

fn sample() -> Delta<String> {
    let set = CounterSet::<String>::new(NodeId::new("a").unwrap());
    set.add("k", 5);
    set.add("k", -2);
    set.delta_since(0)
}

#[test]
fn round_trips() {
    let delta = sample();
    let decoded = Delta::<String>::decode(&delta.encode()).unwrap();
    assert_eq!(decoded, delta);
    assert_eq!(decoded.origin().as_str(), "a");
    assert!(decoded.is_full_state());
}

#[test]
fn bytes_match_docs_counters_format() {
    // The example in docs/counters-format.md, byte for byte (incarnation varies, so it is
    // checked by position).
    let delta = sample();
    let bytes = delta.encode();
    let mut incarnation = Vec::new();
    let mut value = delta.incarnation();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            incarnation.push(byte);
            break;
        }
        incarnation.push(byte | 0x80);
    }
    let mut expected = vec![DELTA_FORMAT_VERSION, 1, b'a'];
    expected.extend(&incarnation);
    expected.extend([
        0, // since
        1, // until
        1, 1, b'a', // node table: ["a"]
        1,    // one key
        1, b'k', // key "k"
        1,    // one entry
        0, 5, 2, // node #0: 5 increments, 2 decrements
    ]);
    assert_eq!(bytes, expected);
}

#[test]
fn rejects_what_it_cannot_read_with_a_clear_error() {
    let good = sample().encode();
    assert!(matches!(
        Delta::<String>::decode(&[]),
        Err(DecodeError::Empty)
    ));
    let mut future = good.clone();
    future[0] = 3;
    let err = Delta::<String>::decode(&future).unwrap_err();
    assert!(matches!(err, DecodeError::UnsupportedVersion { found: 3 }));
    assert!(err.to_string().contains("version 3"), "{err}");
    // Version 2 promises a retirement list after the keys; version 1 bytes lack it.
    let mut missing_retirements = good.clone();
    missing_retirements[0] = 2;
    assert!(matches!(
        Delta::<String>::decode(&missing_retirements),
        Err(DecodeError::Malformed(_))
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        Delta::<String>::decode(&trailing),
        Err(DecodeError::TrailingBytes(1))
    ));
    // Node index 0 -> 7, outside the one-node table.
    let mut bad_index = good.clone();
    let at = bad_index.len() - 3;
    bad_index[at] = 7;
    assert!(matches!(
        Delta::<String>::decode(&bad_index),
        Err(DecodeError::NodeIndexOutOfRange { index: 7, nodes: 1 })
    ));
    // A node id that is not valid text for an id.
    let mut bad_id = good;
    bad_id[2] = b' ';
    assert!(matches!(
        Delta::<String>::decode(&bad_id),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let good = sample().encode();
    for len in 0..good.len() {
        assert!(
            Delta::<String>::decode(&good[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn a_huge_claimed_length_fails_without_allocating_it() {
    // Version, origin "a", incarnation 0, since 0, until 0, then a node table claiming 2^35
    // entries in five bytes: must fail on the missing data, not try to reserve 2^35 slots.
    let bytes = [1, 1, b'a', 0, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x7f];
    assert!(Delta::<String>::decode(&bytes).is_err());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Delta::<String>::decode(&bytes);
        let _ = Delta::<u64>::decode(&bytes);
    }

    #[test]
    fn mutated_valid_deltas_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let mut bytes = sample().encode();
        for (at, value) in flips {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        if let Ok(delta) = Delta::<String>::decode(&bytes) {
            // Whatever decodes must be safe to merge.
            CounterSet::<String>::new(NodeId::new("z").unwrap()).merge(&delta);
        }
    }
}

proptest::proptest! {
    /// The gossip frame decoder (also the fuzz target `counters_gossip_frames`) never panics on
    /// arbitrary bytes, and whatever it accepts it accounts for within the input.
    #[test]
    fn gossip_frames_survive_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let mut rest = bytes.as_slice();
        while let Ok(Some(used)) = edgekit_counters::decode_gossip_frame(rest, 1024) {
            proptest::prop_assert!(used > 4 && used <= rest.len());
            rest = &rest[used..];
        }
    }

    /// Real frames carrying arbitrary deltas decode; every strict prefix is incomplete, not an
    /// error; one flipped byte never panics.
    #[test]
    fn gossip_frames_round_trip_and_truncate_cleanly(
        counts in proptest::collection::vec((0u8..8, -5i64..5), 0..20),
        flip in proptest::num::usize::ANY,
    ) {
        let set = CounterSet::<String>::new(NodeId::new("a").unwrap());
        for (key, by) in counts {
            set.add(&format!("k{key}"), by);
        }
        let delta = set.delta_since(0).encode();
        // Message::Exchange { ack: None, delta }: variant 1, None, byte string.
        let mut payload = vec![1, 0];
        let mut len = delta.len();
        while len >= 0x80 {
            payload.push((len as u8) | 0x80);
            len >>= 7;
        }
        payload.push(len as u8);
        payload.extend_from_slice(&delta);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        proptest::prop_assert_eq!(
            edgekit_counters::decode_gossip_frame(&frame, 1 << 20).unwrap(),
            Some(frame.len())
        );
        for cut in 0..frame.len() {
            proptest::prop_assert_eq!(
                edgekit_counters::decode_gossip_frame(&frame[..cut], 1 << 20).unwrap(),
                None
            );
        }
        let mut corrupt = frame.clone();
        let at = flip % corrupt.len();
        corrupt[at] ^= 0xff;
        let _ = edgekit_counters::decode_gossip_frame(&corrupt, 1 << 20);
    }
}
