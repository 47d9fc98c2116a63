//! The packet cache: finished answers in wire format, served without building a message.
//!
//! Keyed by (lowercased qname, qtype, qclass, DO bit, CD bit). An entry holds the answer bytes as
//! they were first sent, the byte offset of every TTL in them with that record's absolute expiry,
//! and the entry's own expiry (the earliest record's). A hit copies the bytes into the caller's
//! buffer, writes the client's ID, RD bit and question spelling, and rewrites each TTL to
//! `expiry - now`; nothing is decoded and, with a reused buffer, nothing is allocated.
//!
//! Names elsewhere in the answer that were compressed to the question (the usual case for answer
//! owner names) read back in the client's spelling, exactly as an encoder would have written
//! them for the client's question. The parser ([`parse_query`]) reads only the header, the
//! question and the OPT record, and never panics on any input.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::RwLock;

/// Bytes in a DNS header.
pub(crate) const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
const TYPE_OPT: u16 = 41;
/// A key is the lowercased name followed by qtype, qclass and one byte of DO/CD bits.
const MAX_KEY_LEN: usize = MAX_NAME_LEN + 5;
/// Bytes charged per entry beyond its answer, key and TTL table: the map slot, the Arc, the
/// eviction queue. An estimate; it keeps many tiny entries from escaping the bound.
const ENTRY_OVERHEAD: usize = 96;

/// Why bytes are not a query the fast path can serve. The caller answers FORMERR or falls back
/// to the full decoder, depending on the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryParseError {
    /// The message ends before the structure it announces (header, name, record) is complete.
    #[error("message truncated at byte {offset}")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: usize,
    },
    /// The header's QR bit says this is a response, not a query.
    #[error("message is a response, not a query")]
    NotAQuery,
    /// Queries carry exactly one question.
    #[error("query has {count} questions; exactly one is supported")]
    QuestionCount {
        /// QDCOUNT from the header.
        count: u16,
    },
    /// A label length byte with the reserved 0x40/0x80 bits, or a compression pointer inside
    /// the question (which can only point into the header).
    #[error("bad label type 0x{byte:02x} at byte {offset}")]
    BadLabel {
        /// Where the label starts.
        offset: usize,
        /// The length byte.
        byte: u8,
    },
    /// A name longer than 255 bytes in wire form.
    #[error("name longer than 255 bytes at byte {offset}")]
    NameTooLong {
        /// Where the name starts.
        offset: usize,
    },
    /// More than one OPT record (RFC 6891 6.1.1: FORMERR).
    #[error("more than one OPT record")]
    DuplicateOpt,
    /// An OPT record whose owner is not the root.
    #[error("OPT record owner is not the root name at byte {offset}")]
    OptNotAtRoot {
        /// Where the record starts.
        offset: usize,
    },
}

/// The EDNS(0) parameters of a query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryEdns {
    /// The largest UDP answer the client accepts (values under 512 mean 512, RFC 6891 6.2.3).
    pub udp_payload_size: u16,
    /// EDNS version; anything but 0 deserves BADVERS.
    pub version: u8,
    /// The DNSSEC OK bit.
    pub dnssec_ok: bool,
}

/// A query read by [`parse_query`]: borrowed from the packet, nothing decoded beyond need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedQuery<'a> {
    /// The message ID.
    pub id: u16,
    /// The two flag bytes of the header (QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode).
    pub flags: u16,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// The OPT record, if the query has one.
    pub edns: Option<QueryEdns>,
    qname: &'a [u8],
}

impl<'a> ParsedQuery<'a> {
    /// The question name in wire form, as the client spelled it (terminating zero included).
    pub fn qname_wire(&self) -> &'a [u8] {
        self.qname
    }
    /// The 4-bit opcode (0 is QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0F) as u8
    }
    /// Recursion desired.
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }
    /// Checking disabled (RFC 4035).
    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }
    /// The DNSSEC OK bit from the OPT record (false without one).
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|edns| edns.dnssec_ok)
    }
    /// The largest UDP answer this client takes: 512 without EDNS, and never less than 512.
    pub fn max_udp_payload(&self) -> u16 {
        self.edns.map_or(512, |edns| edns.udp_payload_size.max(512))
    }

    /// Write the cache key into `key`; returns its length.
    fn key_into(&self, key: &mut [u8; MAX_KEY_LEN]) -> usize {
        let name_len = self.qname.len();
        for (out, byte) in key.iter_mut().zip(self.qname) {
            *out = byte.to_ascii_lowercase();
        }
        key[name_len..name_len + 2].copy_from_slice(&self.qtype.to_be_bytes());
        key[name_len + 2..name_len + 4].copy_from_slice(&self.qclass.to_be_bytes());
        key[name_len + 4] = u8::from(self.dnssec_ok()) | (u8::from(self.checking_disabled()) << 1);
        name_len + 5
    }
}

