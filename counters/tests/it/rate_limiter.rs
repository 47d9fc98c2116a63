//! Sliding-window rate limiting on a hand-driven clock: edges, bursts, and two nodes.

use std::{sync::Arc, time::Duration};

use edgekit_counters::{ManualClock, NodeId, RateLimit, RateLimitError, RateLimiter};

const WINDOW: Duration = Duration::from_secs(10);

fn limiter(node: &str, limit: u64, clock: &ManualClock) -> RateLimiter<String> {
    RateLimiter::with_clock(
        NodeId::new(node).unwrap(),
        RateLimit::new(limit, WINDOW).unwrap(),
        Arc::new(clock.clone()),
    )
}

/// A clock at the start of a window (windows are aligned to multiples of the length).
fn clock_at_window_start() -> ManualClock {
    ManualClock::new(WINDOW * 1_000)
}

#[test]
fn a_burst_up_to_the_limit_passes_and_the_next_request_is_denied() {
    let clock = clock_at_window_start();
    let limiter = limiter("a", 5, &clock);
    for expected_remaining in (0..5).rev() {
        let decision = limiter.check("c", 1).unwrap();
        assert!(decision.allowed);
        assert_eq!(decision.remaining, expected_remaining);
        assert_eq!(decision.retry_after, Duration::ZERO);
    }
    let denied = limiter.check("c", 1).unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    assert_eq!(denied.limit, 5);
    // Next window: 5 x (1 - t/10 s) + 1 <= 5  =>  t >= 2 s; plus the 10 s left in this one.
    assert_eq!(denied.retry_after, Duration::from_secs(12));
    // A denied request is not counted.
    clock.advance(Duration::from_secs(12));
    assert!(limiter.check("c", 1).unwrap().allowed);
    assert!(!limiter.check("c", 1).unwrap().allowed);
}

#[test]
fn retry_after_is_exactly_when_the_request_fits_again() {
    let clock = clock_at_window_start();
    let limiter = limiter("a", 10, &clock);
    assert!(limiter.check("c", 10).unwrap().allowed);
    clock.advance(Duration::from_secs(13)); // 3 s into the next window: 10 x 0.7 = 7 in use
    assert!(limiter.check("c", 3).unwrap().allowed); // 7 + 3 = 10
    let denied = limiter.check("c", 2).unwrap();
    assert!(!denied.allowed);
    // Needs 10 x (7 s - t)/10 s + 3 + 2 <= 10  =>  t >= 2 s.
    assert_eq!(denied.retry_after, Duration::from_secs(2));
    clock.advance(denied.retry_after - Duration::from_nanos(1));
    assert!(
        !limiter.check("c", 2).unwrap().allowed,
        "one nanosecond early"
    );
    clock.advance(Duration::from_nanos(1));
    assert!(limiter.check("c", 2).unwrap().allowed, "exactly on time");
}

#[test]
fn the_previous_window_fades_linearly_across_the_edge() {
    let clock = clock_at_window_start();
    let limiter = limiter("a", 100, &clock);
    clock.advance(Duration::from_secs(9));
    assert!(limiter.check("c", 100).unwrap().allowed);
    // Just across the edge the previous window counts almost fully.
    clock.advance(Duration::from_secs(1));
    let at_edge = limiter.check("c", 0).unwrap();
    assert_eq!(at_edge.remaining, 0);
    clock.advance(Duration::from_millis(2_500)); // a quarter of the way: 75 still counted
    assert_eq!(limiter.check("c", 0).unwrap().remaining, 25);
    clock.advance(Duration::from_millis(7_500)); // two windows later: nothing left
    assert_eq!(limiter.check("c", 0).unwrap().remaining, 100);
}

#[test]
fn keys_are_independent_and_bad_requests_are_errors() {
    let clock = clock_at_window_start();
    let limiter = limiter("a", 1, &clock);
    assert!(limiter.check("x", 1).unwrap().allowed);
    assert!(limiter.check("y", 1).unwrap().allowed);
    assert!(!limiter.check("x", 1).unwrap().allowed);
    assert_eq!(
        limiter.check("x", 2).unwrap_err(),
        RateLimitError::CostExceedsLimit { cost: 2, limit: 1 }
    );
    assert_eq!(
        RateLimit::new(0, WINDOW).unwrap_err(),
        RateLimitError::ZeroLimit
    );
    assert!(matches!(
        RateLimit::new(1, Duration::from_micros(10)),
        Err(RateLimitError::WindowTooShort(_))
    ));
}

#[test]
fn two_nodes_share_one_limit_once_their_counters_merge() {
    let clock = clock_at_window_start();
    let paris = limiter("paris", 10, &clock);
    let tokyo = limiter("tokyo", 10, &clock);
    for _ in 0..6 {
        assert!(paris.check("client", 1).unwrap().allowed);
    }
    for _ in 0..4 {
        assert!(tokyo.check("client", 1).unwrap().allowed);
    }
    // Before replication each node only knows its own traffic.
    assert_eq!(paris.check("client", 0).unwrap().remaining, 4);
    paris.counters().merge(&tokyo.counters().delta_since(0));
    tokyo.counters().merge(&paris.counters().delta_since(0));
    for node in [&paris, &tokyo] {
        let decision = node.check("client", 1).unwrap();
        assert!(!decision.allowed, "10 of 10 used across both nodes");
        assert_eq!(decision.remaining, 0);
    }
    // A full window later both agree there is room again.
    clock.advance(WINDOW * 2);
    assert!(paris.check("client", 1).unwrap().allowed);
    tokyo.counters().merge(
        &paris
            .counters()
            .delta_for(tokyo.counters().acknowledged(paris.counters().node_id())),
    );
    assert_eq!(tokyo.check("client", 0).unwrap().remaining, 9);
}

#[test]
fn old_windows_are_forgotten() {
    let clock = clock_at_window_start();
    let limiter = limiter("a", 10, &clock);
    limiter.check("c", 1).unwrap();
    clock.advance(WINDOW);
    limiter.check("c", 1).unwrap();
    assert_eq!(
        limiter.expire_old_windows(),
        0,
        "the previous window still counts"
    );
    clock.advance(WINDOW);
    assert_eq!(limiter.expire_old_windows(), 1);
    assert_eq!(limiter.counters().len(), 1);
}
