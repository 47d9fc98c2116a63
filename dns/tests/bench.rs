//! The load generator against a tiny in-process responder on loopback: counts add up, limits
//! hold, losses and late replies are counted, and bad query files are rejected by line.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use edgekit_dns::bench::{
    self, BenchConfig, BenchError, LiveStats, Load, QueryFileError, Stop, Transport,
};

/// How the responder misbehaves.
#[derive(Clone, Copy, Default)]
struct Behaviour {
    /// Drop every Nth query received.
    drop_every: Option<u64>,
    /// Reply this long after the query arrives.
    delay: Option<Duration>,
}

/// Answers every query by echoing it with QR set: NOERROR, or NXDOMAIN for AAAA questions.
struct Responder {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// The most complete TCP frames one read returned (pipelining shows as more than one).
    max_frames_per_read: Arc<AtomicUsize>,
    /// UDP queries received and not yet answered, and the most there ever were.
    in_flight: Arc<AtomicU64>,
    max_in_flight: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn reply_to(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 17 {
        return None;
    }
    let mut reply = query.to_vec();
    reply[2] |= 0x80;
    reply[3] |= 0x80;
    let qtype = u16::from_be_bytes([query[query.len() - 4], query[query.len() - 3]]);
    if qtype == 28 {
        reply[3] = (reply[3] & 0xF0) | 3;
    }
    Some(reply)
}

impl Responder {
    fn new() -> Self {
        Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            received: Arc::default(),
            dropped: Arc::default(),
            max_frames_per_read: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        }
    }

    fn udp(behaviour: Behaviour) -> Self {
        let mut responder = Self::new();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        responder.addr = socket.local_addr().unwrap();
        let (received, dropped, stop) = (
            responder.received.clone(),
            responder.dropped.clone(),
            responder.stop.clone(),
        );
        let (in_flight, max_in_flight) =
            (responder.in_flight.clone(), responder.max_in_flight.clone());
        responder.threads.push(std::thread::spawn(move || {
            let socket = Arc::new(socket);
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let number = received.fetch_add(1, Ordering::Relaxed) + 1;
                if behaviour
                    .drop_every
                    .is_some_and(|every| number % every == 0)
                {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Some(reply) = reply_to(&buffer[..length]) else {
                    continue;
                };
                let now_in_flight = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                max_in_flight.fetch_max(now_in_flight, Ordering::Relaxed);
                match behaviour.delay {
                    None => {
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                        let _ = socket.send_to(&reply, peer);
                    }
                    Some(delay) => {
                        let socket = socket.clone();
                        let in_flight = in_flight.clone();
                        std::thread::spawn(move || {
                            std::thread::sleep(delay);
                            // Before the send: once sent, the generator may send the next one.
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                            let _ = socket.send_to(&reply, peer);
                        });
                    }
                }
            }
        }));
        responder
    }

