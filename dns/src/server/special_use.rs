//! Names answered locally and never sent upstream, as Unbound does by default (RFC 6761,
//! RFC 6303): `localhost.` (and every name below it) is 127.0.0.1 / ::1; the loopback reverse
//! names point back to `localhost.`; `invalid.` and the reverse zones of private, link-local,
//! documentation and unspecified address ranges are empty zones (NXDOMAIN below the apex).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, NS, PTR, SOA},
    },
};

/// The zones, apex first. The loopback reverse names carry a PTR to `localhost.`.
const STATIC_ZONES: &[&str] = &[
    "invalid.",
    "127.in-addr.arpa.",
    "0.in-addr.arpa.",
    "10.in-addr.arpa.",
    "254.169.in-addr.arpa.",
    "2.0.192.in-addr.arpa.",
    "100.51.198.in-addr.arpa.",
    "113.0.203.in-addr.arpa.",
    "168.192.in-addr.arpa.",
    "255.255.255.255.in-addr.arpa.",
    "16.172.in-addr.arpa.",
    "17.172.in-addr.arpa.",
    "18.172.in-addr.arpa.",
    "19.172.in-addr.arpa.",
    "20.172.in-addr.arpa.",
    "21.172.in-addr.arpa.",
    "22.172.in-addr.arpa.",
    "23.172.in-addr.arpa.",
    "24.172.in-addr.arpa.",
    "25.172.in-addr.arpa.",
    "26.172.in-addr.arpa.",
    "27.172.in-addr.arpa.",
    "28.172.in-addr.arpa.",
    "29.172.in-addr.arpa.",
    "30.172.in-addr.arpa.",
    "31.172.in-addr.arpa.",
    // ::1 and :: (their full 32-nibble names).
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
    "d.f.ip6.arpa.",
    "8.e.f.ip6.arpa.",
    "9.e.f.ip6.arpa.",
    "a.e.f.ip6.arpa.",
    "b.e.f.ip6.arpa.",
    "8.b.d.0.1.0.0.2.ip6.arpa.",
];

const LOCALHOST: &str = "localhost.";
const LOOPBACK_V4_PTR: &str = "1.0.0.127.in-addr.arpa.";
const LOOPBACK_V6_PTR: &str =
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.";
/// TTL of local records; also the SOA minimum, so negative answers last as long.
const LOCAL_TTL: u32 = 3600;

/// The last label of every zone above.
const LOCAL_TOP_LABELS: [&str; 3] = ["localhost", "invalid", "arpa"];

/// The zone `qname` (lowercase, presentation form with the final dot) falls in, if local.
fn local_zone(qname: &str) -> Option<&'static str> {
    let within = |zone: &str| {
        qname == zone
            || qname
                .strip_suffix(zone)
                .is_some_and(|prefix| prefix.ends_with('.'))
    };
    if within(LOCALHOST) {
        return Some(LOCALHOST);
    }
    STATIC_ZONES.iter().copied().find(|zone| within(zone))
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok()
}

