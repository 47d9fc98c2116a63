//! `edgekit counters`: real node processes on loopback — replication through a frozen node,
//! `kill -9` mid-burst, hostile gossip frames, and the client subcommands.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use predicates::prelude::*;
use serde_json::Value;

/// A running `edgekit counters serve`; killed (SIGKILL) on drop.
struct Node {
    child: Child,
    http: SocketAddr,
    gossip: SocketAddr,
}

impl Node {
    fn start(id: &str, gossip: SocketAddr, peers: &[SocketAddr], data: &Path) -> Self {
        Self::start_with(id, gossip, peers, data, &[])
    }

    /// As [`start`](Self::start), with more `serve` flags.
    fn start_with(
        id: &str,
        gossip: SocketAddr,
        peers: &[SocketAddr],
        data: &Path,
        extra: &[&str],
    ) -> Self {
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgekit"));
        command
            .args([
                "counters",
                "serve",
                "--node-id",
                id,
                "--http",
                "127.0.0.1:0",
            ])
            .args(["--listen", &gossip.to_string(), "--interval", "200ms"])
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !peers.is_empty() {
            command.args(["--peers", &peers.join(",")]);
        }
        let mut child = command.spawn().expect("spawn edgekit counters serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut lines = BufReader::new(stderr).lines();
        let (mut http, mut bound_gossip) = (None, None);
        while http.is_none() || bound_gossip.is_none() {
            let line = lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("node {id} exited before listening"));
            if let Some(addr) = line.strip_prefix("http listening on ") {
                http = addr.trim().parse().ok();
            } else if let Some(addr) = line.strip_prefix("gossip listening on ") {
                bound_gossip = addr.trim().parse().ok();
            }
        }
        // Keep draining stderr so the node never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            http: http.expect("http address"),
            gossip: bound_gossip.expect("gossip address"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    fn get(&self, key: &str) -> i64 {
        let (status, body) =
            http(self.http, "GET", &format!("/v1/counters/{key}")).expect("GET reaches the node");
        assert_eq!(status, 200, "{body}");
        body["value"].as_i64().expect("value is an integer")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A frozen node must be resumed to die promptly.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gossip address for a node to bind: the OS picks a free port, which we release for it.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// One HTTP/1.1 request without keep-alive; `None` if the connection fails (node down).
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, Value)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Increment `key` by `by`; `Some(value)` only when the node acknowledged it.
fn incr(addr: SocketAddr, key: &str, by: i64) -> Option<i64> {
    match http(addr, "POST", &format!("/v1/counters/{key}/incr?by={by}"))? {
        (200, body) => body["value"].as_i64(),
        _ => None,
    }
}

fn wait_until_all_read(nodes: &[&Node], key: &str, expected: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let values: Vec<i64> = nodes.iter().map(|node| node.get(key)).collect();
        if values.iter().all(|value| *value == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes read {values:?}, expected {expected} on all within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `per_client` increments (amounts cycling 1, 2, 3, -1) from two clients on each node.
fn burst(nodes: &[&Node], key: &str, per_client: usize, acknowledged: &AtomicI64) {
    std::thread::scope(|scope| {
        for node in nodes {
            for client in 0..2 {
                let addr = node.http;
                scope.spawn(move || {
                    for i in 0..per_client {
                        let by = [1, 2, 3, -1][(i + client) % 4];
                        if incr(addr, key, by).is_some() {
                            acknowledged.fetch_add(by, Ordering::SeqCst);
                        }
                    }
                });
            }
        }
    });
}

#[test]
fn three_nodes_converge_to_the_acknowledged_sum_through_a_frozen_node() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let peers =
        |me: usize| -> Vec<SocketAddr> { (0..3).filter(|i| *i != me).map(|i| addrs[i]).collect() };
    let a = Node::start("a", addrs[0], &peers(0), dirs[0].path());
    let b = Node::start("b", addrs[1], &peers(1), dirs[1].path());
    let c = Node::start("c", addrs[2], &peers(2), dirs[2].path());
    let acknowledged = AtomicI64::new(0);

    burst(&[&a, &b, &c], "total", 40, &acknowledged);
    // Freeze c: its peers' exchanges with it time out while they keep counting.
    c.signal("STOP");
    burst(&[&a, &b], "total", 40, &acknowledged);
    std::thread::sleep(Duration::from_millis(500));
    c.signal("CONT");
    burst(&[&a, &b, &c], "total", 20, &acknowledged);

    let expected = acknowledged.load(Ordering::SeqCst);
    assert!(expected > 0);
    wait_until_all_read(&[&a, &b, &c], "total", expected, Duration::from_secs(15));
    // Converged means stable: more gossip rounds change nothing.
    std::thread::sleep(Duration::from_millis(600));
    wait_until_all_read(&[&a, &b, &c], "total", expected, Duration::ZERO);
}

/// `clients` threads add 1 to `key` on `node` until it is killed with SIGKILL, which happens
/// once `at_least` increments were acknowledged (or after 10 s). Each client stops at its first
/// unanswered request, so at most one per client was in flight. Returns (acknowledged,
/// unanswered).
fn kill_9_mid_burst(
    node: &mut Node,
    key: &'static str,
    clients: usize,
    at_least: i64,
) -> (i64, i64) {
    let acknowledged = Arc::new(AtomicI64::new(0));
    let unanswered = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (acknowledged, unanswered, stop) =
                (acknowledged.clone(), unanswered.clone(), stop.clone());
            let addr = node.http;
            std::thread::spawn(move || {
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if incr(addr, key, 1).is_some() {
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    } else {
                        unanswered.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    while acknowledged.load(Ordering::SeqCst) < at_least
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill9();
    stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().unwrap();
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(
        acked >= at_least,
        "burst too small to mean anything: {acked}"
    );
    (acked, unanswered.load(Ordering::SeqCst))
}

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_increment_and_counts_none_twice() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = Node::start("a", addr_a, &[addr_b], dir_a.path());
    let b = Node::start("b", addr_b, &[addr_a], dir_b.path());

    // Let the burst run and gossip spread some of it, then crash in the middle of it.
    let (acked, in_flight) = kill_9_mid_burst(&mut a, "burst", 3, 150);

    let a = Node::start("a", addr_a, &[addr_b], dir_a.path());
    let restarted = a.get("burst");
    eprintln!("kill -9: {acked} acknowledged, {in_flight} unanswered, {restarted} after restart");
    assert!(
        (acked..=acked + in_flight).contains(&restarted),
        "after kill -9: {restarted}, acknowledged {acked}, unanswered {in_flight}"
    );
    // Merging b's view of a's old entry must neither lose nor add anything.
    wait_until_all_read(&[&a, &b], "burst", restarted, Duration::from_secs(10));
    assert_eq!(incr(a.http, "burst", 5), Some(restarted + 5));
    wait_until_all_read(&[&a, &b], "burst", restarted + 5, Duration::from_secs(10));
}

/// Many clients at once, so increments share journal appends (group commit in the default
/// mode, one lock-held append each with `--fsync-every`): every answered increment is in the
/// journal when `kill -9` strikes. The node has no peers, so its journal is the only copy.
/// With `--fsync-every 1h` no fsync happens during the test: the written journal alone must
/// survive the process dying.
fn concurrent_increments_survive_kill_9_exactly(extra: &[&str]) {
    const CLIENTS: usize = 24;
    const PER_CLIENT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let gossip = free_addr();
    let mut node = Node::start_with("a", gossip, &[], dir.path(), extra);
    let keys = ["g0", "g1", "g2"];
    // Phase 1: every request answered, then kill -9 at once: the total is exact.
    let sums: Vec<AtomicI64> = keys.iter().map(|_| AtomicI64::new(0)).collect();
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (addr, sums) = (node.http, &sums);
            scope.spawn(move || {
                for i in 0..PER_CLIENT {
                    let by = [1, 2, 3, -1, 5][(i + client) % 5];
                    let slot = (i + client) % keys.len();
                    let value = incr(addr, keys[slot], by);
                    assert!(
                        value.is_some(),
                        "increment {i} of client {client} unanswered"
                    );
                    sums[slot].fetch_add(by, Ordering::SeqCst);
                }
            });
        }
    });
    node.kill9();
    let mut node = Node::start_with("a", gossip, &[], dir.path(), extra);
    for (key, sum) in keys.iter().zip(&sums) {
        let expected = sum.load(Ordering::SeqCst);
        assert_eq!(node.get(key), expected, "{key} after kill -9 ({extra:?})");
    }
    // Phase 2: kill -9 in the middle of a concurrent burst: every acknowledged increment is
    // there, and at most the unanswered ones on top.
    let before = node.get("g0");
    let (acked, in_flight) = kill_9_mid_burst(&mut node, "g0", CLIENTS, 300);
    let node = Node::start_with("a", gossip, &[], dir.path(), extra);
    let restarted = node.get("g0") - before;
    assert!(
        (acked..=acked + in_flight).contains(&restarted),
        "after kill -9 ({extra:?}): {restarted}, acknowledged {acked}, unanswered {in_flight}"
    );
}

#[test]
fn concurrent_increments_fsynced_before_ack_survive_kill_9_exactly() {
    concurrent_increments_survive_kill_9_exactly(&[]);
}

#[test]
fn concurrent_increments_with_fsync_every_survive_kill_9_exactly() {
    concurrent_increments_survive_kill_9_exactly(&["--fsync-every", "1h"]);
}

#[test]
fn garbage_truncated_and_oversized_frames_do_not_stop_the_node() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = Node::start("a", addr_a, &[addr_b], dir_a.path());
    let b = Node::start("b", addr_b, &[addr_a], dir_b.path());

    let hostile: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // not a frame: huge length
        &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3],   // oversized length
        &[0, 0, 0, 0],                        // empty frame
        &[0, 0, 0, 8, 0, 1, 1],               // truncated hello
        &[0, 0, 0, 4, 0, 9, 1, b'z'],         // hello, unknown protocol 9
        &[0, 0, 0, 5, 7, 7, 7, 7, 7],         // unknown message variant
        &[0, 0, 0, 4, 0, 1, 1, b'z', 0, 0, 0, 4, 1, 0, 2, 0xff], // hello, then a bad delta
    ];
    for bytes in hostile {
        let mut stream = TcpStream::connect(a.gossip).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(bytes);
        // The node answers (a hello, perhaps) and then closes the connection.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    // A flood of connections that send half a frame and hang up.
    for _ in 0..200 {
        if let Ok(mut stream) = TcpStream::connect(a.gossip) {
            let _ = stream.write_all(&[0, 0, 1]);
        }
    }
    assert!(a.alive(), "the node died from hostile frames");
    assert_eq!(incr(a.http, "after", 4), Some(4));
    let on_b = incr(b.http, "after", 3).expect("b acknowledges");
    assert!(on_b == 3 || on_b == 7, "b read {on_b}");
    wait_until_all_read(&[&a, &b], "after", 7, Duration::from_secs(10));
    let (status, metrics) = raw_get(a.http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("edgekit_counters_gossip_connection_errors_total"),
        "{metrics}"
    );
}

fn raw_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (
        status,
        response.split_once("\r\n\r\n").unwrap().1.to_owned(),
    )
}

