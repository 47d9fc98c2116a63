//! The DNS server's request path (ACL, rate limit, parser, error replies, special-use names,
//! ANY, packet cache) on arbitrary bytes, over UDP and TCP, from an allowed client and one
//! outside the ACL: no panic, and every reply echoes the ID, is a response, parses and fits.
#![no_main]

use edgekit_dns::check_request_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = check_request_path(data) {
        panic!("{violation}");
    }
});