    /// A TCP responder; with `close_after`, each connection is closed after that many queries.
    fn tcp(close_after: Option<u64>) -> Self {
        let mut responder = Self::new();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        responder.addr = listener.local_addr().unwrap();
        let (received, max_frames, stop) = (
            responder.received.clone(),
            responder.max_frames_per_read.clone(),
            responder.stop.clone(),
        );
        responder.threads.push(std::thread::spawn(move || {
            let mut connections = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (received, max_frames, stop) =
                            (received.clone(), max_frames.clone(), stop.clone());
                        connections.push(std::thread::spawn(move || {
                            serve_tcp(stream, &received, &max_frames, &stop, close_after);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for connection in connections {
                let _ = connection.join();
            }
        }));
        responder
    }
}

fn serve_tcp(
    mut stream: TcpStream,
    received: &AtomicU64,
    max_frames: &AtomicUsize,
    stop: &AtomicBool,
    close_after: Option<u64>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut answered_here = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let read = match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => read,
            Err(_) => continue,
        };
        pending.extend_from_slice(&chunk[..read]);
        let mut frames = 0;
        let mut replies = Vec::new();
        while pending.len() >= 2 {
            let length = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + length {
                break;
            }
            let query: Vec<u8> = pending.drain(..2 + length).skip(2).collect();
            frames += 1;
            received.fetch_add(1, Ordering::Relaxed);
            if close_after.is_some_and(|limit| answered_here >= limit) {
                // Drop the connection with queries unanswered, as a server at its limit does.
                let _ = stream.write_all(&replies);
                return;
            }
            answered_here += 1;
            if let Some(reply) = reply_to(&query) {
                replies.extend_from_slice(&(reply.len() as u16).to_be_bytes());
                replies.extend_from_slice(&reply);
            }
        }
        max_frames.fetch_max(frames, Ordering::Relaxed);
        if stream.write_all(&replies).is_err() {
            return;
        }
    }
}

/// Three A questions and one AAAA (answered NXDOMAIN by the responder).
const QUERIES: &str = "; dnsperf query file\nwww.example.com A\n\n# comment\nexample.net A\nmail.example.org MX\nv6.example.com AAAA\n";

fn config(server: SocketAddr, stop: Stop) -> BenchConfig {
    let mut config = BenchConfig::new(server, stop);
    config.timeout = Duration::from_millis(300);
    config
}

/// One TCP connection, `load` on it, and a 200 ms timeout.
fn tcp_config(server: SocketAddr, stop: Stop, load: Load) -> BenchConfig {
    let mut config = config(server, stop);
    config.transport = Transport::Tcp;
    config.load = load;
    config.sockets = 1;
    config.timeout = Duration::from_millis(200);
    config
}

fn run(config: &BenchConfig) -> bench::Report {
    let queries = bench::parse_query_file(QUERIES).unwrap();
    bench::run(config, &queries, &LiveStats::default()).unwrap()
}

#[test]
fn udp_count_is_bounded_and_counts_add_up() {
    let responder = Responder::udp(Behaviour::default());
    let mut config = config(responder.addr, Stop::Count(1000));
    config.load = Load::Concurrency(16);
    let live = LiveStats::default();
    let queries = bench::parse_query_file(QUERIES).unwrap();
    let report = bench::run(&config, &queries, &live).unwrap();

    assert_eq!(report.sent, 1000);
    assert_eq!(report.answered, 1000);
    assert_eq!(report.lost, 0);
    assert_eq!(responder.received.load(Ordering::Relaxed), 1000);
    assert_eq!((live.sent(), live.answered(), live.lost()), (1000, 1000, 0));
    // One query in four is the AAAA question, which the responder answers NXDOMAIN.
    let expected: HashMap<String, u64> =
        [("NOERROR".to_owned(), 750), ("NXDOMAIN".to_owned(), 250)].into();
    assert_eq!(
        report.rcodes.into_iter().collect::<HashMap<_, _>>(),
        expected
    );
    assert_eq!(report.latency_micros.len(), 1000);
    let latency = report.latency_ms;
    assert!(latency.min <= latency.p50 && latency.p50 <= latency.p90);
    assert!(latency.p90 <= latency.p99 && latency.p99 <= latency.p99_9);
    assert!(latency.p99_9 <= latency.max && latency.max > 0.0);
    assert!(report.qps > 0.0);
}

#[test]
fn udp_window_is_filled_and_never_exceeded() {
    // Every reply 100 ms late: each socket's sender has its whole share out long before the
    // first reply frees a slot (even on a loaded machine), and may send the next query only
    // when one does.
    let responder = Responder::udp(Behaviour {
        drop_every: None,
        delay: Some(Duration::from_millis(100)),
    });
    let mut config = config(responder.addr, Stop::Count(48));
    config.load = Load::Concurrency(12);
    config.sockets = 3;
    let report = run(&config);

    assert_eq!((report.sent, report.answered, report.lost), (48, 48, 0));
    assert_eq!(responder.max_in_flight.load(Ordering::Relaxed), 12);
}

#[test]
fn dropped_queries_are_counted_lost() {
    let responder = Responder::udp(Behaviour {
        drop_every: Some(5),
        delay: None,
    });
    let mut config = config(responder.addr, Stop::Count(200));
    config.load = Load::Concurrency(8);
    config.timeout = Duration::from_millis(150);
    let report = run(&config);

    let dropped = responder.dropped.load(Ordering::Relaxed);
    assert_eq!(dropped, 40);
    assert_eq!(report.sent, 200);
    assert_eq!(report.lost, dropped);
    assert_eq!(report.answered, 160);
    assert_eq!(report.sent, report.answered + report.lost);
}

#[test]
fn late_replies_are_lost_and_then_ignored() {
    // Every reply comes 250 ms after its query, past the 80 ms timeout.
    let responder = Responder::udp(Behaviour {
        drop_every: None,
        delay: Some(Duration::from_millis(250)),
    });
    let mut config = config(responder.addr, Stop::Duration(Duration::from_millis(600)));
    config.load = Load::Rate(50);
    config.sockets = 1;
    config.timeout = Duration::from_millis(80);
    let report = run(&config);

    assert!(report.sent > 0);
    assert_eq!(report.answered, 0);
    assert_eq!(report.lost, report.sent);
    assert!(
        report.late_replies > 0,
        "replies that came after the timeout were not seen as late: {report:?}"
    );
}

#[test]
fn rate_is_roughly_respected() {
    let responder = Responder::udp(Behaviour::default());
    let mut config = config(responder.addr, Stop::Duration(Duration::from_secs(1)));
    config.load = Load::Rate(200);
    let report = run(&config);

    // 200 qps for one second: loose bounds, this is not a speed test.
    assert!(
        (120..=280).contains(&report.sent),
        "sent {} queries at 200 qps for 1 s",
        report.sent
    );
    assert_eq!(report.sent, report.answered + report.lost);
    assert!(report.qps < 400.0, "qps {} at a 200 qps rate", report.qps);
}

#[test]
fn duration_stops_sending_and_counts_add_up() {
    let responder = Responder::udp(Behaviour::default());
    let mut config = config(responder.addr, Stop::Duration(Duration::from_millis(300)));
    config.load = Load::Concurrency(4);
    let report = run(&config);

    assert!(report.answered > 0);
    assert_eq!(report.sent, report.answered + report.lost);
    assert!(
        (0.2..3.0).contains(&report.elapsed_seconds),
        "a 300 ms run took {} s",
        report.elapsed_seconds
    );
}

#[test]
fn tcp_pipelines_queries_on_a_connection() {
    let responder = Responder::tcp(None);
    let mut config = config(responder.addr, Stop::Count(600));
    config.transport = Transport::Tcp;
    config.load = Load::Concurrency(32);
    config.sockets = 2;
    let report = run(&config);

    assert_eq!(report.sent, 600);
    assert_eq!(report.answered, 600);
    assert_eq!(report.lost, 0);
    assert_eq!(responder.received.load(Ordering::Relaxed), 600);
    assert!(
        responder.max_frames_per_read.load(Ordering::Relaxed) > 1,
        "queries were never pipelined: the server never read two frames at once"
    );
}

#[test]
fn tcp_reconnects_when_the_server_closes_and_counts_the_rest_lost() {
    let responder = Responder::tcp(Some(50));
    let mut config = config(responder.addr, Stop::Count(400));
    config.transport = Transport::Tcp;
    config.load = Load::Concurrency(8);
    config.sockets = 1;
    let report = run(&config);

    assert_eq!(report.sent, 400);
    assert_eq!(report.sent, report.answered + report.lost);
    // One connection cannot have carried 400 queries: the generator reconnected.
    assert!(report.answered > 50, "never reconnected: {report:?}");
    assert!(
        report.lost > 0,
        "queries in flight on a closed connection must count lost"
    );
}

#[test]
fn silent_server_loses_every_query_without_failing() {
    // A port that was just released: nothing answers there.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config(addr, Stop::Count(20));
    config.timeout = Duration::from_millis(100);
    let report = run(&config);

    assert_eq!((report.sent, report.answered, report.lost), (20, 0, 20));
    let text = report.to_string();
    assert!(text.contains("Queries lost:     20 (100.00%)"), "{text}");
    assert!(text.contains("Latency (ms):     no replies"), "{text}");
}

#[test]
fn tcp_connection_refused_is_an_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = config(addr, Stop::Count(5));
    config.transport = Transport::Tcp;
    let queries = bench::parse_query_file(QUERIES).unwrap();
    let err = bench::run(&config, &queries, &LiveStats::default()).unwrap_err();
    assert!(matches!(err, BenchError::Connect { .. }), "{err}");
}

