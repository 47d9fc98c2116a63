//! Replication in one process: a replica whose position was truncated from its upstream's log
//! re-bootstraps in place from a snapshot, serving its old data until the new state commits;
//! a replica only talks to an upstream whose certificate the cluster CA signed; and a leaf
//! ahead of its relay (possible since relays forward before committing) waits for it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use edgekit_testkit::TestCa;
use quicksilver_kv::{
    Batch, Durability, ReplTls, ReplicaStatus, Retention, RootApi, Store, StoreConfig, follow,
    open_or_bootstrap, serve_replication,
};

fn config(max_entries: u64) -> StoreConfig {
    StoreConfig {
        durability: Durability::NoSync,
        map_size: 256 << 20,
        retention: Retention {
            max_entries,
            ..Retention::default()
        },
        ..StoreConfig::default()
    }
}

async fn write_keys(root: &Store, batch: usize, keys: usize) {
    let mut ops = Batch::new();
    for k in 0..keys {
        ops = ops.put(format!("bulk/{batch:05}/{k:03}"), format!("{batch}-{k}"));
    }
    root.write_async(ops).await.unwrap();
}

async fn wait_for_head(replica: &Store, root: &Store) {
    let want = root.reader().head().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = replica.reader().head().unwrap();
        if got.seq == want.seq {
            assert_eq!(got.digest, want.digest, "digest differs at seq {}", got.seq);
            assert_eq!(got.chain, want.chain);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica stuck at {} of {}",
            got.seq,
            want.seq
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_truncated_from_the_log_rebootstraps_in_place_and_stays_readable() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root = Store::open(dirs.0.path(), config(20)).unwrap();
    root.write_async(Batch::new().put("stable", "kept"))
        .await
        .unwrap();
    let root_api: std::net::SocketAddr = "127.0.0.9:7380".parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(serve_replication(
        root.clone(),
        listener,
        RootApi::Here(root_api),
        None,
        std::future::pending(),
    ));

    let status = Arc::new(ReplicaStatus::new(upstream));
    let replica = open_or_bootstrap(dirs.1.path(), config(1_000_000), upstream, &status)
        .await
        .unwrap();
    let follower = tokio::spawn(follow(replica.clone(), upstream, Arc::clone(&status)));
    for b in 0..5 {
        write_keys(&root, b, 100).await;
    }
    wait_for_head(&replica, &root).await;
    let before = replica.reader().head().unwrap().seq;
    let completed_before = status.bootstraps_completed();

    // The replica goes away; the root writes far past its retained log.
    follower.abort();
    let _ = follower.await;
    for b in 5..200 {
        write_keys(&root, b, 100).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while root.reader().head().unwrap().log_first <= before + 1 {
        assert!(Instant::now() < deadline, "the root's retention never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // While it re-bootstraps, every read sees either the old state or the new one, never an
    // empty or partial store.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = replica.reader().clone();
    let watcher = {
        let reading = Arc::clone(&reading);
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut seqs = std::collections::BTreeSet::new();
            while reading.load(Ordering::Relaxed) {
                let stable = reader.get(b"stable").unwrap();
                assert_eq!(
                    stable.value.as_deref(),
                    Some(&b"kept"[..]),
                    "at seq {}",
                    stable.seq
                );
                let old = reader.get(b"bulk/00004/099").unwrap();
                assert!(
                    old.value.is_some(),
                    "an old key vanished at seq {}",
                    old.seq
                );
                seqs.insert(stable.seq);
                reads += 1;
            }
            (reads, seqs)
        })
    };
    let follower = tokio::spawn(follow(replica.clone(), upstream, Arc::clone(&status)));
    wait_for_head(&replica, &root).await;
    reading.store(false, Ordering::Relaxed);
    let (reads, seqs) = watcher.join().unwrap();
    assert!(reads > 0);
    // Old sequence, then straight to the snapshot's: nothing in between was ever visible.
    assert!(seqs.contains(&before), "{seqs:?}");
    assert!(
        seqs.iter().all(|&s| s == before || s > before + 100),
        "a partial state was visible: {seqs:?}"
    );

    // The counter moves just after the commit the head already shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status.bootstraps_completed() == completed_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status.bootstraps_completed(), completed_before + 1);
    assert!(!status.is_bootstrapping());
    assert!(status.bootstrap_received_bytes() > 0);
    assert_eq!(status.stopped_reason(), None);
    assert_eq!(
        status.root_api(),
        Some(root_api),
        "WELCOME carries the root's API"
    );
    let head = replica.reader().head().unwrap();
    assert!(
        head.log_first > before + 1,
        "the log restarts after the snapshot"
    );
    replica.reader().verify().unwrap();
    assert_eq!(
        replica
            .reader()
            .get(b"bulk/00199/099")
            .unwrap()
            .value
            .as_deref(),
        Some(&b"199-99"[..])
    );

    // And it keeps following live writes afterwards.
    write_keys(&root, 200, 10).await;
    wait_for_head(&replica, &root).await;
    follower.abort();
}

/// The replication TLS config of a node `ca` signed, trusting `trusted` for its peers.
fn node_tls(dir: &std::path::Path, name: &str, ca: &TestCa, trusted: &TestCa) -> ReplTls {
    let files = ca.issue_trusting(dir, name, trusted);
    ReplTls::from_pem_files(&files.cert, &files.key, &files.ca).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_an_upstream_whose_certificate_another_ca_signed() {
    let certs = tempfile::tempdir().unwrap();
    let (cluster_ca, other_ca) = (TestCa::new("cluster CA"), TestCa::new("some other CA"));
    let replica_tls = node_tls(certs.path(), "replica", &cluster_ca, &cluster_ca);
    for (name, upstream_ca, should_sync) in [
        ("genuine", &cluster_ca, true),
        ("impostor", &other_ca, false),
    ] {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = Store::open(dirs.0.path(), config(1_000)).unwrap();
        root.write_async(Batch::new().put("k", "v")).await.unwrap();
        // The upstream trusts the cluster CA for clients either way; only its own certificate
        // differs.
        let root_tls = node_tls(certs.path(), name, upstream_ca, &cluster_ca);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(serve_replication(
            root.clone(),
            listener,
            RootApi::Unknown,
            Some(root_tls),
            std::future::pending(),
        ));
        let status = ReplicaStatus::with_tls(upstream, replica_tls.clone());
        let bootstrap = tokio::time::timeout(
            Duration::from_secs(3),
            open_or_bootstrap(dirs.1.path(), config(1_000), upstream, &status),
        )
        .await;
        if should_sync {
            let replica = bootstrap.expect("bootstrapped in time").unwrap();
            assert_eq!(
                replica.reader().get(b"k").unwrap().value.as_deref(),
                Some(&b"v"[..])
            );
        } else {
            assert!(
                bootstrap.is_err(),
                "{name}: bootstrapped from an untrusted upstream"
            );
            assert_eq!(
                status.received_bytes(),
                0,
                "{name}: protocol bytes were accepted"
            );
        }
    }
}

async fn serve(store: &Store) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_replication(
        store.clone(),
        listener,
        RootApi::Unknown,
        None,
        std::future::pending(),
    ));
    addr
}

/// A relay forwards records before its own commit, so after a relay crash a leaf can be ahead
/// of it. The leaf must then be refused without harm (ERROR 5, retried, nothing rolled back)
/// and continue through the relay once the relay has caught up from the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_ahead_of_its_relay_waits_for_it_and_then_continues_through_it() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = Store::open(dirs[0].path(), config(1_000_000)).unwrap();
    root.write_async(Batch::new().put("first", "1"))
        .await
        .unwrap();
    let root_addr = serve(&root).await;

    // The relay follows the root for a while, then stops (as if it crashed) at `behind`.
    let relay_status = Arc::new(ReplicaStatus::new(root_addr));
    let relay = open_or_bootstrap(
        &dirs[1].path().join("relay"),
        config(1_000_000),
        root_addr,
        &relay_status,
    )
    .await
    .unwrap();
    let relay_follower = tokio::spawn(follow(relay.clone(), root_addr, Arc::clone(&relay_status)));
    for b in 0..5 {
        write_keys(&root, b, 10).await;
    }
    wait_for_head(&relay, &root).await;
    relay_follower.abort();
    let _ = relay_follower.await;
    let behind = relay.reader().head().unwrap().seq;
    let relay_addr = serve(&relay).await;

    // The leaf gets further, straight from the root.
    let leaf_dir = dirs[2].path().join("leaf");
    let direct = Arc::new(ReplicaStatus::new(root_addr));
    let leaf = open_or_bootstrap(&leaf_dir, config(1_000_000), root_addr, &direct)
        .await
        .unwrap();
    let leaf_follower = tokio::spawn(follow(leaf.clone(), root_addr, Arc::clone(&direct)));
    for b in 5..10 {
        write_keys(&root, b, 10).await;
    }
    wait_for_head(&leaf, &root).await;
    leaf_follower.abort();
    let _ = leaf_follower.await;
    let ahead = leaf.reader().head().unwrap().seq;
    assert!(ahead > behind);

    // Pointed at the relay, which is behind it: refused, retried, never rolled back.
    let via_relay = Arc::new(ReplicaStatus::new(relay_addr));
    let leaf_follower = tokio::spawn(follow(leaf.clone(), relay_addr, Arc::clone(&via_relay)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(error) = via_relay.last_error() {
            assert!(error.contains("ahead"), "{error}");
            break;
        }
        assert!(Instant::now() < deadline, "the leaf was never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(via_relay.stopped_reason(), None, "being ahead is not fatal");
    assert_eq!(leaf.reader().head().unwrap().seq, ahead);

    // The relay comes back and catches up from the root; the leaf continues through it.
    let relay_follower = tokio::spawn(follow(relay.clone(), root_addr, Arc::clone(&relay_status)));
    for b in 10..15 {
        write_keys(&root, b, 10).await;
    }
    wait_for_head(&relay, &root).await;
    wait_for_head(&leaf, &root).await;
    assert_eq!(via_relay.stopped_reason(), None);
    leaf.reader().verify().unwrap();
    leaf_follower.abort();
    relay_follower.abort();
}
