//! Bailiwick scrubbing: before anything from a reply is used or cached, drop every record the
//! answering server has no authority for (Unbound's scrubber and harden-glue).
//!
//! `zone` is the zone we asked the server as authoritative for. Kept:
//! - answers: records under `zone` that lie on the CNAME/DNAME chain starting at the question;
//! - authority: NS and SOA records owned by `zone` or below it, on the path to the question;
//! - additional: A/AAAA under `zone` (glue from the delegating zone for names under it).
//!
//! Everything else (records about unrelated names, the classic Kaminsky-style poisoning) goes.

use std::collections::HashSet;

use hickory_proto::{
    op::Message,
    rr::{LowerName, Name, RData, RecordType},
};

use crate::{name_hash::NameHashState, wire::dname_target};

/// Remove out-of-bailiwick and off-chain records from `message` in place; returns how many were
/// dropped.
pub(crate) fn scrub(message: &mut Message, zone: &Name, qname: &Name) -> usize {
    let before = message.answers.len() + message.authorities.len() + message.additionals.len();

    // Answer section: follow the chain from the question, inside the zone only. LowerName:
    // lowercased once here, then hashed a label per call and compared case-sensitively,
    // instead of lowercasing every byte in every hash and comparison (this runs per reply).
    let mut chain: HashSet<LowerName, NameHashState> = HashSet::default();
    chain.insert(LowerName::new(qname));
    let mut keep = vec![false; message.answers.len()];
    let mut changed = true;
    while changed {
        changed = false;
        for (index, record) in message.answers.iter().enumerate() {
            if keep[index] || !zone.zone_of(&record.name) {
                continue;
            }
            let owner = LowerName::new(&record.name);
            let on_chain = chain.contains(&owner);
            let dname_above_chain = record.record_type() == RecordType::DNAME
                && chain
                    .iter()
                    .any(|name| owner.zone_of(name) && owner != *name);
            if !on_chain && !dname_above_chain {
                continue;
            }
            keep[index] = true;
            changed = true;
            match &record.data {
                RData::CNAME(target) => {
                    chain.insert(LowerName::new(&target.0));
                }
                data => {
                    if let Some(target) = dname_target(data) {
                        // Names synthesised under the DNAME target may follow.
                        let snapshot: Vec<LowerName> = chain.iter().cloned().collect();
                        for name in snapshot {
                            if let Some(synth) = substitute(&name, &owner, &target) {
                                chain.insert(LowerName::new(&synth));
                            }
                        }
                    }
                }
            }
        }
    }
    let mut index = 0;
    message.answers.retain(|_| {
        index += 1;
        keep[index - 1]
    });

    message.authorities.retain(|record| {
        matches!(record.record_type(), RecordType::NS | RecordType::SOA)
            && zone.zone_of(&record.name)
            && record.name.zone_of(qname)
    });
    message.additionals.retain(|record| {
        matches!(record.record_type(), RecordType::A | RecordType::AAAA)
            && zone.zone_of(&record.name)
    });

    let after = message.answers.len() + message.authorities.len() + message.additionals.len();
    before - after
}

/// DNAME substitution (RFC 6672): `name` under `owner` becomes the same labels under `target`.
pub(crate) fn substitute(name: &Name, owner: &Name, target: &Name) -> Option<Name> {
    if !owner.zone_of(name) || name.num_labels() <= owner.num_labels() {
        return None;
    }
    let keep = usize::from(name.num_labels() - owner.num_labels());
    let prefix: Vec<&[u8]> = name.iter().take(keep).collect();
    let mut result = Name::from_labels(prefix).ok()?;
    result = result.append_domain(target).ok()?;
    Some(result)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::{
        op::{MessageType, OpCode},
        rr::{Record, rdata::A, rdata::CNAME, rdata::NS},
    };

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    #[test]
    fn poison_outside_the_zone_is_dropped() {
        let mut message = Message::new(1, MessageType::Response, OpCode::Query);
        message.add_answer(Record::from_rdata(
            name("www.example.test."),
            60,
            RData::CNAME(CNAME(name("web.example.test."))),
        ));
        message.add_answer(a("web.example.test."));
        message.add_answer(a("bank.other."));
        message.add_answer(a("unrelated.example.test."));
        message.add_authority(Record::from_rdata(
            name("other."),
            60,
            RData::NS(NS(name("evil.other."))),
        ));
        message.add_additional(a("evil.other."));
        message.add_additional(a("ns.example.test."));
        let dropped = scrub(
            &mut message,
            &name("example.test."),
            &name("www.example.test."),
        );
        assert_eq!(dropped, 4);
        assert_eq!(message.answers.len(), 2);
        assert!(message.authorities.is_empty());
        assert_eq!(message.additionals, vec![a("ns.example.test.")]);
    }

    #[test]
    fn dname_substitution_keeps_the_prefix() {
        assert_eq!(
            substitute(
                &name("a.b.old.test."),
                &name("old.test."),
                &name("new.example.")
            ),
            Some(name("a.b.new.example."))
        );
        assert_eq!(
            substitute(&name("old.test."), &name("old.test."), &name("x.")),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn nothing_outside_the_zone_survives(
            sections in proptest::collection::vec((0usize..3, 0usize..8, 0usize..3), 0..40)
        ) {
            const NAMES: [&str; 8] = [
                "www.example.test.", "example.test.", "a.www.example.test.", "test.",
                "bank.other.", ".", "ns.example.test.", "x.sub.example.test.",
            ];
            let mut message = Message::new(1, MessageType::Response, OpCode::Query);
            for (section, owner, kind) in sections {
                let record = match kind {
                    0 => a(NAMES[owner]),
                    1 => Record::from_rdata(name(NAMES[owner]), 60, RData::NS(NS(name("ns.example.test.")))),
                    _ => Record::from_rdata(name(NAMES[owner]), 60, RData::CNAME(CNAME(name(NAMES[(owner + 1) % 8])))),
                };
                match section {
                    0 => { message.add_answer(record); }
                    1 => { message.add_authority(record); }
                    _ => { message.add_additional(record); }
                }
            }
            let zone = name("example.test.");
            let qname = name("www.example.test.");
            scrub(&mut message, &zone, &qname);
            for record in message.answers.iter().chain(&message.authorities).chain(&message.additionals) {
                proptest::prop_assert!(zone.zone_of(&record.name), "{record} kept");
            }
            for record in &message.authorities {
                proptest::prop_assert!(record.name.zone_of(&qname), "{record} is off the path");
            }
        }
    }
}
