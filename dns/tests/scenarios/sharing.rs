//! Identical upstream questions in flight share one query (no duplicates for a spoofer to race).

use edgekit_dns::proto::rr::RecordType;

use crate::common::{addresses, config, hierarchy, name, resolver, resolver_with};

#[tokio::test]
async fn concurrent_questions_under_a_new_zone_ask_its_parents_once() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let questions = ["www", "alias", "chain1", "a.b.c", "x.wild", "y.wild"]
        .map(|label| name(&format!("{label}.example.test.")));
    let resolutions = futures::future::join_all(
        questions
            .iter()
            .map(|question| resolver.resolve(question, RecordType::A)),
    )
    .await;
    let mut sent = 0;
    for (question, resolution) in questions.iter().zip(&resolutions) {
        let resolution = resolution
            .as_ref()
            .unwrap_or_else(|failed| panic!("{question}: {failed}"));
        assert!(!addresses(resolution).is_empty(), "{question}: no address");
        sent += resolution.upstream_queries;
    }
    // Every question starts with the same two minimised steps: "test. A" to the root and
    // "example.test. A" to test.'s server. Sent once each, not once per question.
    assert_eq!(hierarchy.server("a.root.").queries().len(), 1);
    assert_eq!(hierarchy.server("ns1.test.").queries().len(), 1);
    // The resolutions account for exactly the queries the servers saw.
    let seen: usize = [
        "a.root.",
        "ns1.test.",
        "ns1.example.test.",
        "ns2.example.test.",
    ]
    .iter()
    .map(|server| hierarchy.server(server).queries().len())
    .sum();
    assert_eq!(sent as usize, seen);
    assert_eq!(
        u64::from(sent),
        resolver.stats().upstream_queries,
        "the resolver's counter agrees"
    );
}

#[tokio::test]
async fn a_waiting_question_asks_itself_when_the_sender_is_cancelled() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let www = name("www.example.test.");
    let alias = name("alias.example.test.");
    let mut first = Box::pin(resolver.resolve(&www, RecordType::A));
    let mut second = Box::pin(resolver.resolve(&alias, RecordType::A));
    // The first sends "test. A" to the root; the second, polled after it, joins and waits.
    assert!(futures::poll!(first.as_mut()).is_pending());
    assert!(futures::poll!(second.as_mut()).is_pending());
    // Its client gives up: the second must not wait for a reply that will never reach it.
    drop(first);
    let resolution = tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .expect("the waiting question finishes")
        .unwrap_or_else(|failed| panic!("{failed}"));
    assert!(!addresses(&resolution).is_empty());
    assert_eq!(
        hierarchy.server("a.root.").queries().len(),
        2,
        "the second asked the root itself"
    );
}

#[tokio::test]
async fn a_waiting_question_outlasts_the_senders_retry_over_tcp() {
    use edgekit_dns::{Clock, ResolverConfig};
    use edgekit_testkit::dns::Behaviour;

    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        query_timeout_ms: 1_000,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    // Every UDP reply from other.'s server is truncated, after 600 ms: the sender's exchange is
    // a UDP round trip (inside its 1 s timeout) and then a TCP one, 1.2 s in all. The waiting
    // question must wait for that, not give up after one UDP timeout.
    let other = hierarchy.server("ns.other.");
    other.set_behaviour(Behaviour {
        delay: Some(std::time::Duration::from_millis(600)),
        truncate_udp: true,
        ..Behaviour::default()
    });
    let question = name("www.zone.other.");
    let (first, second) = tokio::join!(
        resolver.resolve(&question, RecordType::A),
        resolver.resolve(&question, RecordType::A)
    );
    for resolution in [first, second] {
        let resolution = resolution.unwrap_or_else(|failed| panic!("{failed}"));
        assert_eq!(
            addresses(&resolution),
            vec!["192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap()]
        );
    }
    let asked: Vec<bool> = other
        .queries()
        .into_iter()
        .filter(|query| query.name.to_lowercase() == question)
        .map(|query| query.tcp)
        .collect();
    assert_eq!(
        asked,
        vec![false, true],
        "one UDP query, then one TCP retry"
    );
}