#[test]
fn bad_query_files_name_the_line() {
    let cases = [
        ("www.example.com A\nexample.com BOGUS\n", "line 2", "BOGUS"),
        ("; c\n\nwww..example.com A\n", "line 3", "invalid name"),
        ("example.com A IN extra\n", "line 1", "extra field"),
    ];
    for (text, line, problem) in cases {
        let err = bench::parse_query_file(text).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, QueryFileError::BadLine { .. }), "{message}");
        assert!(message.contains(line), "{message:?} does not name {line}");
        assert!(
            message.contains(problem),
            "{message:?} does not say {problem}"
        );
    }
    assert!(matches!(
        bench::parse_query_file("; only a comment\n\n"),
        Err(QueryFileError::Empty)
    ));
}

#[test]
fn query_file_encodes_dnsperf_style_queries() {
    let queries =
        bench::parse_query_file("www.Example.com aaaa\nexample.net\nx.example TYPE65\n").unwrap();
    let types: Vec<u16> = queries.iter().map(|q| q.record_type.into()).collect();
    assert_eq!(types, [28, 1, 65]);
    let message = edgekit_dns::proto::op::Message::from_vec(&queries[0].wire).unwrap();
    assert!(message.metadata.recursion_desired);
    assert_eq!(message.queries[0].name().to_string(), "www.Example.com.");
    assert!(message.edns.is_none());
}

