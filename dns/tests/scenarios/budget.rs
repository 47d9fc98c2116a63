//! Budgets and timeouts: every resolution ends, and says why when it fails.

use std::time::{Duration, Instant};

use edgekit_dns::{Clock, ResolveError, ResolverConfig, proto::rr::RecordType};
use edgekit_testkit::dns::Behaviour;

use crate::common::{addresses, config, hierarchy, name, resolver_with};

#[tokio::test]
async fn query_budget_ends_the_resolution() {
    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        max_queries_per_resolution: 2,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let err = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert_eq!(err, ResolveError::QueryBudgetExhausted { limit: 2 });
    assert_eq!(hierarchy.total_queries(), 2);
}

#[tokio::test]
async fn slow_servers_hit_the_resolution_deadline() {
    let hierarchy = hierarchy().await;
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(Behaviour {
            delay: Some(Duration::from_millis(400)),
            ..Behaviour::default()
        });
    }
    let config = ResolverConfig {
        query_timeout_ms: 1_000,
        resolution_timeout_ms: 1_000,
        ..config(&hierarchy)
    };
    // A slow server within the per-query timeout still answers.
    let resolver = resolver_with(&hierarchy, config.clone(), Clock::system());
    let result = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&result).len(), 1);
    // Three slow steps (two minimised names and the answer) do not fit in 1 s.
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let started = Instant::now();
    let err = resolver
        .resolve(&name("a.b.c.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test]
async fn case_randomisation_still_resolves() {
    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        use_0x20: true,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let result = resolver
        .resolve(&name("chain1.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&result).len(), 1);
    let mixed = hierarchy
        .servers()
        .iter()
        .flat_map(|server| server.queries())
        .any(|query| {
            let text = query.name.to_ascii();
            text != text.to_lowercase()
        });
    assert!(mixed, "with use_0x20 some query names carry upper case");
}
