//! The test hierarchy every scenario starts from, and helpers.

use std::net::Ipv4Addr;

use edgekit_dns::{
    Clock, Resolution, Resolver, ResolverConfig, RootHints,
    proto::rr::{Name, RData, Record, RecordType},
};
use edgekit_testkit::dns::{DnsHierarchy, HierarchyBuilder};

pub(crate) const ROOT: &str = "
$TTL 86400
@        IN SOA a.root. hostmaster.root. 1 1800 900 604800 86400
@        IN NS  a.root.
a.root.  IN A   127.0.0.2
test.    IN NS  ns1.test.
ns1.test. IN A  127.0.0.3
other.   IN NS  ns.other.
ns.other. IN A  127.0.0.7
";

pub(crate) const TEST: &str = "
$TTL 86400
@             IN SOA ns1.test. hostmaster.test. 1 1800 900 604800 300
@             IN NS  ns1.test.
ns1           IN A   127.0.0.3
example       IN NS  ns1.example.test.
example       IN NS  ns2.example.test.
ns1.example   IN A   127.0.0.4
ns2.example   IN A   127.0.0.5
glueless      IN NS  ns.hosting.other.
cycle-a       IN NS  ns.cycle-b.test.
cycle-b       IN NS  ns.cycle-a.test.
";

pub(crate) const EXAMPLE: &str = "
$TTL 300
@         IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60
@         IN NS  ns1.example.test.
@         IN NS  ns2.example.test.
ns1       IN A   127.0.0.4
ns2       IN A   127.0.0.5
www       IN A   192.0.2.1
alias     IN CNAME www
chain1    IN CNAME chain2
chain2    IN CNAME chain3
chain3    IN CNAME www
cross     IN CNAME www.zone.other.
loop1     IN CNAME loop2
loop2     IN CNAME loop1
*.wild    IN A   192.0.2.77
a.b.c     IN A   192.0.2.9
old.example.test. 300 IN DNAME new.other.
";

pub(crate) const OTHER: &str = "
$TTL 300
@         IN SOA ns.other. hostmaster.other. 1 3600 600 86400 60
@         IN NS  ns.other.
ns        IN A   127.0.0.7
www.zone  IN A   192.0.2.2
ns.hosting IN A  127.0.0.8
x.new     IN A   192.0.2.3
";

pub(crate) const GLUELESS: &str = "
$TTL 300
@         IN SOA ns.hosting.other. hostmaster.glueless.test. 1 3600 600 86400 60
@         IN NS  ns.hosting.other.
www       IN A   192.0.2.5
";

/// root (127.0.0.2) -> test. (127.0.0.3) -> example.test. (127.0.0.4, .5);
/// root -> other. (127.0.0.7); test. -> glueless.test. served by ns.hosting.other. (127.0.0.8).
pub(crate) async fn hierarchy() -> DnsHierarchy {
    HierarchyBuilder::new()
        .server("a.root.", Ipv4Addr::new(127, 0, 0, 2), &[(".", ROOT)])
        .server("ns1.test.", Ipv4Addr::new(127, 0, 0, 3), &[("test.", TEST)])
        .server(
            "ns1.example.test.",
            Ipv4Addr::new(127, 0, 0, 4),
            &[("example.test.", EXAMPLE)],
        )
        .server(
            "ns2.example.test.",
            Ipv4Addr::new(127, 0, 0, 5),
            &[("example.test.", EXAMPLE)],
        )
        .server(
            "ns.other.",
            Ipv4Addr::new(127, 0, 0, 7),
            &[("other.", OTHER)],
        )
        .server(
            "ns.hosting.other.",
            Ipv4Addr::new(127, 0, 0, 8),
            &[("glueless.test.", GLUELESS)],
        )
        .start()
        .await
        .expect("the test hierarchy starts")
}

pub(crate) fn config(hierarchy: &DnsHierarchy) -> ResolverConfig {
    ResolverConfig::for_loopback_hierarchy(hierarchy.port())
}

pub(crate) fn resolver_with(
    hierarchy: &DnsHierarchy,
    config: ResolverConfig,
    clock: Clock,
) -> Resolver {
    let hints = RootHints::parse(hierarchy.root_hints()).expect("hierarchy hints parse");
    Resolver::with_parts(config, hints, clock).expect("valid config")
}

pub(crate) fn resolver(hierarchy: &DnsHierarchy) -> Resolver {
    resolver_with(hierarchy, config(hierarchy), Clock::system())
}

pub(crate) fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test names are valid")
}

pub(crate) fn a_record(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 300, RData::A(Ipv4Addr::from(ip).into()))
}

/// The A addresses in an answer.
pub(crate) fn addresses(resolution: &Resolution) -> Vec<Ipv4Addr> {
    resolution
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The (owner, type) pairs of an answer, in order.
pub(crate) fn shape(resolution: &Resolution) -> Vec<(String, RecordType)> {
    resolution
        .answers
        .iter()
        .map(|record| (record.name.to_string(), record.record_type()))
        .collect()
}