#[test]
fn invalid_config_names_the_field() {
    let mut config = BenchConfig::new("127.0.0.1:53".parse().unwrap(), Stop::Count(1));
    config.load = Load::Concurrency(0);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("concurrency"), "{err}");
    config.load = Load::Rate(10);
    config.stop = Stop::Count(0);
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("count"), "{err}");
    config.stop = Stop::Count(1);
    for bad in [0, 33] {
        config.receive_batch = bad;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("receive_batch"), "{err}");
    }
}

/// One reply read (and so one query sent) at a time still keeps every count exact.
#[test]
fn udp_one_reply_per_receive_counts_add_up() {
    let responder = Responder::udp(Behaviour::default());
    let mut config = config(responder.addr, Stop::Count(400));
    config.load = Load::Concurrency(16);
    config.receive_batch = 1;
    let report = run(&config);
    assert_eq!((report.sent, report.answered, report.lost), (400, 400, 0));
    assert_eq!(responder.received.load(Ordering::Relaxed), 400);
}

#[test]
fn report_serialises_to_json_and_plots_as_svg() {
    let responder = Responder::udp(Behaviour::default());
    let report = run(&config(responder.addr, Stop::Count(300)));

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["sent"], 300);
    assert_eq!(json["answered"], 300);
    assert_eq!(json["lost"], 0);
    assert_eq!(json["transport"], "udp");
    assert_eq!(json["rcodes"]["NXDOMAIN"], 75);
    assert!(json["latency_ms"]["p99.9"].as_f64().unwrap() > 0.0);

    let svg = bench::latency_svg(&report);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for label in ["p50", "p90", "p99 ", "polyline", "latency (ms)", "99%"] {
        assert!(svg.contains(label), "chart has no {label:?}");
    }
    // 300 samples support two nines; the chart does not claim a p99.9 point.
    assert!(!svg.contains("p99.9 "));
}

#[test]
fn the_answer_log_is_off_by_default_and_holds_at_most_its_limit() {
    let responder = Responder::udp(Behaviour::default());
    let queries = bench::parse_query_file(QUERIES).unwrap();
    let mut config = config(responder.addr, Stop::Count(200));
    config.sockets = 2;
    let report = bench::run(&config, &queries, &LiveStats::default()).unwrap();
    assert!(report.answered_queries.is_empty());
    assert_eq!(report.answered_queries_not_kept, 0);

    // Each socket keeps its share, however the 200 queries were spread over the two. A long
    // timeout, so a loaded machine does not turn slow answers into losses.
    config.timeout = Duration::from_secs(10);
    config.answer_log_limit = 40;
    let report = bench::run(&config, &queries, &LiveStats::default()).unwrap();
    assert_eq!(report.answered, 200);
    let kept = report.answered_queries.len() as u64;
    assert!((20..=40).contains(&kept), "kept {kept}");
    assert_eq!(kept + report.answered_queries_not_kept, report.answered);

    config.sockets = 1;
    let report = bench::run(&config, &queries, &LiveStats::default()).unwrap();
    assert_eq!(report.answered_queries.len(), 40);
    assert_eq!(report.answered_queries_not_kept, 160);

    // Fewer workers than sockets (one outstanding query, so one worker): that worker gets
    // the whole limit, not a quarter of it.
    config.sockets = 4;
    config.load = Load::Concurrency(1);
    let report = bench::run(&config, &queries, &LiveStats::default()).unwrap();
    assert_eq!(report.answered_queries.len(), 40);
    assert_eq!(report.answered_queries_not_kept, 160);
    let mut previous_sent = 0;
    for answer in &report.answered_queries {
        assert!(answer.sent_micros >= previous_sent, "in send order");
        previous_sent = answer.sent_micros;
        assert!(answer.latency_micros >= 1);
        // The responder answers the file's one AAAA question NXDOMAIN and the rest NOERROR.
        let expected = if queries[answer.query].record_type.to_string() == "AAAA" {
            "NXDOMAIN"
        } else {
            "NOERROR"
        };
        assert_eq!(answer.rcode_name(), expected);
    }
}

