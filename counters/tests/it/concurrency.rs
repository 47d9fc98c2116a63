//! T threads x M increments read exactly T x M, on one counter and on a keyed set.

use edgekit_counters::{Counter, CounterSet, NodeId};

const THREADS: usize = 4;
const PER_THREAD: usize = 100_000;

#[test]
fn one_counter_reads_exactly_threads_times_increments() {
    let counter = Counter::new();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let counter = counter.clone();
            scope.spawn(move || {
                for _ in 0..PER_THREAD {
                    counter.incr();
                }
            });
        }
    });
    assert_eq!(counter.value(), (THREADS * PER_THREAD) as i64);
    assert_eq!(counter.totals().decrements, 0);
}

#[test]
fn mixed_signs_keep_both_parts_exact() {
    let counter = Counter::new();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let counter = counter.clone();
            scope.spawn(move || {
                for _ in 0..PER_THREAD {
                    counter.add(if thread % 2 == 0 { 3 } else { -1 });
                }
            });
        }
    });
    let totals = counter.totals();
    assert_eq!(totals.increments, (THREADS / 2 * PER_THREAD * 3) as u64);
    assert_eq!(totals.decrements, (THREADS / 2 * PER_THREAD) as u64);
}

#[test]
fn keyed_set_reads_exactly_threads_times_increments_per_key() {
    let set = CounterSet::<u64>::new(NodeId::new("n1").unwrap());
    const KEYS: u64 = 1000;
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let set = set.clone();
            scope.spawn(move || {
                // Each thread walks the keys from a different start, so inserts race too.
                for i in 0..PER_THREAD as u64 {
                    set.incr(&((i + thread as u64 * 7) % KEYS));
                }
            });
        }
    });
    assert_eq!(set.len(), KEYS as usize);
    let total: i64 = (0..KEYS).map(|key| set.get(&key)).sum();
    assert_eq!(total, (THREADS * PER_THREAD) as i64);
    for key in 0..KEYS {
        assert_eq!(set.get(&key), (THREADS * PER_THREAD) as i64 / KEYS as i64);
    }
}

#[test]
fn batched_adds_from_many_threads_read_exactly_what_was_added() {
    // Keys that do not exist yet (so batches race with inserts), repeated within a batch, with
    // both signs: every (thread, i) adds +2 to one key and -1 to another.
    let set = CounterSet::<String>::new(NodeId::new("n1").unwrap());
    const KEYS: usize = 500;
    const BATCH: usize = 64;
    let names: Vec<String> = (0..KEYS).map(|key| format!("client-{key}")).collect();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (set, names) = (set.clone(), &names);
            scope.spawn(move || {
                let mut batch: Vec<(&str, i64)> = Vec::with_capacity(2 * BATCH);
                for i in 0..PER_THREAD / 10 {
                    batch.push((&names[(i + thread * 13) % KEYS], 2));
                    batch.push((&names[(i * 7 + thread) % KEYS], -1));
                    if batch.len() == 2 * BATCH {
                        set.add_batch(batch.drain(..));
                    }
                }
                set.add_batch(batch.drain(..));
            });
        }
    });
    let mut want = vec![(0u64, 0u64); KEYS];
    for thread in 0..THREADS {
        for i in 0..PER_THREAD / 10 {
            want[(i + thread * 13) % KEYS].0 += 2;
            want[(i * 7 + thread) % KEYS].1 += 1;
        }
    }
    for (name, (increments, decrements)) in names.iter().zip(want) {
        let totals = set.totals(name.as_str());
        assert_eq!(
            (totals.increments, totals.decrements),
            (increments, decrements),
            "{name}"
        );
    }
}

#[test]
fn one_hot_key_in_a_set_loses_nothing() {
    let set = CounterSet::<String>::new(NodeId::new("n1").unwrap());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let set = set.clone();
            scope.spawn(move || {
                for _ in 0..PER_THREAD {
                    set.incr("hot");
                }
            });
        }
    });
    assert_eq!(set.get("hot"), (THREADS * PER_THREAD) as i64);
}

#[test]
fn deltas_taken_while_counting_never_lose_an_increment() {
    // A delta observed mid-burst must not let the peer acknowledge increments it did not get.
    let source = CounterSet::<u64>::new(NodeId::new("src").unwrap());
    let sink = CounterSet::<u64>::new(NodeId::new("sink").unwrap());
    std::thread::scope(|scope| {
        let counting = source.clone();
        let writer = scope.spawn(move || {
            for i in 0..200_000u64 {
                counting.incr(&(i % 100));
            }
        });
        while !writer.is_finished() {
            sink.merge(&source.delta_for(sink.acknowledged(source.node_id())));
        }
    });
    sink.merge(&source.delta_for(sink.acknowledged(source.node_id())));
    let total: i64 = (0..100).map(|key| sink.get(&key)).sum();
    assert_eq!(total, 200_000);
}
