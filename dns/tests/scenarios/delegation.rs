//! Glueless delegations, dead/lame/refusing servers, NS cycles, TC then TCP, address policy.

use std::time::{Duration, Instant};

use edgekit_dns::{
    Clock, ResolveError, ResolverConfig, StepOutcome,
    proto::{op::ResponseCode, rr::RecordType},
};
use edgekit_testkit::dns::Behaviour;

use crate::common::{addresses, config, hierarchy, name, resolver, resolver_with};

#[tokio::test]
async fn glueless_delegation_resolves_the_ns_name_first() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("www.glueless.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.5".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // The NS name was resolved as nested work (depth 1) through the other. zone.
    assert!(
        result
            .trace
            .iter()
            .any(|step| step.depth == 1 && step.zone == name("other.")),
        "{:#?}",
        result.trace
    );
    assert_eq!(hierarchy.server("ns.hosting.other.").queries().len(), 1);
}

#[tokio::test]
async fn dead_first_ns_is_skipped_and_then_avoided() {
    let hierarchy = hierarchy().await;
    hierarchy
        .server("ns1.example.test.")
        .set_behaviour(Behaviour {
            drop: true,
            ..Behaviour::default()
        });
    let resolver = resolver(&hierarchy);
    for label in ["www", "alias", "chain3", "a.b.c"] {
        let result = resolver
            .resolve(&name(&format!("{label}.example.test.")), RecordType::A)
            .await
            .unwrap();
        assert_eq!(result.rcode, ResponseCode::NoError);
        assert!(!addresses(&result).is_empty());
    }
    // After its first timeout the dead server is backed off: asked at most once.
    let dead = hierarchy.server("ns1.example.test.").queries().len();
    assert!(dead <= 1, "dead server asked {dead} times");
    assert!(hierarchy.server("ns2.example.test.").queries().len() >= 4);
}

#[tokio::test]
async fn refusing_and_lame_servers_are_skipped() {
    for behaviour in [
        Behaviour {
            refuse: true,
            ..Behaviour::default()
        },
        Behaviour {
            lame: true,
            ..Behaviour::default()
        },
    ] {
        let hierarchy = hierarchy().await;
        hierarchy
            .server("ns2.example.test.")
            .set_behaviour(behaviour.clone());
        let resolver = resolver(&hierarchy);
        for label in ["www", "alias", "chain1"] {
            let result = resolver
                .resolve(&name(&format!("{label}.example.test.")), RecordType::A)
                .await
                .unwrap();
            assert_eq!(
                addresses(&result),
                vec!["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
            );
        }
        assert!(
            hierarchy.server("ns2.example.test.").queries().len() <= 1,
            "{behaviour:?}"
        );
    }
}

#[tokio::test]
async fn all_servers_dead_is_an_error_within_the_budget() {
    let hierarchy = hierarchy().await;
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(Behaviour {
            drop: true,
            ..Behaviour::default()
        });
    }
    let resolver = resolver(&hierarchy);
    let started = Instant::now();
    let err = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::NoUsableServer { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_fast_server_that_stops_answering_times_out_after_its_rtt_not_the_maximum() {
    let hierarchy = hierarchy().await;
    // A 2 s configured timeout: each of the two example.test servers waited that long before.
    let config = ResolverConfig {
        query_timeout_ms: 2_000,
        resolution_timeout_ms: 10_000,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    // Ask until each example.test server has answered at least once (the choice between them is
    // random), so both have a loopback RTT on record.
    for probe in 0..64 {
        resolver
            .resolve(&name(&format!("probe{probe}.example.test.")), RecordType::A)
            .await
            .unwrap();
        if ["ns1.example.test.", "ns2.example.test."]
            .iter()
            .all(|server| !hierarchy.server(server).queries().is_empty())
        {
            break;
        }
    }
    for server in ["ns1.example.test.", "ns2.example.test."] {
        assert!(
            !hierarchy.server(server).queries().is_empty(),
            "{server} was never asked, so its RTT is unknown"
        );
        hierarchy.server(server).set_behaviour(Behaviour {
            drop: true,
            ..Behaviour::default()
        });
    }
    let started = Instant::now();
    let err = resolver
        .resolve(&name("nothing-cached.example.test."), RecordType::A)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ResolveError::NoUsableServer { .. }), "{err}");
    // Both servers tried, each given a loopback RTT-based timeout (tens of milliseconds), not
    // 2 s each.
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
    let timeouts = resolver.stats().upstream_timeouts;
    assert!(timeouts >= 2, "{:?}", resolver.stats());
}

#[tokio::test]
async fn ns_cycle_ends_in_an_error_quickly() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let started = Instant::now();
    let err = resolver
        .resolve(&name("www.cycle-a.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::NoUsableServer { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        resolver.stats().upstream_queries < 30,
        "{:?}",
        resolver.stats()
    );
}

#[tokio::test]
async fn truncated_udp_reply_is_retried_over_tcp() {
    let hierarchy = hierarchy().await;
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(Behaviour {
            truncate_udp: true,
            ..Behaviour::default()
        });
    }
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(resolver.stats().tcp_retries >= 1);
    assert!(result.trace.iter().any(|step| step.over_tcp));
    let tcp_queries = hierarchy
        .servers()
        .iter()
        .flat_map(|server| server.queries())
        .filter(|query| query.tcp)
        .count();
    assert!(tcp_queries >= 1);
}

