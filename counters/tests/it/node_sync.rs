//! Anti-entropy on demand: with an interval far longer than the test, a change crosses to a
//! peer only when `sync_now` asks for an exchange.

use std::time::{Duration, Instant};

use edgekit_counters::{CounterNode, CounterNodeConfig, NodeId};

async fn start(id: &str, dir: &std::path::Path, peers: Vec<std::net::SocketAddr>) -> CounterNode {
    let mut config = CounterNodeConfig::new(
        NodeId::new(id).expect("id"),
        "127.0.0.1:0".parse().expect("addr"),
        dir,
    );
    config.peers = peers;
    config.interval = Duration::from_secs(3600);
    CounterNode::start(config).await.expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_sends_a_change_that_the_interval_would_hold_back_for_an_hour() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = start("b", dir_b.path(), Vec::new()).await;
    let a = start("a", dir_a.path(), vec![b.gossip_addr()]).await;

    // A link's first exchange runs as soon as it connects; the next is an hour away.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.peers()[0].last_sync_age_ms.is_none() {
        assert!(
            Instant::now() < deadline,
            "no first exchange: {:?}",
            a.peers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.incr("k", 5).await.unwrap(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.counters().get("k"), 0, "crossed without being asked to");

    assert_eq!(a.sync_now(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.counters().get("k") != 5 {
        assert!(Instant::now() < deadline, "sync_now sent nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The answer of that exchange carried b's state back: one more change on b arrives the same way.
    b.incr("k", 2).await.unwrap();
    assert_eq!(a.sync_now(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.counters().get("k") != 7 {
        assert!(
            Instant::now() < deadline,
            "the pull half of sync_now brought nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
