//! Retiring a node folds its entries into a survivor without changing any total, whatever
//! order (or how many times) the tombstone and stale pre-retirement deltas arrive.

use edgekit_counters::{CounterSet, Delta, NodeId, RetireError};
use proptest::prelude::*;

fn set(id: &str) -> CounterSet<String> {
    CounterSet::new(NodeId::new(id).expect("valid id"))
}

fn id(id: &str) -> NodeId {
    NodeId::new(id).expect("valid id")
}

/// Three converged nodes a, b, c; every node counted "x", only c counted "y".
fn converged() -> [CounterSet<String>; 3] {
    let nodes = [set("a"), set("b"), set("c")];
    nodes[0].add("x", 5);
    nodes[1].add("x", 7);
    nodes[2].add("x", 11);
    nodes[2].add("x", -2);
    nodes[2].add("y", 3);
    for from in &nodes {
        for to in &nodes {
            to.merge(&from.delta_since(0));
        }
    }
    for node in &nodes {
        assert_eq!((node.get("x"), node.get("y")), (21, 3));
    }
    nodes
}

fn holds_entry_of(set: &CounterSet<String>, node: &str, key: &str) -> bool {
    set.state(key)
        .entries()
        .iter()
        .any(|(id, _)| id.as_str() == node)
}

#[test]
fn the_survivor_folds_the_entry_and_totals_hold() {
    let [a, b, c] = converged();
    let stale_from_c = c.delta_since(0);
    let stale_from_b = b.delta_since(0);
    let report = a.retire(&id("c")).expect("retire");
    assert_eq!(report.keys_folded, 2);
    assert!(!report.already_retired);
    assert_eq!(
        (a.get("x"), a.get("y")),
        (21, 3),
        "the fold keeps a's totals"
    );
    assert!(!holds_entry_of(&a, "c", "x"));
    assert_eq!(
        a.own("x").value(),
        5 + 9,
        "a's own entry absorbed c's (+11 -2)"
    );

    // Stale state carrying c's entries arrives after the retirement: ignored, not re-added.
    a.merge(&stale_from_c);
    a.merge(&stale_from_b);
    assert_eq!((a.get("x"), a.get("y")), (21, 3));
    assert!(!holds_entry_of(&a, "c", "x"));

    // b learns of the fold in a's delta (the tombstone comes first), then stale c state again.
    b.merge(&a.delta_for(None));
    assert_eq!((b.get("x"), b.get("y")), (21, 3));
    assert!(!holds_entry_of(&b, "c", "x") && !holds_entry_of(&b, "c", "y"));
    b.merge(&stale_from_c);
    assert_eq!((b.get("x"), b.get("y")), (21, 3));
    assert_eq!(b.retirements().len(), 1);

    // Retiring again is a no-op; a node cannot retire itself.
    assert!(a.retire(&id("c")).expect("retire").already_retired);
    assert!(b.retire(&id("c")).expect("retire").already_retired);
    assert!(matches!(a.retire(&id("a")), Err(RetireError::OwnNode(_))));
}

#[test]
fn the_tombstone_spreads_through_a_third_node_and_survives_encoding() {
    let [a, b, _c] = converged();
    let d = set("d");
    d.merge(&b.delta_since(0)); // d knows c's entries only through b
    a.retire(&id("c")).expect("retire");
    let bytes = a.delta_since(0).encode();
    assert_eq!(bytes[0], edgekit_counters::DELTA_FORMAT_WITH_RETIREMENTS);
    b.merge(&Delta::decode(&bytes).expect("decode"));
    // b forwards the tombstone with a's folded entry to d.
    d.merge(&Delta::decode(&b.delta_since(0).encode()).expect("decode"));
    assert_eq!((d.get("x"), d.get("y")), (21, 3));
    assert!(!holds_entry_of(&d, "c", "x"));
}

#[test]
fn a_failed_persist_changes_nothing() {
    let [a, _b, _c] = converged();
    let err = a
        .retire_with(&id("c"), |retirement, own_after| {
            assert_eq!(retirement.survivor.as_str(), "a");
            assert_eq!(own_after.len(), 2);
            Err("disk full".into())
        })
        .expect_err("persist failed");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(holds_entry_of(&a, "c", "x"));
    assert!(a.retirements().is_empty());
    assert_eq!(a.get("x"), 21);
}

proptest! {
    /// Any delivery order of: stale pre-retirement full states from b and c, the survivor's
    /// post-retirement delta, repeated. Every node ends with the same totals, and none holds c.
    #[test]
    fn any_delivery_order_keeps_totals(order in proptest::collection::vec(0usize..6, 1..20)) {
        let [a, b, c] = converged();
        let stale = [c.delta_since(0), b.delta_since(0)];
        a.retire(&id("c")).expect("retire");
        let folded = a.delta_since(0);
        for step in order {
            match step {
                0 => { b.merge(&stale[0]); }
                1 => { a.merge(&stale[0]); }
                2 => { a.merge(&stale[1]); }
                3 | 4 => { b.merge(&folded); }
                _ => { a.merge(&b.delta_since(0)); }
            }
            // Whatever b has merged so far, it never counts c twice: 21 either way.
            prop_assert_eq!(b.get("x"), 21);
            prop_assert_eq!(a.get("x"), 21);
        }
        b.merge(&folded);
        prop_assert_eq!((b.get("x"), b.get("y")), (21, 3));
        prop_assert!(!holds_entry_of(&b, "c", "x"));
    }
}
