//! Poisoning attempts: out-of-bailiwick records and spoofed replies.

use edgekit_dns::{CacheAnswer, proto::rr::RecordType};
use edgekit_testkit::dns::Behaviour;

use crate::common::{a_record, addresses, hierarchy, name, resolver};

#[tokio::test]
async fn out_of_bailiwick_records_are_never_returned_or_cached() {
    let hierarchy = hierarchy().await;
    let poison = Behaviour {
        extra_additionals: vec![
            a_record("www.zone.other.", [6, 6, 6, 6]),
            a_record("ns.other.", [6, 6, 6, 6]),
        ],
        extra_answers: vec![a_record("bank.other.", [6, 6, 6, 6])],
        ..Behaviour::default()
    };
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(poison.clone());
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
    for poisoned in ["www.zone.other.", "ns.other.", "bank.other."] {
        assert_eq!(
            resolver.cache().rrset(&name(poisoned), RecordType::A),
            None,
            "{poisoned} cached"
        );
        assert_eq!(
            resolver.cache().lookup(&name(poisoned), RecordType::A),
            None
        );
    }
    // The real data is still reachable through the real servers.
    let real = resolver
        .resolve(&name("www.zone.other."), RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        addresses(&real),
        vec!["192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[tokio::test]
async fn spoofed_reply_with_a_wrong_id_is_ignored_and_counted() {
    let hierarchy = hierarchy().await;
    let spoof = Behaviour {
        wrong_id_reply: Some(vec![a_record("www.example.test.", [6, 6, 6, 6])]),
        ..Behaviour::default()
    };
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(spoof.clone());
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
    assert!(
        resolver.stats().dropped_replies >= 1,
        "{:?}",
        resolver.stats()
    );
    assert!(matches!(
        resolver.cache().lookup(&name("www.example.test."), RecordType::A),
        Some(CacheAnswer::Records(records)) if addresses_of(&records) == ["192.0.2.1"]
    ));
}

fn addresses_of(records: &[edgekit_dns::proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .map(|record| record.data.to_string())
        .collect()
}

#[tokio::test]
async fn answers_off_the_question_chain_are_neither_returned_nor_cached() {
    let hierarchy = hierarchy().await;
    // Both servers lie: the answer section holds a record for another name of their zone.
    let lie = Behaviour {
        lie: Some(vec![a_record("evil.example.test.", [6, 6, 6, 6])]),
        ..Behaviour::default()
    };
    for server in ["ns1.example.test.", "ns2.example.test."] {
        hierarchy.server(server).set_behaviour(lie.clone());
    }
    let resolver = resolver(&hierarchy);
    let result = resolver
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap();
    assert!(result.answers.is_empty(), "{:?}", result.answers);
    assert_eq!(
        resolver
            .cache()
            .rrset(&name("evil.example.test."), RecordType::A),
        None
    );
    assert_eq!(
        resolver
            .cache()
            .lookup(&name("www.example.test."), RecordType::A),
        None,
        "an empty, SOA-less reply is not cached as NODATA"
    );
}
