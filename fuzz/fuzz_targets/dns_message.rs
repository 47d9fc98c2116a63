//! DNS messages as they arrive from upstream servers (`edgekit_dns::parse_message`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = edgekit_dns::parse_message(data) {
        // Whatever decodes must also encode without panicking.
        let _ = message.to_vec();
    }
});
