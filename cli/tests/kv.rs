//! `edgekit kv`: a real `kv serve` process, its HTTP API endpoint by endpoint (including bad
//! input), and the client subcommands against it.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use assert_cmd::Command as AssertCommand;
use edgekit_testkit::TestCa;
use predicates::prelude::*;
use serde_json::{Value, json};

/// A running `edgekit kv serve`, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
    repl: Option<SocketAddr>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(data: &Path, extra: &[&str]) -> Node {
    start_node_limited(data, extra, None)
}

/// The `kv serve` command line (without a file-size limit).
fn serve_command(data: &Path, extra: &[&str], file_size_limit: Option<u64>) -> Command {
    let mut command = match file_size_limit {
        // bash ignores SIGXFSZ (ignored dispositions survive exec) and sets RLIMIT_FSIZE, then
        // execs edgekit: a write past the limit fails with EFBIG instead of killing the node.
        Some(bytes) => {
            let mut command = Command::new("bash");
            command.args([
                "-c",
                "trap '' XFSZ; ulimit -f \"$1\" || exit 97; shift; exec \"$@\"",
                "bash",
                &bytes.div_ceil(1024).to_string(),
                env!("CARGO_BIN_EXE_edgekit"),
            ]);
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_edgekit")),
    };
    command
        .args([
            "kv",
            "serve",
            "--api",
            "127.0.0.1:0",
            "--no-fsync",
            "--data",
        ])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null());
    command
}

/// Start a node, with writes to any file capped at `file_size_limit` bytes when given.
fn start_node_limited(data: &Path, extra: &[&str], file_size_limit: Option<u64>) -> Node {
    let mut child = serve_command(data, extra, file_size_limit)
        .stderr(Stdio::piped())
        .spawn()
        .expect("edgekit starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut repl = None;
        let mut sender = Some(sender);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("replication listening on ") {
                repl = Some(addr.to_owned());
            }
            if let Some(addr) = line.strip_prefix("listening on ")
                && let Some(sender) = sender.take()
            {
                let _ = sender.send((addr.to_owned(), repl.clone()));
            }
        }
    });
    let mut node = Node {
        child,
        addr: "127.0.0.1:1".parse().unwrap(),
        repl: None,
    };
    let (addr, repl) = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the node prints `listening on ADDR`");
    node.addr = addr.parse().expect("a socket address");
    node.repl = repl.map(|r| r.parse().expect("a socket address"));
    node
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn edgekit() -> AssertCommand {
    AssertCommand::cargo_bin("edgekit").unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("errors are JSON");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Read whole NDJSON lines from a streaming response until `want` lines arrived.
async fn read_lines(response: &mut reqwest::Response, want: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut pending = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lines.len() < want {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("watch lines arrive in time")
            .unwrap()
            .expect("the stream stays open");
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            lines.push(serde_json::from_slice(&line).unwrap());
        }
    }
    lines
}