#[test]
fn http_api_rejects_bad_input_with_400_and_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start("solo", free_addr(), &[], dir.path());
    let long_key = "k".repeat(300);
    for (method, path, needle) in [
        ("POST", "/v1/counters/k/incr?by=ten".to_owned(), "by"),
        ("POST", "/v1/counters//incr".to_owned(), "empty"),
        ("POST", format!("/v1/counters/{long_key}/incr"), "300 bytes"),
        (
            "GET",
            "/v1/ratelimit/k?limit=x&window=1".to_owned(),
            "limit",
        ),
        ("GET", "/v1/ratelimit/k?limit=5".to_owned(), "window"),
    ] {
        let (status, body) = http(node.http, method, &path).unwrap();
        assert_eq!(status, 400, "{method} {path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{method} {path}: {message}");
    }
    assert_eq!(incr(node.http, "k", -3), Some(-3));
    let (status, decision) =
        http(node.http, "GET", "/v1/ratelimit/k?limit=2&window=60&cost=2").unwrap();
    assert_eq!((status, decision["allowed"].as_bool()), (200, Some(true)));
    let (_, decision) = http(node.http, "GET", "/v1/ratelimit/k?limit=2&window=60").unwrap();
    assert_eq!(decision["allowed"].as_bool(), Some(false));
}

