//! Local reads on 1M keys (1 and 2 threads), durable group-committed writes, and single-write
//! latency with fsync. Run: `cargo bench -p quicksilver-kv --bench kv -- --warm-up-time 1
//! --measurement-time 3`. Figures and the machine are recorded in docs/benchmarks.md.

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput};
use quicksilver_kv::{Batch, Durability, Store, StoreConfig};

const KEYS: u64 = 1_000_000;

fn key(i: u64) -> String {
    format!("config/{i:08}")
}

/// A store with 1M keys of 32-byte values, filled without fsync.
fn populated() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            durability: Durability::NoSync,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    for chunk in 0..KEYS / 10_000 {
        let mut batch = Batch::new();
        for i in chunk * 10_000..(chunk + 1) * 10_000 {
            batch = batch.put(key(i), [b'v'; 32]);
        }
        store.write(batch).unwrap();
    }
    (dir, store)
}

/// The baseline: a plain heed environment holding the same 1M pairs in its unnamed database.
fn raw_heed_env() -> (
    tempfile::TempDir,
    heed::Env,
    heed::Database<'static, heed::types::Bytes, heed::types::Bytes>,
) {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: a fresh private directory; nothing else maps or writes these files.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(1 << 30)
            .flags(heed::EnvFlags::NO_SYNC)
            .open(dir.path())
            .unwrap()
    };
    let db = env
        .create_databases_and_commit(env.write_txn().unwrap(), |opener, wtxn| {
            let db = opener.create_database(wtxn, None)?;
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit();
    let mut txn = env.write_txn().unwrap();
    for i in 0..KEYS {
        db.put(&mut txn, key(i).as_bytes(), &[b'v'; 32][..])
            .unwrap();
    }
    txn.commit().unwrap();
    (dir, env, db)
}

/// Cheap per-thread pseudo-random key indexes (xorshift), so the key choice costs nothing.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        key(self.0 % KEYS)
    }
}

fn reads(c: &mut Criterion) {
    let (_dir, store) = populated();
    // Pre-built keys: we measure the lookup, not `format!`.
    let mut keys = Keys(0x2545_f491_4f6c_dd1d);
    let probes: Arc<Vec<String>> = Arc::new((0..65_536).map(|_| keys.next()).collect());
    let mut group = c.benchmark_group("get_1m_keys");
    group.throughput(Throughput::Elements(1));
    // Baseline in the same run: raw heed, one read transaction, the same 1M keys and values in
    // a plain LMDB environment. Everything below is measured against this.
    let (_raw_dir, raw_env, raw_db) = raw_heed_env();
    group.bench_function("baseline_raw_heed_get_1_thread", |b| {
        let txn = raw_env.read_txn().unwrap();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(
                raw_db
                    .get(&txn, probes[i].as_bytes())
                    .unwrap()
                    .unwrap()
                    .len(),
            )
        });
    });
    group.bench_function("1_thread_cached_reader", |b| {
        let mut reader = store.reader().cached();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(
                reader
                    .get(probes[i].as_bytes())
                    .unwrap()
                    .value
                    .unwrap()
                    .len(),
            )
        });
    });
    group.bench_function("1_thread_view", |b| {
        let view = store.reader().view().unwrap();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(view.get(probes[i].as_bytes()).unwrap().unwrap().len())
        });
    });
    group.bench_function("1_thread_reader_get_copy", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(
                store
                    .reader()
                    .get(probes[i].as_bytes())
                    .unwrap()
                    .value
                    .unwrap()
                    .len(),
            )
        });
    });
    group.bench_function("1_thread_reader_get_with", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(
                store
                    .reader()
                    .get_with(probes[i].as_bytes(), |value| value.map_or(0, <[u8]>::len))
                    .unwrap()
                    .value,
            )
        });
    });
    drop(raw_env);
    // A second baseline: the same probes against an in-memory BTreeMap of 1M keys.
    let model: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = (0..KEYS)
        .map(|i| (key(i).into_bytes(), vec![b'v'; 32]))
        .collect();
    group.bench_function("baseline_btreemap_1_thread", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(model.get(probes[i].as_bytes()).unwrap().len())
        });
    });
    drop(model);
    group.throughput(Throughput::Elements(2));
    group.bench_function("2_threads_cached_reader", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2 {
                    let reader = store.reader().clone();
                    let probes = Arc::clone(&probes);
                    scope.spawn(move || {
                        let mut reader = reader.cached();
                        for n in 0..iters as usize {
                            let probe = &probes[(n * 2 + t) & 65_535];
                            black_box(reader.get(probe.as_bytes()).unwrap().value.unwrap().len());
                        }
                    });
                }
            });
            started.elapsed()
        });
    });
    group.finish();
}

fn durable_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    (dir, store)
}

fn writes(c: &mut Criterion) {
    let (_dir, store) = durable_store();
    let mut group = c.benchmark_group("durable_writes");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    // Baseline in the same run: what one 4 KiB write + fdatasync costs on this disk.
    group.bench_function("baseline_raw_4k_write_fdatasync", |b| {
        use std::io::{Seek, Write};
        let mut file = std::fs::File::create(_dir.path().join("raw")).unwrap();
        b.iter(|| {
            file.seek(std::io::SeekFrom::Start(0)).unwrap();
            file.write_all(&[b'r'; 4096]).unwrap();
            file.sync_data().unwrap();
        });
    });
    group.bench_function("single_writer_fsync", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            store.put(key(n), [b'w'; 64]).unwrap()
        });
    });
    // 64 concurrent writers, one key per batch: group commit folds them into shared fsyncs.
    group.bench_function("64_writers_group_commit_fsync", |b| {
        b.iter_custom(|iters| {
            let per_writer = iters.div_ceil(64);
            let started = Instant::now();
            std::thread::scope(|scope| {
                for w in 0..64u64 {
                    let store = store.clone();
                    scope.spawn(move || {
                        for n in 0..per_writer {
                            store.put(key(w * 1_000_000 + n), [b'w'; 64]).unwrap();
                        }
                    });
                }
            });
            started
                .elapsed()
                .mul_f64(iters as f64 / (per_writer * 64) as f64)
        });
    });
    group.finish();
}

/// p50/p99 of one durable single-key write at a time (criterion reports means only).
fn single_write_latency() {
    let (_dir, store) = durable_store();
    let mut samples: Vec<Duration> = (0..2000u64)
        .map(|n| {
            let started = Instant::now();
            store.put(key(n), [b'l'; 64]).unwrap();
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "single durable write latency over {} writes: p50 {:?}  p99 {:?}  max {:?}",
        samples.len(),
        pick(0.50),
        pick(0.99),
        samples[samples.len() - 1]
    );
}

fn main() {
    single_write_latency();
    let mut criterion = Criterion::default().configure_from_args();
    reads(&mut criterion);
    writes(&mut criterion);
    criterion.final_summary();
}
