//! Interop: real authoritative servers from Debian (two NSD instances for the root and the
//! TLDs, Knot for the leaf zones) serve a small hierarchy on 127.0.53.x:53; our resolver and Unbound (Debian) resolve the same names from
//! the same root hints, and their answers must agree.
//!
//! The tools are required: if `nsd`, `knotd` or `unbound` is missing this test fails (scripts/test.sh
//! installs them from scripts/test-packages.txt).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use edgekit_dns::{
    Clock, Resolver, ResolverConfig, RootHints,
    proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, Record, RecordType},
    },
};

const ROOT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 1);
const TLD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 2);
const LEAF_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 3);
const UNBOUND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 53, 10);

const ROOT_ZONE: &str = "$ORIGIN .
$TTL 86400
.                          IN SOA ns.root-servers.interop. hostmaster.interop. 1 1800 900 604800 86400
.                          IN NS  ns.root-servers.interop.
interop.                   IN NS  ns.tld.interop.
elsewhere.                 IN NS  ns.tld.interop.
ns.tld.interop.            IN A   127.0.53.2
ns.root-servers.interop.   IN A   127.0.53.1
";

const INTEROP_ZONE: &str = "$ORIGIN interop.
$TTL 86400
@               IN SOA ns.tld.interop. hostmaster.interop. 1 1800 900 604800 300
@               IN NS  ns.tld.interop.
ns.tld          IN A   127.0.53.2
ns.root-servers IN A   127.0.53.1
example         IN NS  ns1.example.interop.
ns1.example     IN A   127.0.53.3
other           IN NS  ns.other.interop.
ns.other        IN A   127.0.53.3
glueless        IN NS  ns.hosting.elsewhere.
";

const ELSEWHERE_ZONE: &str = "$ORIGIN elsewhere.
$TTL 86400
@               IN SOA ns.tld.interop. hostmaster.interop. 1 1800 900 604800 300
@               IN NS  ns.tld.interop.
ns.hosting      IN A   127.0.53.3
";

const EXAMPLE_ZONE: &str = "$ORIGIN example.interop.
$TTL 300
@        IN SOA ns1.example.interop. hostmaster.example.interop. 1 3600 600 86400 60
@        IN NS  ns1.example.interop.
ns1      IN A   127.0.53.3
www      IN A   192.0.2.1
www      IN A   192.0.2.11
alias    IN CNAME www
chain    IN CNAME alias
cross    IN CNAME www.other.interop.
*.wild   IN A   192.0.2.7
a.b.c    IN A   192.0.2.9
mail     IN MX  10 www.example.interop.
txt      IN TXT \"hello interop\"
old      IN DNAME other.interop.
";

const OTHER_ZONE: &str = "$ORIGIN other.interop.
$TTL 300
@        IN SOA ns.other.interop. hostmaster.other.interop. 1 3600 600 86400 60
@        IN NS  ns.other.interop.
ns       IN A   127.0.53.3
www      IN A   192.0.2.2
";

const GLUELESS_ZONE: &str = "$ORIGIN glueless.interop.
$TTL 300
@        IN SOA ns.hosting.elsewhere. hostmaster.glueless.interop. 1 3600 600 86400 60
@        IN NS  ns.hosting.elsewhere.
www      IN A   192.0.2.5
";

/// Questions both resolvers answer: every behaviour the hierarchy exercises.
const QUESTIONS: &[(&str, RecordType)] = &[
    ("www.example.interop.", RecordType::A),
    ("www.example.interop.", RecordType::AAAA),
    ("alias.example.interop.", RecordType::A),
    ("chain.example.interop.", RecordType::A),
    ("cross.example.interop.", RecordType::A),
    ("x.wild.example.interop.", RecordType::A),
    ("a.b.c.example.interop.", RecordType::A),
    ("b.c.example.interop.", RecordType::A),
    ("nope.example.interop.", RecordType::A),
    ("deeper.nope.example.interop.", RecordType::A),
    ("mail.example.interop.", RecordType::MX),
    ("txt.example.interop.", RecordType::TXT),
    ("www.old.example.interop.", RecordType::A),
    ("www.glueless.interop.", RecordType::A),
    ("example.interop.", RecordType::NS),
    ("other.interop.", RecordType::SOA),
    ("nothing.interop.", RecordType::A),
];

/// Kills the child process when dropped, so a failing test leaves nothing running.
struct ChildGuard {
    child: Child,
    what: String,
    config: PathBuf,
    kind: Kind,
}

/// Which program a guard runs (how to read its query counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Nsd,
    Knot,
    Unbound,
}

impl Kind {
    /// The daemon's executable name.
    fn program(self) -> &'static str {
        match self {
            Self::Nsd => "nsd",
            Self::Knot => "knotd",
            Self::Unbound => "unbound",
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGTERM first: nsd's main process then stops its server children itself.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "`{name}` is not installed: the interop test needs Debian's nsd and unbound \
         (scripts/test.sh installs scripts/test-packages.txt)"
    );
}

