//! A replication byte stream decoded frame by frame (`quicksilver_kv::decode_frame`): never a
//! panic, and every frame decoded re-encodes to a frame that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = quicksilver_kv::decode_frame(rest) {
        assert!(used > 4 && used <= rest.len());
        let again = frame.encode();
        assert_eq!(
            quicksilver_kv::decode_frame(&again),
            Ok(Some((frame, again.len())))
        );
        rest = &rest[used..];
    }
});