/// Read a query's header, its one question and its OPT record, and nothing else.
///
/// Records in the answer and authority sections (which queries do not normally carry) are
/// skipped by their lengths. Trailing bytes after the last record are ignored.
pub fn parse_query(packet: &[u8]) -> Result<ParsedQuery<'_>, QueryParseError> {
    let header = packet.get(..HEADER_LEN).ok_or(QueryParseError::Truncated {
        offset: packet.len(),
    })?;
    let read_u16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let (id, flags, question_count) = (read_u16(0), read_u16(2), read_u16(4));
    let (answers, authorities, additionals) = (read_u16(6), read_u16(8), read_u16(10));
    if flags & 0x8000 != 0 {
        return Err(QueryParseError::NotAQuery);
    }
    if question_count != 1 {
        return Err(QueryParseError::QuestionCount {
            count: question_count,
        });
    }
    let name_end = question_name_end(packet, HEADER_LEN)?;
    let qname = &packet[HEADER_LEN..name_end];
    let qtype = read_be16(packet, name_end)?;
    let qclass = read_be16(packet, name_end + 2)?;
    let mut offset = name_end + 4;

    for _ in 0..u32::from(answers) + u32::from(authorities) {
        offset = skip_record(packet, offset)?.end;
    }
    let mut edns = None;
    for _ in 0..additionals {
        let record = skip_record(packet, offset)?;
        if record.rtype == TYPE_OPT {
            if edns.is_some() {
                return Err(QueryParseError::DuplicateOpt);
            }
            if record.name_end != offset + 1 || packet[offset] != 0 {
                return Err(QueryParseError::OptNotAtRoot { offset });
            }
            let ttl = record.ttl.to_be_bytes();
            edns = Some(QueryEdns {
                udp_payload_size: record.class,
                version: ttl[1],
                dnssec_ok: ttl[2] & 0x80 != 0,
            });
        }
        offset = record.end;
    }
    Ok(ParsedQuery {
        id,
        flags,
        qtype,
        qclass,
        edns,
        qname,
    })
}

fn read_be16(packet: &[u8], at: usize) -> Result<u16, QueryParseError> {
    match packet.get(at..at + 2) {
        Some(bytes) => Ok(u16::from_be_bytes([bytes[0], bytes[1]])),
        None => Err(QueryParseError::Truncated { offset: at }),
    }
}

fn read_be32(packet: &[u8], at: usize) -> Result<u32, QueryParseError> {
    match packet.get(at..at + 4) {
        Some(bytes) => Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
        None => Err(QueryParseError::Truncated { offset: at }),
    }
}

/// The end of an uncompressed name starting at `start` (the question's name is never
/// compressed: a pointer there could only point into the header).
pub(crate) fn question_name_end(packet: &[u8], start: usize) -> Result<usize, QueryParseError> {
    let mut offset = start;
    loop {
        let length = *packet
            .get(offset)
            .ok_or(QueryParseError::Truncated { offset })?;
        if length == 0 {
            let end = offset + 1;
            if end - start > MAX_NAME_LEN {
                return Err(QueryParseError::NameTooLong { offset: start });
            }
            return Ok(end);
        }
        if usize::from(length) > MAX_LABEL_LEN {
            return Err(QueryParseError::BadLabel {
                offset,
                byte: length,
            });
        }
        offset += 1 + usize::from(length);
        if offset - start >= MAX_NAME_LEN {
            return Err(QueryParseError::NameTooLong { offset: start });
        }
    }
}