/// Write `conf` to `conf_path` and start the peer's daemon in the foreground on it
/// (`foreground` holds the flag that keeps it from forking, where it needs one).
fn spawn_daemon(
    kind: Kind,
    foreground: &[&str],
    conf_path: PathBuf,
    conf: &str,
    what: String,
) -> ChildGuard {
    std::fs::write(&conf_path, conf).unwrap();
    let program = kind.program();
    let child = Command::new(tool(program))
        .args(foreground)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
    ChildGuard {
        child,
        what,
        config: conf_path,
        kind,
    }
}

fn start_nsd(dir: &Path, label: &str, ip: Ipv4Addr, zones: &[(&str, &str)]) -> ChildGuard {
    let dir = dir.join(label);
    std::fs::create_dir_all(&dir).unwrap();
    let mut conf = format!(
        "server:\n  ip-address: {ip}\n  port: 53\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{d}\"\n  zonelistfile: \"{d}/zone.list\"\n  database: \"\"\n  \
         pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  \
         logfile: \"{d}/nsd.log\"\n  server-count: 1\n  hide-version: yes\n  \
         do-ip6: no\nremote-control:\n  control-enable: yes\n  \
         control-interface: \"{d}/control.sock\"\n",
        d = dir.display()
    );
    for (index, (origin, text)) in zones.iter().enumerate() {
        let file = format!("zone{index}.zone");
        std::fs::write(dir.join(&file), text).unwrap();
        conf.push_str(&format!(
            "zone:\n  name: \"{origin}\"\n  zonefile: \"{file}\"\n"
        ));
    }
    let what = format!("nsd {label} (log: {})", dir.join("nsd.log").display());
    spawn_daemon(Kind::Nsd, &["-d"], dir.join("nsd.conf"), &conf, what)
}

fn start_knot(dir: &Path, ip: Ipv4Addr, zones: &[(&str, &str)]) -> ChildGuard {
    let dir = dir.join("knot");
    std::fs::create_dir_all(&dir).unwrap();
    let mut conf = format!(
        "server:\n    listen: {ip}@53\n    rundir: \"{d}\"\n\
         control:\n    listen: \"{d}/knot.sock\"\n\
         database:\n    storage: \"{d}\"\n\
         log:\n  - target: \"{d}/knot.log\"\n    any: info\n\
         mod-stats:\n  - id: default\n    request-protocol: on\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    zonefile-sync: -1\n    \
         journal-content: none\n    global-module: mod-stats/default\n\
         zone:\n",
        d = dir.display()
    );
    for (index, (origin, text)) in zones.iter().enumerate() {
        let file = dir.join(format!("zone{index}.zone"));
        std::fs::write(&file, text).unwrap();
        conf.push_str(&format!(
            "  - domain: \"{origin}\"\n    file: \"{}\"\n",
            file.display()
        ));
    }
    let what = format!("knotd (log: {})", dir.join("knot.log").display());
    spawn_daemon(Kind::Knot, &[], dir.join("knot.conf"), &conf, what)
}

fn start_unbound(dir: &Path, hints: &Path) -> ChildGuard {
    let dir = dir.join("unbound");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        "server:\n  interface: {UNBOUND_IP}\n  port: 53\n  username: \"\"\n  chroot: \"\"\n  \
         directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  \
         logfile: \"\"\n  do-daemonize: no\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n  \
         do-not-query-localhost: no\n  root-hints: \"{h}\"\n  module-config: \"iterator\"\n  \
         qname-minimisation: yes\n  num-threads: 1\n  verbosity: 0\n\
         remote-control:\n  control-enable: no\n",
        d = dir.display(),
        h = hints.display()
    );
    spawn_daemon(
        Kind::Unbound,
        &["-d"],
        dir.join("unbound.conf"),
        &conf,
        "unbound".into(),
    )
}

/// Queries an authoritative server has answered so far: NSD's `num.queries`
/// (`nsd-control stats_noreset`) or Knot's `mod-stats.server-operation[query]` (`knotc stats`).
fn queries_served(guard: &ChildGuard) -> u64 {
    let (program, command, key) = match guard.kind {
        Kind::Nsd => ("nsd-control", "stats_noreset", "num.queries="),
        Kind::Knot => ("knotc", "stats", "mod-stats.server-operation[query] = "),
        Kind::Unbound => panic!("unbound is not an authoritative server"),
    };
    let output = Command::new(tool(program))
        .arg("-c")
        .arg(&guard.config)
        .arg(command)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    let text = String::from_utf8_lossy(&output.stdout);
    if guard.kind == Kind::Knot && !text.contains("mod-stats.server-operation") {
        return 0; // Knot prints no counter until the first query.
    }
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {program} output for {}: {text}", guard.what))
}

