//! One authoritative zone from zone-file text, and the RFC 1034 4.3.2 lookup over it:
//! referrals below cuts, DNAME, CNAME (chased inside the zone), wildcards, NODATA and NXDOMAIN.

use std::collections::{BTreeMap, BTreeSet};

use hickory_proto::{
    rr::{Name, RData, Record, RecordType, rdata::CNAME, rdata::NULL},
    serialize::{binary::BinEncodable, txt::Parser},
};

/// What the zone says about a question.
#[derive(Debug, Clone, Default)]
pub(crate) struct ZoneAnswer {
    pub(crate) nxdomain: bool,
    pub(crate) authoritative: bool,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) additionals: Vec<Record>,
}

/// A zone's records, indexed for lookup.
#[derive(Debug, Clone)]
pub struct Zone {
    origin: Name,
    rrsets: BTreeMap<(Name, RecordType), Vec<Record>>,
    names: BTreeSet<Name>,
}

impl Zone {
    /// Parse zone-file text for `origin`. hickory's parser does not know DNAME, so DNAME lines
    /// (`OWNER TTL IN DNAME TARGET`, both names fully qualified) are read here.
    pub fn parse(origin: &str, text: &str) -> Result<Self, String> {
        let origin = Name::from_ascii(origin).map_err(|e| format!("origin {origin}: {e}"))?;
        let mut plain = String::new();
        let mut dnames = Vec::new();
        for line in text.lines() {
            let tokens: Vec<&str> = line
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            match tokens.as_slice() {
                [owner, ttl, "IN", "DNAME", target] => {
                    let owner = Name::from_ascii(owner).map_err(|e| e.to_string())?;
                    let target = Name::from_ascii(target).map_err(|e| e.to_string())?;
                    let ttl: u32 = ttl.parse().map_err(|_| format!("bad DNAME TTL {ttl}"))?;
                    let bytes = target.to_bytes().map_err(|e| e.to_string())?;
                    dnames.push(Record::from_rdata(
                        owner,
                        ttl,
                        RData::Unknown {
                            code: RecordType::DNAME,
                            rdata: NULL::with(bytes),
                        },
                    ));
                }
                _ => {
                    plain.push_str(line);
                    plain.push('\n');
                }
            }
        }
        let (_, sets) = Parser::new(plain, None, Some(origin.clone()))
            .parse()
            .map_err(|e| format!("zone {origin}: {e}"))?;
        let mut zone = Self {
            origin: origin.to_lowercase(),
            rrsets: BTreeMap::new(),
            names: BTreeSet::new(),
        };
        let records = sets
            .into_values()
            .flat_map(|set| set.records_without_rrsigs().cloned().collect::<Vec<_>>())
            .chain(dnames);
        for record in records {
            let name = record.name.to_lowercase();
            zone.names.insert(name.clone());
            zone.rrsets
                .entry((name, record.record_type()))
                .or_default()
                .push(record);
        }
        Ok(zone)
    }

