//! The small three-level tree most tests need: the root on 127.0.0.2, `test.` on 127.0.0.3 and
//! `example.test.` on 127.0.0.4, so each test names only the records it is about.

use std::net::Ipv4Addr;

use super::HierarchyBuilder;

const ROOT_ZONE: &str = "
$TTL 86400
@        IN SOA a.root. hostmaster.root. 1 1800 900 604800 86400
@        IN NS  a.root.
a.root.  IN A   127.0.0.2
test.    IN NS  ns1.test.
ns1.test. IN A  127.0.0.3
";

const TEST_ZONE: &str = "
$TTL 86400
@             IN SOA ns1.test. hostmaster.test. 1 1800 900 604800 300
@             IN NS  ns1.test.
ns1           IN A   127.0.0.3
example       IN NS  ns1.example.test.
ns1.example   IN A   127.0.0.4
";

const EXAMPLE_ZONE_HEAD: &str = "
$TTL 300
@         IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60
@         IN NS  ns1.example.test.
ns1       IN A   127.0.0.4
www       IN A   192.0.2.1
";

/// A builder for root -> `test.` -> `example.test.`, where `example.test.` holds
/// `www IN A 192.0.2.1` (TTL 300, negative TTL 60) plus `example_records`, zone-file lines
/// relative to `example.test.`. Add servers or start it as with any [`HierarchyBuilder`].
pub fn example_test_hierarchy(example_records: &str) -> HierarchyBuilder {
    let example_zone = format!("{EXAMPLE_ZONE_HEAD}{example_records}\n");
    HierarchyBuilder::new()
        .server("a.root.", Ipv4Addr::new(127, 0, 0, 2), &[(".", ROOT_ZONE)])
        .server(
            "ns1.test.",
            Ipv4Addr::new(127, 0, 0, 3),
            &[("test.", TEST_ZONE)],
        )
        .server(
            "ns1.example.test.",
            Ipv4Addr::new(127, 0, 0, 4),
            &[("example.test.", &example_zone)],
        )
}