/// The end of a possibly compressed name: a pointer ends it (we skip, never follow).
fn skip_name(packet: &[u8], start: usize) -> Result<usize, QueryParseError> {
    let mut offset = start;
    loop {
        let length = *packet
            .get(offset)
            .ok_or(QueryParseError::Truncated { offset })?;
        match length {
            0 => return Ok(offset + 1),
            0xC0..=0xFF => {
                if packet.get(offset + 1).is_none() {
                    return Err(QueryParseError::Truncated { offset: offset + 1 });
                }
                return Ok(offset + 2);
            }
            1..=0x3F => {
                offset += 1 + usize::from(length);
                if offset - start > MAX_NAME_LEN {
                    return Err(QueryParseError::NameTooLong { offset: start });
                }
            }
            _ => {
                return Err(QueryParseError::BadLabel {
                    offset,
                    byte: length,
                });
            }
        }
    }
}

/// Where a resource record's fields are.
#[derive(Debug, Clone, Copy)]
struct RecordSpan {
    name_end: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    end: usize,
}

fn skip_record(packet: &[u8], start: usize) -> Result<RecordSpan, QueryParseError> {
    let name_end = skip_name(packet, start)?;
    let rtype = read_be16(packet, name_end)?;
    let class = read_be16(packet, name_end + 2)?;
    let ttl = read_be32(packet, name_end + 4)?;
    let rdata_len = usize::from(read_be16(packet, name_end + 8)?);
    let end = name_end + 10 + rdata_len;
    if end > packet.len() {
        return Err(QueryParseError::Truncated {
            offset: packet.len(),
        });
    }
    Ok(RecordSpan {
        name_end,
        rtype,
        class,
        ttl,
        end,
    })
}

/// Where the packet cache reads "now" from: monotonic milliseconds, so tests can move time by
/// hand. (The RRset cache uses [`crate::Clock`], wall-clock seconds, because its expiry must
/// survive a dump and reload; packet-cache entries never leave the process.)
pub trait MillisClock: Send + Sync + fmt::Debug {
    /// Milliseconds since an arbitrary fixed point; never goes backwards.
    fn now_millis(&self) -> u64;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl MillisClock for MonotonicClock {
    fn now_millis(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: for tests of expiry and TTL rewriting.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// Move time forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(by, Ordering::Relaxed);
    }
}

impl MillisClock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::Relaxed)
    }
}

impl<C: MillisClock + ?Sized> MillisClock for Arc<C> {
    fn now_millis(&self) -> u64 {
        (**self).now_millis()
    }
}

/// Size and lifetime limits, checked by [`PacketCacheConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketCacheConfig {
    /// Upper bound on the bytes held (answers, keys, TTL tables and a per-entry overhead).
    pub max_bytes: usize,
    /// Independent shards, each with its own lock: a power of two.
    pub shards: usize,
    /// TTLs above this are served as if they were this (Unbound's `cache-max-ttl`).
    pub max_ttl: Duration,
    /// How long an expired answer is kept for [`PacketCache::answer_stale_into`] (serve-stale,
    /// RFC 8767). Zero: expired answers are dropped when next read.
    pub keep_expired: Duration,
}

impl Default for PacketCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            shards: 16,
            max_ttl: Duration::from_secs(86_400),
            keep_expired: Duration::ZERO,
        }
    }
}

/// A config field with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid packet cache {field} {value}: {reason}")]
pub struct PacketCacheConfigError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// Why it cannot work.
    pub reason: &'static str,
}

impl PacketCacheConfig {
    /// Check every field once, at load.
    pub fn validate(&self) -> Result<(), PacketCacheConfigError> {
        if self.shards == 0 || !self.shards.is_power_of_two() || self.shards > 4096 {
            return Err(PacketCacheConfigError {
                field: "shards",
                value: self.shards.to_string(),
                reason: "must be a power of two between 1 and 4096",
            });
        }
        if self.max_bytes < self.shards * 4096 {
            return Err(PacketCacheConfigError {
                field: "max_bytes",
                value: self.max_bytes.to_string(),
                reason: "must allow at least 4 KiB per shard",
            });
        }
        if self.max_ttl.as_secs() == 0 {
            return Err(PacketCacheConfigError {
                field: "max_ttl",
                value: format!("{:?}", self.max_ttl),
                reason: "must be at least one second",
            });
        }
        Ok(())
    }
}

/// Why an answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheInsertError {
    /// The answer's bytes are not a well-formed message.
    #[error("malformed answer: {0}")]
    Malformed(QueryParseError),
    /// The answer's question is not the query's.
    #[error("answer's question does not match the query")]
    QuestionMismatch,
    /// Truncated, or an rcode other than NOERROR/NXDOMAIN: not worth serving again.
    #[error("answer is not cacheable: {reason}")]
    NotCacheable {
        /// Why.
        reason: &'static str,
    },
    /// Larger than a shard can ever hold.
    #[error("answer of {bytes} bytes is larger than a cache shard")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

