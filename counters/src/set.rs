//! [`CounterSet`]: millions of replicated counters by key, without a global lock.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use crate::{
    Clock, Delta, NodeId, PnCount, PnState, Retirement, SystemClock, adder::Adder, pn::clamp_i64,
    probe_table::ProbeTable,
};

/// How a [`CounterSet`] is laid out and when it forgets idle keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CounterSetConfig {
    /// Number of independently locked shards, a power of two; `0` picks
    /// `max(64, 8 x available parallelism)` rounded up to a power of two.
    pub shards: usize,
    /// Forget a key once neither local increments nor merges changed it for this long, as
    /// observed by [`CounterSet::expire_idle`]. `None` (the default) keeps every key.
    ///
    /// Expiry forgets state *on this node only*. If the key is counted again here later, this
    /// node's entry restarts from zero, and peers that still hold the old, larger entry keep the
    /// maximum: increments are lost until the new entry passes the old one. Use expiry for
    /// ephemeral counting (per-client request rates); keep it off for replicated exact totals.
    #[serde(with = "optional_seconds")]
    pub idle_ttl: Option<Duration>,
}

impl CounterSetConfig {
    /// The default layout: automatic shard count, no expiry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set [`shards`](Self::shards).
    #[must_use]
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Set [`idle_ttl`](Self::idle_ttl).
    #[must_use]
    pub fn idle_ttl(mut self, idle_ttl: Option<Duration>) -> Self {
        self.idle_ttl = idle_ttl;
        self
    }

    /// Check every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards != 0 && (!self.shards.is_power_of_two() || self.shards > MAX_SHARDS) {
            return Err(ConfigError::Shards(self.shards));
        }
        if self.idle_ttl == Some(Duration::ZERO) {
            return Err(ConfigError::IdleTtlZero);
        }
        Ok(())
    }

    fn shard_count(&self) -> usize {
        if self.shards != 0 {
            return self.shards;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores * 8).max(64).next_power_of_two().min(MAX_SHARDS)
    }
}

const MAX_SHARDS: usize = 1 << 16;

mod optional_seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&duration.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let seconds = Option::<f64>::deserialize(deserializer)?;
        seconds
            .map(|s| Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A [`CounterSetConfig`] field with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `shards` is not 0 or a power of two up to 65536.
    #[error("shards = {0}: must be 0 (automatic) or a power of two from 1 to 65536")]
    Shards(usize),
    /// `idle_ttl` is zero, which would forget every key at once.
    #[error("idle_ttl = 0s: must be positive, or absent to keep keys forever")]
    IdleTtlZero,
}

/// What [`CounterSet::merge`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MergeReport {
    /// Keys whose state changed.
    pub changed_keys: usize,
    /// The delta did not continue from what this set had acknowledged of the sender (a gap, or a
    /// new incarnation): its content was merged, but the acknowledgement did not advance. Ask the
    /// sender for its full state.
    pub needs_full_state: bool,
}

/// What [`CounterSet::retire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetireReport {
    /// Keys whose retired entry was folded into this node's own entry.
    pub keys_folded: usize,
    /// The node was already retired (here or by a retirement merged from a peer): nothing changed.
    pub already_retired: bool,
}

/// Why [`CounterSet::retire`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetireError {
    /// A node cannot retire itself: its own entry has nowhere to go.
    #[error("node {0} cannot retire itself; ask a surviving node to retire it")]
    OwnNode(NodeId),
    /// The caller's `persist` step failed; nothing was changed.
    #[error("cannot persist the retirement: {0}")]
    Persist(Box<dyn std::error::Error + Send + Sync>),
}

/// Node index of a retired node in a merge's index map: its entries are skipped.
const SKIP: u32 = u32::MAX;

/// How far this set has merged another node's changes: versions of that node's incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Acknowledged {
    /// The sender's incarnation.
    pub incarnation: u64,
    /// Every change of that incarnation up to this version has been merged.
    pub version: u64,
}

