//! NXDOMAIN and NODATA, their caching (RFC 2308, RFC 8020), and TTL decrement.

use edgekit_dns::{
    Clock,
    proto::{op::ResponseCode, rr::RecordType},
};

use crate::common::{config, hierarchy, name, resolver_with};

#[tokio::test]
async fn nxdomain_is_cached_and_covers_names_below() {
    let hierarchy = hierarchy().await;
    let clock = Clock::manual(1_000_000);
    let resolver = resolver_with(&hierarchy, config(&hierarchy), clock.clone());
    let first = resolver
        .resolve(&name("nope.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(first.rcode, ResponseCode::NXDomain);
    assert_eq!(
        first.authorities.len(),
        1,
        "the SOA comes with the NXDOMAIN"
    );
    assert!(first.upstream_queries > 0);

    let again = resolver
        .resolve(&name("NOPE.example.test."), RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(again.rcode, ResponseCode::NXDomain);
    assert_eq!(
        again.upstream_queries, 0,
        "answered from the negative cache"
    );
    // RFC 8020: nothing exists below an NXDOMAIN name.
    let below = resolver
        .resolve(&name("a.b.nope.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(below.rcode, ResponseCode::NXDomain);
    assert_eq!(below.upstream_queries, 0);

    // Negative TTL = min(SOA TTL 60 after the server's own min, MINIMUM 60): gone after 61 s.
    clock.advance(61);
    let expired = resolver
        .resolve(&name("nope.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(expired.rcode, ResponseCode::NXDomain);
    assert!(
        expired.upstream_queries > 0,
        "expired negative entry must be refetched"
    );
}

#[tokio::test]
async fn nodata_is_cached_per_type() {
    let hierarchy = hierarchy().await;
    let clock = Clock::manual(1_000_000);
    let resolver = resolver_with(&hierarchy, config(&hierarchy), clock.clone());
    let first = resolver
        .resolve(&name("www.example.test."), RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(first.rcode, ResponseCode::NoError);
    assert!(first.answers.is_empty());
    assert_eq!(first.authorities.len(), 1);

    clock.advance(10);
    let again = resolver
        .resolve(&name("www.example.test."), RecordType::AAAA)
        .await
        .unwrap();
    assert!(again.answers.is_empty());
    assert_eq!(again.upstream_queries, 0);
    assert_eq!(again.authorities[0].ttl, 50, "negative TTL counts down");
    // NODATA is per type: the A record is still fetched and found.
    let a = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(a.answers.len(), 1);
}

#[tokio::test]
async fn cached_answers_carry_decremented_ttls() {
    let hierarchy = hierarchy().await;
    let clock = Clock::manual(1_000_000);
    let resolver = resolver_with(&hierarchy, config(&hierarchy), clock.clone());
    let first = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(first.answers[0].ttl, 300);
    clock.advance(120);
    let cached = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(cached.upstream_queries, 0);
    assert_eq!(cached.answers[0].ttl, 180);
    let queries_before = hierarchy.total_queries();
    clock.advance(180);
    let refetched = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(refetched.answers[0].ttl, 300);
    assert!(hierarchy.total_queries() > queries_before);
}
