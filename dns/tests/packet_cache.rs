//! The packet cache and its fast query parser, checked against hickory-proto's full codec.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use edgekit_dns::{
    CacheInsertError, ManualClock, PacketCache, PacketCacheConfig, QueryParseError, parse_query,
    proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{DNSClass, Name, RData, Record, RecordType, rdata},
        serialize::binary::BinEncodable,
    },
};
use proptest::prelude::*;

fn query_message(name: &Name, qtype: RecordType, id: u16, dnssec_ok: Option<bool>) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), qtype));
    if let Some(dnssec_ok) = dnssec_ok {
        let mut edns = Edns::new();
        edns.set_max_payload(1232).set_dnssec_ok(dnssec_ok);
        message.set_edns(edns);
    }
    message
}

/// A resolver's answer to `qname A`: a CNAME at the question name to another zone, the target's
/// address, that zone's NS in authority, and an OPT record.
fn answer_message(qname: &Name, id: u16, ttls: [u32; 3], elapsed: u32) -> Message {
    let target = Name::from_ascii("web.example.net.").unwrap();
    let mut message = Message::response(id, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.recursion_available = true;
    message.add_query(Query::query(qname.clone(), RecordType::A));
    message.add_answer(Record::from_rdata(
        qname.clone(),
        ttls[0] - elapsed,
        RData::CNAME(rdata::CNAME(target.clone())),
    ));
    message.add_answer(Record::from_rdata(
        target,
        ttls[1] - elapsed,
        RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, 7))),
    ));
    message.add_authority(Record::from_rdata(
        Name::from_ascii("example.net.").unwrap(),
        ttls[2] - elapsed,
        RData::NS(rdata::NS(Name::from_ascii("ns1.example.net.").unwrap())),
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

fn cache(clock: &Arc<ManualClock>) -> PacketCache<Arc<ManualClock>> {
    PacketCache::with_clock(PacketCacheConfig::default(), clock.clone()).unwrap()
}

fn name_strategy() -> impl Strategy<Value = Name> {
    prop::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,20}", 1..6)
        .prop_map(|labels| Name::from_ascii(format!("{}.", labels.join("."))).unwrap())
}

/// Apply a case pattern to the letters of a name.
fn recase(name: &Name, upper: &[bool]) -> Name {
    let text: String = name
        .to_ascii()
        .chars()
        .zip(upper.iter().cycle())
        .map(|(c, up)| {
            if *up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    Name::from_ascii(text).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fast_parser_agrees_with_hickory_on_valid_queries(
        name in name_strategy(),
        qtype in prop::sample::select(vec![1u16, 2, 5, 6, 15, 16, 28, 33, 65, 255, 4242]),
        qclass in prop::sample::select(vec![1u16, 3, 255]),
        id in any::<u16>(),
        rd in any::<bool>(),
        cd in any::<bool>(),
        edns in prop::option::of((512u16..4096, any::<bool>())),
    ) {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = rd;
        message.metadata.checking_disabled = cd;
        let mut query = Query::query(name.clone(), RecordType::from(qtype));
        query.set_query_class(DNSClass::from(qclass));
        message.add_query(query);
        if let Some((payload, dnssec_ok)) = edns {
            let mut opt = Edns::new();
            opt.set_max_payload(payload).set_dnssec_ok(dnssec_ok);
            message.set_edns(opt);
        }
        let wire = message.to_vec().unwrap();
        let decoded = Message::from_vec(&wire).unwrap();
        let parsed = parse_query(&wire).unwrap();

        prop_assert_eq!(parsed.id, decoded.metadata.id);
        prop_assert_eq!(parsed.opcode(), 0);
        prop_assert_eq!(parsed.recursion_desired(), decoded.metadata.recursion_desired);
        prop_assert_eq!(parsed.checking_disabled(), decoded.metadata.checking_disabled);
        prop_assert_eq!(parsed.qname_wire(), &decoded.queries[0].name().to_bytes().unwrap()[..]);
        prop_assert_eq!(parsed.qtype, u16::from(decoded.queries[0].query_type()));
        prop_assert_eq!(parsed.qclass, u16::from(decoded.queries[0].query_class()));
        prop_assert_eq!(parsed.edns.is_some(), decoded.edns.is_some());
        if let (Some(ours), Some(theirs)) = (parsed.edns, decoded.edns.as_ref()) {
            prop_assert_eq!(ours.udp_payload_size, theirs.max_payload());
            prop_assert_eq!(ours.dnssec_ok, theirs.flags().dnssec_ok);
            prop_assert_eq!(ours.version, theirs.version());
        }
    }

    #[test]
    fn fast_parser_never_panics_and_agrees_when_both_accept(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        check_against_hickory(&bytes)?;
        serve_as_own_answer(&bytes)?;
    }

    #[test]
    fn fast_parser_survives_damaged_queries(
        name in name_strategy(),
        dnssec_ok in prop::option::of(any::<bool>()),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut wire = query_message(&name, RecordType::AAAA, 7, dnssec_ok).to_vec().unwrap();
        for (at, byte) in flips {
            let at = at.index(wire.len());
            wire[at] = byte;
        }
        wire.truncate(cut.index(wire.len() + 1));
        check_against_hickory(&wire)?;
        serve_as_own_answer(&wire)?;
    }

    #[test]
    fn hit_is_byte_identical_to_hickory_with_client_id_case_and_ttls(
        name in name_strategy(),
        upper in prop::collection::vec(any::<bool>(), 1..16),
        client_id in any::<u16>(),
        client_rd in any::<bool>(),
        ttls in [60u32..7200, 60u32..7200, 60u32..7200],
        elapsed in 0u32..60,
    ) {
        let clock = Arc::new(ManualClock::default());
        let cache = cache(&clock);
        let lower = name.to_lowercase();
        let first_query = query_message(&lower, RecordType::A, 1, Some(false)).to_vec().unwrap();
        let first_answer = answer_message(&lower, 1, ttls, 0).to_vec().unwrap();
        cache.insert(&parse_query(&first_query).unwrap(), &first_answer).unwrap();

        clock.advance(Duration::from_secs(u64::from(elapsed)));
        let client_name = recase(&name, &upper);
        let mut client_query = query_message(&client_name, RecordType::A, client_id, Some(false));
        client_query.metadata.recursion_desired = client_rd;
        let client_query = client_query.to_vec().unwrap();
        let mut hit = Vec::new();
        prop_assert!(cache.answer_into(&parse_query(&client_query).unwrap(), &mut hit));

        let mut expected = answer_message(&client_name, client_id, ttls, elapsed);
        expected.metadata.recursion_desired = client_rd;
        prop_assert_eq!(hit, expected.to_vec().unwrap());
    }
}

fn check_against_hickory(bytes: &[u8]) -> Result<(), TestCaseError> {
    let ours = parse_query(bytes);
    if let (Ok(parsed), Ok(full)) = (ours, Message::from_vec(bytes)) {
        prop_assert_eq!(full.metadata.message_type, MessageType::Query);
        prop_assert_eq!(full.queries.len(), 1);
        let question = &full.queries[0];
        prop_assert!(
            parsed
                .qname_wire()
                .eq_ignore_ascii_case(&question.name().to_bytes().unwrap())
        );
        prop_assert_eq!(parsed.qtype, u16::from(question.query_type()));
        prop_assert_eq!(parsed.qclass, u16::from(question.query_class()));
    }
    Ok(())
}

/// What the fuzz target does: the same bytes as an answer walk the cache's record scanner, and
/// whatever it accepts it serves back whole.
fn serve_as_own_answer(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(query) = parse_query(bytes) else {
        return Ok(());
    };
    let mut answer = bytes.to_vec();
    answer[2] |= 0x80;
    let clock = Arc::new(ManualClock::default());
    let cache = cache(&clock);
    if cache.insert(&query, &answer).is_ok() {
        let mut out = Vec::new();
        prop_assert!(cache.answer_into(&query, &mut out));
        prop_assert_eq!(out.len(), answer.len());
    }
    Ok(())
}

#[test]
fn entries_expire_with_their_smallest_ttl() {
    let clock = Arc::new(ManualClock::default());
    let cache = cache(&clock);
    let name = Name::from_ascii("www.example.com.").unwrap();
    let query = query_message(&name, RecordType::A, 1, None)
        .to_vec()
        .unwrap();
    let query = parse_query(&query).unwrap();
    cache
        .insert(
            &query,
            &answer_message(&name, 1, [300, 60, 3600], 0)
                .to_vec()
                .unwrap(),
        )
        .unwrap();

    let mut out = Vec::new();
    clock.advance(Duration::from_millis(59_999));
    assert!(cache.answer_into(&query, &mut out));
    let served = Message::from_vec(&out).unwrap();
    let ttls: Vec<u32> = served.answers.iter().map(|r| r.ttl).collect();
    // Remaining TTLs round down: 1 ms left is served as 0, never as more time than there is.
    assert_eq!(ttls, [300 - 60, 0]);
    assert_eq!(served.authorities[0].ttl, 3600 - 60);

    clock.advance(Duration::from_millis(1));
    assert!(!cache.answer_into(&query, &mut out));
    assert!(out.is_empty());
    assert_eq!(cache.len(), 0, "an expired entry found on read is removed");
}

#[test]
fn key_includes_type_class_do_and_cd_but_not_case() {
    let clock = Arc::new(ManualClock::default());
    let cache = cache(&clock);
    let name = Name::from_ascii("www.example.com.").unwrap();
    let stored = query_message(&name, RecordType::A, 1, Some(false))
        .to_vec()
        .unwrap();
    cache
        .insert(
            &parse_query(&stored).unwrap(),
            &answer_message(&name, 1, [300, 300, 300], 0)
                .to_vec()
                .unwrap(),
        )
        .unwrap();
    let mut out = Vec::new();
    let mut hit = |message: Message| {
        let wire = message.to_vec().unwrap();
        cache.answer_into(&parse_query(&wire).unwrap(), &mut out)
    };

    let shouting = Name::from_ascii("WWW.EXAMPLE.COM.").unwrap();
    assert!(hit(query_message(&shouting, RecordType::A, 9, Some(false))));
    // No EDNS means DO clear: the same entry.
    assert!(hit(query_message(&name, RecordType::A, 9, None)));
    assert!(
        !hit(query_message(&name, RecordType::A, 9, Some(true))),
        "DO set"
    );
    assert!(
        !hit(query_message(&name, RecordType::AAAA, 9, Some(false))),
        "other type"
    );
    let mut checking_disabled = query_message(&name, RecordType::A, 9, Some(false));
    checking_disabled.metadata.checking_disabled = true;
    assert!(!hit(checking_disabled), "CD set");
    let mut chaos = query_message(&name, RecordType::A, 9, Some(false));
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert!(!hit(chaos), "other class");
}

#[test]
fn size_is_bounded_by_eviction() {
    let clock = Arc::new(ManualClock::default());
    let config = PacketCacheConfig {
        max_bytes: 64 * 1024,
        shards: 4,
        ..PacketCacheConfig::default()
    };
    let cache = PacketCache::with_clock(config, clock.clone()).unwrap();
    let mut last_query = Vec::new();
    for index in 0..5_000 {
        let name = Name::from_ascii(format!("host{index}.example.com.")).unwrap();
        last_query = query_message(&name, RecordType::A, 1, None)
            .to_vec()
            .unwrap();
        let answer = answer_message(&name, 1, [300, 300, 300], 0)
            .to_vec()
            .unwrap();
        cache
            .insert(&parse_query(&last_query).unwrap(), &answer)
            .unwrap();
        assert!(
            cache.bytes() <= config.max_bytes,
            "over the bound after {index} inserts"
        );
    }
    assert!(
        cache.len() > 100,
        "eviction threw away far too much: {}",
        cache.len()
    );
    assert!(cache.len() < 5_000);
    let mut out = Vec::new();
    assert!(
        cache.answer_into(&parse_query(&last_query).unwrap(), &mut out),
        "newest kept"
    );
    let first = query_message(
        &Name::from_ascii("host0.example.com.").unwrap(),
        RecordType::A,
        1,
        None,
    )
    .to_vec()
    .unwrap();
    assert!(
        !cache.answer_into(&parse_query(&first).unwrap(), &mut out),
        "oldest evicted"
    );
}

#[test]
fn uncacheable_answers_are_refused_with_a_reason() {
    let clock = Arc::new(ManualClock::default());
    let cache = cache(&clock);
    let name = Name::from_ascii("www.example.com.").unwrap();
    let query_wire = query_message(&name, RecordType::A, 1, None)
        .to_vec()
        .unwrap();
    let query = parse_query(&query_wire).unwrap();

    let mut servfail = answer_message(&name, 1, [300, 300, 300], 0);
    servfail.metadata.response_code = ResponseCode::ServFail;
    let mut truncated = answer_message(&name, 1, [300, 300, 300], 0);
    truncated.metadata.truncation = true;
    let zero_ttl = answer_message(&name, 1, [300, 0, 300], 0);
    let other = answer_message(&Name::from_ascii("other.example.").unwrap(), 1, [300; 3], 0);
    let mut no_records = Message::response(1, OpCode::Query);
    no_records.add_query(Query::query(name.clone(), RecordType::A));

    for (answer, what) in [
        (servfail, "SERVFAIL"),
        (truncated, "TC"),
        (zero_ttl, "TTL 0"),
        (no_records, "no TTL"),
    ] {
        let err = cache.insert(&query, &answer.to_vec().unwrap()).unwrap_err();
        assert!(
            matches!(err, CacheInsertError::NotCacheable { .. }),
            "{what}: {err}"
        );
    }
    assert_eq!(
        cache.insert(&query, &other.to_vec().unwrap()),
        Err(CacheInsertError::QuestionMismatch)
    );
    assert!(matches!(
        cache.insert(&query, &query_wire[..20]),
        Err(CacheInsertError::Malformed(_))
    ));
    assert!(cache.is_empty());
}

#[test]
fn malformed_queries_get_typed_errors() {
    let name = Name::from_ascii("www.example.com.").unwrap();
    let valid = query_message(&name, RecordType::A, 1, Some(true))
        .to_vec()
        .unwrap();

    assert_eq!(
        parse_query(&valid[..5]),
        Err(QueryParseError::Truncated { offset: 5 })
    );
    assert!(matches!(
        parse_query(&valid[..20]),
        Err(QueryParseError::Truncated { .. })
    ));
    let mut response = valid.clone();
    response[2] |= 0x80;
    assert_eq!(parse_query(&response), Err(QueryParseError::NotAQuery));
    let mut two_questions = valid.clone();
    two_questions[5] = 2;
    assert_eq!(
        parse_query(&two_questions),
        Err(QueryParseError::QuestionCount { count: 2 })
    );
    let mut pointer = valid.clone();
    pointer[12] = 0xC0;
    assert!(matches!(
        parse_query(&pointer),
        Err(QueryParseError::BadLabel {
            offset: 12,
            byte: 0xC0
        })
    ));
    let mut long_name = valid[..12].to_vec();
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend_from_slice(&[b'a'; 63]);
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(
        parse_query(&long_name),
        Err(QueryParseError::NameTooLong { offset: 12 })
    );

    // Two OPT records: append a copy of the OPT record and bump ARCOUNT.
    let opt_len = 11;
    let mut two_opts = valid.clone();
    two_opts.extend_from_slice(&valid[valid.len() - opt_len..]);
    two_opts[11] = 2;
    assert_eq!(parse_query(&two_opts), Err(QueryParseError::DuplicateOpt));

    let parsed = parse_query(&valid).unwrap();
    assert!(parsed.dnssec_ok());
    assert_eq!(parsed.max_udp_payload(), 1232);
}
