//! `DnsServer` on loopback in front of an in-process hierarchy of authoritative servers.

use std::{
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use edgekit_dns::{
    Clock, DnsServer, Resolver, ResolverConfig, RootHints, ServerConfig,
    proto::{
        op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
        rr::{Name, RData, RecordType},
    },
};
use edgekit_testkit::dns::{Behaviour, DnsHierarchy, example_test_hierarchy};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

/// Records in `example.test.` beyond the fixture's `www`.
const EXAMPLE_RECORDS: &str = "
www2      IN A   192.0.2.2
slow      IN A   192.0.2.3
slow2     IN A   192.0.2.4
short   2 IN A   192.0.2.20
stale   1 IN A   192.0.2.30
big       IN TXT \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"
big       IN TXT \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\"
big       IN TXT \"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"
big       IN TXT \"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\"
big       IN TXT \"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"
big       IN TXT \"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\"
";

const TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    hierarchy: DnsHierarchy,
    server: DnsServer,
}

impl Fixture {
    async fn start() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let hierarchy = example_test_hierarchy(EXAMPLE_RECORDS)
            .start()
            .await
            .expect("the hierarchy starts");
        let hints = RootHints::parse(hierarchy.root_hints()).expect("hints parse");
        let resolver = Resolver::with_parts(
            ResolverConfig::for_loopback_hierarchy(hierarchy.port()),
            hints,
            Clock::system(),
        )
        .expect("valid resolver config");
        let mut config = ServerConfig::default();
        config.listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.udp_sockets_per_address = 2;
        adjust(&mut config);
        let server = DnsServer::start(config, resolver)
            .await
            .expect("the server starts");
        Self { hierarchy, server }
    }

    /// Make the leaf (ns1.example.test.) answer every query `delay` late, so a resolution is
    /// still under way while a test does something else.
    fn slow_leaf(&self, delay: Duration) {
        self.hierarchy
            .server("ns1.example.test.")
            .set_behaviour(Behaviour {
                delay: Some(delay),
                ..Behaviour::default()
            });
    }

    /// Make the leaf drop every query: the authority of `example.test.` is gone.
    fn dead_leaf(&self) {
        self.hierarchy
            .server("ns1.example.test.")
            .set_behaviour(Behaviour {
                drop: true,
                ..Behaviour::default()
            });
    }

    /// Ask `name`'s A record over UDP.
    async fn ask_a(&self, id: u16, name: &str) -> Message {
        udp_ask(self.udp(), &query(id, name, RecordType::A, None)).await
    }

    fn udp(&self) -> SocketAddr {
        self.server.udp_addresses()[0]
    }

    fn tcp(&self) -> SocketAddr {
        self.server.tcp_addresses()[0]
    }

    /// Questions the leaf server received for `name`.
    fn leaf_queries_for(&self, name: &str) -> usize {
        self.hierarchy
            .server("ns1.example.test.")
            .queries()
            .iter()
            .filter(|query| query.name.to_ascii().eq_ignore_ascii_case(name))
            .count()
    }
}

fn query(id: u16, name: &str, record_type: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), record_type));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message.to_vec().unwrap()
}

async fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let local = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let socket = UdpSocket::bind(local).await.unwrap();
    socket.send_to(packet, server).await.unwrap();
    let mut buffer = vec![0u8; 65_535];
    let (length, _) = tokio::time::timeout(TIMEOUT, socket.recv_from(&mut buffer))
        .await
        .expect("the server answers within the timeout")
        .unwrap();
    buffer.truncate(length);
    buffer
}

async fn udp_ask(server: SocketAddr, packet: &[u8]) -> Message {
    Message::from_vec(&udp_exchange(server, packet).await).expect("the answer parses")
}

/// Send all `packets` in one write on one connection and read as many answers.
async fn tcp_ask(server: SocketAddr, packets: &[Vec<u8>]) -> Vec<Message> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut bytes = Vec::new();
    for packet in packets {
        bytes.extend_from_slice(&u16::try_from(packet.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(packet);
    }
    stream.write_all(&bytes).await.unwrap();
    let mut answers = Vec::new();
    for _ in packets {
        let mut length = [0u8; 2];
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut length))
            .await
            .expect("the server answers within the timeout")
            .unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut body).await.unwrap();
        answers.push(Message::from_vec(&body).expect("the answer parses"));
    }
    answers
}

