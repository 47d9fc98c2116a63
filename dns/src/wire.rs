//! The bytes we put on and take off the wire: queries, replies, TCP framing, DNAME targets.
//!
//! Every function here that reads network bytes has a fuzz target in `fuzz/` and is fed random
//! bytes by proptest in this module's tests.

use hickory_proto::{
    op::Message,
    rr::{Name, RData, RecordType},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable},
};

/// Largest DNS message (TCP's 16-bit length prefix).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// A reply that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The bytes are not a DNS message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// The message is longer than a DNS message can be.
    #[error("message of {0} bytes exceeds 65535")]
    TooLong(usize),
    /// Encoding our own message failed.
    #[error("cannot encode message: {0}")]
    Encode(String),
}

/// Decode a DNS message received from the network.
pub fn parse_message(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(bytes.len()));
    }
    Message::from_vec(bytes).map_err(|err| WireError::Malformed(err.to_string()))
}

/// An iterative query (RD clear) with an EDNS(0) OPT advertising `edns_buffer_size`.
///
/// Written directly rather than through hickory's `Message`: a query is a fixed header, the
/// name's labels as they are (their 0x20 case kept) and a fixed OPT record, and building a
/// `Message` for it (with a name-compression table) cost 4200 instructions per upstream query in
/// a callgrind count (docs/benchmarks.md, session 10). A test checks the bytes against
/// hickory's encoding.
pub fn build_query(
    id: u16,
    name: &Name,
    record_type: RecordType,
    edns_buffer_size: u16,
) -> Result<Vec<u8>, WireError> {
    const HEADER_AND_FIXED: usize = 12 + 4 + 11;
    let mut query = Vec::with_capacity(HEADER_AND_FIXED + name.len() + 2);
    let [id_high, id_low] = id.to_be_bytes();
    // ID; flags all clear (a standard query, RD off); one question, one additional (the OPT).
    query.extend_from_slice(&[id_high, id_low, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    append_name(name, &mut query)?;
    query.extend_from_slice(&u16::from(record_type).to_be_bytes());
    query.extend_from_slice(&1u16.to_be_bytes()); // class IN
    // OPT (RFC 6891 6.1.2): root owner, type 41, the UDP size as class, TTL 0 (extended RCODE
    // 0, version 0, DO clear), no options.
    query.extend_from_slice(&[0, 0, 41]);
    query.extend_from_slice(&edns_buffer_size.to_be_bytes());
    query.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    Ok(query)
}

/// Append `name` uncompressed, its labels as they are (case kept) and the root's zero byte;
/// returns how many bytes that took. Fails on a label over 63 bytes or a name over 255.
pub(crate) fn append_name(name: &Name, out: &mut Vec<u8>) -> Result<usize, WireError> {
    let start = out.len();
    for label in name.iter() {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|len| *len <= 63)
            .ok_or_else(|| {
                WireError::Encode(format!("label of {} bytes in {name}", label.len()))
            })?;
        out.push(len);
        out.extend_from_slice(label);
    }
    out.push(0);
    let name_len = out.len() - start;
    if name_len > 255 {
        out.truncate(start);
        return Err(WireError::Encode(format!(
            "name of {name_len} bytes: {name}"
        )));
    }
    Ok(name_len)
}

/// Prefix a message with its 2-byte length for TCP (RFC 1035 4.2.2).
pub fn frame_tcp(message: &[u8]) -> Result<Vec<u8>, WireError> {
    let len = u16::try_from(message.len()).map_err(|_| WireError::TooLong(message.len()))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

/// Split a TCP byte stream into complete length-prefixed messages; returns the messages and the
/// unconsumed tail (an incomplete frame).
pub fn split_tcp_frames(stream: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let [hi, lo, body @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if body.len() < len {
            break;
        }
        frames.push(&body[..len]);
        rest = &body[len..];
    }
    (frames, rest)
}

/// The target of a DNAME record (hickory keeps DNAME rdata as raw bytes; RFC 6672 forbids
/// compressing the target, so the bytes hold a complete name).
pub fn dname_target(rdata: &RData) -> Option<Name> {
    match rdata {
        RData::Unknown { code, rdata } if *code == RecordType::DNAME => {
            let mut decoder = BinDecoder::new(&rdata.anything);
            let name = Name::read(&mut decoder).ok()?;
            decoder.is_empty().then_some(name)
        }
        _ => None,
    }
}

/// DNAME rdata for `target`, for servers and tests that build DNAME records.
pub fn dname_rdata(target: &Name) -> Result<RData, WireError> {
    let bytes = target
        .to_bytes()
        .map_err(|err| WireError::Encode(err.to_string()))?;
    Ok(RData::Unknown {
        code: RecordType::DNAME,
        rdata: hickory_proto::rr::rdata::NULL::with(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use proptest::prelude::*;

    #[test]
    fn query_has_edns_and_no_recursion_desired() {
        let name = Name::from_ascii("www.example.test.").unwrap();
        let bytes = build_query(0x1234, &name, RecordType::AAAA, 1232).unwrap();
        let message = parse_message(&bytes).unwrap();
        assert_eq!(message.metadata.id, 0x1234);
        assert!(!message.metadata.recursion_desired);
        assert_eq!(message.max_payload(), 1232);
        assert_eq!(message.queries[0].name(), &name);
        assert_eq!(message.queries[0].query_type(), RecordType::AAAA);
    }

    /// The bytes are what hickory's own encoder makes of the same query.
    #[test]
    fn query_bytes_match_hickorys_encoding() {
        for (text, record_type) in [
            ("wWw.Example.TEST.", RecordType::A),
            (".", RecordType::NS),
            ("_25._tcp.mail.example.", RecordType::TLSA),
        ] {
            let name = Name::from_ascii(text).unwrap();
            let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
            message.metadata.recursion_desired = false;
            message.add_query(Query::query(name.clone(), record_type));
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            message.set_edns(edns);
            assert_eq!(
                build_query(0xbeef, &name, record_type, 1232).unwrap(),
                message.to_vec().unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn dname_rdata_round_trips() {
        let target = Name::from_ascii("new.example.test.").unwrap();
        assert_eq!(dname_target(&dname_rdata(&target).unwrap()), Some(target));
    }

    proptest! {
        #[test]
        fn tcp_frames_round_trip(messages in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..8), tail in 0usize..2) {
            let mut stream = Vec::new();
            for message in &messages {
                stream.extend(frame_tcp(message).unwrap());
            }
            // An incomplete trailing frame stays in the tail.
            let partial = [0u8, 9, 1][..tail + 1].to_vec();
            stream.extend(&partial);
            let (frames, rest) = split_tcp_frames(&stream);
            prop_assert_eq!(frames.len(), messages.len());
            for (frame, message) in frames.iter().zip(&messages) {
                prop_assert_eq!(*frame, message.as_slice());
            }
            prop_assert_eq!(rest, partial.as_slice());
        }

        #[test]
        fn parsers_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_message(&bytes);
            let _ = split_tcp_frames(&bytes);
            if !bytes.is_empty() {
                let rdata = RData::Unknown {
                    code: RecordType::DNAME,
                    rdata: hickory_proto::rr::rdata::NULL::with(bytes.clone()),
                };
                let _ = dname_target(&rdata);
            }
        }

        #[test]
        fn queries_round_trip(labels in proptest::collection::vec("[a-zA-Z0-9-]{1,20}", 0..5),
                              id in any::<u16>(), size in 512u16..4096) {
            let name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap();
            let bytes = build_query(id, &name, RecordType::TXT, size).unwrap();
            let message = parse_message(&bytes).unwrap();
            prop_assert_eq!(message.metadata.id, id);
            prop_assert!(message.queries[0].name().eq_case(&name));
            prop_assert_eq!(message.max_payload(), size);
        }
    }
}
