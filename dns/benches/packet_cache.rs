//! The packet cache's hit path against building the same answer with hickory-proto.
//!
//! All three produce the same bytes for a client's query (a CNAME, an A record, an NS in
//! authority, an OPT): `packet_cache_hit` parses header and question and patches a cached copy;
//! `hickory_encode` clones a ready `Message`, sets ID and TTLs and encodes it;
//! `hickory_decode_and_encode` also decodes the query first, as a server without a packet cache
//! does.

use std::{hint::black_box, net::Ipv4Addr, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use edgekit_dns::{
    ManualClock, PacketCache, PacketCacheConfig, parse_query,
    proto::{
        op::{Edns, Message, MessageType, OpCode, Query},
        rr::{Name, RData, Record, RecordType, rdata},
    },
};

fn query(name: &Name, id: u16) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name.clone(), RecordType::A));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message.to_vec().expect("query encodes")
}

fn answer(name: &Name, id: u16) -> Message {
    let target = Name::from_ascii("web.example.net.").expect("valid name");
    let mut message = Message::response(id, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.recursion_available = true;
    message.add_query(Query::query(name.clone(), RecordType::A));
    message.add_answer(Record::from_rdata(
        name.clone(),
        300,
        RData::CNAME(rdata::CNAME(target.clone())),
    ));
    message.add_answer(Record::from_rdata(
        target,
        60,
        RData::A(rdata::A(Ipv4Addr::new(192, 0, 2, 7))),
    ));
    message.add_authority(Record::from_rdata(
        Name::from_ascii("example.net.").expect("valid name"),
        3600,
        RData::NS(rdata::NS(
            Name::from_ascii("ns1.example.net.").expect("valid name"),
        )),
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

fn hit_path(c: &mut Criterion) {
    let name = Name::from_ascii("www.example.com.").expect("valid name");
    let client_name = Name::from_ascii("WwW.ExAmple.com.").expect("valid name");
    let clock = Arc::new(ManualClock::default());
    let cache = PacketCache::with_clock(PacketCacheConfig::default(), clock.clone())
        .expect("default config is valid");
    let first = query(&name, 1);
    let stored = answer(&name, 1).to_vec().expect("answer encodes");
    cache
        .insert(&parse_query(&first).expect("valid query"), &stored)
        .expect("cacheable");
    clock.advance(Duration::from_secs(7));
    let client_query = query(&client_name, 0xBEEF);
    let prepared = answer(&client_name, 0);

    let mut group = c.benchmark_group("answer_a_cached_query");
    let mut out = Vec::with_capacity(512);
    group.bench_function("packet_cache_hit", |b| {
        b.iter(|| {
            let parsed = parse_query(black_box(&client_query)).expect("valid query");
            assert!(cache.answer_into(&parsed, &mut out));
            black_box(&out);
        });
    });
    group.bench_function("hickory_encode", |b| {
        b.iter(|| {
            let mut message = prepared.clone();
            message.metadata.id = 0xBEEF;
            for record in message.answers.iter_mut().chain(&mut message.authorities) {
                record.ttl -= 7;
            }
            black_box(message.to_vec().expect("encodes"));
        });
    });
    group.bench_function("hickory_decode_and_encode", |b| {
        b.iter(|| {
            let request = Message::from_vec(black_box(&client_query)).expect("decodes");
            let mut message = prepared.clone();
            message.metadata.id = request.metadata.id;
            message.queries = request.queries;
            for record in message.answers.iter_mut().chain(&mut message.authorities) {
                record.ttl -= 7;
            }
            black_box(message.to_vec().expect("encodes"));
        });
    });
    group.finish();
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
