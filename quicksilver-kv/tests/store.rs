//! The store against a model, under corruption, concurrency, retention, a full map and
//! snapshots.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use proptest::prelude::*;
use quicksilver_kv::{Batch, Durability, Error, Op, Retention, Store, StoreConfig};

fn small_config() -> StoreConfig {
    StoreConfig {
        map_size: 64 << 20,
        max_batch_bytes: 1 << 20,
        ..StoreConfig::default()
    }
}

/// Every pair in the store, by paging through scans of `page` items.
fn all_pairs(store: &Store, prefix: &[u8], page: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    for _ in 0..10_000 {
        let got = store.reader().scan(prefix, after.as_deref(), page).unwrap();
        assert!(got.items.len() <= page);
        out.extend(got.items);
        match got.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
    panic!("scan never finished");
}

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<Op>),
    Scan(Vec<u8>, usize),
    Reopen,
    Crash,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet so keys collide, share prefixes and get overwritten and deleted.
    proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(b'/'), Just(0xff)],
        1..4,
    )
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        (key(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(k, v)| Op::put(k, v)),
        key().prop_map(Op::delete),
    ];
    prop_oneof![
        6 => proptest::collection::vec(op, 1..6).prop_map(Step::Write),
        2 => (proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..2), 1usize..4)
            .prop_map(|(p, n)| Step::Scan(p, n)),
        1 => Just(Step::Reopen),
        1 => Just(Step::Crash),
    ]
}

fn check_against_model(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>, seq: u64) {
    let pairs = all_pairs(store, b"", 7);
    let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(pairs, expected);
    let verified = store.reader().verify().unwrap();
    assert_eq!(verified.seq, seq);
    assert_eq!(verified.pairs, model.len() as u64);
    assert_eq!(verified.digest, store.reader().head().unwrap().digest);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model_across_reopens_and_crashes(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { durability: Durability::NoSync, ..small_config() };
        let mut store = Some(Store::open(dir.path(), config.clone()).unwrap());
        let mut model = BTreeMap::new();
        let mut seq = 0;
        for step in steps {
            match step {
                Step::Write(ops) => {
                    let s = store.as_ref().unwrap();
                    seq += 1;
                    prop_assert_eq!(s.write(Batch { ops: ops.clone() }).unwrap(), seq);
                    for op in ops {
                        match op {
                            Op::Put { key, value } => { model.insert(key, value); }
                            Op::Delete { key } => { model.remove(&key); }
                            _ => unreachable!(),
                        }
                    }
                }
                Step::Scan(prefix, limit) => {
                    let page = store.as_ref().unwrap().reader().scan(&prefix, None, limit).unwrap();
                    let expected: Vec<_> = model
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(&prefix))
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(page.seq, seq);
                    prop_assert_eq!(page.items, expected);
                }
                Step::Reopen => {
                    store.take().unwrap().close();
                    store = Some(Store::open(dir.path(), config.clone()).unwrap());
                }
                Step::Crash => {
                    // Drop without close(), as a panicking owner would. (A real SIGKILL mid-write
                    // is tests/crash.rs.)
                    drop(store.take());
                    store = Some(Store::open(dir.path(), config.clone()).unwrap());
                }
            }
            check_against_model(store.as_ref().unwrap(), &model, seq);
        }
    }
}

#[test]
fn limits_are_checked_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            max_value_len: 100,
            max_batch_ops: 3,
            ..small_config()
        },
    )
    .unwrap();
    assert!(matches!(
        store.put("", "v"),
        Err(Error::BadKeyLength { len: 0, max: 511 })
    ));
    assert!(matches!(
        store.put(vec![b'k'; 512], "v"),
        Err(Error::BadKeyLength { len: 512, .. })
    ));
    store.put(vec![b'k'; 511], "v").unwrap();
    let err = store.put("big", vec![0; 101]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ValueTooLarge {
                len: 101,
                max: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("\"big\""), "{err}");
    assert!(matches!(store.write(Batch::new()), Err(Error::BadBatch(_))));
    let four = Batch::new()
        .put("a", "")
        .put("b", "")
        .put("c", "")
        .put("d", "");
    assert!(matches!(store.write(four), Err(Error::BadBatch(_))));
    // Nothing refused reached the log.
    assert_eq!(store.reader().head().unwrap().seq, 1);
}