/// A complete answer (ID 0, no OPT) when `question` is one the server must answer itself.
pub(crate) fn answer(question: &Name, record_type: RecordType) -> Option<Vec<u8>> {
    // Every local zone is under one of these; checking the last label first spares every
    // other question (each miss asks) a lowercased copy of its name in presentation form.
    let top = question.iter().next_back()?;
    if !LOCAL_TOP_LABELS
        .iter()
        .any(|local| top.eq_ignore_ascii_case(local.as_bytes()))
    {
        return None;
    }
    let lower = question.to_lowercase().to_ascii();
    let zone = local_zone(&lower)?;
    let apex = name(zone)?;
    let soa = Record::from_rdata(
        apex.clone(),
        LOCAL_TTL,
        RData::SOA(SOA::new(
            apex.clone(),
            name("nobody.invalid.")?,
            1,
            3600,
            1200,
            604_800,
            LOCAL_TTL,
        )),
    );
    let at_apex = lower == zone;
    let owner = question.clone();
    let mut answers = Vec::new();
    let mut rcode = ResponseCode::NoError;
    match (zone, record_type) {
        // Every name under localhost. is localhost (RFC 6761 6.3).
        (LOCALHOST, RecordType::A) => answers.push(Record::from_rdata(
            owner,
            LOCAL_TTL,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        )),
        (LOCALHOST, RecordType::AAAA) => answers.push(Record::from_rdata(
            owner,
            LOCAL_TTL,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        )),
        (LOCALHOST, _) => {}
        _ if (lower == LOOPBACK_V4_PTR || lower == LOOPBACK_V6_PTR)
            && record_type == RecordType::PTR =>
        {
            answers.push(Record::from_rdata(
                owner,
                LOCAL_TTL,
                RData::PTR(PTR(name(LOCALHOST)?)),
            ));
        }
        _ if lower == LOOPBACK_V4_PTR || lower == LOOPBACK_V6_PTR => {}
        _ if !at_apex => rcode = ResponseCode::NXDomain,
        _ => {}
    }
    if at_apex && answers.is_empty() {
        match record_type {
            RecordType::SOA => answers.push(soa.clone()),
            RecordType::NS => answers.push(Record::from_rdata(
                apex.clone(),
                LOCAL_TTL,
                RData::NS(NS(apex.clone())),
            )),
            _ => {}
        }
    }
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    message.metadata.authoritative = true;
    message.metadata.recursion_available = true;
    message.metadata.response_code = rcode;
    message.add_query(Query::query(question.clone(), record_type));
    if answers.is_empty() {
        message.add_authority(soa);
    }
    message.add_answers(answers);
    message.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(text: &str, record_type: RecordType) -> Message {
        let wire = answer(&Name::from_ascii(text).unwrap(), record_type).expect("answered locally");
        Message::from_vec(&wire).unwrap()
    }

    #[test]
    fn localhost_and_below_is_loopback() {
        let reply = ask("LocalHost.", RecordType::A);
        assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
        let reply = ask("foo.localhost.", RecordType::AAAA);
        assert_eq!(
            reply.answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST))
        );
        let reply = ask("localhost.", RecordType::MX);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn invalid_and_private_reverse_names_do_not_exist() {
        for (text, record_type) in [
            ("www.invalid.", RecordType::A),
            ("4.3.2.10.in-addr.arpa.", RecordType::PTR),
            ("1.1.168.192.in-addr.arpa.", RecordType::PTR),
            ("9.9.20.172.in-addr.arpa.", RecordType::PTR),
            ("2.127.in-addr.arpa.", RecordType::PTR),
        ] {
            let reply = ask(text, record_type);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{text}"
            );
            assert!(reply.metadata.authoritative);
        }
        let apex = ask("10.in-addr.arpa.", RecordType::SOA);
        assert_eq!(apex.metadata.response_code, ResponseCode::NoError);
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
    }

    /// The last-label check never hides a zone: each one's apex, in any case, is answered.
    #[test]
    fn every_zone_is_answered_at_its_apex_in_any_case() {
        for zone in STATIC_ZONES.iter().chain(&[LOCALHOST]) {
            for spelling in [zone.to_string(), zone.to_ascii_uppercase()] {
                let reply = ask(&spelling, RecordType::SOA);
                assert_eq!(
                    reply.metadata.response_code,
                    ResponseCode::NoError,
                    "{spelling}"
                );
                assert!(reply.metadata.authoritative, "{spelling}");
            }
        }
        assert!(answer(&Name::root(), RecordType::NS).is_none());
    }

    #[test]
    fn loopback_addresses_point_back_to_localhost() {
        for text in [LOOPBACK_V4_PTR, LOOPBACK_V6_PTR] {
            let reply = ask(text, RecordType::PTR);
            assert_eq!(
                reply.answers[0].data,
                RData::PTR(PTR(Name::from_ascii("localhost.").unwrap()))
            );
        }
    }

    #[test]
    fn public_names_go_upstream() {
        for text in [
            "example.com.",
            "notlocalhost.",
            "localhost.example.",
            "1.1.15.172.in-addr.arpa.",
            "4.3.2.11.in-addr.arpa.",
            "xinvalid.",
        ] {
            assert!(
                answer(&Name::from_ascii(text).unwrap(), RecordType::A).is_none(),
                "{text}"
            );
        }
    }
}
