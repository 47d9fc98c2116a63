//! Merge laws, by property: on per-key states, and on whole sets exchanging deltas.

use std::collections::BTreeMap;

use edgekit_counters::{CounterSet, Delta, NodeId, PnCount, PnState};
use proptest::prelude::*;

fn node(index: u8) -> NodeId {
    NodeId::new(format!("n{index}")).unwrap()
}

/// Counts near the top of the range too, to exercise saturation.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, (u64::MAX - 1000)..=u64::MAX]
}

fn state() -> impl Strategy<Value = PnState> {
    prop::collection::vec((0u8..4, count(), count()), 0..6).prop_map(|entries| {
        let mut state = PnState::new();
        for (index, increments, decrements) in entries {
            state.merge_entry(
                &node(index),
                PnCount {
                    increments,
                    decrements,
                },
            );
        }
        state
    })
}

fn merged(a: &PnState, b: &PnState) -> PnState {
    let mut out = a.clone();
    out.merge(b);
    out
}

proptest! {
    #[test]
    fn pn_merge_is_commutative(a in state(), b in state()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn pn_merge_is_associative(a in state(), b in state(), c in state()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn pn_merge_is_idempotent(a in state(), b in state()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let once = merged(&a, &b);
        prop_assert_eq!(merged(&once, &b), once);
    }

    #[test]
    fn pn_merge_never_lowers_a_part(a in state(), b in state()) {
        let out = merged(&a, &b);
        for (id, count) in a.entries().iter().chain(b.entries()) {
            prop_assert!(out.get(id).dominates(*count));
        }
        prop_assert!(out.totals().dominates(a.totals()));
    }
}

/// One step of a random history on three sets.
#[derive(Clone, Debug)]
enum Op {
    Add {
        set: usize,
        key: u8,
        by: i64,
    },
    /// `to` merges `from`'s delta since the version `to` last merged from `from`.
    Delta {
        from: usize,
        to: usize,
    },
    Full {
        from: usize,
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0u8..5, -20i64..50).prop_map(|(set, key, by)| Op::Add { set, key, by }),
        2 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Delta { from, to }),
        1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Full { from, to }),
    ]
}

fn snapshot(set: &CounterSet<u8>) -> BTreeMap<u8, PnState> {
    (0u8..5)
        .map(|key| (key, set.state(&key)))
        .filter(|(_, state)| !state.entries().is_empty())
        .collect()
}

fn run(ops: &[Op]) -> Vec<CounterSet<u8>> {
    let sets: Vec<_> = (0..3).map(|i| CounterSet::<u8>::new(node(i))).collect();
    for op in ops {
        match *op {
            Op::Add { set, key, by } => sets[set].add(&key, by),
            Op::Delta { from, to } => {
                let ack = sets[to].acknowledged(sets[from].node_id());
                sets[to].merge(&sets[from].delta_for(ack));
            }
            Op::Full { from, to } => {
                sets[to].merge(&sets[from].delta_since(0));
            }
        }
    }
    sets
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Two sets reach the same state whether they exchange deltas or full states, in any order.
    #[test]
    fn merging_deltas_equals_merging_full_states(ops in prop::collection::vec(op(), 0..40)) {
        let sets = run(&ops);
        let observer_deltas = CounterSet::<u8>::new(node(9));
        let observer_full = CounterSet::<u8>::new(node(8));
        // Deltas in reverse order of the sets, full states in order: order must not matter.
        for set in sets.iter().rev() {
            let first = set.delta_since(0);
            observer_deltas.merge(&first);
            observer_deltas.merge(&set.delta_for(observer_deltas.acknowledged(set.node_id())));
        }
        for set in &sets {
            observer_full.merge(&set.delta_since(0));
            observer_full.merge(&set.delta_since(0));
        }
        prop_assert_eq!(snapshot(&observer_deltas), snapshot(&observer_full));
    }

    /// Merging a delta commutes with merging another, and a delta merged twice changes nothing.
    #[test]
    fn set_merge_of_deltas_commutes_and_is_idempotent(
        ops in prop::collection::vec(op(), 0..40),
    ) {
        let sets = run(&ops);
        let d0: Delta<u8> = sets[0].delta_since(0);
        let d1: Delta<u8> = sets[1].delta_since(1);
        let left = CounterSet::<u8>::new(node(7));
        left.merge(&d0);
        left.merge(&d1);
        let right = CounterSet::<u8>::new(node(7));
        right.merge(&d1);
        right.merge(&d0);
        right.merge(&d0);
        prop_assert_eq!(snapshot(&left), snapshot(&right));
    }

    /// Associativity on sets: (a <- b) <- c equals a <- (b <- c), as full states.
    #[test]
    fn set_merge_is_associative(ops in prop::collection::vec(op(), 0..40)) {
        let sets = run(&ops);
        let [a, b, c] = [0, 1, 2].map(|i| sets[i].delta_since(0));
        let left = CounterSet::<u8>::new(node(6));
        left.merge(&a);
        left.merge(&b);
        left.merge(&c);
        let bc = CounterSet::<u8>::new(node(5));
        bc.merge(&b);
        bc.merge(&c);
        let right = CounterSet::<u8>::new(node(6));
        right.merge(&bc.delta_since(0));
        right.merge(&a);
        prop_assert_eq!(snapshot(&left), snapshot(&right));
    }

    /// Increments (the G-part of every entry) never go down under any merge.
    #[test]
    fn merges_never_lower_any_entry(ops in prop::collection::vec(op(), 0..40)) {
        let sets: Vec<_> = (0..3).map(|i| CounterSet::<u8>::new(node(i))).collect();
        for op in &ops {
            let before: Vec<_> = sets.iter().map(snapshot).collect();
            match *op {
                Op::Add { set, key, by } => sets[set].add(&key, by),
                Op::Delta { from, to } => {
                    let ack = sets[to].acknowledged(sets[from].node_id());
                    sets[to].merge(&sets[from].delta_for(ack));
                }
                Op::Full { from, to } => {
                    sets[to].merge(&sets[from].delta_since(0));
                }
            }
            for (set, old) in sets.iter().zip(&before) {
                let new = snapshot(set);
                for (key, old_state) in old {
                    for (id, count) in old_state.entries() {
                        prop_assert!(new[key].get(id).dominates(*count));
                    }
                }
            }
        }
    }
}
