//! Mutual TLS between counter nodes: nodes with certificates from the cluster CA converge; a node
//! whose certificate another CA signed, or that has none, is refused and learns nothing.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use edgekit_counters::{CounterNode, CounterNodeConfig, NodeId, NodeTls};
use edgekit_testkit::TestCa;

/// A certificate for 127.0.0.1 signed by `issuer`, trusting `trusted`; written to `dir`.
fn node_tls(dir: &Path, name: &str, issuer: &TestCa, trusted: &TestCa) -> NodeTls {
    let files = issuer.issue_trusting(dir, name, trusted);
    NodeTls::from_pem_files(&files.cert, &files.key, &files.ca).expect("load TLS files")
}

async fn start(id: &str, dir: &Path, peers: Vec<SocketAddr>, tls: Option<NodeTls>) -> CounterNode {
    let mut config = CounterNodeConfig::new(
        NodeId::new(id).expect("id"),
        "127.0.0.1:0".parse().expect("addr"),
        dir,
    );
    config.peers = peers;
    config.interval = Duration::from_millis(50);
    config.tls = tls;
    CounterNode::start(config).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_cluster_certificates_converge_and_others_are_refused() {
    let certs = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<_> = (0..4)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let (cluster, other) = (TestCa::new("cluster"), TestCa::new("other"));

    let a = start(
        "a",
        dirs[0].path(),
        vec![],
        Some(node_tls(certs.path(), "a", &cluster, &cluster)),
    )
    .await;
    let b = start(
        "b",
        dirs[1].path(),
        vec![a.gossip_addr()],
        Some(node_tls(certs.path(), "b", &cluster, &cluster)),
    )
    .await;
    // Trusts the cluster CA (so it would accept a's certificate), but its own is another CA's.
    let rogue = start(
        "rogue",
        dirs[2].path(),
        vec![a.gossip_addr()],
        Some(node_tls(certs.path(), "rogue", &other, &cluster)),
    )
    .await;
    // No TLS at all.
    let plain = start("plain", dirs[3].path(), vec![a.gossip_addr()], None).await;

    a.incr("k", 5).await.expect("incr a");
    b.incr("k", 7).await.expect("incr b");
    rogue.incr("k", 100).await.expect("incr rogue");
    plain.incr("k", 1000).await.expect("incr plain");

    let deadline = Instant::now() + Duration::from_secs(10);
    while (a.counters().get("k"), b.counters().get("k")) != (12, 12) {
        assert!(
            Instant::now() < deadline,
            "a and b did not converge over TLS: {} {}",
            a.counters().get("k"),
            b.counters().get("k")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the refused nodes many intervals (and retries) to get anything across.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        a.counters().get("k"),
        12,
        "a merged a refused node's counts"
    );
    assert_eq!(
        rogue.counters().get("k"),
        100,
        "the rogue node learned a's counts"
    );
    assert_eq!(
        plain.counters().get("k"),
        1000,
        "the plain node learned a's counts"
    );
    for refused in [&rogue, &plain] {
        let link = &refused.peers()[0];
        assert!(link.last_sync_age_ms.is_none(), "{link:?}");
        assert!(link.last_error.is_some(), "{link:?}");
    }
    assert!(b.peers()[0].last_sync_age_ms.is_some());
}

#[test]
fn missing_or_empty_certificate_files_are_named_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.path().join("missing.pem");
    let err = NodeTls::from_pem_files(&empty, &missing, &missing).expect_err("no certificate");
    assert!(err.to_string().contains("empty.pem"), "{err}");
    let cluster = TestCa::new("cluster");
    let good = node_tls(dir.path(), "n", &cluster, &cluster);
    drop(good);
    let err = NodeTls::from_pem_files(&dir.path().join("n.pem"), &dir.path().join("n.key"), &empty)
        .expect_err("no CA");
    assert!(err.to_string().contains("no CA certificate"), "{err}");
}