#[test]
fn every_endpoint_answers_and_bad_input_gets_a_4xx_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &["--max-value-len", "1000"]);
    let base = format!("http://{}", node.addr);
    runtime().block_on(async {
        let client = reqwest::Client::new();

        // PUT / GET with `/` in the key.
        let put = client
            .put(format!("{base}/v1/kv/zones/example.com/waf"))
            .body("on")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        assert_eq!(put.json::<Value>().await.unwrap(), json!({ "seq": 1 }));
        let got = client
            .get(format!("{base}/v1/kv/zones/example.com/waf"))
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.headers()["x-kv-seq"], "1");
        assert_eq!(got.bytes().await.unwrap(), "on");

        // Percent-escapes decode to raw bytes, including non-UTF-8.
        let put = client
            .put(format!("{base}/v1/kv/bin%2Fary%FF"))
            .body(vec![0u8, 1, 2])
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        let got = client.get(format!("{base}/v1/kv/bin/ary%ff")).send().await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), &[0u8, 1, 2]);

        // Absent keys: 404 with a message and the sequence read at.
        let missing = client.get(format!("{base}/v1/kv/nope")).send().await.unwrap();
        assert_eq!(missing.headers()["x-kv-seq"], "2");
        assert_eq!(error_of(missing).await, (404, "no such key".to_owned()));

        // DELETE.
        let deleted = client.delete(format!("{base}/v1/kv/bin%2Fary%FF")).send().await.unwrap();
        assert_eq!(deleted.json::<Value>().await.unwrap(), json!({ "seq": 3 }));
        let gone = client.get(format!("{base}/v1/kv/bin%2Fary%FF")).send().await.unwrap();
        assert_eq!(gone.status(), 404);

        // Empty key and oversized value.
        let (status, message) = error_of(client.put(format!("{base}/v1/kv/")).body("x").send().await.unwrap()).await;
        assert_eq!(status, 400);
        assert!(message.contains("key is empty"), "{message}");
        let (status, message) = error_of(
            client.put(format!("{base}/v1/kv/big")).body(vec![b'x'; 2000]).send().await.unwrap(),
        )
        .await;
        assert_eq!(status, 413);
        assert!(message.contains("2000 bytes") && message.contains("1000"), "{message}");
        let long_key = "k".repeat(600);
        let (status, message) =
            error_of(client.put(format!("{base}/v1/kv/{long_key}")).body("x").send().await.unwrap()).await;
        assert_eq!(status, 400);
        assert!(message.contains("600 bytes"), "{message}");

        // POST /v1/batch: atomic, and every malformed body is refused with a reason.
        let batch = json!([
            { "op": "put", "key": "zones/a", "value": "1" },
            { "op": "put", "key": "zones/b", "value": "2" },
            { "op": "put", "key_hex": "7a6f6e65732f63", "value_hex": "ff00" },
            { "op": "delete", "key": "zones/example.com/waf" },
        ]);
        let answer = client.post(format!("{base}/v1/batch")).json(&batch).send().await.unwrap();
        assert_eq!(answer.json::<Value>().await.unwrap(), json!({ "seq": 4 }));
        for (body, expect) in [
            ("not json", "JSON list"),
            ("[]", "at least one op"),
            (r#"[{"op":"frob","key":"k"}]"#, "unknown op"),
            (r#"[{"op":"put","key":"k"}]"#, "put needs a `value`"),
            (r#"[{"op":"delete","key":"k","value":"v"}]"#, "delete takes no `value`"),
            (r#"[{"op":"put","value":"v"}]"#, "missing `key`"),
            (r#"[{"op":"put","key_hex":"zz","value":"v"}]"#, "not hex"),
            (r#"[{"op":"put","key":"k","key_hex":"6b","value":"v"}]"#, "not both"),
            (r#"[{"op":"put","key":"ok","value":"v"},{"op":"put","key":"","value":"v"}]"#, "key of 0 bytes"),
        ] {
            let response = client
                .post(format!("{base}/v1/batch"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let (status, message) = error_of(response).await;
            assert_eq!(status, 400, "{body}: {message}");
            assert!(message.contains(expect), "{body}: {message}");
        }
        // The refused batch with a valid first op applied nothing.
        assert_eq!(client.get(format!("{base}/v1/kv/ok")).send().await.unwrap().status(), 404);

        // Scans page with limit and continuation; non-UTF-8 comes back as hex.
        let page: Value = client
            .get(format!("{base}/v1/kv?prefix=zones/&limit=2"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["seq"], 4);
        assert_eq!(
            page["items"],
            json!([{ "key": "zones/a", "value": "1" }, { "key": "zones/b", "value": "2" }])
        );
        assert_eq!(page["next_after"], "zones/b");
        let rest: Value = client
            .get(format!("{base}/v1/kv?prefix=zones/&limit=2&after=zones/b"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rest["items"], json!([{ "key": "zones/c", "value_hex": "ff00" }]));
        assert_eq!(rest["next_after"], Value::Null);
        for query in ["limit=0", "limit=100000", "limit=abc", "bogus=1"] {
            let (status, message) =
                error_of(client.get(format!("{base}/v1/kv?{query}")).send().await.unwrap()).await;
            assert_eq!(status, 400, "{query}: {message}");
            assert!(!message.is_empty());
        }

        // Status and metrics.
        let status: Value = client.get(format!("{base}/v1/status")).send().await.unwrap().json().await.unwrap();
        assert_eq!(status["role"], "root");
        assert_eq!(status["seq"], 4);
        assert_eq!(status["digest"].as_str().unwrap().len(), 64);
        assert_eq!(status["cluster_id"].as_str().unwrap().len(), 32);
        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("quicksilver_kv_batches_total 4"), "{metrics}");
        assert!(metrics.contains("quicksilver_kv_head_seq 4"), "{metrics}");

        // Watch: history from a sequence, filtered by prefix, then live writes.
        let mut watch = client
            .get(format!("{base}/v1/watch?from=0&prefix=zones/"))
            .send()
            .await
            .unwrap();
        assert_eq!(watch.status(), 200);
        let lines = read_lines(&mut watch, 2).await;
        assert_eq!(lines[0], json!({ "seq": 1, "ops": [{ "op": "put", "key": "zones/example.com/waf", "value": "on" }] }));
        assert_eq!(lines[1]["seq"], 4);
        assert_eq!(lines[1]["ops"].as_array().unwrap().len(), 4);
        client.put(format!("{base}/v1/kv/elsewhere")).body("x").send().await.unwrap();
        client.put(format!("{base}/v1/kv/zones/live")).body("y").send().await.unwrap();
        let live = read_lines(&mut watch, 1).await;
        assert_eq!(live[0], json!({ "seq": 6, "ops": [{ "op": "put", "key": "zones/live", "value": "y" }] }));
        for (query, code) in [("from=99", 400), ("from=abc", 400)] {
            let response = client.get(format!("{base}/v1/watch?{query}")).send().await.unwrap();
            assert_eq!(response.status(), code, "{query}");
        }

        // Snapshot: a consistent dump that restores to the same digest.
        let snapshot = client.get(format!("{base}/v1/snapshot")).send().await.unwrap().bytes().await.unwrap();
        assert!(snapshot.starts_with(b"QSKVSNAP"));
        let restore_dir = tempfile::tempdir().unwrap();
        let (restored, info) = quicksilver_kv::Store::restore(
            restore_dir.path().join("copy"),
            &snapshot[..],
            quicksilver_kv::StoreConfig::default(),
        )
        .unwrap();
        assert_eq!(info.seq, 6);
        let status: Value = client.get(format!("{base}/v1/status")).send().await.unwrap().json().await.unwrap();
        assert_eq!(info.digest.to_hex(), status["digest"].as_str().unwrap());
        restored.reader().verify().unwrap();
    });
}

#[test]
fn a_watch_behind_the_retained_log_gets_410_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &["--retain-entries", "2"]);
    let base = format!("http://{}", node.addr);
    runtime().block_on(async {
        let client = reqwest::Client::new();
        for i in 0..6 {
            client
                .put(format!("{base}/v1/kv/k{i}"))
                .body("v")
                .send()
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status: Value = client
                .get(format!("{base}/v1/status"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if status["log_first"] == 5 {
                break;
            }
            assert!(Instant::now() < deadline, "retention never ran: {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, message) = error_of(
            client
                .get(format!("{base}/v1/watch?from=1"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 410);
        assert!(message.contains("compacted"), "{message}");
        let mut ok = client
            .get(format!("{base}/v1/watch?from=4"))
            .send()
            .await
            .unwrap();
        assert_eq!(read_lines(&mut ok, 2).await[1]["seq"], 6);
    });
}

#[test]
fn client_subcommands_talk_to_a_node_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &[]);
    let addr = node.addr.to_string();
    let value_file = dir.path().join("value.txt");
    std::fs::write(&value_file, "from a file").unwrap();

    edgekit()
        .args(["kv", "put", "zones/example.com/waf", "on", "--node", &addr])
        .assert()
        .success()
        .stdout("seq 1\n");
    edgekit()
        .args(["kv", "put", "a key?&%", "--file"])
        .arg(&value_file)
        .args(["--node", &addr, "--json"])
        .assert()
        .success()
        .stdout("{\"seq\":2}\n");
    edgekit()
        .args(["kv", "get", "a key?&%", "--node", &addr])
        .assert()
        .success()
        .stdout("from a file\n");
    edgekit()
        .args([
            "kv",
            "get",
            "zones/example.com/waf",
            "--node",
            &addr,
            "--json",
        ])
        .assert()
        .success()
        .stdout("{\"key\":\"zones/example.com/waf\",\"seq\":2,\"value\":\"on\"}\n");
    edgekit()
        .args(["kv", "scan", "zones/", "--node", &addr])
        .assert()
        .success()
        .stdout("zones/example.com/waf\ton\n");
    edgekit()
        .args(["kv", "del", "a key?&%", "--node", &addr])
        .assert()
        .success()
        .stdout("seq 3\n");
    edgekit()
        .args(["kv", "get", "a key?&%", "--node", &addr])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("404").and(predicate::str::contains("no such key")));
    edgekit()
        .args(["kv", "status", "--node", &addr])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("role       root")
                .and(predicate::str::contains("seq        3")),
        );
    let status = edgekit()
        .args(["kv", "status", "--node", &addr, "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let status: Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["seq"], 3);

    let out = dir.path().join("snap.bin");
    edgekit()
        .args(["kv", "snapshot"])
        .arg(&out)
        .args(["--node", &addr])
        .assert()
        .success()
        .stdout(predicate::str::contains("at seq 3"));
    let restored_dir = tempfile::tempdir().unwrap();
    let (restored, info) = quicksilver_kv::Store::restore(
        restored_dir.path(),
        std::fs::File::open(&out).unwrap(),
        quicksilver_kv::StoreConfig::default(),
    )
    .unwrap();
    assert_eq!(info.digest.to_hex(), status["digest"].as_str().unwrap());
    drop(restored);

    // Watch from the start: the history arrives as text lines.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_edgekit"))
        .args(["kv", "watch", "--from", "0", "--node", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(3)
        .map_while(Result::ok)
        .collect();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(
        lines,
        [
            "1\tput\tzones/example.com/waf\ton",
            "2\tput\ta key?&%\tfrom a file",
            "3\tdelete\ta key?&%"
        ]
    );

    // A node that is not there is a clear runtime failure.
    drop(node);
    edgekit()
        .args(["kv", "get", "k", "--node", &addr])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot reach the kv node"));
}

async fn status_of(client: &reqwest::Client, node: &Node) -> Value {
    client
        .get(format!("http://{}/v1/status", node.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Write `count` batches of 50 keys at the root; returns the keys written.
async fn write_batches(client: &reqwest::Client, root: &Node, first: usize, count: usize) {
    for b in first..first + count {
        let ops: Vec<Value> = (0..50)
            .map(|k| json!({ "op": "put", "key": format!("tree/{b:05}/{k:02}"), "value": format!("{b}-{k}") }))
            .collect();
        let response = client
            .post(format!("http://{}/v1/batch", root.addr))
            .json(&ops)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "batch {b} acknowledged");
    }
}

/// Wait (bounded) until `node` reports the root's sequence, then compare digests and contents.
async fn assert_converged(client: &reqwest::Client, root: &Node, node: &Node, name: &str) {
    let roots = all_items(client, root, "tree/").await;
    assert_converged_to(client, root, node, name, &roots).await;
}

/// [`assert_converged`] against the root's pairs read once (the root takes no writes
/// meanwhile).
async fn assert_converged_to(
    client: &reqwest::Client,
    root: &Node,
    node: &Node,
    name: &str,
    roots: &[Value],
) {
    let want = status_of(client, root).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = status_of(client, node).await;
        if got["seq"] == want["seq"] {
            assert_eq!(
                got["digest"], want["digest"],
                "{name}: digest differs at the same sequence"
            );
            assert_eq!(got["chain"], want["chain"], "{name}: chain differs");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never caught up: {got} vs root {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ours = all_items(client, node, "tree/").await;
    assert_eq!(ours.len(), roots.len(), "{name}: pair counts differ");
    assert!(ours == roots, "{name}: contents differ");
}

/// Every pair under `prefix`, paging through `GET /v1/kv` 10,000 at a time.
async fn all_items(client: &reqwest::Client, node: &Node, prefix: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1_000 {
        // The test keys are plain ASCII letters, digits and `/`: no escaping needed.
        let mut url = format!("http://{}/v1/kv?prefix={prefix}&limit=10000", node.addr);
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return items,
        }
    }
    panic!("more than 1,000 pages under {prefix}");
}

/// An address of our own on loopback with a fixed port, so a restarted relay comes back where
/// its replicas look for it. The process id keeps concurrent runs apart.
fn fixed_relay_addr() -> String {
    format!("127.0.0.{}:27183", 20 + std::process::id() % 200)
}

#[test]
fn a_root_relay_leaves_tree_converges_through_kills_and_a_snapshot_bootstrap() {
    // Batches of 50 writes; the phases below split them 30:20:20:30:10 like the original
    // 5,500-write run. KV_TREE_WRITES overrides the default (the issue's 100,000).
    let writes: usize = std::env::var("KV_TREE_WRITES")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(100_000);
    let batches = (writes / 50).max(110);
    let part = |share: usize| share * batches / 110;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = start_node(
        dirs[0].path(),
        &["--repl-listen", "127.0.0.1:0", "--retain-entries", "60"],
    );
    let root_repl = root.repl.expect("the root serves replication").to_string();
    let relay_addr = fixed_relay_addr();
    let relay_args = [
        "--upstream",
        root_repl.as_str(),
        "--repl-listen",
        relay_addr.as_str(),
    ];
    let mut relay = start_node(dirs[1].path(), &relay_args);
    let leaf_args = ["--upstream", relay_addr.as_str()];
    let mut leaf_a = start_node(dirs[2].path(), &leaf_args);
    let leaf_b = start_node(dirs[3].path(), &leaf_args);
    runtime().block_on(async {
        let client = reqwest::Client::new();
        write_batches(&client, &root, 0, part(30)).await;
        assert_converged(&client, &root, &leaf_a, "leaf a").await;

        // A leaf killed with SIGKILL and restarted continues from its own position.
        drop(leaf_a);
        write_batches(&client, &root, part(30), part(20)).await;
        leaf_a = start_node(dirs[2].path(), &leaf_args);

        // The relay killed and restarted at the same address; its leaves reconnect.
        drop(relay);
        write_batches(&client, &root, part(50), part(20)).await;
        relay = start_node(dirs[1].path(), &relay_args);
        write_batches(&client, &root, part(70), part(30)).await;

        // By now the root's log starts well after 1: a new, empty leaf must bootstrap from a
        // snapshot streamed while the root keeps writing.
        let root_status = status_of(&client, &root).await;
        assert!(
            root_status["log_first"].as_u64().unwrap() > 1,
            "{root_status}"
        );
        let new_dir = tempfile::tempdir().unwrap();
        let new_leaf = start_node(
            new_dir.path().join("leaf").as_path(),
            &["--upstream", root_repl.as_str()],
        );
        write_batches(&client, &root, part(100), part(10)).await;

        let roots = all_items(&client, &root, "tree/").await;
        for (node, name) in [
            (&relay, "relay"),
            (&leaf_a, "leaf a"),
            (&leaf_b, "leaf b"),
            (&new_leaf, "new leaf"),
        ] {
            assert_converged_to(&client, &root, node, name, &roots).await;
        }
        let relay_status = status_of(&client, &relay).await;
        assert_eq!(relay_status["role"], "relay");
        let leaf_status = status_of(&client, &leaf_b).await;
        assert_eq!(leaf_status["role"], "replica");
        assert_eq!(leaf_status["lag_entries"], 0);
        assert_eq!(leaf_status["connected"], true);
        assert_eq!(leaf_status["stopped"], Value::Null);

        let metrics = client
            .get(format!("http://{}/metrics", leaf_b.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("quicksilver_kv_replication_lag_entries 0"),
            "{metrics}"
        );
        assert!(
            !metrics.contains("quicksilver_kv_replication_received_bytes_total 0\n"),
            "{metrics}"
        );

        // `kv verify` compares digests at a common sequence.
        let (leaf_addr, root_addr) = (leaf_b.addr.to_string(), root.addr.to_string());
        edgekit()
            .args([
                "kv",
                "verify",
                "--node",
                &leaf_addr,
                "--against",
                &root_addr,
            ])
            .assert()
            .success()
            .stdout(predicate::str::starts_with("digests match at seq "));

        // Bootstrap progress is in the status, as JSON and as text.
        let new_leaf_status = status_of(&client, &new_leaf).await;
        assert_eq!(
            new_leaf_status["bootstrap"]["completed"], 1,
            "{new_leaf_status}"
        );
        assert_eq!(new_leaf_status["bootstrap"]["active"], false);
        assert!(
            new_leaf_status["bootstrap"]["received_bytes"]
                .as_u64()
                .unwrap()
                > 0
        );
        edgekit()
            .args(["kv", "status", "--node", &new_leaf.addr.to_string()])
            .assert()
            .success()
            .stdout(
                predicate::str::contains("bootstrap  idle, ")
                    .and(predicate::str::contains(" 1 completed")),
            );

        // Replicas are read-only, and say where writes go.
        let (status, message) = error_of(
            client
                .put(format!("http://{}/v1/kv/tree/x", leaf_b.addr))
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403);
        assert!(
            message.contains("read-only replica") && message.contains(&relay_addr),
            "{message}"
        );
        // The root's API address travelled root -> relay -> leaf in the handshake.
        assert!(
            message.contains(&format!("send writes to the root at {}", root.addr)),
            "{message}"
        );
        assert_eq!(leaf_status["root_api"], root.addr.to_string());
    });
}

#[test]
fn a_replica_refuses_another_clusters_stream_and_keeps_serving_reads() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let root_a = start_node(dirs[0].path(), &["--repl-listen", "127.0.0.1:0"]);
    let root_b = start_node(dirs[1].path(), &["--repl-listen", "127.0.0.1:0"]);
    let a_repl = root_a.repl.unwrap().to_string();
    let b_repl = root_b.repl.unwrap().to_string();
    runtime().block_on(async {
        let client = reqwest::Client::new();
        write_batches(&client, &root_a, 0, 3).await;
        write_batches(&client, &root_b, 0, 5).await;
        let replica = start_node(dirs[2].path(), &["--upstream", a_repl.as_str()]);
        assert_converged(&client, &root_a, &replica, "replica of a").await;
        drop(replica);
        // Pointed at another cluster's root: it must refuse, loudly, and apply nothing.
        let replica = start_node(dirs[2].path(), &["--upstream", b_repl.as_str()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let status = status_of(&client, &replica).await;
            if !status["stopped"].is_null() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the foreign stream was not refused: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status["stopped"].as_str().unwrap().contains("cluster"),
            "{status}"
        );
        assert_eq!(
            status["seq"], 3,
            "nothing from the foreign cluster was applied"
        );
        assert_eq!(
            status["digest"],
            status_of(&client, &root_a).await["digest"]
        );
        // Two clusters never share a sequence here, so verify fails and says why.
        let (a, b) = (root_a.addr.to_string(), root_b.addr.to_string());
        edgekit()
            .args(["kv", "verify", "--node", &a, "--against", &b])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("no common sequence"));
    });
}

#[test]
fn garbage_on_the_replication_port_closes_that_connection_only() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let root = start_node(dir.path(), &["--repl-listen", "127.0.0.1:0"]);
    let repl = root.repl.unwrap();
    let mut hello_bad_magic = vec![0, 0, 0, 67, 0x01];
    hello_bad_magic.extend_from_slice(&[b'X'; 66]);
    let garbage: [&[u8]; 4] = [
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], // a length far over the bound
        &[0, 0, 0, 0],                      // a zero length
        &hello_bad_magic,                   // a HELLO-sized frame with the wrong magic
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", // the wrong protocol entirely
    ];
    for bytes in garbage {
        let mut socket = std::net::TcpStream::connect(repl).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        socket.write_all(bytes).unwrap();
        let mut answer = Vec::new();
        let closed = match socket.read_to_end(&mut answer) {
            Ok(_) => true,
            Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            closed,
            "the upstream kept a garbage connection open ({bytes:?})"
        );
    }
    // The process is fine, and a real replica still syncs.
    runtime().block_on(async {
        let client = reqwest::Client::new();
        write_batches(&client, &root, 0, 2).await;
        let replica_dir = tempfile::tempdir().unwrap();
        let repl = repl.to_string();
        let replica = start_node(replica_dir.path(), &["--upstream", repl.as_str()]);
        assert_converged(&client, &root, &replica, "replica").await;
    });
}

/// A small seeded generator (xorshift64*), so a failing fault schedule can be replayed.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

#[test]
fn a_relay_behind_a_flaky_link_converges_with_every_acknowledged_write() {
    const SEED: u64 = 0x5eed_cafe_f00d_0008;
    const ROUNDS: usize = 40;
    const MAX_CUTS: usize = 10;
    const MAX_STALLS: usize = 6;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // A multi-threaded runtime: the proxy must keep forwarding while this thread blocks on a
    // starting process (the relay bootstraps through the proxy before it prints its address).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = start_node(dirs[0].path(), &["--repl-listen", "127.0.0.1:0"]);
    let root_repl = root.repl.expect("the root serves replication");
    let proxy = runtime
        .block_on(edgekit_testkit::FaultProxy::start(root_repl))
        .unwrap();
    let via_proxy = proxy.listen_addr().to_string();
    let client = reqwest::Client::new();
    runtime.block_on(write_batches(&client, &root, 0, 2));
    let relay = start_node(
        dirs[1].path(),
        &[
            "--upstream",
            via_proxy.as_str(),
            "--repl-listen",
            "127.0.0.1:0",
        ],
    );
    let relay_repl = relay
        .repl
        .expect("the relay serves replication")
        .to_string();
    let leaf = start_node(dirs[2].path(), &["--upstream", relay_repl.as_str()]);
    let mut schedule = Schedule(SEED);
    let (mut cuts, mut stalls, mut long_stall_done) = (0, 0, false);
    let mut acknowledged = 2;
    runtime.block_on(async {
        for round in 0..ROUNDS {
            write_batches(&client, &root, 2 + round, 1).await;
            acknowledged += 1;
            match schedule.below(6) {
                0 | 1 if cuts < MAX_CUTS => {
                    proxy.cut();
                    cuts += 1;
                }
                2 if stalls < MAX_STALLS => {
                    // Mostly short stalls; once, one longer than the replica's 5 s silence
                    // limit, so the relay must notice a stuck (not closed) link by itself.
                    let stall_ms = if long_stall_done {
                        100 + schedule.below(1400)
                    } else {
                        long_stall_done = true;
                        6_000
                    };
                    proxy.set_stalled(true);
                    write_batches(&client, &root, 1000 + round, 1).await;
                    acknowledged += 1;
                    tokio::time::sleep(Duration::from_millis(stall_ms)).await;
                    proxy.set_stalled(false);
                    stalls += 1;
                }
                _ => tokio::time::sleep(Duration::from_millis(schedule.below(50))).await,
            }
        }
        assert!(
            cuts > 0 && stalls > 0,
            "seed {SEED:#x}: the schedule injected no faults"
        );
        assert_converged(&client, &root, &relay, "relay").await;
        assert_converged(&client, &root, &leaf, "leaf").await;
        // assert_converged compared contents with the root's; the root holds every write it
        // acknowledged, so the leaf does too.
        let leaf_keys: Value = client
            .get(format!(
                "http://{}/v1/kv?prefix=tree/&limit=10000",
                leaf.addr
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            leaf_keys["items"].as_array().unwrap().len(),
            acknowledged * 50
        );
        // The link really was re-established after the faults.
        assert!(
            proxy.connections_accepted() > 1,
            "seed {SEED:#x}: {} connections through the proxy",
            proxy.connections_accepted()
        );
        let relay_status = status_of(&client, &relay).await;
        assert_eq!(relay_status["stopped"], Value::Null, "{relay_status}");
    });
    drop(proxy);
}

#[test]
fn replication_over_mutual_tls_and_a_certificate_from_another_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let (cluster_ca, other_ca) = (TestCa::new("cluster CA"), TestCa::new("some other CA"));
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut root_args = vec!["--repl-listen".to_owned(), "127.0.0.1:0".to_owned()];
    root_args.extend(cluster_ca.issue(certs.path(), "root").cli_args());
    let root_args: Vec<&str> = root_args.iter().map(String::as_str).collect();
    let root = start_node(dirs[0].path(), &root_args);
    let root_repl = root.repl.unwrap().to_string();
    let replica_args = |ca: &TestCa, name: &str| {
        let mut args = vec!["--upstream".to_owned(), root_repl.clone()];
        args.extend(ca.issue(certs.path(), name).cli_args());
        args
    };
    let good = replica_args(&cluster_ca, "replica");
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    runtime().block_on(async {
        let client = reqwest::Client::new();
        write_batches(&client, &root, 0, 3).await;
        // Bootstrap, then live records, all over mutual TLS.
        let replica = start_node(dirs[1].path(), &good);
        write_batches(&client, &root, 3, 3).await;
        assert_converged(&client, &root, &replica, "TLS replica").await;
        let status = status_of(&client, &replica).await;
        assert_eq!(status["connected"], true, "{status}");
        drop(replica);

        // The same replica, restarted with a certificate another CA signed: the root refuses
        // the handshake, so nothing more arrives however long it waits.
        let rogue = replica_args(&other_ca, "rogue");
        let mut rogue = rogue.iter().map(String::as_str).collect::<Vec<_>>();
        // It still trusts the cluster CA for the root's certificate; only its own is foreign.
        let ca_at = rogue.iter().position(|a| *a == "--tls-ca").unwrap() + 1;
        let cluster_ca_file = certs.path().join("root-ca.pem").display().to_string();
        rogue[ca_at] = cluster_ca_file.as_str();
        let rogue = start_node(dirs[1].path(), &rogue);
        write_batches(&client, &root, 6, 2).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = status_of(&client, &rogue).await;
        let root_status = status_of(&client, &root).await;
        assert_eq!(status["connected"], false, "{status}");
        assert_eq!(status["received_bytes"], 0, "{status}");
        assert!(
            status["seq"].as_u64() < root_status["seq"].as_u64(),
            "a replica with a foreign certificate was served: {status}"
        );
    });
}

#[test]
fn clear_text_replication_on_a_public_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    edgekit()
        .args([
            "kv",
            "serve",
            "--api",
            "127.0.0.1:0",
            "--repl-listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(dir.path())
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refusing to serve replication in clear text",
        ));
}

/// Write `count` batches of `keys` keys with `value_len`-byte values under `big/`.
async fn write_big_batches(
    client: &reqwest::Client,
    root: &Node,
    first: usize,
    count: usize,
    keys: usize,
) {
    let value = "v".repeat(300);
    for b in first..first + count {
        let ops: Vec<Value> = (0..keys)
            .map(|k| json!({ "op": "put", "key": format!("big/{b:04}/{k:05}"), "value": value }))
            .collect();
        let response = client
            .post(format!("http://{}/v1/batch", root.addr))
            .json(&ops)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "big batch {b} acknowledged");
    }
}

/// Wait (bounded) until `node` is at the root's sequence, then compare digest, chain and every
/// pair under `big/`.
async fn assert_big_converged(client: &reqwest::Client, root: &Node, node: &Node, name: &str) {
    let want = status_of(client, root).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = status_of(client, node).await;
        if got["seq"] == want["seq"] {
            assert_eq!(got["digest"], want["digest"], "{name}: digest differs");
            assert_eq!(got["chain"], want["chain"], "{name}: chain differs");
            break;
        }
        assert!(Instant::now() < deadline, "{name} never caught up: {got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ours = all_items(client, node, "big/").await;
    let roots = all_items(client, root, "big/").await;
    assert_eq!(ours.len(), roots.len(), "{name}: pair counts differ");
    assert!(ours == roots, "{name}: contents differ");
}

/// Reopen a stopped node's store read-only and recompute everything (log chain, digest by a
/// full rescan): a crash or a full disk left it consistent, with no repair step.
fn assert_store_sound(data: &Path) -> u64 {
    let reader = quicksilver_kv::Reader::open_read_only(data).expect("the store reopens");
    let verified = reader.verify().expect("chain and digest verify");
    verified.seq
}

#[test]
fn a_replica_killed_mid_bootstrap_and_mid_apply_restarts_and_converges() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = start_node(dirs[0].path(), &["--repl-listen", "127.0.0.1:0"]);
    let root_repl = root.repl.expect("the root serves replication").to_string();
    let replica_data = dirs[1].path().join("replica");
    let partial = dirs[1].path().join("replica.bootstrap-snapshot");
    let replica_args = ["--upstream", root_repl.as_str()];
    runtime().block_on(async {
        let client = reqwest::Client::new();
        // About 9 MB of pairs, so the snapshot takes a while to stream and restore.
        let started = Instant::now();
        write_big_batches(&client, &root, 0, 6, 5_000).await;
        eprintln!("root filled in {:?}", started.elapsed());

        // An empty replica, killed with SIGKILL while its snapshot is still arriving.
        let mut child = serve_command(&replica_data, &replica_args, None)
            .stderr(Stdio::null())
            .spawn()
            .expect("edgekit starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
            assert!(
                Instant::now() < deadline,
                "the replica never started receiving its snapshot"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();

        // Restarted, it bootstraps again from scratch and serves.
        let mut replica = start_node(&replica_data, &replica_args);
        assert_big_converged(&client, &root, &replica, "after a mid-bootstrap kill").await;

        // Now large batches (5,000 pairs, ~1.5 MB each), and a SIGKILL a few milliseconds
        // after each is acknowledged at the root: while the replica receives or applies it.
        let mut mid_apply = 0;
        for round in 0..4u64 {
            let before = status_of(&client, &replica).await["seq"].as_u64().unwrap();
            write_big_batches(&client, &root, 100 + round as usize, 1, 5_000).await;
            std::thread::sleep(Duration::from_millis(round));
            drop(replica);
            let recovered = assert_store_sound(&replica_data);
            assert!(recovered >= before, "the replica lost applied entries");
            if recovered == before {
                mid_apply += 1;
            }
            replica = start_node(&replica_data, &replica_args);
        }
        eprintln!(
            "{mid_apply} of 4 kills landed before the batch was applied, at {:?}",
            started.elapsed()
        );
        assert!(
            mid_apply > 0,
            "no kill landed before the replica had applied the batch"
        );
        assert_big_converged(&client, &root, &replica, "after mid-apply kills").await;
        drop(replica);
        assert_eq!(
            assert_store_sound(&replica_data),
            status_of(&client, &root).await["seq"].as_u64().unwrap()
        );
    });
}

#[test]
fn a_replica_on_a_full_disk_reports_it_stays_readable_and_converges_once_space_returns() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let root = start_node(dirs[0].path(), &["--repl-listen", "127.0.0.1:0"]);
    let root_repl = root.repl.expect("the root serves replication").to_string();
    let replica_data = dirs[1].path().join("replica");
    let replica_args = ["--upstream", root_repl.as_str()];
    runtime().block_on(async {
        let client = reqwest::Client::new();
        write_big_batches(&client, &root, 0, 2, 1_000).await;
        let replica = start_node(&replica_data, &replica_args);
        assert_big_converged(&client, &root, &replica, "before the disk fills").await;
        let applied = status_of(&client, &replica).await["seq"].as_u64().unwrap();
        drop(replica);

        // Restart with no room to grow: the store file may not get more than 64 KiB bigger.
        let size = std::fs::metadata(replica_data.join("data.mdb"))
            .unwrap()
            .len();
        let replica = start_node_limited(&replica_data, &replica_args, Some(size + (64 << 10)));
        assert_eq!(status_of(&client, &replica).await["seq"], applied);
        // ~3 MB more at the root.
        write_big_batches(&client, &root, 10, 10, 1_000).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let status = status_of(&client, &replica).await;
            // Other errors may come first (a link reset); the write failure must come.
            if status["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("writing the store failed"))
            {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no write failure reported: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let error = status["last_error"].as_str().unwrap();
        assert!(error.contains("the disk may be full"), "{status}");
        assert_eq!(status["stopped"], Value::Null, "a full disk is not fatal");
        edgekit()
            .args(["kv", "status", "--node", &replica.addr.to_string()])
            .assert()
            .success()
            .stdout(predicate::str::contains(
                "last_error writing the store failed",
            ));
        let root_seq = status_of(&client, &root).await["seq"].as_u64().unwrap();
        assert!(status["seq"].as_u64().unwrap() < root_seq, "{status}");
        // Reads keep working from what was applied.
        let read = client
            .get(format!("http://{}/v1/kv/big/0000/00000", replica.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        assert_eq!(read.text().await.unwrap(), "v".repeat(300));
        drop(replica);
        assert!(assert_store_sound(&replica_data) >= applied);

        // Space returns: restarted without the limit, it converges.
        let replica = start_node(&replica_data, &replica_args);
        assert_big_converged(&client, &root, &replica, "after space returned").await;
        assert_eq!(
            status_of(&client, &replica).await["last_error"],
            Value::Null
        );
    });
}
