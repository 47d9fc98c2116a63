//! Counters side by side, in one run so the ratios hold on a noisy shared machine:
//! our `Counter` vs one shared `AtomicU64` vs `crdts::GCounter` behind a `Mutex` vs padded
//! per-thread slots (the ceiling), with 1 and 2 threads; keyed increments on 1M keys; reads;
//! delta production, encoding and merge for 100k changed keys.
//!
//! `cargo bench -p edgekit-counters --bench counters -- --warm-up-time 1 --measurement-time 3`

use std::{
    hint::black_box,
    sync::{
        Barrier, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crdts::{CmRDT, GCounter};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_utils::CachePadded;
use edgekit_counters::{Counter, CounterSet, Delta, NodeId};

/// Run `op(thread, i)` `iters` times on each of `threads` threads; time from a common start to
/// the last thread's finish. Generic, so `op` is inlined into the loop (no call per operation).
fn parallel<F: Fn(usize, u64) + Sync>(threads: usize, iters: u64, op: &F) -> Duration {
    let start_line = Barrier::new(threads + 1);
    let finish_line = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (start_line, finish_line) = (&start_line, &finish_line);
            scope.spawn(move || {
                start_line.wait();
                for i in 0..iters {
                    op(thread, i);
                }
                finish_line.wait();
            });
        }
        start_line.wait();
        let started = Instant::now();
        finish_line.wait();
        started.elapsed()
    })
}

fn increments(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let mut group = c.benchmark_group(format!("increment/{threads}-thread"));
        group.throughput(Throughput::Elements(threads as u64));

        let ours = Counter::new();
        group.bench_function("edgekit Counter", |b| {
            b.iter_custom(|iters| parallel(threads, iters, &|_, _| ours.incr()));
        });
        black_box(ours.value());

        let shared = AtomicU64::new(0);
        group.bench_function("shared AtomicU64", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|_, _| {
                    shared.fetch_add(1, Relaxed);
                })
            });
        });

        let slots: Vec<CachePadded<AtomicU64>> = (0..threads)
            .map(|_| CachePadded::new(AtomicU64::new(0)))
            .collect();
        group.bench_function("padded per-thread slots (ceiling)", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|thread, _| {
                    slots[thread].fetch_add(1, Relaxed);
                })
            });
        });

        let gcounter = Mutex::new(GCounter::<usize>::new());
        group.bench_function("Mutex<crdts::GCounter>", |b| {
            b.iter_custom(|iters| {
                parallel(threads, iters, &|thread, _| {
                    let mut counter = gcounter.lock().unwrap();
                    let op = counter.inc(thread);
                    counter.apply(op);
                })
            });
        });
        group.finish();
    }
}

const KEYS: u64 = 1 << 20;

/// A fixed pseudo-random walk over the keys (splitmix64), so both threads hit random keys.
fn key_walk(len: usize) -> Vec<u64> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % KEYS
        })
        .collect()
}

/// Keys per `add_batch` call in the batched keyed bench (a power of two dividing `KEYS`).
const BATCH: usize = 1024;