/// Find every copy of `needle` in the LMDB data file (copy-on-write leaves stale page copies
/// behind) and flip the last byte of each in place.
fn flip_byte_in_file(dir: &Path, needle: &[u8]) {
    let path = dir.join("data.mdb");
    let mut bytes = std::fs::read(&path).unwrap();
    let positions: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect();
    assert!(!positions.is_empty(), "the entry bytes are in the file");
    for at in positions {
        bytes[at + needle.len() - 1] ^= 0x01;
    }
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_a_log_entry_is_detected_and_never_applied() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = Store::open(source_dir.path(), small_config()).unwrap();
    source.put("k1", "first").unwrap();
    source.put("k2", "second-value-unique").unwrap();
    source.put("k3", "third").unwrap();
    let records = source.reader().log_after(0, 10).unwrap();
    assert_eq!(records.len(), 3);
    source.close();

    // On disk: the log entry stores the value right after its big-endian length, which the
    // data page does not, so this flips a byte of the log entry only.
    let mut needle = (b"second-value-unique".len() as u32).to_be_bytes().to_vec();
    needle.extend_from_slice(b"second-value-unique");
    flip_byte_in_file(source_dir.path(), &needle);
    let reopened = Store::open(source_dir.path(), small_config()).unwrap();
    let err = reopened.reader().verify().unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("log entry 2"), "{err}");
    let err = reopened.reader().log_after(1, 10).unwrap_err();
    assert!(err.to_string().contains("log entry 2"), "{err}");
    // Reading from before the damage still works up to it.
    assert_eq!(reopened.reader().log_after(0, 1).unwrap().len(), 1);
    reopened.close();

    // In transit: a replica refuses a tampered record and stays as it was.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = Store::open(replica_dir.path(), small_config()).unwrap();
    runtime
        .block_on(replica.apply_replicated(records[0].clone()))
        .unwrap();
    let mut tampered = records[1].clone();
    let last = tampered.entry.len() - 1;
    tampered.entry[last] ^= 0x01;
    let err = runtime
        .block_on(replica.apply_replicated(tampered))
        .unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert_eq!(replica.reader().head().unwrap().seq, 1);
    assert_eq!(replica.reader().get(b"k2").unwrap().value, None);
    // Out of order is refused too: a gap (an earlier record was not applied, e.g. on a full
    // disk), so a retryable error, not a verdict of tampering that stops replication.
    let err = runtime
        .block_on(replica.apply_replicated(records[2].clone()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Replication { fatal: false, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not follow head 1"), "{err}");
    assert_eq!(replica.reader().head().unwrap().seq, 1);
    // The genuine record still applies, and the replica ends equal to the source.
    for record in &records[1..] {
        runtime
            .block_on(replica.apply_replicated(record.clone()))
            .unwrap();
    }
    let head = replica.reader().head().unwrap();
    assert_eq!(head.seq, 3);
    assert_eq!(head.chain, records[2].checksum);
    replica.reader().verify().unwrap();
}

#[test]
fn readers_never_see_a_partial_batch_during_heavy_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            durability: Durability::NoSync,
            ..small_config()
        },
    )
    .unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("group/{i}")).collect();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let reader = store.reader().clone();
            let keys = keys.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut checks = 0u64;
                let mut last_seq = 0;
                while !done.load(Ordering::Relaxed) {
                    let view = reader.view().unwrap();
                    assert!(view.seq() >= last_seq, "sequence went backwards");
                    last_seq = view.seq();
                    for key in &keys {
                        let value = view.get(key.as_bytes()).unwrap();
                        // Batch n writes n into every key and has sequence n (single writer).
                        let expected = (view.seq() > 0).then(|| view.seq().to_string());
                        assert_eq!(
                            value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                            expected,
                            "partial batch visible at seq {}",
                            view.seq()
                        );
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    for n in 1..=2000u64 {
        let mut batch = Batch::new();
        for key in &keys {
            batch = batch.put(key.as_bytes(), n.to_string());
        }
        assert_eq!(store.write(batch).unwrap(), n);
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
}

/// The transaction-reusing read paths (`Reader::cached`, the pooled `Reader::get`) against the
/// same invariants: the value read matches the sequence reported (no partial batch), sequences
/// never go backwards, and a read after an acknowledged write sees it (read-your-writes, the
/// renewal check).
#[test]
fn reused_read_transactions_never_see_a_partial_batch_and_see_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            durability: Durability::NoSync,
            ..small_config()
        },
    )
    .unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("group/{i}")).collect();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|thread| {
            let reader = store.reader().clone();
            let keys = keys.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut cached = reader.cached();
                let mut checks = 0u64;
                let mut last_seq = 0;
                while !done.load(Ordering::Relaxed) {
                    for key in &keys {
                        // Alternate the two paths; both must agree with the batch invariant.
                        let (seq, value) = if (checks + thread).is_multiple_of(2) {
                            let read = cached.get(key.as_bytes()).unwrap();
                            (read.seq, read.value.map(<[u8]>::to_vec))
                        } else {
                            let read = reader.get(key.as_bytes()).unwrap();
                            (read.seq, read.value)
                        };
                        assert!(seq >= last_seq, "sequence went backwards");
                        last_seq = seq;
                        let expected = (seq > 0).then(|| seq.to_string().into_bytes());
                        assert_eq!(value, expected, "partial batch visible at seq {seq}");
                        // A view on the same thread while the cached transaction is open.
                        assert!(reader.view().unwrap().seq() >= seq);
                    }
                    checks += 1;
                }
                checks
            })
        })
        .collect();
    let mut own = store.reader().cached();
    for n in 1..=2000u64 {
        let mut batch = Batch::new();
        for key in &keys {
            batch = batch.put(key.as_bytes(), n.to_string());
        }
        assert_eq!(store.write(batch).unwrap(), n);
        let read = own.get(keys[(n % 8) as usize].as_bytes()).unwrap();
        assert_eq!(read.seq, n, "a cached reader missed an acknowledged batch");
        assert_eq!(read.value, Some(n.to_string().as_bytes()));
        let pooled = store.reader().get(keys[0].as_bytes()).unwrap();
        assert_eq!(pooled.seq, n, "a pooled read missed an acknowledged batch");
        assert_eq!(pooled.value, Some(n.to_string().into_bytes()));
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    // Released and re-begun: still correct.
    own.release();
    assert_eq!(own.seq().unwrap(), 2000);
    assert_eq!(own.get(b"absent").unwrap().value, None);
}