#[test]
fn cli_incr_get_and_status_talk_to_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let peer = free_addr();
    let node = Node::start("cli-node", free_addr(), &[peer], dir.path());
    let http = node.http.to_string();
    let edgekit = || assert_cmd::Command::cargo_bin("edgekit").unwrap();

    edgekit()
        .args(["counters", "incr", "hits", "--by", "-4", "--node", &http])
        .assert()
        .success()
        .stdout("-4\n");
    edgekit()
        .args([
            "counters", "incr", "hits", "--by", "10", "--node", &http, "--json",
        ])
        .assert()
        .success()
        .stdout(
            predicate::str::contains(r#""value":6"#)
                .and(predicate::str::contains(r#""key":"hits""#)),
        );
    edgekit()
        .args(["counters", "get", "hits", "--node", &http])
        .assert()
        .success()
        .stdout("6\n");
    edgekit()
        .args(["counters", "status", "--node", &http])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("node    cli-node")
                .and(predicate::str::contains(peer.to_string()))
                .and(predicate::str::contains("never synced")),
        );
    edgekit()
        .args(["counters", "status", "--node", &http, "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains(r#""node_id":"cli-node""#));
    edgekit()
        .args(["counters", "incr", "", "--node", &http])
        .assert()
        .failure()
        .stderr(predicate::str::contains("key is empty"));
    // Anti-entropy on demand (the exchange itself is tested in the counters crate).
    let (status, body) = self::http(node.http, "POST", "/v1/sync").expect("POST /v1/sync");
    assert_eq!(
        (status, &body["peers"]),
        (202, &serde_json::json!(1)),
        "{body}"
    );
}

/// Node ids holding an entry for `key` on `node`.
fn entry_holders(node: &Node, key: &str) -> Vec<String> {
    let (status, body) =
        http(node.http, "GET", &format!("/v1/counters/{key}")).expect("GET reaches the node");
    assert_eq!(status, 200, "{body}");
    let mut holders: Vec<String> = body["entries"]
        .as_object()
        .map(|entries| entries.keys().cloned().collect())
        .unwrap_or_default();
    holders.sort();
    holders
}

/// `node`'s own entry for `key` (increments minus decrements), as it reports it.
fn own_value(node: &Node, key: &str) -> i64 {
    let (_, body) =
        http(node.http, "GET", &format!("/v1/counters/{key}")).expect("GET reaches the node");
    let (status, me) = http(node.http, "GET", "/v1/status").expect("status");
    assert_eq!(status, 200);
    let entry = &body["entries"][me["node_id"].as_str().expect("node id")];
    entry["increments"].as_i64().expect("increments")
        - entry["decrements"].as_i64().expect("decrements")
}

#[test]
fn retiring_a_stopped_node_keeps_every_total_and_drops_its_entries_everywhere() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let peers =
        |me: usize| -> Vec<SocketAddr> { (0..3).filter(|i| *i != me).map(|i| addrs[i]).collect() };
    let a = Node::start("a", addrs[0], &peers(0), dirs[0].path());
    let b = Node::start("b", addrs[1], &peers(1), dirs[1].path());
    let mut c = Node::start("c", addrs[2], &peers(2), dirs[2].path());
    let acknowledged = AtomicI64::new(0);
    burst(&[&a, &b, &c], "x", 10, &acknowledged);
    assert_eq!(incr(c.http, "only-c", 7), Some(7));
    let x = acknowledged.load(Ordering::SeqCst);
    wait_until_all_read(&[&a, &b, &c], "x", x, Duration::from_secs(15));
    wait_until_all_read(&[&a, &b, &c], "only-c", 7, Duration::from_secs(15));
    assert_eq!(entry_holders(&b, "x"), ["a", "b", "c"]);

    // c leaves for good; a absorbs it.
    c.kill9();
    let edgekit = || assert_cmd::Command::cargo_bin("edgekit").unwrap();
    let a_http = a.http.to_string();
    edgekit()
        .args(["counters", "retire", "c", "--node", &a_http])
        .assert()
        .success()
        .stdout("retired c into a: 2 keys folded\n");
    assert_eq!(
        (a.get("x"), a.get("only-c")),
        (x, 7),
        "the fold keeps a's totals"
    );
    assert_eq!(entry_holders(&a, "x"), ["a", "b"]);
    assert_eq!(entry_holders(&a, "only-c"), ["a"]);

    // b learns the tombstone with a's folded entries; its totals never move.
    let deadline = Instant::now() + Duration::from_secs(15);
    while entry_holders(&b, "x").contains(&"c".to_owned())
        || entry_holders(&b, "only-c").contains(&"c".to_owned())
    {
        assert_eq!((b.get("x"), b.get("only-c")), (x, 7));
        assert!(Instant::now() < deadline, "b still holds c's entries");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several more rounds (b also keeps retrying the dead c): still exact, still no c.
    std::thread::sleep(Duration::from_millis(800));
    for node in [&a, &b] {
        assert_eq!((node.get("x"), node.get("only-c")), (x, 7));
        assert_eq!(entry_holders(node, "x"), ["a", "b"]);
        assert_eq!(entry_holders(node, "only-c"), ["a"]);
    }
    edgekit()
        .args(["counters", "status", "--node", &b.http.to_string()])
        .assert()
        .success()
        .stdout(predicate::str::contains("retired c (folded into a)"));

    // The survivor's fold and tombstone are durable: after kill -9 and a restart without peers
    // (so it holds only its own entries), a's own entries still hold c's counts.
    let own_x = own_value(&a, "x");
    assert_eq!(
        own_value(&b, "x") + own_x,
        x,
        "a's own entry carries a's and c's counts"
    );
    drop(a);
    let a = Node::start("a", free_addr(), &[], dirs[0].path());
    assert_eq!((a.get("x"), a.get("only-c")), (own_x, 7));
    edgekit()
        .args(["counters", "retire", "c", "--node", &a.http.to_string()])
        .assert()
        .success()
        .stdout("c was already retired\n");
    edgekit()
        .args(["counters", "retire", "a", "--node", &a.http.to_string()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot retire itself"));
}

#[test]
fn serve_refuses_a_non_loopback_listen_address_without_insecure() {
    let dir = tempfile::tempdir().unwrap();
    assert_cmd::Command::cargo_bin("edgekit")
        .unwrap()
        .args([
            "counters",
            "serve",
            "--node-id",
            "n",
            "--listen",
            "0.0.0.0:0",
        ])
        .args(["--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("--insecure"));
}

#[test]
fn serve_names_an_unreadable_tls_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("node-cert.pem");
    assert_cmd::Command::cargo_bin("edgekit")
        .unwrap()
        .args([
            "counters",
            "serve",
            "--node-id",
            "n",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .arg("--tls-ca")
        .arg(&missing)
        .assert()
        .failure()
        .stderr(predicate::str::contains("node-cert.pem"));
    // The three files go together.
    assert_cmd::Command::cargo_bin("edgekit")
        .unwrap()
        .args([
            "counters",
            "serve",
            "--node-id",
            "n",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&missing)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--tls-key"));
}
