//! A TCP byte stream split into length-prefixed DNS messages (`edgekit_dns::split_tcp_frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (frames, rest) = edgekit_dns::split_tcp_frames(data);
    let consumed: usize = frames.iter().map(|frame| frame.len() + 2).sum();
    assert_eq!(consumed + rest.len(), data.len());
});
