//! A gossip byte stream decoded frame by frame as a counter node reads it
//! (`edgekit_counters::decode_gossip_frame`: length bound, message, and the delta inside an
//! exchange): never a panic, and every accepted frame lies within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(used)) = edgekit_counters::decode_gossip_frame(rest, 1 << 20) {
        assert!(used > 4 && used <= rest.len());
        rest = &rest[used..];
    }
});
