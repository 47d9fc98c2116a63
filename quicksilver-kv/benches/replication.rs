//! Replication figures, in one process over loopback TCP: propagation latency root -> relay ->
//! leaf at a fixed open-loop write rate (p50/p99), catch-up throughput in entries/s, and the
//! bootstrap time of an empty replica from a 1M-key store.
//! Run: `cargo bench -p quicksilver-kv --bench replication`. Recorded in docs/benchmarks.md.

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use quicksilver_kv::{Batch, Durability, ReplicaStatus, Store, StoreConfig};
use tokio::net::TcpListener;

async fn upstream(store: &Store) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(quicksilver_kv::serve_replication(
        store.clone(),
        listener,
        quicksilver_kv::RootApi::Unknown,
        None,
        std::future::pending(),
    ));
    addr
}

async fn replica(
    dir: &Path,
    upstream: std::net::SocketAddr,
    config: StoreConfig,
) -> (Store, tokio::task::JoinHandle<quicksilver_kv::Error>) {
    let status = Arc::new(ReplicaStatus::new(upstream));
    let store = quicksilver_kv::open_or_bootstrap(dir, config, upstream, &status)
        .await
        .unwrap();
    let follower = tokio::spawn(quicksilver_kv::follow(store.clone(), upstream, status));
    (store, follower)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Same-run baseline: p50/p99 of one 4 KiB write + fdatasync on this disk, the unit every
/// commit on the propagation path pays at least once.
fn raw_fsync_latency(samples: usize) -> (Duration, Duration) {
    use std::io::{Seek, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let mut latencies: Vec<Duration> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            file.seek(std::io::SeekFrom::Start(0)).unwrap();
            file.write_all(&[b'r'; 4096]).unwrap();
            file.sync_data().unwrap();
            started.elapsed()
        })
        .collect();
    latencies.sort_unstable();
    (percentile(&latencies, 0.50), percentile(&latencies, 0.99))
}

/// `replicas`: the relay's and the leaf's durability (the root always fsyncs fully).
async fn propagation(rate: u64, writes: u64, replicas: Durability) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = Store::open(dirs[0].path(), StoreConfig::default()).unwrap();
    let root_addr = upstream(&root).await;
    let config = StoreConfig {
        durability: replicas,
        ..StoreConfig::default()
    };
    let (relay, _relay_follow) =
        replica(&dirs[1].path().join("r"), root_addr, config.clone()).await;
    let relay_addr = upstream(&relay).await;
    let (leaf, _leaf_follow) = replica(&dirs[2].path().join("l"), relay_addr, config.clone()).await;

    let sent: Arc<parking_lot::Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut head = leaf.subscribe();
    let watcher = tokio::spawn(async move {
        let mut arrived = HashMap::new();
        let mut seen = 0;
        while seen < writes {
            if head.changed().await.is_err() {
                break;
            }
            let now = Instant::now();
            let h = *head.borrow_and_update();
            for seq in seen + 1..=h {
                arrived.insert(seq, now);
            }
            seen = h;
        }
        arrived
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..writes {
        let due = started + Duration::from_nanos(n * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let root = root.clone();
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let issued = Instant::now();
            let seq = root
                .write_async(Batch::new().put(format!("prop/{n}"), [b'p'; 64]))
                .await
                .unwrap();
            sent.lock().insert(seq, issued);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let arrived = tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .expect("every write reaches the leaf")
        .unwrap();
    let sent = sent.lock();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|(seq, issued)| arrived[seq].saturating_duration_since(*issued))
        .collect();
    latencies.sort_unstable();
    println!(
        "propagation root -> relay -> leaf, root Fsync, replicas {replicas:?}, {rate} writes/s open loop, {writes} writes: \
         p50 {:?}  p99 {:?}  max {:?}  (achieved {:.0} writes/s)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        writes as f64 / started.elapsed().as_secs_f64()
    );
}

async fn catch_up(entries: u64) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = StoreConfig::default();
    let root = Store::open(
        dirs[0].path(),
        StoreConfig {
            durability: Durability::NoSync,
            ..config.clone()
        },
    )
    .unwrap();
    root.write_async(Batch::new().put("start", "x"))
        .await
        .unwrap();
    let root_addr = upstream(&root).await;
    let replica_dir = dirs[1].path().join("replica");
    let (store, follower) = replica(&replica_dir, root_addr, config.clone()).await;
    follower.abort();
    let _ = follower.await;
    drop(store);
    // The replica is down; the root moves ahead by `entries` single-key batches.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let root = root.clone();
            tokio::task::spawn_blocking(move || {
                for n in 0..entries / 8 {
                    root.put(format!("catch/{w}/{n}"), [b'c'; 64]).unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let target = root.reader().head().unwrap().seq;
    let started = Instant::now();
    let (store, _follower) = replica(&replica_dir, root_addr, config).await;
    let mut head = store.subscribe();
    while *head.borrow_and_update() < target {
        head.changed().await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(
        store.reader().head().unwrap().digest,
        root.reader().head().unwrap().digest
    );
    println!(
        "catch-up of {} log entries (single-key batches, replica fsyncs): {:?} = {:.0} entries/s",
        target - 1,
        elapsed,
        (target - 1) as f64 / elapsed.as_secs_f64()
    );
}

async fn bootstrap(keys: u64) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = StoreConfig {
        durability: Durability::NoSync,
        ..StoreConfig::default()
    };
    let root = Store::open(dirs[0].path(), config.clone()).unwrap();
    for chunk in 0..keys / 10_000 {
        let mut batch = Batch::new();
        for i in chunk * 10_000..(chunk + 1) * 10_000 {
            batch = batch.put(format!("config/{i:08}"), [b'v'; 32]);
        }
        root.write_async(batch).await.unwrap();
    }
    let root_addr = upstream(&root).await;
    let started = Instant::now();
    let (store, _follower) = replica(
        &dirs[1].path().join("new"),
        root_addr,
        StoreConfig::default(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        store.reader().head().unwrap().digest,
        root.reader().head().unwrap().digest
    );
    println!(
        "bootstrap of an empty replica from a {keys}-key store (snapshot over loopback, restore, fsync): {elapsed:?}"
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (p50, p99) = raw_fsync_latency(1_000);
        println!("baseline: one 4 KiB write + fdatasync, 1000 samples: p50 {p50:?}  p99 {p99:?}");
        // Replicas at full fsync are the same-run baseline for the default replica setting.
        propagation(1_000, 3_000, Durability::Fsync).await;
        propagation(1_000, 3_000, Durability::DataSync).await;
        // All three nodes share this machine's one disk, whose flushes queue on one device;
        // replicas that never flush show what the root's own commits cost on it, the case of a
        // fleet where every box flushes to its own disk.
        propagation(1_000, 3_000, Durability::NoSync).await;
        propagation(10_000, 20_000, Durability::Fsync).await;
        propagation(10_000, 20_000, Durability::DataSync).await;
        let (p50, p99) = raw_fsync_latency(1_000);
        println!("baseline again: one 4 KiB write + fdatasync: p50 {p50:?}  p99 {p99:?}");
        // `KV_REPL_BENCH=propagation` stops here (the two below take a while).
        if std::env::var("KV_REPL_BENCH").as_deref() == Ok("propagation") {
            return;
        }
        catch_up(50_000).await;
        bootstrap(1_000_000).await;
    });
}