/// Millions of counters by key (client IP, API key, ...), replicated as a delta-state CRDT.
///
/// - **Counting** is lock-free per key: keys live in shards behind read-write locks, and an
///   increment holds a shard's *read* lock while it adds to the key's entry, so
///   threads never wait for each other unless one of them inserts a new key into the same shard.
///   A hot key spreads its threads over cache-padded cells like [`Counter`](crate::Counter).
///   Counting many keys at once? [`add_batch`](Self::add_batch) takes each shard's lock once
///   per batch and overlaps the keys' cache misses: about 1.5-2x the speed of single adds on
///   large sets.
/// - **Replication:** each key's state is a map node id -> [`PnCount`]; this node's increments go
///   to its own entry only, and [`merge`](Self::merge) takes the per-node maximum.
///   [`delta_since`](Self::delta_since) returns every key changed after a version (version `0`:
///   full state). Versions are assigned when a change is *observed* by `delta_since` (or merged),
///   not per increment, so the increment path writes nothing but the count.
/// - **Hashing:** a key is hashed once per operation (foldhash, seeded per set); the high bits
///   of that hash pick the shard and the low bits the slot inside it. Each shard is an
///   open-addressing table whose slots hold the hash, the key and this node's pair inline, so an
///   increment on a key not in the cache usually misses it once, not twice.
/// - **Memory:** a slot is 48 bytes for a `u64` key (hash, key, this node's striped pair, and a
///   pointer to the replication metadata, a separate 56-byte record that increments never
///   touch); with the tables kept between 3/8 and 3/4 full, 120-185 bytes per key (182 measured
///   by `tests/memory.rs` at 200k keys), plus 24 bytes per other node that counted the key (see
///   docs/benchmarks.md). A key that many threads hammer at once also allocates its
///   cache-padded cells (two per core, 128 bytes each).
/// - **Idle expiry** has a resolution of one second.
///
/// Handles are cheap to clone and share one set.
///
/// ```
/// use edgekit_counters::{CounterSet, NodeId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let paris = CounterSet::<String>::new(NodeId::new("paris")?);
/// let tokyo = CounterSet::<String>::new(NodeId::new("tokyo")?);
/// paris.add("api-key-1", 3);
/// tokyo.add("api-key-1", 4);
/// tokyo.add("api-key-1", -1);
///
/// // Ship state both ways (over any transport: `Delta::encode` / `Delta::decode`).
/// let from_tokyo = tokyo.delta_since(0);
/// paris.merge(&edgekit_counters::Delta::decode(&from_tokyo.encode())?);
/// tokyo.merge(&paris.delta_since(0));
/// assert_eq!(paris.get("api-key-1"), 6);
/// assert_eq!(tokyo.get("api-key-1"), 6);
/// # Ok(())
/// # }
/// ```
pub struct CounterSet<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for CounterSet<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for CounterSet<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterSet")
            .field("node", &self.inner.node)
            .field("incarnation", &self.inner.incarnation)
            .field("shards", &self.inner.shards.len())
            .field("idle_ttl", &self.inner.idle_ttl)
            .finish_non_exhaustive()
    }
}

type Shard<K> = CachePadded<RwLock<ProbeTable<Slot<K>>>>;

/// One key and its state, stored inline in the shard's table: for a `u64` key, 48 bytes with
/// the table's hash, of which an increment reads and writes the first 32 (hash, key, this
/// node's pair) and never the boxed replication metadata.
#[repr(C)]
struct Slot<K> {
    key: K,
    entry: Entry,
}

struct Inner<K> {
    node: NodeId,
    incarnation: u64,
    /// Hashes keys once per operation: the high bits pick the shard, the low bits the bucket.
    /// Seeded per set, so bucket collisions cannot be precomputed by whoever picks the keys.
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard<K>]>,
    /// Node ids by index; index 0 is this node. Keys' remote entries refer to these indexes.
    nodes: RwLock<NodeTable>,
    /// Serialises version assignment, so a delta's `until` covers exactly what it observed.
    replication: Mutex<Replication>,
    clock: Arc<dyn Clock>,
    idle_ttl: Option<Duration>,
    /// Whether any key has ever held another node's entry. Until then a read needs only the
    /// key's slot, not its out-of-line metadata: a single node (a rate limit on one box, say)
    /// reads with one cache miss instead of two. Set before the first remote entry is stored.
    any_remote: AtomicBool,
}

