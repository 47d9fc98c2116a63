//! N simulated nodes count at random while a lossy network drops, duplicates and reorders
//! deltas and full states; after a final full exchange every node reads the exact totals.

use std::collections::BTreeMap;

use edgekit_counters::{CounterSet, Delta, NodeId};
use proptest::prelude::*;

const NODES: usize = 4;
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Step {
    Count {
        node: usize,
        key: u8,
        by: i64,
    },
    /// `from` sends what it believes `to` lacks, into the network.
    Send {
        from: usize,
        to: usize,
        full: bool,
    },
    /// The network delivers (or duplicates) the in-flight message at `pick`.
    Deliver {
        pick: usize,
        duplicate: bool,
    },
    /// The network drops the in-flight message at `pick`.
    Drop {
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..NODES, 0..KEYS, -10i64..30).prop_map(|(node, key, by)| Step::Count { node, key, by }),
        3 => (0..NODES, 0..NODES, prop::bool::weighted(0.1))
            .prop_map(|(from, to, full)| Step::Send { from, to, full }),
        3 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, duplicate)| Step::Deliver { pick, duplicate }),
        1 => any::<usize>().prop_map(|pick| Step::Drop { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_node_converges_to_the_exact_totals(steps in prop::collection::vec(step(), 0..150)) {
        let nodes: Vec<_> = (0..NODES)
            .map(|i| CounterSet::<u8>::new(NodeId::new(format!("node-{i}")).unwrap()))
            .collect();
        let mut expected: BTreeMap<u8, i64> = BTreeMap::new();
        // In flight: (recipient, encoded delta). Messages go through the wire format.
        let mut network: Vec<(usize, Vec<u8>)> = Vec::new();
        for step in &steps {
            match *step {
                Step::Count { node, key, by } => {
                    nodes[node].add(&key, by);
                    *expected.entry(key).or_default() += by;
                }
                Step::Send { from, to, full } => {
                    let delta = if full {
                        nodes[from].delta_since(0)
                    } else {
                        nodes[from].delta_for(nodes[to].acknowledged(nodes[from].node_id()))
                    };
                    network.push((to, delta.encode()));
                }
                Step::Deliver { pick, duplicate } if !network.is_empty() => {
                    let index = pick % network.len();
                    let (to, bytes) = if duplicate {
                        network[index].clone()
                    } else {
                        network.remove(index)
                    };
                    let delta = Delta::<u8>::decode(&bytes).unwrap();
                    nodes[to].merge(&delta);
                }
                Step::Drop { pick } if !network.is_empty() => {
                    network.remove(pick % network.len());
                }
                Step::Deliver { .. } | Step::Drop { .. } => {}
            }
        }
        // Final anti-entropy: each node pulls from each other node what it has not acknowledged,
        // falling back to full state on a gap; twice round so everything spreads transitively.
        for _ in 0..2 {
            for to in 0..NODES {
                for from in 0..NODES {
                    let delta = nodes[from].delta_for(nodes[to].acknowledged(nodes[from].node_id()));
                    if nodes[to].merge(&delta).needs_full_state {
                        nodes[to].merge(&nodes[from].delta_since(0));
                    }
                }
            }
        }
        for node in &nodes {
            for key in 0..KEYS {
                prop_assert_eq!(
                    node.get(&key),
                    expected.get(&key).copied().unwrap_or(0),
                    "node {} key {}", node.node_id(), key
                );
            }
        }
    }

    /// Deltas alone (no full state ever) converge too, as long as none is lost for good: the
    /// acknowledgement protocol resends what was dropped.
    #[test]
    fn deltas_alone_converge_after_losses(steps in prop::collection::vec(step(), 0..150)) {
        let nodes: Vec<_> = (0..NODES)
            .map(|i| CounterSet::<u8>::new(NodeId::new(format!("node-{i}")).unwrap()))
            .collect();
        let mut expected: BTreeMap<u8, i64> = BTreeMap::new();
        for step in &steps {
            match *step {
                Step::Count { node, key, by } => {
                    nodes[node].add(&key, by);
                    *expected.entry(key).or_default() += by;
                }
                // A lost delta: produced (versions move on) but never delivered.
                Step::Drop { pick } => {
                    let from = pick % NODES;
                    let _ = nodes[from].delta_since(0);
                }
                Step::Send { from, to, .. } => {
                    let ack = nodes[to].acknowledged(nodes[from].node_id());
                    nodes[to].merge(&nodes[from].delta_for(ack));
                }
                Step::Deliver { .. } => {}
            }
        }
        for _ in 0..2 {
            for to in 0..NODES {
                for from in 0..NODES {
                    let ack = nodes[to].acknowledged(nodes[from].node_id());
                    prop_assert!(!nodes[to].merge(&nodes[from].delta_for(ack)).needs_full_state);
                }
            }
        }
        for node in &nodes {
            for key in 0..KEYS {
                prop_assert_eq!(node.get(&key), expected.get(&key).copied().unwrap_or(0));
            }
        }
    }
}
