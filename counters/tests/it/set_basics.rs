//! CounterSet behaviour: config validation, idle expiry, own-entry recovery.

use std::{sync::Arc, time::Duration};

use edgekit_counters::{ConfigError, CounterSet, CounterSetConfig, ManualClock, NodeId, PnCount};

fn id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

#[test]
fn bad_config_names_the_field_and_value() {
    let clock = Arc::new(ManualClock::default());
    let err =
        CounterSet::<u32>::with_config(id("a"), &CounterSetConfig::new().shards(3), clock.clone())
            .unwrap_err();
    assert_eq!(err, ConfigError::Shards(3));
    assert!(err.to_string().contains("shards = 3"), "{err}");
    let err = CounterSet::<u32>::with_config(
        id("a"),
        &CounterSetConfig::new().idle_ttl(Some(Duration::ZERO)),
        clock,
    )
    .unwrap_err();
    assert!(err.to_string().contains("idle_ttl"), "{err}");
}

#[test]
fn idle_keys_expire_and_busy_keys_stay() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let set = CounterSet::<String>::with_config(
        id("a"),
        &CounterSetConfig::new().idle_ttl(Some(Duration::from_secs(60))),
        Arc::new(clock.clone()),
    )
    .unwrap();
    set.incr("idle");
    set.incr("busy");
    assert_eq!(set.expire_idle(), 0, "nothing is idle yet");
    clock.advance(Duration::from_secs(59));
    set.incr("busy");
    assert_eq!(set.expire_idle(), 0, "59 s is below the ttl");
    clock.advance(Duration::from_secs(2));
    assert_eq!(set.expire_idle(), 1, "`idle` has not changed for 61 s");
    assert_eq!(set.get("idle"), 0);
    assert_eq!(set.get("busy"), 2, "`busy` changed 2 s ago");
    clock.advance(Duration::from_secs(60));
    assert_eq!(set.expire_idle(), 1);
    assert!(set.is_empty());
}

#[test]
fn without_ttl_nothing_expires() {
    let set = CounterSet::<u32>::new(id("a"));
    set.incr(&1);
    assert_eq!(set.expire_idle(), 0);
    assert_eq!(set.len(), 1);
}

#[test]
fn a_restarted_node_recovers_its_own_entry_from_a_peer() {
    let peer = CounterSet::<String>::new(id("peer"));
    let before = CounterSet::<String>::new(id("me"));
    before.add("k", 10);
    before.add("k", -3);
    peer.merge(&before.delta_since(0));
    drop(before);

    // Same id, empty state: the peer's copy of our entry raises ours to what it was.
    let after = CounterSet::<String>::new(id("me"));
    after.merge(&peer.delta_since(0));
    assert_eq!(
        after.state("k").get(&id("me")),
        PnCount {
            increments: 10,
            decrements: 3
        }
    );
    after.add("k", 1);
    peer.merge(&after.delta_for(peer.acknowledged(after.node_id())));
    assert_eq!(
        peer.get("k"),
        8,
        "new increments go on top, nothing counted twice"
    );
}

#[test]
fn a_new_incarnation_of_a_sender_is_a_gap_until_full_state() {
    let a = CounterSet::<u8>::new(id("a"));
    let b = CounterSet::<u8>::new(id("b"));
    a.incr(&1);
    assert!(!b.merge(&a.delta_since(0)).needs_full_state);
    let acked = b.acknowledged(a.node_id()).unwrap();
    assert_eq!(acked.incarnation, a.incarnation());

    let a2 = CounterSet::<u8>::new(id("a"));
    a2.incr(&2);
    let first = a2.delta_since(0);
    a2.incr(&2);
    let partial = a2.delta_since(first.until());
    let report = b.merge(&partial);
    assert!(report.needs_full_state, "b never saw a2's earlier versions");
    assert_eq!(
        b.get(&2),
        2,
        "the content still merged: deltas are CRDT state"
    );
    assert_eq!(
        b.acknowledged(a.node_id()),
        Some(acked),
        "but the ack did not move"
    );
    assert!(
        !b.merge(&a2.delta_for(b.acknowledged(a2.node_id())))
            .needs_full_state
    );
    assert_eq!(
        b.acknowledged(a.node_id()).unwrap().incarnation,
        a2.incarnation()
    );
}

#[test]
fn delta_since_the_latest_version_is_empty_until_something_changes() {
    let a = CounterSet::<u8>::new(id("a"));
    a.incr(&1);
    a.incr(&2);
    let full = a.delta_since(0);
    assert_eq!(full.len(), 2);
    assert!(a.delta_since(full.until()).is_empty());
    a.incr(&2);
    let delta = a.delta_since(full.until());
    assert_eq!(
        delta.states().map(|(key, _)| *key).collect::<Vec<_>>(),
        vec![2]
    );
}
