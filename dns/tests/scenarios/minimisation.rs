//! QNAME minimisation (RFC 9156): the sequence of names each server sees.

use edgekit_dns::{
    Clock, QnameMinimisation, ResolverConfig,
    proto::rr::{Name, RecordType},
};
use edgekit_testkit::dns::DnsHierarchy;

use crate::common::{addresses, config, hierarchy, name, resolver_with};

fn seen(hierarchy: &DnsHierarchy, server: &str) -> Vec<(Name, RecordType)> {
    hierarchy
        .server(server)
        .queries()
        .into_iter()
        .map(|query| (query.name.to_lowercase(), query.record_type))
        .collect()
}

#[tokio::test]
async fn each_server_sees_one_label_more_than_its_zone() {
    let hierarchy = hierarchy().await;
    let resolver = resolver_with(&hierarchy, config(&hierarchy), Clock::system());
    let result = resolver
        .resolve(&name("a.b.c.example.test."), RecordType::TXT)
        .await
        .unwrap();
    assert!(result.answers.is_empty(), "no TXT there: NODATA");
    assert_eq!(
        seen(&hierarchy, "a.root."),
        vec![(name("test."), RecordType::A)]
    );
    assert_eq!(
        seen(&hierarchy, "ns1.test."),
        vec![(name("example.test."), RecordType::A)]
    );
    let mut example = seen(&hierarchy, "ns1.example.test.");
    example.extend(seen(&hierarchy, "ns2.example.test."));
    example.sort_by_key(|(name, _)| name.num_labels());
    assert_eq!(
        example,
        vec![
            (name("c.example.test."), RecordType::A),
            (name("b.c.example.test."), RecordType::A),
            (name("a.b.c.example.test."), RecordType::TXT),
        ]
    );
}

#[tokio::test]
async fn minimisation_off_sends_the_full_name_everywhere() {
    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        qname_minimisation: QnameMinimisation::Off,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let result = resolver
        .resolve(&name("a.b.c.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.9".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        seen(&hierarchy, "a.root."),
        vec![(name("a.b.c.example.test."), RecordType::A)]
    );
}

#[tokio::test]
async fn minimisation_queries_are_capped() {
    let hierarchy = hierarchy().await;
    let config = ResolverConfig {
        max_minimisation_queries: 1,
        ..config(&hierarchy)
    };
    let resolver = resolver_with(&hierarchy, config, Clock::system());
    let result = resolver
        .resolve(&name("a.b.c.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.9".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    // Only the root got a minimised name; everyone after saw the full name.
    assert_eq!(
        seen(&hierarchy, "a.root."),
        vec![(name("test."), RecordType::A)]
    );
    assert_eq!(
        seen(&hierarchy, "ns1.test."),
        vec![(name("a.b.c.example.test."), RecordType::A)]
    );
}

#[tokio::test]
async fn strict_believes_nxdomain_for_a_minimised_name_relaxed_asks_again() {
    for (mode, full_name_asked) in [
        (QnameMinimisation::Strict, false),
        (QnameMinimisation::Relaxed, true),
    ] {
        let hierarchy = hierarchy().await;
        let config = ResolverConfig {
            qname_minimisation: mode,
            ..config(&hierarchy)
        };
        let resolver = resolver_with(&hierarchy, config, Clock::system());
        let result = resolver
            .resolve(&name("x.y.nope.example.test."), RecordType::A)
            .await
            .unwrap();
        assert_eq!(result.rcode, edgekit_dns::proto::op::ResponseCode::NXDomain);
        let mut example = seen(&hierarchy, "ns1.example.test.");
        example.extend(seen(&hierarchy, "ns2.example.test."));
        assert_eq!(
            example.contains(&(name("x.y.nope.example.test."), RecordType::A)),
            full_name_asked,
            "{mode:?}: {example:?}"
        );
    }
}
