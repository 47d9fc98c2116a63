//! Gossip figures for docs/benchmarks.md: bytes per interval (delta vs full state) and the time
//! two embedded counter nodes take to converge once linked, for 100k and 1M changed keys.
//!
//! ```text
//! cargo run --release -p edgekit-counters --example gossip_figures
//! ```
//!
//! Keys are `String`s like `client-123456`. Local counts are made with `CounterSet::add` (not the
//! journalled `CounterNode::incr`): this measures replication, not fsync.

use std::time::{Duration, Instant};

use edgekit_counters::{CounterNode, CounterNodeConfig, CounterSet, NodeId};

const TOTAL_KEYS: u64 = 1_000_000;

fn key(i: u64) -> String {
    format!("client-{i}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Bytes: a set holding 1M keys, all settled (acknowledged at `settled`), then N changed.
    let set = CounterSet::<String>::new(NodeId::new("edge-1")?);
    for i in 0..TOTAL_KEYS {
        set.add(&key(i), 1);
    }
    let settled = set.delta_since(0).until();
    for changed in [100_000, 1_000_000] {
        for i in 0..changed {
            set.add(&key(i), 1);
        }
        let started = Instant::now();
        let delta = set.delta_since(settled).encode().len();
        let delta_time = started.elapsed();
        let full = set.delta_since(0).encode().len();
        println!(
            "{changed} changed keys of {TOTAL_KEYS}: delta {delta} B ({:.1} B/key, built+encoded in {delta_time:.0?}), full state {full} B",
            delta as f64 / changed as f64
        );
    }

    // Convergence: node a holds N keys; node b starts with a as its peer (a link that comes up,
    // as after a heal); time until b reads every key.
    for changed in [100_000u64, 1_000_000] {
        let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let mut config_a =
            CounterNodeConfig::new(NodeId::new("a")?, "127.0.0.1:0".parse()?, dir_a.path());
        config_a.interval = Duration::from_millis(100);
        let a = CounterNode::start(config_a).await?;
        for i in 0..changed {
            a.counters().add(&key(i), 1);
        }
        let mut config_b =
            CounterNodeConfig::new(NodeId::new("b")?, "127.0.0.1:0".parse()?, dir_b.path());
        config_b.interval = Duration::from_millis(100);
        config_b.peers = vec![a.gossip_addr()];
        let started = Instant::now();
        let b = CounterNode::start(config_b).await?;
        let last = key(changed - 1);
        let deadline = started + Duration::from_secs(120);
        while b.counters().len() < changed as usize || b.counters().get(&last) != 1 {
            if Instant::now() > deadline {
                println!(
                    "{changed} keys: no convergence within 120 s (b holds {})",
                    b.counters().len()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if b.counters().len() == changed as usize {
            println!(
                "{changed} keys: b converged {} ms after its link came up (interval 100 ms)",
                started.elapsed().as_millis()
            );
        }
    }
    Ok(())
}