    /// The zone's apex.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    fn get(&self, name: &Name, record_type: RecordType) -> Option<&Vec<Record>> {
        self.rrsets.get(&(name.to_lowercase(), record_type))
    }

    fn soa_for_negative(&self) -> Vec<Record> {
        self.get(&self.origin, RecordType::SOA)
            .into_iter()
            .flatten()
            .map(|record| {
                let mut record = record.clone();
                if let RData::SOA(soa) = &record.data {
                    record.ttl = record.ttl.min(soa.minimum);
                }
                record
            })
            .collect()
    }

    fn glue_for(&self, ns_records: &[Record]) -> Vec<Record> {
        let mut glue = Vec::new();
        for record in ns_records {
            if let RData::NS(ns) = &record.data {
                for record_type in [RecordType::A, RecordType::AAAA] {
                    glue.extend(self.get(&ns.0, record_type).into_iter().flatten().cloned());
                }
            }
        }
        glue
    }

    /// Answer `qname`/`qtype` as this zone's authority. The reply's owner names carry the case
    /// of the question where the question's name is used.
    pub(crate) fn answer(&self, qname: &Name, qtype: RecordType) -> ZoneAnswer {
        let lower = qname.to_lowercase();
        let apex_labels = self.origin.num_labels();
        // Cuts and DNAMEs between the apex and the name.
        for labels in (apex_labels + 1)..=lower.num_labels() {
            let candidate = lower.trim_to(usize::from(labels));
            if let Some(ns) = self.get(&candidate, RecordType::NS) {
                return ZoneAnswer {
                    authorities: ns.clone(),
                    additionals: self.glue_for(ns),
                    ..ZoneAnswer::default()
                };
            }
            if candidate != lower
                && let Some(dname) = self.get(&candidate, RecordType::DNAME)
            {
                let mut answers = vec![dname[0].clone()];
                if let Some(synth) = dname_synthesis(qname, &candidate, &dname[0]) {
                    answers.push(synth);
                }
                return ZoneAnswer {
                    authoritative: true,
                    answers,
                    ..ZoneAnswer::default()
                };
            }
        }
        let mut answer = ZoneAnswer {
            authoritative: true,
            ..ZoneAnswer::default()
        };
        // Exact name, chasing CNAMEs inside the zone.
        let mut current = lower.clone();
        for _ in 0..8 {
            if let Some(records) = self.get(&current, qtype) {
                answer.answers.extend(records.iter().cloned());
                return answer;
            }
            match self.get(&current, RecordType::CNAME) {
                Some(cname) if qtype != RecordType::CNAME => {
                    answer.answers.push(cname[0].clone());
                    let RData::CNAME(CNAME(target)) = &cname[0].data else {
                        return answer;
                    };
                    if !self.origin.zone_of(target) {
                        return answer;
                    }
                    current = target.to_lowercase();
                }
                _ => break,
            }
        }
        if !answer.answers.is_empty() {
            return answer;
        }
        let exists = self.names.contains(&lower)
            || self
                .names
                .iter()
                .any(|name| lower.zone_of(name) && *name != lower);
        if exists {
            answer.authorities = self.soa_for_negative();
            return answer;
        }
        // Wildcard at the closest encloser.
        let mut encloser = lower.base_name();
        while self.origin.zone_of(&encloser) {
            let encloser_exists = self.names.iter().any(|name| encloser.zone_of(name));
            if encloser_exists {
                let wildcard = encloser.clone().prepend_label("*");
                if let Ok(wildcard) = wildcard
                    && self.names.contains(&wildcard)
                {
                    let synthesised = self
                        .get(&wildcard, qtype)
                        .or_else(|| self.get(&wildcard, RecordType::CNAME));
                    match synthesised {
                        Some(records) => {
                            answer.answers = records
                                .iter()
                                .map(|record| {
                                    let mut record = record.clone();
                                    record.name = qname.clone();
                                    record
                                })
                                .collect();
                        }
                        None => answer.authorities = self.soa_for_negative(),
                    }
                    return answer;
                }
                break;
            }
            encloser = encloser.base_name();
        }
        answer.nxdomain = true;
        answer.authorities = self.soa_for_negative();
        answer
    }
}

fn dname_synthesis(qname: &Name, owner: &Name, dname: &Record) -> Option<Record> {
    let RData::Unknown { rdata, .. } = &dname.data else {
        return None;
    };
    let mut decoder = hickory_proto::serialize::binary::BinDecoder::new(&rdata.anything);
    let target =
        <Name as hickory_proto::serialize::binary::BinDecodable<'_>>::read(&mut decoder).ok()?;
    let keep = usize::from(qname.num_labels() - owner.num_labels());
    let prefix: Vec<&[u8]> = qname.iter().take(keep).collect();
    let synth = Name::from_labels(prefix)
        .ok()?
        .append_domain(&target)
        .ok()?;
    Some(Record::from_rdata(
        qname.clone(),
        dname.ttl,
        RData::CNAME(CNAME(synth)),
    ))
}