#[derive(Default)]
struct NodeTable {
    ids: Vec<NodeId>,
    index: HashMap<NodeId, u32>,
}

impl NodeTable {
    fn intern(&mut self, id: &NodeId) -> u32 {
        if let Some(index) = self.index.get(id) {
            return *index;
        }
        let index = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.push(id.clone());
        self.index.insert(id.clone(), index);
        index
    }
}

#[derive(Default)]
struct Replication {
    version: u64,
    acknowledged: HashMap<NodeId, Acknowledged>,
    /// Tombstones: every retirement this set knows, sent along with every delta.
    retired: Vec<Retirement>,
}

impl Replication {
    fn is_retired(&self, node: &NodeId) -> bool {
        self.retired.iter().any(|r| &r.retired == node)
    }
}

#[repr(C)]
struct Entry {
    local: Adder,
    /// Out of line: only deltas, merges and sweeps read it, and inline it would double the
    /// slot an increment has to find.
    meta: Box<Mutex<Meta>>,
}

struct Meta {
    /// Set version of the last observed change to this key.
    version: u64,
    /// Our own entry as last observed (by a delta or a sweep).
    observed: PnCount,
    /// Other nodes' entries, by node index, sorted. A boxed slice (16 bytes, no spare
    /// capacity): keys rarely gain nodes, and millions of keys make every byte count.
    remote: Box<[(u32, PnCount)]>,
    /// Clock time (whole seconds since the Unix epoch, saturating) when a change was last
    /// observed, for idle expiry; `u32` lasts until 2106.
    changed_at_s: u32,
}

