//! Memory per key of a `CounterSet`, measured with a counting allocator (its own test binary,
//! since the allocator is global to the process).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering::Relaxed},
};

use edgekit_counters::{CounterSet, NodeId};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: u64 = 200_000;

/// Bytes allocated per key, for keys built by `fill`.
fn bytes_per_key(fill: impl FnOnce(&CounterSet<u64>)) -> f64 {
    let before = LIVE_BYTES.load(Relaxed);
    let set = CounterSet::<u64>::new(NodeId::new("local").unwrap());
    fill(&set);
    let used = LIVE_BYTES.load(Relaxed) - before;
    assert_eq!(set.len() as u64, KEYS);
    drop(set);
    used as f64 / KEYS as f64
}

#[test]
fn memory_per_key_is_bounded() {
    let local_only = bytes_per_key(|set| {
        for key in 0..KEYS {
            set.incr(&key);
        }
    });
    let with_a_peer = bytes_per_key(|set| {
        let peer = CounterSet::<u64>::new(NodeId::new("peer").unwrap());
        for key in 0..KEYS {
            set.incr(&key);
            peer.incr(&key);
        }
        set.merge(&peer.delta_since(0));
    });
    println!(
        "CounterSet<u64> memory: {local_only:.0} B/key counted locally, {with_a_peer:.0} B/key with one peer's entry"
    );
    // The figures quoted in the CounterSet docs and docs/benchmarks.md; a layout change that
    // grows them must update those docs.
    assert!(
        local_only > 40.0,
        "a key cannot cost less than its entry: {local_only}"
    );
    // 48-byte probe-table slots at a load of 3/8 to 3/4 plus a 56-byte boxed metadata record:
    // measured 182 B/key here (200k keys: tables just past a doubling, load 0.38). The inline
    // 88-byte SwissTable slots measured 117 B/key but missed the cache twice per increment.
    assert!(local_only < 200.0, "local-only keys cost {local_only:.0} B");
    assert!(
        with_a_peer < local_only + 32.0,
        "a peer entry costs {:.0} B",
        with_a_peer - local_only
    );
}
