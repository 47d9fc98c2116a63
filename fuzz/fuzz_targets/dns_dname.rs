//! DNAME rdata from the network (`edgekit_dns::dname_target`).
#![no_main]

use edgekit_dns::proto::rr::{RData, RecordType, rdata::NULL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let rdata = RData::Unknown {
        code: RecordType::DNAME,
        rdata: NULL::with(data.to_vec()),
    };
    let _ = edgekit_dns::dname_target(&rdata);
});