fn keyed(c: &mut Criterion) {
    let set = CounterSet::<u64>::new(NodeId::new("bench").unwrap());
    for key in 0..KEYS {
        set.incr(&key);
    }
    // One pre-generated random walk as long as the key space (8 MiB), so the loop touches all
    // 1M keys in random order and does nothing per increment but index it.
    let walk = key_walk(KEYS as usize);
    let mask = walk.len() as u64 - 1;
    let mut group = c.benchmark_group("keyed increment, 1M keys");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(
            BenchmarkId::new("CounterSet", format!("{threads}-thread")),
            |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|thread, i| {
                        // Threads start half the walk apart.
                        let index = (i + thread as u64 * (KEYS / 2)) & mask;
                        set.incr(&walk[index as usize]);
                    })
                });
            },
        );
    }
    // The same walk in batches, as a service counting a batch of requests or log lines would.
    let batch: Vec<(&u64, i64)> = walk.iter().map(|key| (key, 1)).collect();
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(
            BenchmarkId::new(
                format!("CounterSet::add_batch, {BATCH} keys per call"),
                format!("{threads}-thread"),
            ),
            |b| {
                b.iter_custom(|iters| {
                    // `iters` keys per thread, in whole batches (rounded up).
                    let calls = iters.div_ceil(BATCH as u64);
                    let elapsed = parallel(threads, calls, &|thread, call| {
                        let start = (call * BATCH as u64 + thread as u64 * (KEYS / 2)) & mask;
                        let start = start as usize & !(BATCH - 1);
                        set.add_batch(batch[start..start + BATCH].iter().copied());
                    });
                    elapsed.mul_f64(iters as f64 / (calls * BATCH as u64) as f64)
                });
            },
        );
    }
    // The memory-bound ceiling: a prebuilt, never-resized map of 1M plain atomics, read without
    // any lock (what a frozen key set would cost; it cannot insert, expire or replicate).
    let frozen: hashbrown::HashMap<u64, AtomicU64, foldhash::fast::RandomState> =
        (0..KEYS).map(|key| (key, AtomicU64::new(0))).collect();
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(
            BenchmarkId::new(
                "frozen HashMap<u64, AtomicU64> (ceiling)",
                format!("{threads}-thread"),
            ),
            |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|thread, i| {
                        let index = (i + thread as u64 * (KEYS / 2)) & mask;
                        if let Some(count) = frozen.get(&walk[index as usize]) {
                            count.fetch_add(1, Relaxed);
                        }
                    })
                });
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("read");
    let counter = Counter::new();
    parallel(2, 100_000, &|_, _| counter.incr()); // striped, as a hot counter would be
    group.bench_function("Counter::value (striped)", |b| {
        b.iter(|| black_box(counter.value()));
    });
    let mut i = 0u64;
    group.bench_function("CounterSet::get, 1M keys", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(set.get(&walk[(i & mask) as usize]))
        });
    });
    group.finish();
}

const CHANGED: u64 = 100_000;

fn deltas(c: &mut Criterion) {
    let source = CounterSet::<u64>::new(NodeId::new("source").unwrap());
    let sink = CounterSet::<u64>::new(NodeId::new("sink").unwrap());
    for key in 0..CHANGED {
        source.incr(&key);
    }
    let mut since = source.delta_since(0).until();
    let change_all = |source: &CounterSet<u64>| {
        for key in 0..CHANGED {
            source.incr(&key);
        }
    };

    let mut group = c.benchmark_group("delta, 100k changed keys");
    group.throughput(Throughput::Elements(CHANGED));
    group.sample_size(10);
    group.bench_function("produce (delta_since)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                change_all(&source);
                let started = Instant::now();
                let delta = source.delta_since(since);
                total += started.elapsed();
                assert_eq!(delta.len() as u64, CHANGED);
                since = delta.until();
            }
            total
        });
    });

    change_all(&source);
    let delta = source.delta_since(since);
    let bytes = delta.encode();
    println!(
        "delta of {CHANGED} changed keys: {} bytes encoded ({:.1} bytes/key)",
        bytes.len(),
        bytes.len() as f64 / CHANGED as f64
    );
    group.bench_function("encode", |b| b.iter(|| black_box(delta.encode())));
    group.bench_function("decode", |b| {
        b.iter(|| black_box(Delta::<u64>::decode(&bytes).unwrap()))
    });
    sink.merge(&source.delta_since(0));
    group.bench_function("merge into a set holding the keys", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                change_all(&source);
                let delta = source.delta_for(sink.acknowledged(source.node_id()));
                let started = Instant::now();
                let report = sink.merge(&delta);
                total += started.elapsed();
                assert_eq!(report.changed_keys as u64, CHANGED);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, increments, keyed, deltas);
criterion_main!(benches);