/// One cached answer.
#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    wire: Box<[u8]>,
    /// Length of the question name, which starts right after the header.
    qname_len: usize,
    /// (byte offset of a TTL, that record's absolute expiry in ms).
    ttls: Box<[(u32, u64)]>,
    expires_at: u64,
    /// When it was stored (ms), so a hit can tell how much of its lifetime is left.
    inserted_at: u64,
    /// Tells this entry from an earlier one under the same key in the eviction queue.
    generation: u64,
}

impl Entry {
    fn charge(&self) -> usize {
        self.key.len() + self.wire.len() + self.ttls.len() * 16 + ENTRY_OVERHEAD
    }
}

/// The key is already a hash: hash it no further.
#[derive(Debug, Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// By key hash. A different key with the same 64-bit hash replaces the entry: a miss, never a
    /// wrong answer, because the stored key is compared on every hit.
    entries: HashMap<u64, Arc<Entry>, BuildHasherDefault<PassThroughHasher>>,
    /// Insertion order for eviction (FIFO): (hash, generation).
    order: VecDeque<(u64, u64)>,
    bytes: usize,
}

impl Shard {
    fn remove(&mut self, hash: u64) {
        if let Some(old) = self.entries.remove(&hash) {
            self.bytes -= old.charge();
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.bytes > limit {
            let Some((hash, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&hash)
                .is_some_and(|entry| entry.generation == generation)
            {
                self.remove(hash);
            }
        }
        // Replaced or expired entries leave stale queue slots; drop them before they pile up.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(hash, generation)| {
                entries
                    .get(hash)
                    .is_some_and(|entry| entry.generation == *generation)
            });
        }
    }
}

/// A sharded, size-bounded cache of finished answers in wire format.
///
/// Keyed by (lowercased qname, qtype, qclass, DO, CD). A hit copies the stored bytes and writes
/// the client's ID, RD bit and question spelling and the remaining TTLs; nothing is decoded.
/// Names compressed to the question (answer owner names, usually) read back in the client's
/// spelling, as an encoder would write them for the client's question.
///
/// ```
/// use edgekit_dns::{PacketCache, PacketCacheConfig, parse_query};
/// use edgekit_dns::proto::op::{Message, Query};
/// use edgekit_dns::proto::rr::{Name, RData, Record, RecordType, rdata::A};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = Name::from_ascii("www.example.com.")?;
/// let mut query = Message::query();
/// query.add_query(Query::query(name.clone(), RecordType::A));
/// let query_wire = query.to_vec()?;
///
/// let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
/// answer.add_query(Query::query(name.clone(), RecordType::A));
/// answer.add_answer(Record::from_rdata(name, 300, RData::A(A([192, 0, 2, 1].into()))));
///
/// let cache = PacketCache::new(PacketCacheConfig::default())?;
/// let parsed = parse_query(&query_wire)?;
/// cache.insert(&parsed, &answer.to_vec()?)?;
///
/// let mut out = Vec::new();
/// assert!(cache.answer_into(&parsed, &mut out));
/// assert_eq!(Message::from_vec(&out)?.answers.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PacketCache<C: MillisClock = MonotonicClock> {
    shards: Box<[RwLock<Shard>]>,
    shard_mask: u64,
    shard_limit: usize,
    max_ttl_millis: u64,
    keep_expired_millis: u64,
    clock: C,
    generation: AtomicU64,
}

impl PacketCache<MonotonicClock> {
    /// A cache on the real clock.
    pub fn new(config: PacketCacheConfig) -> Result<Self, PacketCacheConfigError> {
        Self::with_clock(config, MonotonicClock::default())
    }
}

impl<C: MillisClock> PacketCache<C> {
    /// A cache on the given clock.
    pub fn with_clock(config: PacketCacheConfig, clock: C) -> Result<Self, PacketCacheConfigError> {
        config.validate()?;
        Ok(Self {
            shards: (0..config.shards).map(|_| RwLock::default()).collect(),
            shard_mask: config.shards as u64 - 1,
            shard_limit: config.max_bytes / config.shards,
            max_ttl_millis: u64::try_from(config.max_ttl.as_millis()).unwrap_or(u64::MAX),
            keep_expired_millis: u64::try_from(config.keep_expired.as_millis()).unwrap_or(u64::MAX),
            clock,
            generation: AtomicU64::new(0),
        })
    }