#[test]
fn concurrent_writers_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config()).unwrap();
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| store.put(format!("t{t}/{i}"), "v").unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=320).collect::<Vec<_>>(),
        "every batch got its own sequence"
    );
    let stats = store.stats();
    assert_eq!(stats.batches, 320);
    assert!(
        stats.groups < stats.batches,
        "no group commit happened: {stats:?}"
    );
    store.reader().verify().unwrap();
}

#[test]
fn retention_truncates_the_log_and_old_watches_get_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            retention: Retention {
                max_entries: 10,
                ..Retention::default()
            },
            durability: Durability::NoSync,
            ..small_config()
        },
    )
    .unwrap();
    for i in 0..100 {
        store.put(format!("k{i}"), "v").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.reader().head().unwrap().log_first != 91 {
        assert!(Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = store.reader().log_after(50, 10).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Compacted {
                requested: 51,
                first_retained: 91
            }
        ),
        "{err}"
    );
    assert!(store.watch(0, b"").unwrap_err().is_compacted());
    assert!(matches!(
        store.watch(101, b""),
        Err(Error::FutureSequence { .. })
    ));
    // The retained log still verifies on its own.
    let verified = store.reader().verify().unwrap();
    assert_eq!(verified.log_entries, 10);
    assert_eq!(store.reader().log_after(90, 100).unwrap().len(), 10);
    assert!(store.stats().trimmed >= 90);

    // A watch from a retained sequence replays, filters by prefix, then tails live writes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut watch = store.watch(95, b"k9").unwrap();
        let entries = watch.next().await.unwrap();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![96, 97, 98, 99, 100]); // keys k95..k99
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            writer.put("other", "x").unwrap();
            writer
                .write(Batch::new().put("k9-live", "y").put("zzz", "z"))
                .unwrap();
        });
        let live = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the live write reaches the watcher")
            .unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].seq, 102);
        assert_eq!(live[0].ops, vec![Op::put("k9-live", "y")]);
    });
}

