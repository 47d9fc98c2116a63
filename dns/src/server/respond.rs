//! Building answers in wire form: error replies from a bare header, OPT records, truncation,
//! and the template a finished resolution is encoded to once and personalised per client.

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{DNSClass, Name, Record, RecordType},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding},
};

pub(crate) use crate::packet_cache::HEADER_LEN;
use crate::{
    packet_cache::ParsedQuery,
    resolver::Resolution,
    wire::{MAX_MESSAGE_LEN, append_name},
};

pub(crate) const RCODE_SERVFAIL: u8 = 2;
pub(crate) const RCODE_FORMERR: u8 = 1;
pub(crate) const RCODE_NOTIMP: u8 = 4;
pub(crate) const RCODE_REFUSED: u8 = 5;
/// QTYPE ANY (`*`).
pub(crate) const TYPE_ANY: u16 = 255;
/// TTL of the synthesised ANY answer (RFC 8482 4.2 leaves it to the operator; this is the
/// value large public resolvers use).
const ANY_HINFO_TTL: u32 = 3789;
/// Extended rcode 16 (BADVERS): upper 8 bits 1 in the OPT record, 0 in the header.
const EXTENDED_RCODE_BADVERS: u8 = 1;

/// What the client sent that every reply to it must reflect.
#[derive(Debug, Clone)]
pub(crate) struct ClientQuery {
    pub(crate) id: u16,
    pub(crate) flags: u16,
    pub(crate) qname: Vec<u8>,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    pub(crate) edns: Option<crate::packet_cache::QueryEdns>,
}

impl ClientQuery {
    pub(crate) fn from_parsed(query: &ParsedQuery<'_>) -> Self {
        Self {
            id: query.id,
            flags: query.flags,
            qname: query.qname_wire().to_vec(),
            qtype: query.qtype,
            qclass: query.qclass,
            edns: query.edns,
        }
    }

    /// The coalescing key: what makes two questions the same resolution and cache entry.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.qname.len() + 5);
        key.extend(self.qname.iter().map(u8::to_ascii_lowercase));
        key.extend_from_slice(&self.qtype.to_be_bytes());
        key.extend_from_slice(&self.qclass.to_be_bytes());
        let dnssec_ok = self.edns.is_some_and(|edns| edns.dnssec_ok);
        key.push(u8::from(dnssec_ok) | (u8::from(self.flags & 0x0010 != 0) << 1));
        key
    }
}

/// A reply carrying only the header (and the question when the query was readable): FORMERR,
/// NOTIMP, REFUSED, SERVFAIL.
pub(crate) fn error_reply(
    packet: &[u8],
    question: Option<&ParsedQuery<'_>>,
    rcode: u8,
    out: &mut Vec<u8>,
) {
    out.clear();
    let Some(header) = packet.get(..HEADER_LEN) else {
        return;
    };
    out.extend_from_slice(header);
    // QR set; keep opcode and RD; clear AA, TC; RA set; keep CD; rcode.
    out[2] = 0x80 | (header[2] & 0x79);
    out[3] = 0x80 | (header[3] & 0x10) | (rcode & 0x0F);
    out[4..HEADER_LEN].fill(0);
    if let Some(query) = question {
        out[5] = 1;
        out.extend_from_slice(query.qname_wire());
        out.extend_from_slice(&query.qtype.to_be_bytes());
        out.extend_from_slice(&query.qclass.to_be_bytes());
        if query.edns.is_some() {
            append_opt(out, query.dnssec_ok(), 0);
        }
    }
}

/// BADVERS for an EDNS version we do not speak (RFC 6891 6.1.3).
pub(crate) fn badvers_reply(packet: &[u8], query: &ParsedQuery<'_>, out: &mut Vec<u8>) {
    error_reply(packet, None, 0, out);
    if out.len() == HEADER_LEN {
        out[5] = 1;
        out.extend_from_slice(query.qname_wire());
        out.extend_from_slice(&query.qtype.to_be_bytes());
        out.extend_from_slice(&query.qclass.to_be_bytes());
        append_opt(out, query.dnssec_ok(), EXTENDED_RCODE_BADVERS);
    }
}

