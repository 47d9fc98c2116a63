//! CNAME chains (in and across zones), DNAME, wildcards, CNAME loops.

use edgekit_dns::{ResolveError, proto::op::ResponseCode, proto::rr::RecordType};

use crate::common::{addresses, hierarchy, name, resolver, shape};

#[tokio::test]
async fn cname_chain_inside_one_zone() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("chain1.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(result.rcode, ResponseCode::NoError);
    assert_eq!(
        shape(&result),
        vec![
            ("chain1.example.test.".into(), RecordType::CNAME),
            ("chain2.example.test.".into(), RecordType::CNAME),
            ("chain3.example.test.".into(), RecordType::CNAME),
            ("www.example.test.".into(), RecordType::A),
        ]
    );
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[tokio::test]
async fn cname_across_zones_is_chased_from_the_root() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("cross.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        shape(&result),
        vec![
            ("cross.example.test.".into(), RecordType::CNAME),
            ("www.zone.other.".into(), RecordType::A),
        ]
    );
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert!(
        !hierarchy.server("ns.other.").queries().is_empty(),
        "the target zone's server was asked"
    );
}

#[tokio::test]
async fn dname_is_followed_with_a_synthesised_cname() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("x.old.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        shape(&result),
        vec![
            ("old.example.test.".into(), RecordType::DNAME),
            ("x.old.example.test.".into(), RecordType::CNAME),
            ("x.new.other.".into(), RecordType::A),
        ]
    );
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[tokio::test]
async fn wildcard_answers_carry_the_name_asked() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("anything.wild.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        shape(&result),
        vec![("anything.wild.example.test.".into(), RecordType::A)]
    );
    assert_eq!(
        addresses(&result),
        vec!["192.0.2.77".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[tokio::test]
async fn cname_loop_ends_in_an_error_not_a_hang() {
    let hierarchy = hierarchy().await;
    let resolver = resolver(&hierarchy);
    let started = std::time::Instant::now();
    let err = resolver
        .resolve(&name("loop1.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::ChainTooLong { .. }), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Cached now: the loop is detected again without looping upstream.
    let before = resolver.stats().upstream_queries;
    let err = resolver
        .resolve(&name("loop2.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::ChainTooLong { .. }), "{err}");
    assert!(resolver.stats().upstream_queries - before <= 2);
}