#[tokio::test]
async fn loopback_upstreams_are_refused_by_default() {
    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        allow_loopback: false,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let err = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused by policy"), "{err}");
    assert!(resolver.stats().refused_upstream_addresses >= 1);
    assert_eq!(
        hierarchy.total_queries(),
        0,
        "nothing may be sent to a refused address"
    );
}

#[tokio::test]
async fn referrals_are_traced_step_by_step() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    let outcomes: Vec<&StepOutcome> = result.trace.iter().map(|step| &step.outcome).collect();
    assert!(matches!(outcomes[0], StepOutcome::Referral { zone, .. } if *zone == name("test.")));
    assert!(
        matches!(outcomes[1], StepOutcome::Referral { zone, .. } if *zone == name("example.test."))
    );
    assert!(matches!(
        outcomes.last(),
        Some(StepOutcome::Answer { records: 1 })
    ));
    assert_eq!(result.upstream_queries as usize, result.trace.len());
}

/// One server authoritative for the root, `shared.` and `child.shared.` (no referrals between
/// them, as when one NSD serves every zone). After the first question has found the zone cuts
/// through the SOAs of the minimised NODATA replies, later questions under the child zone start
/// there: one upstream query each, not a fresh walk from the root.
#[tokio::test]
async fn a_server_authoritative_for_parent_and_child_is_not_rewalked_from_the_root() {
    const ROOT: &str = "
$TTL 86400
@          IN SOA a.root. hostmaster.root. 1 1800 900 604800 86400
@          IN NS  a.root.
a.root.    IN A   127.0.0.2
shared.    IN NS  a.root.
";
    const SHARED: &str = "
$TTL 86400
@          IN SOA a.root. hostmaster.shared. 1 1800 900 604800 300
@          IN NS  a.root.
child      IN NS  a.root.
";
    const CHILD: &str = "
$TTL 3600
@          IN SOA a.root. hostmaster.child.shared. 1 3600 600 86400 60
@          IN NS  a.root.
host1      IN A   192.0.2.11
host2      IN A   192.0.2.12
host3      IN A   192.0.2.13
host4      IN A   192.0.2.14
";
    let hierarchy = edgekit_testkit::dns::HierarchyBuilder::new()
        .server(
            "a.root.",
            std::net::Ipv4Addr::new(127, 0, 0, 2),
            &[(".", ROOT), ("shared.", SHARED), ("child.shared.", CHILD)],
        )
        .start()
        .await
        .expect("the hierarchy starts");
    let resolver = resolver(&hierarchy);
    let first = resolver
        .resolve(&name("host1.child.shared."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&first),
        vec!["192.0.2.11".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    for (label, ip) in [
        ("host2", "192.0.2.12"),
        ("host3", "192.0.2.13"),
        ("host4", "192.0.2.14"),
    ] {
        let result = resolver
            .resolve(&name(&format!("{label}.child.shared.")), RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            addresses(&result),
            vec![ip.parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(
            result.upstream_queries, 1,
            "{label}: expected one query at the learned cut child.shared., got {:#?}",
            result.trace
        );
        assert_eq!(result.trace[0].zone, name("child.shared."));
    }
}