#[test]
fn a_full_map_is_a_typed_error_and_the_store_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreConfig {
            map_size: 1 << 20,
            max_batch_bytes: 200 << 10,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let mut full = None;
    for i in 0..100 {
        match store.put(format!("k{i}"), vec![7u8; 60_000]) {
            Ok(_) => {}
            Err(err) => {
                full = Some((i, err));
                break;
            }
        }
    }
    let (written, err) = full.expect("a 1 MiB map fills up");
    assert!(err.is_full(), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(written > 0);
    let head = store.reader().head().unwrap();
    assert_eq!(head.seq, written as u64);
    assert_eq!(
        store.reader().get(b"k0").unwrap().value.map(|v| v.len()),
        Some(60_000)
    );
    store.reader().verify().unwrap();
    // The store keeps serving: a write that fits still commits.
    assert_eq!(store.put("tiny", "1").unwrap(), written as u64 + 1);
}

#[test]
fn snapshot_taken_during_writes_restores_and_catches_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        durability: Durability::NoSync,
        ..small_config()
    };
    let store = Store::open(dir.path(), config.clone()).unwrap();
    for i in 0..500 {
        store.put(format!("before/{i:04}"), format!("{i}")).unwrap();
    }
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..500 {
                store
                    .write(
                        Batch::new()
                            .put(format!("during/{i:04}"), "x")
                            .delete(format!("before/{i:04}")),
                    )
                    .unwrap();
            }
        })
    };
    let mut bytes = Vec::new();
    let info = store.reader().write_snapshot(&mut bytes).unwrap();
    writer.join().unwrap();
    assert!(info.seq >= 500);

    // Damaged snapshots are refused.
    let restore_dir = tempfile::tempdir().unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let err =
        Store::restore(restore_dir.path().join("bad"), &damaged[..], config.clone()).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    let err = Store::restore(
        restore_dir.path().join("short"),
        &bytes[..bytes.len() - 10],
        config.clone(),
    )
    .unwrap_err();
    assert!(err.is_corrupt(), "{err}");

    let (restored, restored_info) =
        Store::restore(restore_dir.path().join("good"), &bytes[..], config).unwrap();
    assert_eq!(restored_info, info);
    let head = restored.reader().head().unwrap();
    assert_eq!(
        (head.seq, head.digest, head.chain),
        (info.seq, info.digest, info.chain)
    );
    assert_eq!(head.cluster_id, store.reader().head().unwrap().cluster_id);
    restored.reader().verify().unwrap();
    // Continue from the snapshot's sequence with the source's log: both end identical.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let records = store.reader().log_after(info.seq, 10_000).unwrap();
    for record in records {
        runtime.block_on(restored.apply_replicated(record)).unwrap();
    }
    assert_eq!(
        restored.reader().head().unwrap().digest,
        store.reader().head().unwrap().digest
    );
    assert_eq!(
        all_pairs(&restored, b"", 1000),
        all_pairs(&store, b"", 1000)
    );
}

#[test]
fn a_store_refuses_to_open_twice_and_checks_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_config()).unwrap();
    let cluster = store.reader().head().unwrap().cluster_id;
    assert!(matches!(
        Store::open(dir.path(), small_config()),
        Err(Error::AlreadyOpen { .. })
    ));
    store.close();
    let mut other = cluster;
    other[0] ^= 1;
    assert!(Store::open_in_cluster(dir.path(), small_config(), other).is_err());
    let store = Store::open_in_cluster(dir.path(), small_config(), cluster).unwrap();
    assert_eq!(store.reader().head().unwrap().cluster_id, cluster);
}