fn seconds(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

impl Entry {
    fn new(now_ms: u64) -> Self {
        Self {
            local: Adder::default(),
            meta: Box::new(Mutex::new(Meta {
                version: 0,
                observed: PnCount::ZERO,
                remote: Box::default(),
                changed_at_s: seconds(now_ms),
            })),
        }
    }

    fn totals(&self) -> PnCount {
        let own = self.local.sum();
        let meta = self.meta.lock();
        meta.remote
            .iter()
            .fold(own, |sum, (_, count)| sum.saturating_sum(*count))
    }
}

impl Meta {
    /// Record our own entry's current value; a change gets the next version.
    fn observe(&mut self, own: PnCount, replication: &mut Replication, now_ms: u64) {
        if own != self.observed {
            self.observed = own;
            self.bump(replication, now_ms);
        }
    }

    fn bump(&mut self, replication: &mut Replication, now_ms: u64) {
        replication.version += 1;
        self.version = replication.version;
        self.changed_at_s = seconds(now_ms);
    }
}

fn random_u64() -> u64 {
    // RandomState is seeded from the OS's randomness, which is all an incarnation needs.
    RandomState::new().hash_one(0xed6e_u64)
}

impl<K: Hash + Eq + Clone> CounterSet<K> {
    /// An empty set for `node`, with the default layout and the system clock.
    pub fn new(node: NodeId) -> Self {
        Self::build(node, &CounterSetConfig::default(), Arc::new(SystemClock))
    }

    /// An empty set with `config` (validated) and `clock` (used for idle expiry).
    pub fn with_config(
        node: NodeId,
        config: &CounterSetConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::build(node, config, clock))
    }

    fn build(node: NodeId, config: &CounterSetConfig, clock: Arc<dyn Clock>) -> Self {
        let hasher = foldhash::fast::RandomState::default();
        let shards = (0..config.shard_count())
            .map(|_| CachePadded::new(RwLock::new(ProbeTable::new())))
            .collect();
        let mut nodes = NodeTable::default();
        nodes.intern(&node);
        Self {
            inner: Arc::new(Inner {
                node,
                incarnation: random_u64(),
                hasher,
                shards,
                nodes: RwLock::new(nodes),
                replication: Mutex::new(Replication::default()),
                clock,
                idle_ttl: config.idle_ttl,
                any_remote: AtomicBool::new(false),
            }),
        }
    }

    /// This node's id: the entry local increments go to.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    /// This set's incarnation (random, drawn at creation): versions are only comparable within it.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The key's hash, computed once per operation and used for both the shard and the bucket.
    #[inline]
    fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        self.inner.hasher.hash_one(key)
    }

    /// The shard for a hash: bits 40 and up (at most 16 of them), which the table's home slot
    /// (the low bits) leaves independent for any shard below 2^40 slots.
    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K> {
        &self.inner.shards[self.shard_index(hash)]
    }

    #[inline]
    fn shard_index(&self, hash: u64) -> usize {
        (hash >> 40) as usize & (self.inner.shards.len() - 1)
    }

    /// Run `with` on the key's entry if it exists, under its shard's read lock.
    #[inline]
    fn with_entry<Q, R>(&self, key: &Q, with: impl FnOnce(&Entry) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash).read();
        shard
            .find(hash, |slot| slot.key.borrow() == key)
            .map(|slot| with(&slot.entry))
    }

    /// Run `with` on the key's entry under its shard's write lock, inserting it first if absent.
    fn with_entry_inserted<R>(
        &self,
        hash: u64,
        key: K,
        now_ms: u64,
        with: impl FnOnce(&Entry) -> R,
    ) -> R {
        let mut shard = self.shard(hash).write();
        let slot = shard.find_or_insert_with(
            hash,
            key,
            |slot, key| slot.key == *key,
            |key| Slot {
                key,
                entry: Entry::new(now_ms),
            },
        );
        with(&slot.entry)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    /// Add `by` to `key` (negative subtracts), creating the key if needed.
    #[inline]
    pub fn add<Q>(&self, key: &Q, by: i64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let hash = self.hash(key);
        let shard = self.shard(hash);
        if let Some(slot) = shard.read().find(hash, |slot| slot.key.borrow() == key) {
            slot.entry.local.add(by);
            return;
        }
        let now_ms = self.now_ms();
        self.with_entry_inserted(hash, key.to_owned(), now_ms, |entry| entry.local.add(by));
    }

    /// Add each `(key, by)` of a batch, as [`add`](Self::add) would one by one.
    ///
    /// Faster per key than single adds when the keys are many and spread out (per-client
    /// counting over a batch of requests or log lines): keys are grouped by shard, so each
    /// shard's lock is taken once per batch, and the slots of the next few keys are loaded
    /// together, so their cache misses overlap instead of following one another. The batch is
    /// applied shard by shard; a reader may see part of it.
    pub fn add_batch<'q, Q>(&self, batch: impl IntoIterator<Item = (&'q Q, i64)>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized + 'q,
    {
        /// Keys whose slots are loaded together: enough to overlap the misses, few enough
        /// that the slots are still cached when their turn comes.
        const IN_FLIGHT: usize = 8;
        let mut pending: Vec<(usize, u64, &Q, i64)> = batch
            .into_iter()
            .map(|(key, by)| {
                let hash = self.hash(key);
                (self.shard_index(hash), hash, key, by)
            })
            .collect();
        pending.sort_unstable_by_key(|(shard, ..)| *shard);
        let mut absent = Vec::new();
        for group in pending.chunk_by(|a, b| a.0 == b.0) {
            let table = self.inner.shards[group[0].0].read();
            for chunk in group.chunks(IN_FLIGHT) {
                for (_, hash, _, _) in chunk {
                    table.touch(*hash);
                }
                for &(_, hash, key, by) in chunk {
                    match table.find(hash, |slot| slot.key.borrow() == key) {
                        Some(slot) => slot.entry.local.add(by),
                        None => absent.push((key, by)),
                    }
                }
            }
        }
        for (key, by) in absent {
            self.add(key, by);
        }
    }

    /// Add one to `key`.
    #[inline]
    pub fn incr<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.add(key, 1);
    }

    /// The key's value across every node this set has heard from (0 for an unknown key),
    /// clamped to the `i64` range.
    pub fn get<Q>(&self, key: &Q) -> i64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        clamp_i64(self.totals(key).value())
    }

    /// The key's increments and decrements summed over every node.
    pub fn totals<Q>(&self, key: &Q) -> PnCount
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.inner.any_remote.load(Relaxed) {
            self.with_entry(key, Entry::totals)
        } else {
            self.with_entry(key, |entry| entry.local.sum())
        }
        .unwrap_or(PnCount::ZERO)
    }

    /// This node's own entry for the key: what its local increments add up to.
    pub fn own<Q>(&self, key: &Q) -> PnCount
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, |entry| entry.local.sum())
            .unwrap_or(PnCount::ZERO)
    }

    /// Raise this node's own entry for `key` to at least `count` (restoring it from durable
    /// storage after a restart); the per-part maximum, like a merge.
    pub(crate) fn raise_own(&self, key: K, count: PnCount) {
        let now_ms = self.now_ms();
        let hash = self.hash(&key);
        self.with_entry_inserted(hash, key, now_ms, |entry| entry.local.raise_to(count));
    }

    /// The key's full replicated state: every node's entry.
    pub fn state<Q>(&self, key: &Q) -> PnState
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = PnState::new();
        let Some((own, remote)) = self.with_entry(key, |entry| {
            (entry.local.sum(), entry.meta.lock().remote.clone())
        }) else {
            return state;
        };
        if own != PnCount::ZERO {
            state.merge_entry(&self.inner.node, own);
        }
        let nodes = self.inner.nodes.read();
        for (index, count) in remote {
            state.merge_entry(&nodes.ids[index as usize], count);
        }
        state
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| shard.read().len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key held, in no particular order (a snapshot; keys may come and go meanwhile).
    pub fn keys(&self) -> Vec<K> {
        let mut keys = Vec::new();
        for shard in &*self.inner.shards {
            keys.extend(shard.read().iter().map(|slot| slot.key.clone()));
        }
        keys
    }

    /// Everything changed after `since` (a version from an earlier delta's
    /// [`until`](Delta::until)); `0` gives the full state.
    ///
    /// Observes every key's own entry first (an O(keys) scan), so it is meant to be called once
    /// per replication interval, not per request.
    pub fn delta_since(&self, since: u64) -> Delta<K> {
        self.delta_since_at_most(since, usize::MAX)
    }

    /// Like [`delta_since`](Self::delta_since), but with at most `max_keys` keys: the ones
    /// changed earliest, so the delta's `until` still covers every change up to it and the
    /// receiver's acknowledgement advances; the next delta from there carries the rest.
    /// A transport uses it to keep each message under its frame bound.
    pub fn delta_since_at_most(&self, since: u64, max_keys: usize) -> Delta<K> {
        let now_ms = self.now_ms();
        let mut replication = self.inner.replication.lock();
        let mut keys = Vec::new();
        for shard in &*self.inner.shards {
            for Slot { key, entry } in shard.read().iter() {
                let own = entry.local.sum();
                let mut meta = entry.meta.lock();
                meta.observe(own, &mut replication, now_ms);
                if meta.version > since {
                    let mut entries = Vec::with_capacity(1 + meta.remote.len());
                    if own != PnCount::ZERO {
                        entries.push((0, own));
                    }
                    entries.extend_from_slice(&meta.remote);
                    keys.push((meta.version, key.clone(), entries));
                }
            }
        }
        let mut until = replication.version;
        if keys.len() > max_keys.max(1) {
            // Every change gets its own version, so the earliest `max_keys` changes are exactly
            // the changes up to the largest version among them.
            let keep = max_keys.max(1);
            keys.select_nth_unstable_by_key(keep - 1, |(version, _, _)| *version);
            keys.truncate(keep);
            until = keys
                .iter()
                .map(|(version, _, _)| *version)
                .max()
                .unwrap_or(since);
        }
        Delta {
            origin: self.inner.node.clone(),
            incarnation: self.inner.incarnation,
            since,
            until,
            nodes: self.inner.nodes.read().ids.clone(),
            keys: keys
                .into_iter()
                .map(|(_, key, entries)| (key, entries))
                .collect(),
            retired: replication.retired.clone(),
        }
    }

    /// [`delta_for`](Self::delta_for) with at most `max_keys` keys (see
    /// [`delta_since_at_most`](Self::delta_since_at_most)).
    pub fn delta_for_at_most(
        &self,
        acknowledged: Option<Acknowledged>,
        max_keys: usize,
    ) -> Delta<K> {
        match acknowledged {
            Some(ack) if ack.incarnation == self.inner.incarnation => {
                self.delta_since_at_most(ack.version, max_keys)
            }
            _ => self.delta_since_at_most(0, max_keys),
        }
    }

    /// The delta a peer needs, given what it acknowledged of this set: the changes since its
    /// acknowledged version if it is of this incarnation, the full state otherwise.
    pub fn delta_for(&self, acknowledged: Option<Acknowledged>) -> Delta<K> {
        match acknowledged {
            Some(ack) if ack.incarnation == self.inner.incarnation => self.delta_since(ack.version),
            _ => self.delta_since(0),
        }
    }

    /// Merge a delta or full state from another node (per-node maximum), and advance what this
    /// set acknowledges of the sender when the delta continues from there.
    ///
    /// An entry for *this* node raises the local count to it: that is how a node that lost its
    /// own entry (restart without persistence) gets it back from peers. Do that before counting
    /// again; increments made before recovery are then absorbed by the maximum.
    pub fn merge(&self, delta: &Delta<K>) -> MergeReport {
        let now_ms = self.now_ms();
        let mut local_index: Vec<u32> = {
            let mut nodes = self.inner.nodes.write();
            delta.nodes.iter().map(|id| nodes.intern(id)).collect()
        };
        let mut replication = self.inner.replication.lock();
        // Tombstones first: the survivor's folded entries may be in this very delta, and must
        // never meet the retired node's entries in one total.
        for retirement in &delta.retired {
            self.absorb_retirement(&mut replication, retirement);
        }
        for (index, id) in local_index.iter_mut().zip(&delta.nodes) {
            if *index != 0 && replication.is_retired(id) {
                *index = SKIP;
            }
        }
        let mut changed_keys = 0;
        for (key, entries) in &delta.keys {
            let hash = self.hash(key);
            let existing = {
                let shard = self.shard(hash).read();
                shard.find(hash, |slot| slot.key == *key).map(|slot| {
                    self.merge_entry(&slot.entry, entries, &local_index, &mut replication, now_ms)
                })
            };
            let changed = existing.unwrap_or_else(|| {
                self.with_entry_inserted(hash, key.clone(), now_ms, |entry| {
                    self.merge_entry(entry, entries, &local_index, &mut replication, now_ms)
                })
            });
            changed_keys += usize::from(changed);
        }
        let needs_full_state = !Self::acknowledge(&mut replication, delta);
        MergeReport {
            changed_keys,
            needs_full_state,
        }
    }

    fn merge_entry(
        &self,
        entry: &Entry,
        entries: &[(u32, PnCount)],
        local_index: &[u32],
        replication: &mut Replication,
        now_ms: u64,
    ) -> bool {
        let mut meta = entry.meta.lock();
        let own_before = entry.local.sum();
        meta.observe(own_before, replication, now_ms);
        let mut changed = false;
        for (index, count) in entries {
            let Some(&local) = local_index.get(*index as usize) else {
                continue;
            };
            if local == SKIP {
                continue;
            }
            if local == 0 {
                if entry.local.raise_to(*count) {
                    meta.observed = entry.local.sum();
                    changed = true;
                }
                continue;
            }
            match meta.remote.binary_search_by_key(&local, |(i, _)| *i) {
                Ok(at) => {
                    let merged = meta.remote[at].1.merged(*count);
                    if merged != meta.remote[at].1 {
                        meta.remote[at].1 = merged;
                        changed = true;
                    }
                }
                Err(at) => {
                    if *count != PnCount::ZERO {
                        self.inner.any_remote.store(true, Relaxed);
                        // Grow by exactly one (a boxed slice has no spare capacity).
                        let mut remote = std::mem::take(&mut meta.remote).into_vec();
                        remote.insert(at, (local, *count));
                        meta.remote = remote.into_boxed_slice();
                        changed = true;
                    }
                }
            }
        }
        if changed {
            meta.bump(replication, now_ms);
        }
        changed
    }

    /// Advance the acknowledgement of `delta`'s sender; `false` when it does not continue.
    fn acknowledge(replication: &mut Replication, delta: &Delta<K>) -> bool {
        let continues = match replication.acknowledged.get(&delta.origin) {
            _ if delta.since == 0 => true,
            Some(ack) => ack.incarnation == delta.incarnation && ack.version >= delta.since,
            None => false,
        };
        if continues {
            let ack = replication
                .acknowledged
                .entry(delta.origin.clone())
                .or_insert(Acknowledged {
                    incarnation: delta.incarnation,
                    version: 0,
                });
            if ack.incarnation != delta.incarnation {
                *ack = Acknowledged {
                    incarnation: delta.incarnation,
                    version: 0,
                };
            }
            ack.version = ack.version.max(delta.until);
        }
        continues
    }

    /// Record a tombstone learned from a peer (or reloaded from disk) and drop the retired node's
    /// entries everywhere. Idempotent.
    fn absorb_retirement(&self, replication: &mut Replication, retirement: &Retirement) {
        if replication.is_retired(&retirement.retired) {
            return;
        }
        replication.retired.push(retirement.clone());
        if retirement.retired == self.inner.node {
            // Our own entry cannot be dropped here; every other node now ignores it.
            tracing::error!(node = %self.inner.node, survivor = %retirement.survivor,
                "this node was retired: its counts are ignored by every other node from now on");
            return;
        }
        let Some(index) = self
            .inner
            .nodes
            .read()
            .index
            .get(&retirement.retired)
            .copied()
        else {
            return;
        };
        for shard in &*self.inner.shards {
            for slot in shard.read().iter() {
                let mut meta = slot.entry.meta.lock();
                if let Ok(at) = meta.remote.binary_search_by_key(&index, |(i, _)| *i) {
                    let mut remote = std::mem::take(&mut meta.remote).into_vec();
                    remote.remove(at);
                    meta.remote = remote.into_boxed_slice();
                }
            }
        }
    }

    /// Retire `node`: fold its entry of every key into this node's own entry, drop it, and
    /// record a tombstone that every delta from now on carries, so that every node drops the
    /// retired entries exactly when it learns of the fold and ignores them from then on. No
    /// total changes anywhere, and state no longer carries the retired node's entries.
    ///
    /// Retire a node that has **stopped for good** and whose last increments have reached this
    /// node (its entry here is final): increments it made that this node never saw are dropped
    /// with its entries. A retired id must never be reused.
    ///
    /// Equivalent to [`retire_with`](Self::retire_with) with nothing to persist.
    pub fn retire(&self, node: &NodeId) -> Result<RetireReport, RetireError> {
        self.retire_with(node, |_, _| Ok(()))
    }

    /// [`retire`](Self::retire), calling `persist` with the tombstone and this node's own entry
    /// after the fold for every key it changes, *before* anything changes in memory (a node that
    /// journals its own entries makes both durable in one record). Merges wait meanwhile, so
    /// what `persist` sees is exactly what is applied. If `persist` fails, nothing changes.
    pub fn retire_with<F>(&self, node: &NodeId, persist: F) -> Result<RetireReport, RetireError>
    where
        F: FnOnce(
            &Retirement,
            &[(K, PnCount)],
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        if *node == self.inner.node {
            return Err(RetireError::OwnNode(node.clone()));
        }
        let now_ms = self.now_ms();
        let mut replication = self.inner.replication.lock();
        if replication.is_retired(node) {
            return Ok(RetireReport {
                keys_folded: 0,
                already_retired: true,
            });
        }
        let retirement = Retirement {
            retired: node.clone(),
            survivor: self.inner.node.clone(),
        };
        let index = self.inner.nodes.read().index.get(node).copied();
        // (key, the retired entry, our own entry after the fold)
        let mut plan: Vec<(K, PnCount, PnCount)> = Vec::new();
        if let Some(index) = index {
            for shard in &*self.inner.shards {
                for Slot { key, entry } in shard.read().iter() {
                    let meta = entry.meta.lock();
                    if let Ok(at) = meta.remote.binary_search_by_key(&index, |(i, _)| *i) {
                        let folded = meta.remote[at].1;
                        let after = entry.local.sum().saturating_sum(folded);
                        plan.push((key.clone(), folded, after));
                    }
                }
            }
        }
        let own_after: Vec<(K, PnCount)> = plan
            .iter()
            .map(|(key, _, after)| (key.clone(), *after))
            .collect();
        persist(&retirement, &own_after).map_err(RetireError::Persist)?;
        // Merges are held off by the replication lock, so the planned entries are still there.
        for (key, folded, _) in &plan {
            let hash = self.hash(key);
            let shard = self.shard(hash).read();
            let Some(slot) = shard.find(hash, |slot| slot.key == *key) else {
                continue;
            };
            let mut meta = slot.entry.meta.lock();
            if let Some(index) = index
                && let Ok(at) = meta.remote.binary_search_by_key(&index, |(i, _)| *i)
            {
                let mut remote = std::mem::take(&mut meta.remote).into_vec();
                remote.remove(at);
                meta.remote = remote.into_boxed_slice();
            }
            slot.entry.local.add_parts(*folded);
            let own = slot.entry.local.sum();
            meta.observed = own;
            meta.bump(&mut replication, now_ms);
        }
        replication.retired.push(retirement);
        Ok(RetireReport {
            keys_folded: plan.len(),
            already_retired: false,
        })
    }

    /// Every retirement this set knows.
    pub fn retirements(&self) -> Vec<Retirement> {
        self.inner.replication.lock().retired.clone()
    }

    /// Re-learn a tombstone from durable storage after a restart (before merging anything).
    pub(crate) fn restore_retirement(&self, retirement: &Retirement) {
        let mut replication = self.inner.replication.lock();
        self.absorb_retirement(&mut replication, retirement);
    }

    /// What this set has merged of `node`'s changes, to send back so it can reply with a delta.
    pub fn acknowledged(&self, node: &NodeId) -> Option<Acknowledged> {
        self.inner
            .replication
            .lock()
            .acknowledged
            .get(node)
            .copied()
    }

    /// Forget keys idle for at least the configured `idle_ttl`; returns how many were removed.
    /// Does nothing without an `idle_ttl`. Call it periodically (e.g. every few seconds).
    pub fn expire_idle(&self) -> usize {
        let Some(ttl) = self.inner.idle_ttl else {
            return 0;
        };
        // Whole seconds, rounded up: a key is never forgotten before its ttl has passed.
        let ttl_s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let now_ms = self.now_ms();
        let now_s = seconds(now_ms);
        let mut replication = self.inner.replication.lock();
        let mut removed = 0;
        for shard in &*self.inner.shards {
            // The write lock stops increments in this shard, so what we observe is final.
            shard.write().retain(|Slot { entry, .. }| {
                let own = entry.local.sum();
                let meta = entry.meta.get_mut();
                meta.observe(own, &mut replication, now_ms);
                let keep = u64::from(now_s.saturating_sub(meta.changed_at_s)) < ttl_s;
                removed += usize::from(!keep);
                keep
            });
        }
        removed
    }

    /// Forget every key for which `keep` returns false; returns how many were removed.
    /// Like idle expiry, this forgets state on this node only.
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) -> usize {
        let mut removed = 0;
        for shard in &*self.inner.shards {
            shard.write().retain(|slot| {
                let key = &slot.key;
                let kept = keep(key);
                removed += usize::from(!kept);
                kept
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_u64_key_slot_is_40_bytes() {
        // The layout behind the bytes-per-key figure in the docs: key 8, own pair 16, cell table
        // pointer 8, boxed metadata 8 (plus the table's 8-byte hash).
        assert_eq!(size_of::<Slot<u64>>(), 40);
        assert_eq!(size_of::<Mutex<Meta>>(), 56);
    }
}