/// Run `config` on another thread and wait at most `limit` for it, so a generator that hangs
/// fails the test instead of stalling the suite.
fn run_within(config: BenchConfig, queries: &str, limit: Duration) -> bench::Report {
    let queries = bench::parse_query_file(queries).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(bench::run(&config, &queries, &LiveStats::default()));
    });
    finished
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the run did not end within {limit:?}"))
        .unwrap()
}

#[test]
fn tcp_server_that_stops_reading_cannot_hold_the_run() {
    // Accepts connections and never reads them: the generator's writes fill both sides'
    // buffers and then block.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            listener.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };
    // Long names, so a window's worth of queries is more than the socket buffers hold.
    let long_name = format!("{}.example", vec!["x".repeat(60); 3].join("."));
    let mut config = config(addr, Stop::Duration(Duration::from_millis(400)));
    config.transport = Transport::Tcp;
    config.load = Load::Concurrency(60_000);
    config.sockets = 1;
    config.timeout = Duration::from_millis(300);
    let report = run_within(config, &format!("{long_name} A\n"), Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    accepting.join().unwrap();

    assert!(report.sent >= 60_000, "{report:?}");
    assert_eq!(report.answered, 0);
    assert_eq!(report.sent, report.lost);
}

#[test]
fn tcp_reconnects_that_fail_cost_queries_not_the_run() {
    // Serves one connection for 20 queries, closes it, and stops listening: every reconnect
    // is refused.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let server = {
        let received = received.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            drop(listener);
            let (frames, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
            serve_tcp(stream, &received, &frames, &stop, Some(20));
        })
    };
    let config = tcp_config(addr, Stop::Count(80), Load::Concurrency(4));
    let report = run_within(config, QUERIES, Duration::from_secs(30));
    server.join().unwrap();

    assert_eq!(report.sent, 80);
    assert_eq!(report.answered, 20, "{report:?}");
    assert_eq!(report.lost, 60);
}

#[test]
fn a_rate_is_kept_by_the_sockets_together_and_never_run_ahead_of() {
    let responder = Responder::udp(Behaviour::default());
    let mut config = config(responder.addr, Stop::Count(10));
    config.load = Load::Rate(20);
    config.sockets = 4;
    config.timeout = Duration::from_secs(5);
    // Split over the sockets like the load: room for all ten in each.
    config.answer_log_limit = 40;
    let queries = bench::parse_query_file(QUERIES).unwrap();
    let report = bench::run(&config, &queries, &LiveStats::default()).unwrap();
    assert_eq!(report.answered, 10);

    let mut sent: Vec<u64> = report
        .answered_queries
        .iter()
        .map(|answer| answer.sent_micros)
        .collect();
    sent.sort_unstable();
    assert_eq!(sent.len(), 10);
    // Query k is due 50 ms after query k - 1: however the sockets share them, the k-th send
    // cannot come before k * 50 ms.
    for (k, micros) in sent.iter().enumerate() {
        assert!(
            *micros >= k as u64 * 50_000,
            "send {k} at {micros} µs: {sent:?}"
        );
    }
    // The ten are due by 450 ms. One socket pacing all ten at a quarter of the rate (as when
    // each socket kept its own share of it) would take 1.8 s.
    assert!(sent[9] < 1_200_000, "the last send at {} µs", sent[9]);
}

#[test]
fn too_many_outstanding_queries_for_the_sockets_is_refused() {
    let mut config = BenchConfig::new("127.0.0.1:53".parse().unwrap(), Stop::Count(1));
    config.sockets = 2;
    config.load = Load::Concurrency(120_000);
    assert!(config.validate().is_ok());
    config.load = Load::Concurrency(120_001);
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("concurrency 120001") && err.contains("more sockets"),
        "{err}"
    );
}

#[test]
fn a_query_file_that_is_not_text_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queries.txt");
    std::fs::write(
        &path,
        b"www.example.com A\nbad\xFFname.example A\nx.example A\n",
    )
    .unwrap();
    let err = bench::load_query_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("not UTF-8") && err.contains("bad"),
        "{err}"
    );
}

#[test]
fn at_a_rate_failed_reconnects_spend_queries_on_schedule() {
    // Takes one connection, closes it, and stops listening.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let config = tcp_config(addr, Stop::Count(10), Load::Rate(20));
    let report = run_within(config, QUERIES, Duration::from_secs(30));
    server.join().unwrap();

    assert_eq!((report.sent, report.answered, report.lost), (10, 0, 10));
    // Query 9 is due 450 ms after the start; each failed attempt costs one query, but never
    // one that is not yet due.
    assert!(
        report.elapsed_seconds >= 0.44,
        "ten queries at 20 qps were spent in {} s",
        report.elapsed_seconds
    );
}