/// Append our OPT record and count it in ARCOUNT.
fn append_opt(out: &mut Vec<u8>, dnssec_ok: bool, extended_rcode: u8) {
    out.push(0); // root owner
    out.extend_from_slice(&41u16.to_be_bytes());
    out.extend_from_slice(&OUR_EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[extended_rcode, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
    let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// The UDP payload size we advertise in our OPT records.
const OUR_EDNS_PAYLOAD: u16 = 1232;

/// Turn a cached or templated answer (without OPT) into what this client receives: an OPT if
/// it sent one, and TC with empty sections when it exceeds `max_len`.
/// `edns` is the client's DO bit when it sent an OPT record. Returns whether it truncated.
pub(crate) fn finish(
    out: &mut Vec<u8>,
    qname_len: usize,
    edns: Option<bool>,
    max_len: usize,
) -> bool {
    if let Some(dnssec_ok) = edns {
        append_opt(out, dnssec_ok, 0);
    }
    if out.len() <= max_len {
        return false;
    }
    out.truncate(HEADER_LEN + qname_len + 4);
    out[2] |= 0x02;
    out[6..HEADER_LEN].fill(0);
    if let Some(dnssec_ok) = edns {
        append_opt(out, dnssec_ok, 0);
    }
    true
}

/// Copy `template` (an answer encoded once for a question) into `out` for one client: its ID,
/// its RD bit, its spelling of the name.
pub(crate) fn personalise(template: &[u8], query: &ClientQuery, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    if out.len() < HEADER_LEN + query.qname.len() {
        return;
    }
    out[..2].copy_from_slice(&query.id.to_be_bytes());
    out[2] = (out[2] & !0x01) | u8::from(query.flags & 0x0100 != 0);
    out[HEADER_LEN..HEADER_LEN + query.qname.len()].copy_from_slice(&query.qname);
}

/// The question as hickory types, or None when the name does not decode (FORMERR material).
pub(crate) fn question(query: &ClientQuery) -> Option<(Name, RecordType)> {
    let mut decoder = BinDecoder::new(&query.qname);
    let name = Name::read(&mut decoder).ok()?;
    Some((name, RecordType::from(query.qtype)))
}

/// Encode a finished resolution for `query` (ID 0, no OPT): the template every waiter gets.
///
/// Written directly rather than through hickory's `Message`, which cost about 7000
/// instructions per miss in a callgrind count of a cold batch, most of it searching its table
/// for names to compress (docs/benchmarks.md, session 10). The question is the client's own
/// bytes. Owners are compressed against the names written in full before them (the question,
/// earlier owners, and CNAME, DNAME, NS and PTR targets), so a CNAME chain or an SOA owner
/// costs two bytes as with hickory. Names inside other RDATA (an SOA's two names, an MX
/// exchange) are written in full, which RFC 1035 allows: 15-30 bytes more on a negative answer.
/// Tests check that hickory reads back the same message it would have written, and the size.
pub(crate) fn encode_resolution(query: &ClientQuery, resolution: &Resolution) -> Option<Vec<u8>> {
    let rcode = u8::try_from(u16::from(resolution.rcode))
        .ok()
        .filter(|rcode| *rcode < 16)?;
    let count = |records: &[Record]| u16::try_from(records.len()).ok();
    let (answers, authorities) = (count(&resolution.answers)?, count(&resolution.authorities)?);
    let mut out = Vec::with_capacity(512);
    // ID 0, QR, opcode QUERY; RA, CD as the client set it, the rcode; one question.
    let flags = 0x8080 | (query.flags & 0x0010) | u16::from(rcode);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&authorities.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let mut targets = PointerTargets::default();
    targets.add(out.len(), query.qname.len());
    out.extend_from_slice(&query.qname);
    out.extend_from_slice(&query.qtype.to_be_bytes());
    out.extend_from_slice(&query.qclass.to_be_bytes());
    let mut rdata = Vec::new();
    for record in resolution.answers.iter().chain(&resolution.authorities) {
        targets.write_owner(&record.name, &mut out)?;
        out.extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        out.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
        out.extend_from_slice(&record.ttl.to_be_bytes());
        rdata.clear();
        let mut encoder = BinEncoder::new(&mut rdata);
        encoder.set_name_encoding(NameEncoding::Uncompressed);
        record.data.emit(&mut encoder).ok()?;
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        if matches!(
            record.record_type(),
            RecordType::CNAME | RecordType::DNAME | RecordType::NS | RecordType::PTR
        ) {
            // The whole RDATA is one uncompressed name.
            targets.add(out.len(), rdata.len());
        }
        out.extend_from_slice(&rdata);
    }
    (out.len() <= MAX_MESSAGE_LEN).then_some(out)
}

/// Names written in full in an answer being encoded, which later owners may point into:
/// (offset, length) in the output.
#[derive(Default)]
struct PointerTargets {
    names: [(usize, usize); MAX_POINTER_TARGETS],
    count: usize,
}

/// Names remembered per answer: a chain and an SOA need a handful; past this, owners are
/// written in full, which bounds the search for a long answer.
const MAX_POINTER_TARGETS: usize = 16;
/// Pointers hold 14 bits of offset.
const MAX_POINTER_OFFSET: usize = 0x3fff;

impl PointerTargets {
    fn add(&mut self, offset: usize, len: usize) {
        if self.count < MAX_POINTER_TARGETS && offset <= MAX_POINTER_OFFSET {
            self.names[self.count] = (offset, len);
            self.count += 1;
        }
    }

    /// Append `owner`: its leading labels, then a pointer to the longest of its suffixes
    /// (ignoring ASCII case) that ends a name written before, or all of it, remembered.
    fn write_owner(&mut self, owner: &Name, out: &mut Vec<u8>) -> Option<()> {
        let start = out.len();
        let len = append_name(owner, out).ok()?;
        // Each suffix starts at a length byte of what was just written; the root's zero byte
        // ends the walk (a lone root is not worth a pointer).
        let mut suffix = start;
        while let Some(&label_len) = out.get(suffix).filter(|label_len| **label_len != 0) {
            if let Some(pointer) = self.find(out, suffix) {
                out.truncate(suffix);
                out.extend_from_slice(&(0xc000 | pointer).to_be_bytes());
                return Some(());
            }
            suffix += 1 + usize::from(label_len);
        }
        self.add(start, len);
        Some(())
    }

    /// Where an earlier name ends with the name at `out[suffix..]`, as a pointer offset.
    fn find(&self, out: &[u8], suffix: usize) -> Option<u16> {
        let wanted = &out[suffix..];
        self.names[..self.count].iter().find_map(|&(offset, len)| {
            let name = out.get(offset..offset + len)?;
            // Walk the earlier name's label boundaries until its rest is as long as `wanted`.
            let mut at = 0;
            while name.len().saturating_sub(at) > wanted.len() {
                at += 1 + usize::from(*name.get(at)?);
            }
            let rest = name.get(at..)?;
            let pointer = offset + at;
            (rest.eq_ignore_ascii_case(wanted) && pointer <= MAX_POINTER_OFFSET)
                .then(|| u16::try_from(pointer).ok())
                .flatten()
        })
    }
}

/// The RFC 8482 (section 4.2) answer to an ANY question: one HINFO record at the name with
/// CPU "RFC8482" and an empty OS (ID 0, no OPT), or None when the name does not decode.
pub(crate) fn any_template(query: &ClientQuery) -> Option<Vec<u8>> {
    let (name, record_type) = question(query)?;
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    message.metadata.recursion_available = true;
    let mut question = Query::query(name.clone(), record_type);
    question.set_query_class(DNSClass::from(query.qclass));
    message.add_query(question);
    message.add_answer(Record::from_rdata(
        name,
        ANY_HINFO_TTL,
        hickory_proto::rr::RData::HINFO(hickory_proto::rr::rdata::HINFO::new(
            "RFC8482".into(),
            String::new(),
        )),
    ));
    message.to_vec().ok()
}

/// A SERVFAIL template (ID 0, question included, no OPT).
pub(crate) fn servfail_template(query: &ClientQuery) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + query.qname.len() + 4);
    out.extend_from_slice(&[0, 0, 0x80, 0x80 | RCODE_SERVFAIL, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&query.qname);
    out.extend_from_slice(&query.qtype.to_be_bytes());
    out.extend_from_slice(&query.qclass.to_be_bytes());
    out
}

/// A minimal query with the same cache key as `query` (the packet cache keys on a query).
pub(crate) fn cache_key_query(query: &ClientQuery) -> Vec<u8> {
    let has_opt = query.edns.is_some();
    let mut packet = Vec::with_capacity(HEADER_LEN + query.qname.len() + 15);
    let flags = (query.flags & 0x0110).to_be_bytes();
    packet.extend_from_slice(&[
        0,
        0,
        flags[0],
        flags[1],
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(has_opt),
    ]);
    packet.extend_from_slice(&query.qname);
    packet.extend_from_slice(&query.qtype.to_be_bytes());
    packet.extend_from_slice(&query.qclass.to_be_bytes());
    if let Some(edns) = query.edns {
        packet.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0]);
        packet.extend_from_slice(&[if edns.dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet_cache::parse_query;

    /// What hickory's `Message` encoder made of a resolution before the direct encoder.
    fn hickory_encoding(query: &ClientQuery, resolution: &Resolution) -> Vec<u8> {
        let (name, record_type) = question(query).unwrap();
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.recursion_available = true;
        message.metadata.checking_disabled = query.flags & 0x0010 != 0;
        message.metadata.response_code = resolution.rcode;
        let mut question = Query::query(name, record_type);
        question.set_query_class(DNSClass::from(query.qclass));
        message.add_query(question);
        message.add_answers(resolution.answers.iter().cloned());
        message.add_authorities(resolution.authorities.iter().cloned());
        message.to_vec().unwrap()
    }

    #[test]
    fn resolutions_read_back_as_hickory_would_have_written_them() {
        use hickory_proto::{
            op::ResponseCode,
            rr::{
                RData,
                rdata::{A, CNAME, MX, SOA, TXT},
            },
        };
        let name = |text: &str| Name::from_ascii(text).unwrap();
        let record = |owner: &str, data: RData| Record::from_rdata(name(owner), 300, data);
        let soa = Record::from_rdata(
            name("Example."),
            60,
            RData::SOA(SOA::new(
                name("ns.example."),
                name("host.example."),
                7,
                1,
                2,
                3,
                60,
            )),
        );
        let resolutions = [
            (
                ResponseCode::NoError,
                vec![
                    record("www.example.", RData::CNAME(CNAME(name("web.example.")))),
                    record("WEB.example.", RData::A(A::new(192, 0, 2, 1))),
                    record("web.example.", RData::A(A::new(192, 0, 2, 2))),
                ],
                vec![],
            ),
            (ResponseCode::NXDomain, vec![], vec![soa.clone()]),
            (ResponseCode::NoError, vec![], vec![soa]),
            (
                ResponseCode::NoError,
                vec![
                    record(
                        "www.example.",
                        RData::MX(MX::new(10, name("mail.example."))),
                    ),
                    record("www.example.", RData::TXT(TXT::new(vec!["v=1".into()]))),
                ],
                vec![],
            ),
        ];
        let mut packet = query_bytes(false);
        packet[3] |= 0x10; // CD
        packet[12..24].copy_from_slice(b"\x03WwW\x07ExAmple");
        let client = ClientQuery::from_parsed(&parse_query(&packet).unwrap());
        for (rcode, answers, authorities) in resolutions {
            let resolution = Resolution {
                rcode,
                answers,
                authorities,
                trace: Vec::new(),
                upstream_queries: 1,
            };
            let direct = encode_resolution(&client, &resolution).unwrap();
            let hickory = hickory_encoding(&client, &resolution);
            let ours = Message::from_vec(&direct).unwrap();
            let theirs = Message::from_vec(&hickory).unwrap();
            // Owners are compressed as hickory compresses them; only names inside RDATA (two
            // in an SOA, one in a CNAME or MX) may be longer, by at most their shared suffix.
            assert!(
                direct.len() <= hickory.len() + 16,
                "{} bytes against hickory's {}",
                direct.len(),
                hickory.len()
            );
            assert_eq!(ours.metadata, theirs.metadata);
            assert_eq!(ours.queries, theirs.queries);
            assert!(ours.queries[0].name().eq_case(&name("WwW.ExAmple.")));
            assert_eq!(ours.answers, theirs.answers);
            assert_eq!(ours.authorities, theirs.authorities);
            assert!(ours.additionals.is_empty() && ours.edns.is_none());
            // The question's name is written once; an owner equal to it points at it.
            if rcode == ResponseCode::NoError && !resolution.answers.is_empty() {
                assert_eq!(direct[29..31], [0xc0, 12]);
            }
        }
    }

    fn query_bytes(edns: bool) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        packet.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
        if edns {
            packet.extend_from_slice(&[0, 0, 41, 4, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        packet
    }

    #[test]
    fn error_replies_echo_id_and_question() {
        let packet = query_bytes(true);
        let parsed = parse_query(&packet).unwrap();
        let mut out = Vec::new();
        error_reply(&packet, Some(&parsed), RCODE_REFUSED, &mut out);
        assert_eq!(&out[..2], &[0x12, 0x34]);
        assert_eq!(out[3] & 0x0F, RCODE_REFUSED);
        assert_eq!(out[2] & 0x80, 0x80);
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.queries.len(), 1);
        assert!(reply.edns.is_some());
        error_reply(&packet[..5], None, RCODE_FORMERR, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn finish_truncates_over_the_limit_and_keeps_opt() {
        let packet = query_bytes(true);
        let parsed = parse_query(&packet).unwrap();
        let client = ClientQuery::from_parsed(&parsed);
        let mut out = servfail_template(&client);
        out.resize(700, 0); // pretend records follow
        out[7] = 5;
        let truncated = finish(&mut out, client.qname.len(), Some(true), 512);
        assert!(truncated);
        let reply = Message::from_vec(&out).unwrap();
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        assert!(reply.edns.is_some());
    }
}
