//! The RRset cache: records keyed by owner name and type with absolute wall-clock expiry,
//! negative entries (RFC 2308) and the NXDOMAIN cut (RFC 8020), bounded in size.
//!
//! This is the cache iteration reads and writes. A packet cache of finished answers (keyed by
//! the question, holding wire bytes) can sit in front of it: it only needs [`Cache::lookup`]'s
//! results and their remaining TTLs, never this module's internals.

use std::{collections::HashMap, net::IpAddr};

use crossbeam_utils::CachePadded;
use hickory_proto::{
    rr::{Name, RData, Record, RecordType},
    serialize::binary::BinDecodable,
};
use parking_lot::{Mutex, MutexGuard};
use rand::seq::IteratorRandom;

use crate::{cache_key::NameKeys, clock::Clock, name_hash::NameHashState};

/// How much a cached RRset is trusted (RFC 2181 5.4.1): data from an authoritative answer beats
/// a referral's NS set, which beats glue. Lower ranks never overwrite higher ones while unexpired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rank {
    /// Addresses from the additional section of a referral.
    Glue,
    /// The NS set of a referral (the parent's copy).
    Referral,
    /// An authoritative answer.
    Answer,
}

/// What the cache knows about a question.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheAnswer {
    /// The RRset, TTLs decremented to the time remaining.
    Records(Vec<Record>),
    /// No RRset of this type, but a CNAME at the name (TTL decremented).
    Cname(Record),
    /// The name (or an ancestor: RFC 8020) does not exist; the SOA if one was given.
    NxDomain(Option<Record>),
    /// The name exists but has no RRset of this type; the SOA if one was given.
    NoData(Option<Record>),
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires_at: u64,
}

#[derive(Debug, Clone)]
enum Value {
    Rrset { records: Vec<Record>, rank: Rank },
    NoData { soa: Option<Box<Record>> },
}

/// A bounded cache shared by every resolution.
///
/// Split into shards by owner name, each behind its own lock, as Unbound splits its caches
/// into slabs: with one lock, a server thread preempted while holding it (by an authority or a
/// client on the same core) stalled every other thread's resolutions until it ran again, and on
/// a cold cache, where every question reads and writes it several times, the other threads
/// spun and slept on it (docs/benchmarks.md, session 10). Every record of one name, and the
/// name's negative entries and learned cut, live in the same shard, so each operation below
/// locks one shard at a time.
#[derive(Debug)]
pub struct Cache {
    shards: Box<[CachePadded<Mutex<Inner>>]>,
    /// Picks a name's shard (see [`NameKeys::shard`]).
    shard_seed: foldhash::fast::RandomState,
    clock: Clock,
    /// The bound on each shard's entries; the shards together hold at most `max_entries`.
    max_entries_per_shard: usize,
    max_ttl: u32,
    negative_max_ttl: u32,
}

/// Shards at most: enough that two to a few dozen threads rarely meet on one.
const MAX_SHARDS: usize = 16;

/// The maps of one shard, keyed as [`NameKeys`] spells names.
#[derive(Debug, Default)]
struct Inner {
    /// By [`NameKeys::rrset`].
    entries: HashMap<Box<[u8]>, Entry, NameHashState>,
    /// By [`NameKeys::name`].
    nxdomains: HashMap<Box<[u8]>, Entry, NameHashState>,
    /// Zone cuts learned without a referral (see [`Cache::insert_learned_cut`]), by
    /// [`NameKeys::name`].
    learned_cuts: HashMap<Box<[u8]>, LearnedCut, NameHashState>,
}

/// A zone apex found from an authoritative SOA, and the servers that answered for it.
#[derive(Debug, Clone)]
struct LearnedCut {
    servers: Vec<Name>,
    expires_at: u64,
}

/// Learned cuts kept at most; past it the map is cleared (they are only a shortcut).
const MAX_LEARNED_CUTS: usize = 4096;

impl Inner {
    fn len(&self) -> usize {
        self.entries.len() + self.nxdomains.len()
    }