    /// Serve `query` from the cache into `out` (cleared first). Returns false on a miss or when
    /// the entry has expired, leaving `out` empty.
    pub fn answer_into(&self, query: &ParsedQuery<'_>, out: &mut Vec<u8>) -> bool {
        self.answer_into_with_lifetime(query, out).is_some()
    }

    /// Like [`PacketCache::answer_into`], but a hit also says what percentage of the entry's
    /// lifetime is left (0 to 100), for prefetching answers about to expire.
    pub fn answer_into_with_lifetime(
        &self,
        query: &ParsedQuery<'_>,
        out: &mut Vec<u8>,
    ) -> Option<u8> {
        out.clear();
        let mut key = [0u8; MAX_KEY_LEN];
        let key_len = query.key_into(&mut key);
        let key = &key[..key_len];
        let hash = xxhash_rust::xxh3::xxh3_64(key);
        let shard = &self.shards[(hash & self.shard_mask) as usize];
        let now = self.clock.now_millis();
        // Copied under the read lock rather than cloning the entry's Arc: a clone and its drop
        // would write the shared reference count on every hit from every worker.
        let guard = shard.read();
        let entry = match guard.entries.get(&hash) {
            Some(entry) if &*entry.key == key && now < entry.expires_at => entry,
            Some(entry) if &*entry.key == key => {
                drop(guard);
                let mut guard = shard.write();
                let keep = self.keep_expired_millis;
                if guard
                    .entries
                    .get(&hash)
                    .is_some_and(|entry| now >= entry.expires_at.saturating_add(keep))
                {
                    guard.remove(hash);
                }
                return None;
            }
            _ => return None,
        };
        out.extend_from_slice(&entry.wire);
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        // The answer repeats the client's RD bit (RFC 1035 4.1.1).
        out[2] = (out[2] & !0x01) | u8::from(query.recursion_desired());
        out[HEADER_LEN..HEADER_LEN + entry.qname_len].copy_from_slice(query.qname);
        for &(offset, expires_at) in &*entry.ttls {
            let remaining =
                u32::try_from(expires_at.saturating_sub(now) / 1000).unwrap_or(u32::MAX);
            let offset = offset as usize;
            out[offset..offset + 4].copy_from_slice(&remaining.to_be_bytes());
        }
        let lifetime = entry.expires_at.saturating_sub(entry.inserted_at).max(1);
        let left = entry.expires_at.saturating_sub(now).saturating_mul(100) / lifetime;
        drop(guard);
        Some(u8::try_from(left.min(100)).unwrap_or(100))
    }

    /// Serve `query` from an answer that may have expired, but by less than `keep_expired`,
    /// with every TTL set to `stale_ttl` (RFC 8767 recommends 30 s). For when resolving it
    /// again failed. Returns false (and leaves `out` empty) when there is none.
    pub fn answer_stale_into(
        &self,
        query: &ParsedQuery<'_>,
        out: &mut Vec<u8>,
        stale_ttl: u32,
    ) -> bool {
        out.clear();
        let mut key = [0u8; MAX_KEY_LEN];
        let key_len = query.key_into(&mut key);
        let key = &key[..key_len];
        let hash = xxhash_rust::xxh3::xxh3_64(key);
        let now = self.clock.now_millis();
        let entry = {
            let guard = self.shards[(hash & self.shard_mask) as usize].read();
            match guard.entries.get(&hash) {
                Some(entry)
                    if &*entry.key == key
                        && now < entry.expires_at.saturating_add(self.keep_expired_millis) =>
                {
                    entry.clone()
                }
                _ => return false,
            }
        };
        out.extend_from_slice(&entry.wire);
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(query.recursion_desired());
        out[HEADER_LEN..HEADER_LEN + entry.qname_len].copy_from_slice(query.qname);
        for &(offset, _) in &*entry.ttls {
            let offset = offset as usize;
            out[offset..offset + 4].copy_from_slice(&stale_ttl.to_be_bytes());
        }
        true
    }