fn a_addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_udp_then_from_the_packet_cache() {
    let fixture = Fixture::start().await;
    let first = udp_ask(
        fixture.udp(),
        &query(7, "www.example.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(first.metadata.id, 7);
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(first.metadata.recursion_available);
    assert_eq!(a_addresses(&first), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(fixture.server.stats().cache_hits, 0);
    let upstream_before = fixture.hierarchy.total_queries();

    // Same question, different ID and case: served from the packet cache, no upstream query.
    let mut shouted = query(8, "www.example.test.", RecordType::A, Some(1232));
    shouted[13..16].copy_from_slice(b"WWW");
    let raw = udp_exchange(fixture.udp(), &shouted).await;
    assert_eq!(
        &raw[12..17],
        b"\x03WWW\x07",
        "the client's spelling is echoed"
    );
    let second = Message::from_vec(&raw).unwrap();
    assert_eq!(second.metadata.id, 8);
    assert_eq!(a_addresses(&second), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert!(second.edns.is_some(), "an EDNS query gets an OPT back");
    let stats = fixture.server.stats();
    assert_eq!(stats.cache_hits, 1);
    assert_eq!(stats.cache_misses, 1);
    assert_eq!(fixture.hierarchy.total_queries(), upstream_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_pipelined_queries_over_tcp() {
    let fixture = Fixture::start().await;
    let answers = tcp_ask(
        fixture.tcp(),
        &[
            query(1, "www.example.test.", RecordType::A, None),
            query(2, "www2.example.test.", RecordType::A, None),
            query(3, "nope.example.test.", RecordType::A, None),
        ],
    )
    .await;
    let mut by_id: Vec<_> = answers.iter().map(|answer| answer.metadata.id).collect();
    by_id.sort_unstable();
    assert_eq!(by_id, [1, 2, 3]);
    for answer in &answers {
        match answer.metadata.id {
            1 => assert_eq!(a_addresses(answer), [Ipv4Addr::new(192, 0, 2, 1)]),
            2 => assert_eq!(a_addresses(answer), [Ipv4Addr::new(192, 0, 2, 2)]),
            _ => assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_queries_get_formerr_and_notimp() {
    let fixture = Fixture::start().await;
    // A header announcing a question that is not there.
    let garbage = [0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3F, b'x'];
    let reply = udp_ask(fixture.udp(), &garbage).await;
    assert_eq!(reply.metadata.id, 0xABCD);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

    let mut status = query(9, "www.example.test.", RecordType::A, Some(1232));
    status[2] |= 2 << 3; // opcode STATUS
    let reply = udp_ask(fixture.udp(), &status).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    // RFC 6891 section 7: a request with OPT gets OPT back, whatever the rcode.
    assert!(reply.edns.is_some(), "NOTIMP dropped the client's OPT");
    assert_eq!(reply.queries.len(), 1);

    let mut badvers = query(10, "www.example.test.", RecordType::A, Some(1232));
    let version_at = badvers.len() - 5; // OPT TTL: ext-rcode, version, flags
    badvers[version_at] = 1;
    let reply = udp_ask(fixture.udp(), &badvers).await;
    assert_eq!(reply.metadata.id, 10);
    // Extended rcode 16 (BADVERS; hickory names the shared value BADSIG).
    assert_eq!(u16::from(reply.metadata.response_code), 16);

    let stats = fixture.server.stats();
    assert_eq!((stats.formerr, stats.notimp, stats.badvers), (1, 1, 1));
    assert_eq!(stats.resolutions, 0, "nothing malformed reached the engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_truncated_for_small_client_buffers() {
    let fixture = Fixture::start().await;
    let small = udp_ask(
        fixture.udp(),
        &query(1, "big.example.test.", RecordType::TXT, None),
    )
    .await;
    assert!(
        small.metadata.truncation,
        "over 512 bytes without EDNS sets TC"
    );
    assert!(small.answers.is_empty());
    assert_eq!(small.queries.len(), 1);

    // Now cached: the hit path truncates too, and a large EDNS buffer or TCP gets it all.
    let again = udp_ask(
        fixture.udp(),
        &query(2, "big.example.test.", RecordType::TXT, None),
    )
    .await;
    assert!(again.metadata.truncation);
    let large = udp_ask(
        fixture.udp(),
        &query(3, "big.example.test.", RecordType::TXT, Some(1232)),
    )
    .await;
    assert!(!large.metadata.truncation);
    assert_eq!(large.answers.len(), 6);
    let over_tcp = tcp_ask(
        fixture.tcp(),
        &[query(4, "big.example.test.", RecordType::TXT, None)],
    )
    .await;
    assert_eq!(over_tcp[0].answers.len(), 6);
    assert!(fixture.server.stats().truncated >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_acl_are_refused() {
    let fixture = Fixture::with(|config| {
        config.allow = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let reply = udp_ask(
        fixture.udp(),
        &query(5, "www.example.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(reply.answers.is_empty());
    assert_eq!(
        fixture.hierarchy.total_queries(),
        0,
        "refused queries go nowhere"
    );
    assert_eq!(fixture.server.stats().refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_questions_share_one_resolution() {
    let fixture = Fixture::start().await;
    // Slow leaf: every client's query arrives while the first resolution is still running.
    fixture.slow_leaf(Duration::from_millis(150));
    const CLIENTS: u16 = 20;
    let server = fixture.udp();
    let asks: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(async move {
                udp_ask(
                    server,
                    &query(id, "slow.example.test.", RecordType::A, None),
                )
                .await
            })
        })
        .collect();
    for ask in asks {
        let answer = ask.await.unwrap();
        assert_eq!(a_addresses(&answer), [Ipv4Addr::new(192, 0, 2, 3)]);
    }
    assert_eq!(fixture.leaf_queries_for("slow.example.test."), 1);
    let stats = fixture.server.stats();
    assert_eq!(stats.resolutions, 1);
    assert_eq!(stats.coalesced + stats.cache_hits, u64::from(CLIENTS) - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_past_the_resolution_bound_get_servfail() {
    let fixture = Fixture::with(|config| {
        config.max_concurrent_resolutions = 1;
        config.max_pending_queries = 1;
    })
    .await;
    fixture.slow_leaf(Duration::from_millis(150));
    let server = fixture.udp();
    let first = tokio::spawn(async move {
        udp_ask(server, &query(1, "slow.example.test.", RecordType::A, None)).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = udp_ask(
        server,
        &query(2, "slow2.example.test.", RecordType::A, None),
    )
    .await;
    assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
    let first = first.await.unwrap();
    assert_eq!(a_addresses(&first), [Ipv4Addr::new(192, 0, 2, 3)]);
    assert!(fixture.server.stats().overloaded >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_answering_after_a_flood_of_garbage_and_queries() {
    let fixture = Fixture::start().await;
    let server = fixture.udp();
    // Warm the cache so valid flood queries are hits.
    udp_ask(server, &query(1, "www.example.test.", RecordType::A, None)).await;
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 400;
    let floods: Vec<_> = (0..SENDERS)
        .map(|sender| {
            tokio::spawn(async move {
                let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let mut state = 0x9E37_79B9_u32.wrapping_mul(sender as u32 + 1);
                let valid = query(2, "www.example.test.", RecordType::A, None);
                for round in 0..PER_SENDER {
                    if round % 2 == 0 {
                        let length = (state % 80) as usize;
                        let garbage: Vec<u8> = (0..length)
                            .map(|_| {
                                state ^= state << 13;
                                state ^= state >> 17;
                                state ^= state << 5;
                                state as u8
                            })
                            .collect();
                        let _ = socket.send_to(&garbage, server).await;
                    } else {
                        let _ = socket.send_to(&valid, server).await;
                    }
                    // Drain what has arrived so the client's own buffer does not fill.
                    let mut buffer = [0u8; 4096];
                    while socket.try_recv_from(&mut buffer).is_ok() {}
                }
            })
        })
        .collect();
    for flood in floods {
        flood.await.unwrap();
    }
    let after = udp_ask(server, &query(3, "www2.example.test.", RecordType::A, None)).await;
    assert_eq!(a_addresses(&after), [Ipv4Addr::new(192, 0, 2, 2)]);
    // The other sockets' backlog may still be being worked through; UDP may drop some.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fixture.server.stats().queries <= (SENDERS * PER_SENDER / 2) as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "most of the flood was processed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = fixture.server.stats();
    assert!(stats.cache_hits > 0);
    assert!(stats.formerr + stats.dropped > 0);
    // Garbage never reaches the cache: it holds only the two real answers.
    assert!(fixture.server.packet_cache_len() <= 2);
    let tcp_after = tcp_ask(
        fixture.tcp(),
        &[query(4, "www.example.test.", RecordType::A, None)],
    )
    .await;
    assert_eq!(a_addresses(&tcp_after[0]), [Ipv4Addr::new(192, 0, 2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tcp_frame_closes_only_that_connection() {
    let fixture = Fixture::start().await;
    let mut bad = TcpStream::connect(fixture.tcp()).await.unwrap();
    bad.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, bad.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "the connection is closed");
    let good = tcp_ask(
        fixture.tcp(),
        &[query(1, "www.example.test.", RecordType::A, None)],
    )
    .await;
    assert_eq!(a_addresses(&good[0]), [Ipv4Addr::new(192, 0, 2, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_stops_answering() {
    let fixture = Fixture::start().await;
    let server = fixture.udp();
    udp_ask(server, &query(1, "www.example.test.", RecordType::A, None)).await;
    let Fixture {
        hierarchy,
        server: dns,
    } = fixture;
    assert!(dns.shutdown(Duration::from_secs(2)).await);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query(2, "www.example.test.", RecordType::A, None), server)
        .await
        .unwrap();
    let mut buffer = [0u8; 512];
    let reply =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buffer)).await;
    assert!(!matches!(reply, Ok(Ok(_))), "no answer after shutdown");
    drop(hierarchy);
}

/// A UDP miss is resolved on the worker thread that received it; stopping that worker must not
/// drop the resolution under way: its answer is still sent, and shutdown reports a full drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_udp_miss_already_being_resolved() {
    let fixture = Fixture::start().await;
    // Long enough to be sure shutdown starts while the resolution waits on the leaf,
    // well inside the loopback configuration's 300 ms upstream timeout.
    fixture.slow_leaf(Duration::from_millis(150));
    let server = fixture.udp();
    let asking = tokio::spawn(async move {
        udp_ask(server, &query(7, "slow.example.test.", RecordType::A, None)).await
    });
    // Until the question has reached the slow leaf, i.e. the resolution is under way.
    let started = std::time::Instant::now();
    while fixture.leaf_queries_for("slow.example.test.") == 0 {
        assert!(
            started.elapsed() < TIMEOUT,
            "the question never reached the leaf"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Fixture {
        hierarchy,
        server: dns,
    } = fixture;
    assert!(dns.shutdown(Duration::from_secs(3)).await, "drained");
    let answer = asking.await.unwrap();
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(
        a_addresses(&answer),
        [Ipv4Addr::new(192, 0, 2, 3)],
        "rcode {:?}",
        answer.metadata.response_code
    );
    drop(hierarchy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_use_names_are_answered_locally() {
    let fixture = Fixture::start().await;
    let localhost = udp_ask(fixture.udp(), &query(1, "localhost.", RecordType::A, None)).await;
    assert_eq!(a_addresses(&localhost), [Ipv4Addr::LOCALHOST]);
    assert_eq!(localhost.metadata.id, 1);
    let invalid = udp_ask(
        fixture.udp(),
        &query(2, "www.invalid.", RecordType::A, Some(1232)),
    )
    .await;
    assert_eq!(invalid.metadata.response_code, ResponseCode::NXDomain);
    assert!(invalid.edns.is_some());
    let private = udp_ask(
        fixture.udp(),
        &query(3, "4.3.2.10.in-addr.arpa.", RecordType::PTR, None),
    )
    .await;
    assert_eq!(private.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        fixture.hierarchy.total_queries(),
        0,
        "nothing went upstream"
    );
    let stats = fixture.server.stats();
    assert_eq!((stats.local_answers, stats.resolutions), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    let fixture = Fixture::with(|config| config.tcp_idle_timeout_ms = 200).await;
    let mut idle = TcpStream::connect(fixture.tcp()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, idle.read(&mut byte))
        .await
        .expect("the server closes an idle connection well before the test timeout");
    assert!(matches!(read, Ok(0) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_past_the_bound_are_closed_on_accept() {
    let fixture = Fixture::with(|config| config.max_tcp_connections = 1).await;
    let mut held = TcpStream::connect(fixture.tcp()).await.unwrap();
    // Prove the first connection is being served before opening the second.
    let mut frame = query(1, "localhost.", RecordType::A, None);
    frame.splice(0..0, u16::try_from(frame.len()).unwrap().to_be_bytes());
    held.write_all(&frame).await.unwrap();
    let mut length = [0u8; 2];
    tokio::time::timeout(TIMEOUT, held.read_exact(&mut length))
        .await
        .unwrap()
        .unwrap();
    let mut second = TcpStream::connect(fixture.tcp()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(TIMEOUT, second.read(&mut byte))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the second connection is closed"
    );
    assert_eq!(fixture.server.stats().tcp_rejected, 1);
    drop(held);
}

/// A connection to `server` whose receive buffer is small, so its replies back up quickly,
/// writing `frames` from a task and never reading.
async fn tcp_sender_that_never_reads(
    server: SocketAddr,
    frames: Vec<u8>,
) -> (tokio::net::tcp::OwnedReadHalf, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (reader, mut writer) = socket.connect(server).await.unwrap().into_split();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&frames).await;
        // Held open (the server must be the one to give up), until the test aborts this.
        std::future::pending::<()>().await;
    });
    (reader, sending)
}

fn tcp_frame(packet: Vec<u8>) -> Vec<u8> {
    let mut frame = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&packet);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_never_reads_loses_its_connection_slot() {
    let fixture = Fixture::with(|config| {
        config.max_tcp_connections = 1;
        config.tcp_idle_timeout_ms = 200;
    })
    .await;
    let frame = tcp_frame(query(1, "localhost.", RecordType::A, None));
    let (_reader, sending) =
        tcp_sender_that_never_reads(fixture.tcp(), frame.repeat(200_000)).await;
    // Once the server gives that connection up, the one slot serves a new client. Tried for
    // at most 50 rounds of 200 ms.
    let mut answered = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(mut next) = TcpStream::connect(fixture.tcp()).await else {
            continue;
        };
        if next.write_all(&frame).await.is_err() {
            continue;
        }
        let mut length = [0u8; 2];
        let read = tokio::time::timeout(Duration::from_secs(1), next.read_exact(&mut length));
        if matches!(read.await, Ok(Ok(_))) {
            answered = true;
            break;
        }
    }
    sending.abort();
    assert!(answered, "{:?}", fixture.server.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_reads_keeps_its_connection_while_slow_misses_fill_its_slots() {
    let fixture = Fixture::with(|config| config.tcp_idle_timeout_ms = 100).await;
    fixture.slow_leaf(Duration::from_millis(150));
    // More misses than a connection has reply slots, each taking longer than the idle timeout:
    // the later ones wait for slots, and that wait is not the client's idleness.
    let questions: Vec<Vec<u8>> = (0..100)
        .map(|n| query(n, &format!("n{n}.example.test."), RecordType::A, None))
        .collect();
    let answers = tcp_ask(fixture.tcp(), &questions).await;
    assert_eq!(answers.len(), 100);
    assert!(
        answers
            .iter()
            .all(|answer| answer.metadata.response_code == ResponseCode::NXDomain),
        "{:?}",
        answers
            .iter()
            .map(|a| a.metadata.response_code)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_never_reads_is_not_read_without_bound() {
    let fixture = Fixture::with(|config| {
        config.tcp_idle_timeout_ms = 300;
        config.max_concurrent_resolutions = 1;
        config.max_pending_queries = 1;
    })
    .await;
    // Distinct long names: every one a miss, answered SERVFAIL at once past the bounds.
    let label = "x".repeat(60);
    let sent = 60_000u32;
    let frames: Vec<u8> = (0..sent)
        .flat_map(|number| {
            let name = format!("q{number}.{label}.{label}.{label}.example.test.");
            tcp_frame(query(1, &name, RecordType::A, None))
        })
        .collect();
    let (mut reader, sending) = tcp_sender_that_never_reads(fixture.tcp(), frames).await;
    // Until the server has read nothing more for a second (at most 40 looks, 250 ms apart).
    let (mut read_by_server, mut unchanged) = (0, 0);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = fixture.server.stats().queries;
        unchanged = if now == read_by_server {
            unchanged + 1
        } else {
            0
        };
        read_by_server = now;
        if unchanged == 4 {
            break;
        }
    }
    // And it has given the connection up: reading drains what it had sent, then ends.
    let mut drained = vec![0u8; 65_536];
    let closed = tokio::time::timeout(TIMEOUT, async {
        while matches!(reader.read(&mut drained).await, Ok(read) if read > 0) {}
    })
    .await;
    sending.abort();
    assert!(
        read_by_server < u64::from(sent) / 3,
        "the server read {read_by_server} of {sent} queries from a client that took no replies"
    );
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_queries_hits_rcodes_and_resolution_time() {
    let fixture = Fixture::with(|config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    udp_ask(
        fixture.udp(),
        &query(1, "www.example.test.", RecordType::A, None),
    )
    .await;
    udp_ask(
        fixture.udp(),
        &query(2, "www.example.test.", RecordType::A, None),
    )
    .await;
    udp_ask(
        fixture.udp(),
        &query(3, "nope.example.test.", RecordType::A, None),
    )
    .await;
    let upstream = fixture.server.resolver().stats().upstream_queries;

    let address = fixture.server.metrics_address().expect("metrics are on");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: edgekit\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for line in [
        "edgekit_dns_queries_total 3".to_string(),
        "edgekit_dns_cache_hits_total 1".to_string(),
        "edgekit_dns_cache_misses_total 2".to_string(),
        "edgekit_dns_replies_total{rcode=\"NOERROR\"} 2".to_string(),
        "edgekit_dns_replies_total{rcode=\"NXDOMAIN\"} 1".to_string(),
        "edgekit_dns_resolution_seconds_count 2".to_string(),
        format!("edgekit_dns_upstream_queries_total {upstream}"),
    ] {
        assert!(response.contains(&line), "missing {line:?} in:\n{response}");
    }
    assert!(upstream >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_asked_for_close_to_expiry_are_prefetched() {
    let fixture = Fixture::with(|config| config.prefetch_percent = 60).await;
    let started = std::time::Instant::now();
    let short = query(1, "short.example.test.", RecordType::A, None);
    let server = fixture.udp();
    let ask = || udp_ask(server, &short);
    assert_eq!(a_addresses(&ask().await), [Ipv4Addr::new(192, 0, 2, 20)]);
    assert_eq!(fixture.leaf_queries_for("short.example.test."), 1);
    // Past 40% of the 2 s lifetime, less than 60% is left: the hit triggers a refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a_addresses(&ask().await), [Ipv4Addr::new(192, 0, 2, 20)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while fixture.leaf_queries_for("short.example.test.") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no prefetch reached the leaf"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After the first answer's 2 s have run out, the refreshed one is still served from cache.
    tokio::time::sleep(Duration::from_millis(2400).saturating_sub(started.elapsed())).await;
    assert_eq!(a_addresses(&ask().await), [Ipv4Addr::new(192, 0, 2, 20)]);
    let stats = fixture.server.stats();
    assert_eq!(stats.cache_misses, 1, "only the first query missed");
    assert_eq!(stats.cache_hits, 2);
    assert!(stats.prefetches >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_served_stale_when_the_authority_dies() {
    let fixture = Fixture::with(|config| {
        config.serve_stale_max_seconds = 60;
        config.stale_client_timeout_ms = 300;
        config.prefetch_percent = 0;
    })
    .await;
    let stale = query(1, "stale.example.test.", RecordType::A, None);
    let fresh = udp_ask(fixture.udp(), &stale).await;
    assert_eq!(a_addresses(&fresh), [Ipv4Addr::new(192, 0, 2, 30)]);
    fixture.dead_leaf();
    // The 1 s TTL runs out; the leaf no longer answers.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = udp_ask(fixture.udp(), &stale).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addresses(&answer), [Ipv4Addr::new(192, 0, 2, 30)]);
    assert_eq!(answer.answers[0].ttl, 30, "stale answers carry a 30 s TTL");
    let stats = fixture.server.stats();
    assert_eq!(stats.stale_answers, 1);
    assert_eq!(stats.cache_misses, 2);

    // The refresh gives up after three unanswered tries (50 + 100 + 200 ms); from then on, for
    // RFC 8767's failure recheck time, the stale answer comes at once and nothing is resolved.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resolutions_before = fixture.server.stats().resolutions;
    let again = udp_ask(fixture.udp(), &stale).await;
    assert_eq!(a_addresses(&again), [Ipv4Addr::new(192, 0, 2, 30)]);
    let stats = fixture.server.stats();
    assert_eq!(stats.stale_answers, 2);
    assert_eq!(
        stats.resolutions, resolutions_before,
        "a question whose refresh just failed was resolved again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_served_stale_when_the_server_is_overloaded() {
    let fixture = Fixture::with(|config| {
        config.serve_stale_max_seconds = 60;
        config.stale_client_timeout_ms = 300;
        config.prefetch_percent = 0;
        config.max_concurrent_resolutions = 1;
        config.max_pending_queries = 1;
    })
    .await;
    let stale = query(1, "stale.example.test.", RecordType::A, None);
    udp_ask(fixture.udp(), &stale).await;
    // The 1 s TTL runs out while a resolution the leaf never answers in time (three tries,
    // at least 50 + 100 + 200 ms) takes the one pending place.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    fixture.slow_leaf(Duration::from_secs(2));
    let blocker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    blocker
        .send_to(
            &query(2, "slow.example.test.", RecordType::A, None),
            fixture.udp(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = udp_ask(fixture.udp(), &stale).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addresses(&answer), [Ipv4Addr::new(192, 0, 2, 30)]);
    assert_eq!(answer.answers[0].ttl, 30, "a stale answer's TTL");
    let stats = fixture.server.stats();
    assert_eq!((stats.overloaded, stats.stale_answers), (1, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_the_only_server_does_not_answer_in_time_is_sent_again() {
    let fixture = Fixture::start().await;
    // The leaf's RTT is now measured in microseconds, so its timeout is the 50 ms floor.
    fixture.ask_a(1, "www.example.test.").await;
    fixture.slow_leaf(Duration::from_millis(80));
    let answer = fixture.ask_a(2, "slow.example.test.").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_addresses(&answer), [Ipv4Addr::new(192, 0, 2, 3)]);
    // Unanswered within 50 ms, then answered within the doubled 100 ms (or, on a machine
    // slow enough to miss that too, the 200 ms of a third try).
    let sends = fixture.leaf_queries_for("slow.example.test.");
    assert!((2..=3).contains(&sends), "{sends} queries sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_failing_is_not_asked_again_within_a_resolution() {
    let fixture = Fixture::start().await;
    fixture.ask_a(1, "www.example.test.").await;
    fixture.dead_leaf();
    let first = fixture.ask_a(2, "www2.example.test.").await;
    assert_eq!(first.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        fixture.leaf_queries_for("www2.example.test."),
        3,
        "three rounds"
    );
    // Three failures in a row: the server is down, and the next resolution asks it once.
    let second = fixture.ask_a(3, "slow.example.test.").await;
    assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(fixture.leaf_queries_for("slow.example.test."), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_the_acl_and_keeps_the_cache() {
    let fixture = Fixture::start().await;
    let www = query(1, "www.example.test.", RecordType::A, None);
    udp_ask(fixture.udp(), &www).await;
    let upstream = fixture.hierarchy.total_queries();

    let mut config = ServerConfig::default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()]; // as started
    config.udp_sockets_per_address = 2;
    config.allow = Some(vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ]);
    config.max_tcp_connections = 7;
    let needs_restart = fixture.server.reload(config.clone()).unwrap();
    assert_eq!(needs_restart, ["max_tcp_connections"]);
    let cached = udp_ask(fixture.udp(), &www).await;
    assert_eq!(a_addresses(&cached), [Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(
        fixture.server.stats().cache_hits,
        1,
        "the cache survived the reload"
    );
    assert_eq!(fixture.hierarchy.total_queries(), upstream);

    config.allow = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    fixture.server.reload(config.clone()).unwrap();
    let refused = udp_ask(fixture.udp(), &www).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

    config.max_udp_payload = 10;
    assert!(
        fixture.server.reload(config).is_err(),
        "bad values are rejected"
    );
    let still_refused = udp_ask(fixture.udp(), &www).await;
    assert_eq!(still_refused.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_their_rate_limit_are_dropped() {
    let fixture = Fixture::with(|config| {
        config.rate_limit_per_client = 2;
        config.rate_limit_burst = 5;
    })
    .await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    const SENT: u16 = 20;
    for id in 0..SENT {
        socket
            .send_to(&query(id, "localhost.", RecordType::A, None), fixture.udp())
            .await
            .unwrap();
    }
    let mut answered = 0;
    let mut buffer = [0u8; 512];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buffer)).await
    {
        answered += 1;
    }
    // The burst of 5, plus at most one refill token while the 20 were being sent.
    assert!((5..=6).contains(&answered), "answered {answered}");
    let stats = fixture.server.stats();
    assert_eq!(stats.rate_limited, u64::from(SENT) - answered);
    // Another client address has its own bucket.
    let other = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    other
        .send_to(&query(99, "localhost.", RecordType::A, None), fixture.udp())
        .await
        .unwrap();
    let (length, _) = tokio::time::timeout(TIMEOUT, other.recv_from(&mut buffer))
        .await
        .expect("another client is answered")
        .unwrap();
    let reply = Message::from_vec(&buffer[..length]).unwrap();
    assert_eq!(a_addresses(&reply), [Ipv4Addr::LOCALHOST]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_udp_and_tcp_on_an_ipv6_loopback_listen_address() {
    let fixture = Fixture::with(|config| config.listen = vec!["[::1]:0".parse().unwrap()]).await;
    let udp = fixture.udp();
    let tcp = fixture.tcp();
    assert!(udp.ip().is_ipv6() && udp.ip().is_loopback(), "{udp}");
    assert_eq!(udp, tcp, "UDP and TCP share the port");
    let over_udp = udp_ask(udp, &query(21, "www.example.test.", RecordType::A, None)).await;
    assert_eq!(over_udp.metadata.id, 21);
    assert_eq!(a_addresses(&over_udp), [Ipv4Addr::new(192, 0, 2, 1)]);
    let over_tcp = tcp_ask(
        tcp,
        &[
            query(22, "www.example.test.", RecordType::A, None),
            query(23, "www2.example.test.", RecordType::A, None),
        ],
    )
    .await;
    let mut ids: Vec<_> = over_tcp.iter().map(|answer| answer.metadata.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [22, 23]);
    for answer in &over_tcp {
        let expected = if answer.metadata.id == 22 { 1 } else { 2 };
        assert_eq!(a_addresses(answer), [Ipv4Addr::new(192, 0, 2, expected)]);
    }
    // The second www question (over TCP) came from the packet cache filled over UDP.
    assert_eq!(fixture.server.stats().cache_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_questions_get_one_synthesised_hinfo_per_rfc_8482() {
    let fixture = Fixture::start().await;
    let upstream_before = fixture.hierarchy.total_queries();
    let mut any = query(31, "www.example.test.", RecordType::ANY, Some(1232));
    any[13..16].copy_from_slice(b"wWw");
    let raw = udp_exchange(fixture.udp(), &any).await;
    assert_eq!(
        &raw[12..17],
        b"\x03wWw\x07",
        "the client's spelling is echoed"
    );
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.id, 31);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.recursion_available && reply.metadata.recursion_desired);
    assert!(reply.edns.is_some(), "an EDNS query gets an OPT back");
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
    let record = &reply.answers[0];
    assert_eq!(record.record_type(), RecordType::HINFO);
    assert_eq!(record.name.to_ascii(), "wWw.example.test.");
    let RData::HINFO(hinfo) = &record.data else {
        panic!("not HINFO: {record:?}");
    };
    assert_eq!(&*hinfo.cpu, b"RFC8482");
    assert!(hinfo.os.is_empty());

    // Over TCP too, and neither went upstream.
    let over_tcp = tcp_ask(
        fixture.tcp(),
        &[query(32, "nope.example.test.", RecordType::ANY, None)],
    )
    .await;
    assert_eq!(over_tcp[0].metadata.id, 32);
    assert_eq!(over_tcp[0].answers.len(), 1);
    assert_eq!(over_tcp[0].answers[0].record_type(), RecordType::HINFO);
    assert_eq!(fixture.hierarchy.total_queries(), upstream_before);
    let stats = fixture.server.stats();
    assert_eq!(
        (stats.local_answers, stats.notimp, stats.resolutions),
        (2, 0, 0)
    );
}
