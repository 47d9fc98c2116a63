//! The packet cache's fast query parser, and its answer scanner, on arbitrary bytes: neither may
//! panic, and whatever the cache accepts it must serve back without panicking.
#![no_main]

use edgekit_dns::{PacketCache, PacketCacheConfig, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = parse_query(data) else {
        return;
    };
    let _ = (query.opcode(), query.dnssec_ok(), query.max_udp_payload());
    // The same bytes as an answer (with QR set) walk every record's name and TTL.
    let mut answer = data.to_vec();
    answer[2] |= 0x80;
    let Ok(cache) = PacketCache::new(PacketCacheConfig::default()) else {
        return;
    };
    if cache.insert(&query, &answer).is_ok() {
        let mut out = Vec::new();
        assert!(cache.answer_into(&query, &mut out));
        assert_eq!(out.len(), answer.len());
    }
});