    /// Store `answer` (a complete response in wire format) for `query`.
    ///
    /// The entry lives as long as the answer's smallest TTL (capped by `max_ttl`); each record's
    /// TTL then counts down from its own value. Answers with TC set, an rcode other than
    /// NOERROR/NXDOMAIN, no TTL at all or a zero TTL are refused.
    pub fn insert(&self, query: &ParsedQuery<'_>, answer: &[u8]) -> Result<(), CacheInsertError> {
        let now = self.clock.now_millis();
        let scan = scan_answer(answer).map_err(CacheInsertError::Malformed)?;
        let answer_qname = &answer[HEADER_LEN..HEADER_LEN + scan.qname_len];
        if !answer_qname.eq_ignore_ascii_case(query.qname)
            || scan.qtype != query.qtype
            || scan.qclass != query.qclass
        {
            return Err(CacheInsertError::QuestionMismatch);
        }
        if answer[2] & 0x02 != 0 {
            return Err(CacheInsertError::NotCacheable {
                reason: "truncated (TC)",
            });
        }
        if !matches!(answer[3] & 0x0F, 0 | 3) {
            return Err(CacheInsertError::NotCacheable {
                reason: "rcode is neither NOERROR nor NXDOMAIN",
            });
        }
        let Some(min_ttl) = scan.ttls.iter().map(|(_, ttl)| *ttl).min() else {
            return Err(CacheInsertError::NotCacheable {
                reason: "no record carries a TTL",
            });
        };
        if min_ttl == 0 {
            return Err(CacheInsertError::NotCacheable {
                reason: "a record has TTL 0",
            });
        }
        let lifetime = |ttl: u32| (u64::from(ttl) * 1000).min(self.max_ttl_millis);
        let mut key = [0u8; MAX_KEY_LEN];
        let key_len = query.key_into(&mut key);
        let entry = Entry {
            key: key[..key_len].into(),
            wire: answer.into(),
            qname_len: scan.qname_len,
            ttls: scan
                .ttls
                .iter()
                .map(|&(offset, ttl)| (offset, now + lifetime(ttl)))
                .collect(),
            expires_at: now + lifetime(min_ttl),
            inserted_at: now,
            generation: self.generation.fetch_add(1, Ordering::Relaxed),
        };
        let charge = entry.charge();
        if charge > self.shard_limit {
            return Err(CacheInsertError::TooLarge {
                bytes: answer.len(),
            });
        }
        let hash = xxhash_rust::xxh3::xxh3_64(&entry.key);
        let mut shard = self.shards[(hash & self.shard_mask) as usize].write();
        shard.remove(hash);
        shard.order.push_back((hash, entry.generation));
        shard.bytes += charge;
        shard.entries.insert(hash, Arc::new(entry));
        let limit = self.shard_limit;
        shard.evict_to(limit);
        Ok(())
    }

    /// Entries held (expired ones included until they are read or evicted).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().entries.len())
            .sum()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().bytes).sum()
    }
}

/// What the cache needs to know about an answer.
#[derive(Debug)]
struct AnswerScan {
    qname_len: usize,
    qtype: u16,
    qclass: u16,
    /// (offset of the TTL field, its value) for every record except OPT.
    ttls: Vec<(u32, u32)>,
}

fn scan_answer(answer: &[u8]) -> Result<AnswerScan, QueryParseError> {
    let header = answer.get(..HEADER_LEN).ok_or(QueryParseError::Truncated {
        offset: answer.len(),
    })?;
    let count = |at: usize| u32::from(u16::from_be_bytes([header[at], header[at + 1]]));
    let question_count = count(4) as u16;
    if question_count != 1 {
        return Err(QueryParseError::QuestionCount {
            count: question_count,
        });
    }
    let name_end = question_name_end(answer, HEADER_LEN)?;
    let qtype = read_be16(answer, name_end)?;
    let qclass = read_be16(answer, name_end + 2)?;
    let mut offset = name_end + 4;
    let mut ttls = Vec::new();
    for _ in 0..count(6) + count(8) + count(10) {
        let record = skip_record(answer, offset)?;
        if record.rtype != TYPE_OPT {
            // Offsets fit: a DNS message is at most 64 KiB.
            ttls.push(((record.name_end + 4) as u32, record.ttl));
        }
        offset = record.end;
    }
    Ok(AnswerScan {
        qname_len: name_end - HEADER_LEN,
        qtype,
        qclass,
        ttls,
    })
}
