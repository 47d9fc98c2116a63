//! Root hints files (`edgekit_dns::RootHints::parse`); a parsed file must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(hints) = edgekit_dns::RootHints::parse(text) {
            let again = edgekit_dns::RootHints::parse(&hints.to_named_root());
            assert_eq!(again.as_ref(), Ok(&hints));
        }
    }
});