    /// The RRset under `key` (a [`NameKeys::rrset`] key), whatever its rank, if unexpired:
    /// its records and expiry.
    fn live_rrset(&self, key: &[u8], now: u64) -> Option<(&[Record], u64)> {
        match unexpired(&self.entries, key, now)? {
            Entry {
                value: Value::Rrset { records, .. },
                expires_at,
            } => Some((records, *expires_at)),
            Entry {
                value: Value::NoData { .. },
                ..
            } => None,
        }
    }
}

/// The entry under `key` in one of a shard's maps, unless it has expired.
fn unexpired<'a>(
    map: &'a HashMap<Box<[u8]>, Entry, NameHashState>,
    key: &[u8],
    now: u64,
) -> Option<&'a Entry> {
    map.get(key).filter(|entry| entry.expires_at > now)
}

fn with_remaining_ttl(mut record: Record, expires_at: u64, now: u64) -> Record {
    record.ttl = u32::try_from(expires_at.saturating_sub(now)).unwrap_or(u32::MAX);
    record
}

fn live_records(records: &[Record], expires_at: u64, now: u64) -> Vec<Record> {
    records
        .iter()
        .map(|r| with_remaining_ttl(r.clone(), expires_at, now))
        .collect()
}

impl Cache {
    /// An empty cache of at most `max_entries` entries. TTLs are capped at `max_ttl`, negative
    /// TTLs at `negative_max_ttl`.
    pub fn new(clock: Clock, max_entries: usize, max_ttl: u32, negative_max_ttl: u32) -> Self {
        let max_entries = max_entries.max(1);
        // A power of two no larger than the bound, so every shard may hold at least one entry
        // and the shards' bounds add up to no more than `max_entries`.
        let shard_count = if max_entries >= MAX_SHARDS {
            MAX_SHARDS
        } else {
            1 << max_entries.ilog2()
        };
        Self {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(Mutex::new(Inner::default())))
                .collect(),
            shard_seed: foldhash::fast::RandomState::default(),
            clock,
            max_entries_per_shard: max_entries / shard_count,
            max_ttl,
            negative_max_ttl,
        }
    }

    /// The shard of `keys`' ancestor `ancestor`, locked.
    fn shard(&self, keys: &NameKeys, ancestor: usize) -> MutexGuard<'_, Inner> {
        self.shards[keys.shard(ancestor, self.shards.len(), &self.shard_seed)].lock()
    }

    /// Entries held (RRsets and negative entries), expired ones included until evicted.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answer-grade data for a question: RRsets at rank [`Rank::Answer`], CNAMEs, negative
    /// entries. Glue and referral NS sets are not answers to give a client.
    pub fn lookup(&self, name: &Name, record_type: RecordType) -> Option<CacheAnswer> {
        let now = self.clock.now_secs();
        let mut keys = NameKeys::new(name)?;
        // RFC 8020: an NXDOMAIN at the name or any ancestor means nothing exists below it.
        for ancestor in 0..keys.ancestors() {
            let nxdomain = unexpired(
                &self.shard(&keys, ancestor).nxdomains,
                keys.name(ancestor),
                now,
            )
            .map(|entry| match &entry.value {
                Value::NoData { soa } => (soa.clone(), entry.expires_at),
                Value::Rrset { .. } => (None, entry.expires_at),
            });
            if let Some((soa, expires_at)) = nxdomain {
                return Some(CacheAnswer::NxDomain(
                    soa.map(|soa| with_remaining_ttl(*soa, expires_at, now)),
                ));
            }
        }
        let inner = self.shard(&keys, 0);
        match unexpired(&inner.entries, keys.rrset(0, record_type), now)
            .map(|entry| (&entry.value, entry.expires_at))
        {
            Some((Value::Rrset { records, rank }, expires_at)) if *rank == Rank::Answer => {
                return Some(CacheAnswer::Records(live_records(records, expires_at, now)));
            }
            Some((Value::NoData { soa }, expires_at)) => {
                return Some(CacheAnswer::NoData(
                    soa.clone()
                        .map(|soa| with_remaining_ttl(*soa, expires_at, now)),
                ));
            }
            _ => {}
        }
        if record_type != RecordType::CNAME
            && let Some((records, expires_at)) =
                inner.live_rrset(keys.rrset(0, RecordType::CNAME), now)
            && let Some(first) = records.first()
        {
            return Some(CacheAnswer::Cname(with_remaining_ttl(
                first.clone(),
                expires_at,
                now,
            )));
        }
        None
    }

    /// Any unexpired RRset of this name and type, whatever its rank (for NS sets and addresses
    /// of servers during iteration).
    pub fn rrset(&self, name: &Name, record_type: RecordType) -> Option<Vec<Record>> {
        let now = self.clock.now_secs();
        let mut keys = NameKeys::new(name)?;
        let inner = self.shard(&keys, 0);
        let (records, expires_at) = inner.live_rrset(keys.rrset(0, record_type), now)?;
        Some(live_records(records, expires_at, now))
    }

    /// The addresses in `name`'s unexpired A and AAAA RRsets, whatever their rank (a server's
    /// addresses during iteration): one key and one lock for both, and no record copied.
    pub fn addresses(&self, name: &Name) -> Vec<IpAddr> {
        let now = self.clock.now_secs();
        let Some(mut keys) = NameKeys::new(name) else {
            return Vec::new();
        };
        let inner = self.shard(&keys, 0);
        let mut addresses = Vec::new();
        for record_type in [RecordType::A, RecordType::AAAA] {
            if let Some((records, _)) = inner.live_rrset(keys.rrset(0, record_type), now) {
                addresses.extend(records.iter().filter_map(|record| match record.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                }));
            }
        }
        addresses
    }

    /// The closest enclosing zone cut of `name` with a cached NS set, and the NS names.
    pub fn closest_cut(&self, name: &Name) -> Option<(Name, Vec<Name>)> {
        let now = self.clock.now_secs();
        let mut keys = NameKeys::new(name)?;
        for ancestor in 0..keys.ancestors() {
            let inner = self.shard(&keys, ancestor);
            let learned = inner
                .learned_cuts
                .get(keys.name(ancestor))
                .filter(|cut| cut.expires_at > now)
                .map(|cut| cut.servers.clone());
            let servers = learned.or_else(|| {
                let (records, _) = inner.live_rrset(keys.rrset(ancestor, RecordType::NS), now)?;
                let servers: Vec<Name> = records
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::NS(ns) => Some(ns.0.to_lowercase()),
                        _ => None,
                    })
                    .collect();
                (!servers.is_empty()).then_some(servers)
            });
            drop(inner);
            if let Some(servers) = servers {
                // The key is the zone's name on the wire, lowercased: reading it back costs
                // less than trimming `name` (which rebuilds it label by label).
                let zone = Name::from_bytes(keys.name(ancestor)).ok()?;
                return Some((zone, servers));
            }
        }
        None
    }

    /// Remember that `zone` is a zone apex served by `servers`, for `ttl` seconds (capped),
    /// without storing any record: for a server that answered authoritatively with `zone`'s SOA
    /// while being asked as a server of an ancestor zone (one server hosting parent and child,
    /// so no referral ever names the cut). [`Cache::closest_cut`] then starts there.
    pub fn insert_learned_cut(&self, zone: &Name, servers: &[Name], ttl: u32) {
        let ttl = ttl.min(self.max_ttl);
        if ttl == 0 || servers.is_empty() {
            return;
        }
        let Some(keys) = NameKeys::new(zone) else {
            return;
        };
        let expires_at = self.clock.now_secs() + u64::from(ttl);
        let mut inner = self.shard(&keys, 0);
        if inner.learned_cuts.len() >= MAX_LEARNED_CUTS / self.shards.len() {
            inner.learned_cuts.clear();
        }
        inner.learned_cuts.insert(
            keys.name(0).into(),
            LearnedCut {
                servers: servers.to_vec(),
                expires_at,
            },
        );
    }

    /// Store one RRset (all records share name and type). The TTL is the smallest in the set,
    /// capped; a TTL of 0 is not stored. Does not replace an unexpired entry of higher rank.
    pub fn insert_rrset(&self, records: Vec<Record>, rank: Rank) {
        let Some(first) = records.first() else {
            return;
        };
        let ttl = records
            .iter()
            .map(|r| r.ttl)
            .min()
            .unwrap_or(0)
            .min(self.max_ttl);
        if ttl == 0 {
            return;
        }
        let Some(mut keys) = NameKeys::new(&first.name) else {
            return;
        };
        let record_type = first.record_type();
        let now = self.clock.now_secs();
        let mut inner = self.shard(&keys, 0);
        let entry = Entry {
            value: Value::Rrset { records, rank },
            expires_at: now + u64::from(ttl),
        };
        let key = keys.rrset(0, record_type);
        if let Some(existing) = inner.entries.get_mut(key) {
            let outranked = existing.expires_at > now
                && matches!(existing.value, Value::Rrset { rank: old, .. } if old > rank);
            if !outranked {
                *existing = entry;
            }
            // Replaced in place or kept: the shard did not grow, so nothing is evicted.
            return;
        }
        self.make_room(&mut inner, now);
        inner.entries.insert(key.into(), entry);
    }

    /// Remember that `name` does not exist (and nothing below it does: RFC 8020).
    pub fn insert_nxdomain(&self, name: &Name, soa: Option<Record>) {
        let ttl = self.negative_ttl(soa.as_ref());
        if ttl == 0 {
            return;
        }
        let Some(keys) = NameKeys::new(name) else {
            return;
        };
        let now = self.clock.now_secs();
        let mut inner = self.shard(&keys, 0);
        self.make_room(&mut inner, now);
        inner.nxdomains.insert(
            keys.name(0).into(),
            Entry {
                value: Value::NoData {
                    soa: soa.map(Box::new),
                },
                expires_at: now + u64::from(ttl),
            },
        );
    }

    /// Remember that `name` has no RRset of `record_type`.
    pub fn insert_nodata(&self, name: &Name, record_type: RecordType, soa: Option<Record>) {
        let ttl = self.negative_ttl(soa.as_ref());
        if ttl == 0 {
            return;
        }
        let Some(mut keys) = NameKeys::new(name) else {
            return;
        };
        let now = self.clock.now_secs();
        let mut inner = self.shard(&keys, 0);
        self.make_room(&mut inner, now);
        inner.entries.insert(
            keys.rrset(0, record_type).into(),
            Entry {
                value: Value::NoData {
                    soa: soa.map(Box::new),
                },
                expires_at: now + u64::from(ttl),
            },
        );
    }

    /// RFC 2308 section 5: the negative TTL is the smaller of the SOA's TTL and its MINIMUM
    /// field, capped. Without an SOA the answer is not cached (section 5: SHOULD NOT).
    fn negative_ttl(&self, soa: Option<&Record>) -> u32 {
        match soa.map(|record| (&record.data, record.ttl)) {
            Some((RData::SOA(soa), ttl)) => ttl.min(soa.minimum).min(self.negative_max_ttl),
            _ => 0,
        }
    }

    /// Keep a shard under its bound: drop expired entries first; if none, drop the entry
    /// closest to expiry among a random sample (cheap approximate eviction, no global LRU list).
    fn make_room(&self, inner: &mut Inner, now: u64) {
        if inner.len() < self.max_entries_per_shard {
            return;
        }
        inner.entries.retain(|_, entry| entry.expires_at > now);
        inner.nxdomains.retain(|_, entry| entry.expires_at > now);
        while inner.len() >= self.max_entries_per_shard {
            let mut rng = rand::rng();
            let victim = inner
                .entries
                .iter()
                .choose_multiple(&mut rng, 8)
                .into_iter()
                .min_by_key(|(_, entry)| entry.expires_at)
                .map(|(key, _)| key.clone());
            if let Some(victim) = victim {
                inner.entries.remove(&victim);
                continue;
            }
            let victim = inner.nxdomains.keys().next().cloned();
            match victim {
                Some(victim) => {
                    inner.nxdomains.remove(&victim);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, SOA};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn a(owner: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            name("test."),
            ttl,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("h.test."),
                1,
                60,
                60,
                600,
                minimum,
            )),
        )
    }

    #[test]
    fn ttls_count_down_and_entries_expire() {
        let clock = Clock::manual(1_000);
        let cache = Cache::new(clock.clone(), 100, 86_400, 3_600);
        cache.insert_rrset(vec![a("www.test.", 300)], Rank::Answer);
        clock.advance(100);
        let Some(CacheAnswer::Records(records)) = cache.lookup(&name("WWW.test."), RecordType::A)
        else {
            panic!("expected records");
        };
        assert_eq!(records[0].ttl, 200);
        clock.advance(200);
        assert_eq!(cache.lookup(&name("www.test."), RecordType::A), None);
    }

    #[test]
    fn glue_is_not_an_answer_and_never_overwrites_one() {
        let cache = Cache::new(Clock::manual(0), 100, 86_400, 3_600);
        cache.insert_rrset(vec![a("ns.test.", 300)], Rank::Glue);
        assert_eq!(cache.lookup(&name("ns.test."), RecordType::A), None);
        assert!(cache.rrset(&name("ns.test."), RecordType::A).is_some());
        cache.insert_rrset(vec![a("www.test.", 300)], Rank::Answer);
        let mut glue = a("www.test.", 300);
        glue.data = RData::A(A(Ipv4Addr::new(6, 6, 6, 6)));
        cache.insert_rrset(vec![glue], Rank::Glue);
        let Some(CacheAnswer::Records(records)) = cache.lookup(&name("www.test."), RecordType::A)
        else {
            panic!("expected the answer");
        };
        assert_eq!(records[0].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));
    }

    #[test]
    fn negative_ttl_is_min_of_soa_ttl_and_minimum_capped() {
        let clock = Clock::manual(0);
        let cache = Cache::new(clock.clone(), 100, 86_400, 3_600);
        cache.insert_nxdomain(&name("gone.test."), Some(soa(7_200, 86_400)));
        // RFC 8020: below the NXDOMAIN name is gone too.
        assert!(matches!(
            cache.lookup(&name("a.b.gone.test."), RecordType::A),
            Some(CacheAnswer::NxDomain(Some(record))) if record.ttl == 3_600
        ));
        cache.insert_nodata(&name("www.test."), RecordType::AAAA, Some(soa(600, 30)));
        assert!(matches!(
            cache.lookup(&name("www.test."), RecordType::AAAA),
            Some(CacheAnswer::NoData(Some(record))) if record.ttl == 30
        ));
        clock.advance(31);
        assert_eq!(cache.lookup(&name("www.test."), RecordType::AAAA), None);
    }

    #[test]
    fn size_is_bounded() {
        let cache = Cache::new(Clock::manual(0), 50, 86_400, 3_600);
        for i in 0..500 {
            cache.insert_rrset(vec![a(&format!("n{i}.test."), 300 + i)], Rank::Answer);
        }
        assert!(cache.len() <= 50, "{}", cache.len());
        assert!(cache.lookup(&name("n499.test."), RecordType::A).is_some());
    }

    /// Glue for a name that already has its answer is refused without touching anything else,
    /// even when the cache is full (a refused insert used to evict first).
    #[test]
    fn a_refused_insert_into_a_full_cache_evicts_nothing() {
        // One shard of one entry, so "full" is certain.
        let cache = Cache::new(Clock::manual(0), 1, 86_400, 3_600);
        cache.insert_rrset(vec![a("www.test.", 300)], Rank::Answer);
        let mut glue = a("www.test.", 300);
        glue.data = RData::A(A(Ipv4Addr::new(6, 6, 6, 6)));
        for _ in 0..20 {
            cache.insert_rrset(vec![glue.clone()], Rank::Glue);
        }
        assert_eq!(cache.len(), 1);
        let Some(CacheAnswer::Records(records)) = cache.lookup(&name("www.test."), RecordType::A)
        else {
            panic!("the answer must still be there");
        };
        assert_eq!(records[0].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));
    }

    #[test]
    fn addresses_come_from_both_families_while_unexpired() {
        let clock = Clock::manual(0);
        let cache = Cache::new(clock.clone(), 100, 86_400, 3_600);
        cache.insert_rrset(vec![a("ns.test.", 100)], Rank::Glue);
        let v6 = Record::from_rdata(
            name("NS.test."),
            200,
            RData::AAAA(hickory_proto::rr::rdata::AAAA(
                std::net::Ipv6Addr::LOCALHOST,
            )),
        );
        cache.insert_rrset(vec![v6], Rank::Answer);
        assert_eq!(
            cache.addresses(&name("ns.TEST.")),
            [
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            ]
        );
        clock.advance(150);
        assert_eq!(
            cache.addresses(&name("ns.test.")),
            [IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)]
        );
        assert!(cache.addresses(&name("other.test.")).is_empty());
    }

    #[test]
    fn the_closest_cut_is_the_nearest_ancestor_with_servers() {
        let cache = Cache::new(Clock::manual(0), 100, 86_400, 3_600);
        let ns = |owner: &str, server: &str| {
            Record::from_rdata(
                name(owner),
                300,
                RData::NS(hickory_proto::rr::rdata::NS(name(server))),
            )
        };
        cache.insert_rrset(vec![ns("TEST.", "a.nic.test.")], Rank::Referral);
        cache.insert_rrset(
            vec![ns("Example.test.", "NS1.example.test.")],
            Rank::Referral,
        );
        cache.insert_learned_cut(&name("Deep.b.example.test."), &[name("ns.deep.test.")], 300);
        let (zone, servers) = cache.closest_cut(&name("a.B.EXAMPLE.test.")).unwrap();
        assert!(
            zone.eq_case(&name("example.test.")) && zone.is_fqdn(),
            "{zone}"
        );
        assert_eq!(servers, [name("ns1.example.test.")]);
        let (zone, servers) = cache.closest_cut(&name("x.deep.b.example.test.")).unwrap();
        assert!(zone.eq_case(&name("deep.b.example.test.")), "{zone}");
        assert_eq!(servers, [name("ns.deep.test.")]);
        let (zone, _) = cache.closest_cut(&name("other.test.")).unwrap();
        assert!(zone.eq_case(&name("test.")), "{zone}");
        assert_eq!(cache.closest_cut(&name("example.")), None);
    }

    #[test]
    fn the_shards_together_stay_within_any_bound() {
        for max_entries in [1, 2, 3, 7, 15, 16, 17, 33, 100] {
            let cache = Cache::new(Clock::manual(0), max_entries, 86_400, 3_600);
            for i in 0..300 {
                cache.insert_rrset(vec![a(&format!("n{i}.test."), 300)], Rank::Answer);
                cache.insert_nxdomain(&name(&format!("gone{i}.test.")), Some(soa(300, 300)));
            }
            assert!(
                (1..=max_entries).contains(&cache.len()),
                "{} entries with a bound of {max_entries}",
                cache.len()
            );
        }
    }

    #[test]
    fn every_spelling_of_a_name_finds_its_shard() {
        let cache = Cache::new(Clock::manual(0), 10_000, 86_400, 3_600);
        for i in 0..200 {
            cache.insert_rrset(vec![a(&format!("Host{i}.Test."), 300)], Rank::Answer);
            cache.insert_nxdomain(&name(&format!("GONE{i}.test.")), Some(soa(300, 300)));
        }
        for i in 0..200 {
            assert!(
                cache
                    .rrset(&name(&format!("hOST{i}.tEST.")), RecordType::A)
                    .is_some()
            );
            assert!(matches!(
                cache.lookup(&name(&format!("a.gone{i}.TEST.")), RecordType::A),
                Some(CacheAnswer::NxDomain(_))
            ));
        }
    }
}