/// One stub query (RD set for Unbound, clear for an authoritative server), bounded in time.
fn ask(
    server: SocketAddr,
    name: &str,
    record_type: RecordType,
    recursion: bool,
) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut query = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = recursion;
    query.add_query(Query::query(Name::from_ascii(name).ok()?, record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    socket.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = vec![0u8; 65_535];
    let (len, _) = socket.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..len]).ok()?;
    (reply.metadata.id == query.metadata.id).then_some(reply)
}

fn wait_until_answering(guard: &mut ChildGuard, server: SocketAddr, name: &str, recursion: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("{} exited early with {status}", guard.what);
        }
        if let Some(reply) = ask(server, name, RecordType::SOA, recursion)
            && reply.metadata.response_code != ResponseCode::ServFail
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} did not answer at {server} within 15 s", guard.what);
}

/// The comparable content of an answer: rcode and the answer records without TTLs.
fn normalise(rcode: ResponseCode, records: &[Record]) -> (String, BTreeSet<String>) {
    let records = records
        .iter()
        .map(|r| format!("{} {} {}", r.name.to_lowercase(), r.record_type(), r.data))
        .collect();
    (format!("{rcode:?}"), records)
}

#[test]
fn our_answers_match_unbound_on_an_nsd_and_knot_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let hints_path = dir.path().join("interop.root");
    std::fs::write(
        &hints_path,
        ".  3600000  NS  ns.root-servers.interop.\nns.root-servers.interop.  3600000  A  127.0.53.1\n",
    )
    .unwrap();

    let mut servers = vec![
        (
            start_nsd(dir.path(), "root", ROOT_IP, &[(".", ROOT_ZONE)]),
            ROOT_IP,
            ".",
        ),
        (
            start_nsd(
                dir.path(),
                "tld",
                TLD_IP,
                &[("interop.", INTEROP_ZONE), ("elsewhere.", ELSEWHERE_ZONE)],
            ),
            TLD_IP,
            "interop.",
        ),
        (
            start_knot(
                dir.path(),
                LEAF_IP,
                &[
                    ("example.interop.", EXAMPLE_ZONE),
                    ("other.interop.", OTHER_ZONE),
                    ("glueless.interop.", GLUELESS_ZONE),
                ],
            ),
            LEAF_IP,
            "example.interop.",
        ),
    ];
    for (guard, ip, zone) in &mut servers {
        wait_until_answering(guard, SocketAddr::from((*ip, 53)), zone, false);
    }
    let unbound_addr = SocketAddr::from((UNBOUND_IP, 53));
    let mut unbound = start_unbound(dir.path(), &hints_path);
    wait_until_answering(&mut unbound, unbound_addr, "interop.", true);

    let config = ResolverConfig {
        allow_loopback: true,
        do_ip6: false,
        query_timeout_ms: 500,
        ..ResolverConfig::default()
    };
    let hints = RootHints::from_file(&hints_path).unwrap();
    let resolver = Resolver::with_parts(config, hints, Clock::system()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let upstream_total = |servers: &[(ChildGuard, Ipv4Addr, &str)]| -> u64 {
        servers
            .iter()
            .map(|(guard, _, _)| queries_served(guard))
            .sum()
    };
    // Unbound first, all questions, counting what the authoritative servers saw.
    let before = upstream_total(&servers);
    let mut theirs = Vec::new();
    for (name, record_type) in QUESTIONS {
        let reply = ask(unbound_addr, name, *record_type, true)
            .unwrap_or_else(|| panic!("unbound did not answer {name} {record_type}"));
        theirs.push(normalise(reply.metadata.response_code, &reply.answers));
    }
    let unbound_queries = upstream_total(&servers) - before;

    let before = upstream_total(&servers);
    let mut mismatches = Vec::new();
    let mut our_counted = 0;
    for ((name, record_type), theirs) in QUESTIONS.iter().zip(&theirs) {
        let ours = runtime
            .block_on(resolver.resolve(&Name::from_ascii(name).unwrap(), *record_type))
            .unwrap_or_else(|err| panic!("we failed {name} {record_type}: {err}"));
        our_counted += u64::from(ours.upstream_queries);
        let ours_normal = normalise(ours.rcode, &ours.answers);
        assert!(
            ours_normal.0 != "NoError" || !ours_normal.1.is_empty() || !ours.authorities.is_empty(),
            "{name}: empty answer without SOA"
        );
        if ours_normal != *theirs {
            mismatches.push(format!(
                "{name} {record_type}:\n  ours:    {ours_normal:?}\n  unbound: {theirs:?}"
            ));
        }
    }
    let our_queries = upstream_total(&servers) - before;
    // Our own count must agree with what the servers saw (no TCP retries in this hierarchy).
    assert_eq!(our_queries, our_counted);
    eprintln!(
        "interop: {} questions from a cold cache; upstream queries seen by NSD+Knot: \
         edgekit {our_queries}, unbound {unbound_queries}",
        QUESTIONS.len()
    );
    assert!(
        mismatches.is_empty(),
        "answers differ:\n{}",
        mismatches.join("\n")
    );
}
