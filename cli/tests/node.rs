//! `edgekit node` as real processes on loopback: one node doing everything, a root and its
//! replica converging, configs refused before anything is touched, and the embedded defaults.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
};

use common::{
    NodeProcess, dns_section, edgekit, eventually_prints, http_get, port_zero_config, resolve_a,
};
use edgekit_testkit::{TestCa, TlsFiles, dns::example_test_hierarchy};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn one_node_answers_dns_kv_counters_and_admin_then_exits_0_on_sigterm() {
    let authorities = example_test_hierarchy("")
        .start_with_hints()
        .expect("the hierarchy starts");
    let (hierarchy, hints) = (&authorities.hierarchy, &authorities.hints);
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("node.toml");
    let config = format!(
        "{}{}",
        port_zero_config(
            &dir.path().join("data"),
            "",
            "repl_listen = \"127.0.0.1:0\"\n"
        ),
        dns_section(hints, hierarchy.port())
    );
    std::fs::write(&config_path, &config).unwrap();
    let mut node = NodeProcess::start(dir.path(), &["--config", config_path.to_str().unwrap()]);

    // DNS: a recursive answer from the hierarchy, through the node's server.
    assert_eq!(
        resolve_a(node.address("dns"), "www.example.test."),
        [Ipv4Addr::new(192, 0, 2, 1)]
    );

    // kv: a write at this root reads back.
    let kv = node.address("kv api").to_string();
    let put = edgekit(&["kv", "put", "site/colour", "blue", "--node", &kv]);
    assert!(put.status.success(), "{put:?}");
    assert_eq!(
        stdout(&edgekit(&["kv", "get", "site/colour", "--node", &kv])),
        "blue"
    );

    // Counters: two increments add up.
    let counters = node.address("counters http").to_string();
    for _ in 0..2 {
        let incr = edgekit(&["counters", "incr", "hits", "--by", "3", "--node", &counters]);
        assert!(incr.status.success(), "{incr:?}");
    }
    assert_eq!(
        stdout(&edgekit(&["counters", "get", "hits", "--node", &counters])),
        "6"
    );

    // Admin: live, ready with every part up, one metrics page with all three parts in it.
    let admin = node.address("admin");
    assert_eq!(http_get(admin, "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "dns up\ncounters up\nkv up\n");
    let (status, metrics) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    for line in [
        "edgekit_dns_queries_total 1",
        "edgekit_counters_increments_total 2",
        "quicksilver_kv_ops_total 1",
        "edgekit_node_part_up{part=\"kv\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"));

    // SIGHUP: a reloadable key is applied, another is reported as needing a restart.
    let changed = config.replace(
        "udp_sockets_per_address = 1\n",
        "udp_sockets_per_address = 1\nprefetch_percent = 20\nallow = [\"10.0.0.0/8\"]\n",
    );
    let changed = changed.replace("interval_ms = 100\n", "interval_ms = 200\n");
    std::fs::write(&config_path, changed).unwrap();
    node.signal("HUP");
    let line = node.wait_for_line(|line| line.starts_with("reload"));
    assert_eq!(
        line,
        "reloaded the configuration: applied dns.server.allow, dns.server.prefetch_percent; \
         changes to counters.interval_ms apply only after a restart"
    );
    // The new ACL is in force: this loopback client is no longer allowed.
    assert_eq!(
        common::ask(node.address("dns"), "www.example.test.")
            .metadata
            .response_code,
        edgekit_dns::proto::op::ResponseCode::Refused
    );
    // A broken file on reload is refused, naming the key, and the node keeps serving.
    std::fs::write(&config_path, "[kv]\nnope = 1\n").unwrap();
    node.signal("HUP");
    let line = node.wait_for_line(|line| line.starts_with("reload"));
    assert!(
        line.starts_with("reload failed, keeping the running configuration"),
        "{line}"
    );
    node.wait_for_line(|line| line.starts_with("unknown field `nope`"));
    assert_eq!(http_get(admin, "/healthz").0, 200);

    let exit = node.terminate();
    assert_eq!(exit.code(), Some(0), "{}", node.log.join("\n"));
    assert!(
        node.log
            .iter()
            .any(|l| l == "stopping: draining every part")
    );
}

#[test]
fn replica_and_relayed_leaf_nodes_read_the_roots_writes_and_counters_converge_to_the_sum() {
    let dir = tempfile::tempdir().unwrap();
    let first_config = dir.path().join("first.toml");
    std::fs::write(
        &first_config,
        port_zero_config(
            &dir.path().join("first"),
            "node_id = \"edge-1\"\n",
            "repl_listen = \"127.0.0.1:0\"\n",
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let first = NodeProcess::start(dir.path(), &["--config", first_config.to_str().unwrap()]);
    let first_kv = first.address("kv api").to_string();
    let first_counters = first.address("counters http").to_string();
    let put = edgekit(&["kv", "put", "limits/rps", "100", "--node", &first_kv]);
    assert!(put.status.success(), "{put:?}");

    let second_config = dir.path().join("second.toml");
    std::fs::write(
        &second_config,
        port_zero_config(
            &dir.path().join("second"),
            &format!(
                "node_id = \"edge-2\"\npeers = [\"{}\"]\n",
                first.address("counters gossip")
            ),
            &format!(
                "upstream = \"{}\"\nrepl_listen = \"127.0.0.1:0\"\n",
                first.address("kv replication")
            ),
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let second = NodeProcess::start(dir.path(), &["--config", second_config.to_str().unwrap()]);
    let second_kv = second.address("kv api").to_string();
    let second_counters = second.address("counters http").to_string();
    let (status, body) = http_get(second.address("admin"), "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, "dns disabled\ncounters up\nkv up\n")
    );

    // The snapshot carried the first write; a later one arrives through the log.
    eventually_prints(&["kv", "get", "limits/rps", "--node", &second_kv], "100");
    let put = edgekit(&["kv", "put", "limits/rps", "250", "--node", &first_kv]);
    assert!(put.status.success(), "{put:?}");
    eventually_prints(&["kv", "get", "limits/rps", "--node", &second_kv], "250");
    // The second node is a relay too: a leaf behind it gets the root's writes.
    let leaf_config = dir.path().join("leaf.toml");
    std::fs::write(
        &leaf_config,
        port_zero_config(
            &dir.path().join("leaf"),
            "enabled = false\n",
            &format!("upstream = \"{}\"\n", second.address("kv replication")),
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let leaf = NodeProcess::start(dir.path(), &["--config", leaf_config.to_str().unwrap()]);
    let leaf_kv = leaf.address("kv api").to_string();
    eventually_prints(&["kv", "get", "limits/rps", "--node", &leaf_kv], "250");
    // The replica refuses writes and points at the root.
    let refused = edgekit(&["kv", "put", "x", "y", "--node", &second_kv]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("read-only replica"));

    // Counters: increments on both nodes converge on both to the exact sum.
    for _ in 0..5 {
        assert!(
            edgekit(&[
                "counters",
                "incr",
                "hits",
                "--by",
                "2",
                "--node",
                &first_counters
            ])
            .status
            .success()
        );
    }
    for _ in 0..3 {
        assert!(
            edgekit(&[
                "counters",
                "incr",
                "hits",
                "--by",
                "7",
                "--node",
                &second_counters
            ])
            .status
            .success()
        );
    }
    eventually_prints(
        &["counters", "get", "hits", "--node", &first_counters],
        "31",
    );
    eventually_prints(
        &["counters", "get", "hits", "--node", &second_counters],
        "31",
    );
}

/// Every file under `dir` with its bytes, to show a refused start wrote nothing.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                files.insert(format!("{name}/"), Vec::new());
                stack.push(path);
            } else {
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn bad_configs_fail_at_start_naming_the_key_and_touch_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("kv")).unwrap();
    std::fs::write(data.join("kv").join("keep.txt"), "precious").unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "not a directory").unwrap();
    let fresh = dir.path().join("fresh");
    let cases = [
        (
            format!("data_dir = \"{}\"\nfrobnicate = true\n", data.display()),
            "unknown field `frobnicate`",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[counters]\nhttp = \"localhost:nope\"\n",
                data.display()
            ),
            "counters.http",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[dns.server]\nmax_udp_payload = 100\n",
                data.display()
            ),
            "max_udp_payload",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[kv]\nmax_value_len = 100000000\n",
                fresh.display()
            ),
            "max_value_len",
        ),
        (
            format!("data_dir = \"{}\"\n", not_a_dir.display()),
            "data_dir = \"",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[counters]\ndata_dir = \"{}\"\n",
                fresh.display(),
                not_a_dir.join("sub").display()
            ),
            "counters.data_dir",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[counters]\ntls_cert = \"{}\"\n",
                fresh.display(),
                not_a_dir.display()
            ),
            "[counters] tls_cert, tls_key and tls_ca go together",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[counters]\nlisten = \"0.0.0.0:0\"\n",
                fresh.display()
            ),
            "[counters] listen = \"0.0.0.0:0\": gossip in clear text",
        ),
        (
            format!(
                "data_dir = \"{}\"\n[counters]\nfsync_every_ms = 0\n",
                fresh.display()
            ),
            "[counters] fsync_every_ms = 0",
        ),
    ];
    let before = snapshot(dir.path());
    for (index, (text, named)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("bad-{index}.toml"));
        std::fs::write(&config, text).unwrap();
        let before = {
            let mut before = before.clone();
            before.insert(format!("bad-{index}.toml"), text.clone().into_bytes());
            before
        };
        for flag in ["--config", "--check-config"] {
            let output = edgekit(&["node", flag, config.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{text}: {stderr}");
            assert!(
                stderr.contains(named),
                "{text}: {stderr} does not name {named}"
            );
            let after = snapshot(dir.path());
            assert_eq!(after, before, "{text}: the start touched the disk");
            assert!(!fresh.exists());
        }
        std::fs::remove_file(&config).unwrap();
    }
    // The plain file is unchanged too (part of the snapshot), and nothing was created next to it.
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"not a directory");
}

#[test]
fn a_busy_address_fails_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[admin]\nlisten = \"{}\"\n",
            dir.path().join("data").display(),
            busy.local_addr().unwrap()
        ),
    )
    .unwrap();
    let output = edgekit(&["node", "--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "[admin] listen = \"{}\": cannot listen",
            busy.local_addr().unwrap()
        )),
        "{stderr}"
    );
}

#[test]
fn check_config_accepts_a_good_file_without_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[dns]\nenabled = false\n[kv]\nupstream = \"127.0.0.1:7390\"\n",
            data.display()
        ),
    )
    .unwrap();
    let output = edgekit(&["node", "--check-config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(
        stdout(&output),
        format!("{}: ok (dns off, counters on, kv on)", config.display())
    );
    assert!(!data.exists(), "--check-config created the data directory");
    // The example replica config in the repository is valid as shipped.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/replica.toml");
    let output = edgekit(&["node", "--check-config", example]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

/// The README's first command: `edgekit node` with no config at all, in a fresh directory.
/// It binds the documented fixed addresses; no other test uses them.
#[test]
fn the_embedded_defaults_start_a_healthy_node_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(dir.path(), &[]);
    for (part, address) in [
        ("admin", "127.0.0.1:9090"),
        ("dns", "127.0.0.1:5353"),
        ("kv api", "127.0.0.1:7380"),
        ("kv replication", "127.0.0.1:7390"),
        ("counters http", "127.0.0.1:7381"),
        ("counters gossip", "127.0.0.1:7946"),
    ] {
        assert_eq!(node.address(part).to_string(), address, "{part}");
    }
    assert_eq!(
        http_get(node.address("admin"), "/readyz"),
        (200, "dns up\ncounters up\nkv up\n".to_owned())
    );
    // `edgekit kv` defaults to this node's API address.
    let put = edgekit(&["kv", "put", "hello", "world"]);
    assert!(put.status.success(), "{put:?}");
    assert!(dir.path().join("edgekit-data/kv/data.mdb").exists());
    assert!(dir.path().join("edgekit-data/counters").is_dir());
    // A second node on the same defaults reports the busy address by its key, and exits 1.
    let other = tempfile::tempdir().unwrap();
    let mut second = std::process::Command::new(common::EDGEKIT);
    second.arg("node").current_dir(other.path());
    let output = common::run_bounded(second);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[admin] listen = \"127.0.0.1:9090\": cannot listen"),
        "{stderr}"
    );
    assert_eq!(node.terminate().code(), Some(0));
}

#[test]
fn a_replica_node_follows_its_root_over_mutual_tls_set_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("fleet CA");
    let root_config = dir.path().join("root.toml");
    std::fs::write(
        &root_config,
        port_zero_config(
            &dir.path().join("root"),
            "",
            &format!(
                "repl_listen = \"127.0.0.1:0\"\n{}",
                ca.issue(dir.path(), "root").toml_keys()
            ),
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let root = NodeProcess::start(dir.path(), &["--config", root_config.to_str().unwrap()]);
    let root_kv = root.address("kv api").to_string();
    assert!(
        edgekit(&["kv", "put", "tls/on", "yes", "--node", &root_kv])
            .status
            .success()
    );

    let replica_config = dir.path().join("replica.toml");
    std::fs::write(
        &replica_config,
        port_zero_config(
            &dir.path().join("replica"),
            "enabled = false\n",
            &format!(
                "upstream = \"{}\"\n{}",
                root.address("kv replication"),
                ca.issue(dir.path(), "replica").toml_keys()
            ),
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let replica = NodeProcess::start(dir.path(), &["--config", replica_config.to_str().unwrap()]);
    eventually_prints(
        &[
            "kv",
            "get",
            "tls/on",
            "--node",
            &replica.address("kv api").to_string(),
        ],
        "yes",
    );
}

#[test]
fn counter_nodes_gossip_over_mutual_tls_set_in_the_config_and_refuse_an_impostor() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, other) = (TestCa::new("fleet CA"), TestCa::new("some other CA"));
    let start = |name: &str, peer: Option<SocketAddr>, tls: TlsFiles| {
        let config = dir.path().join(format!("{name}.toml"));
        let peers = peer.map_or(String::new(), |peer| format!("peers = [\"{peer}\"]\n"));
        let counters = format!(
            "node_id = \"{name}\"\nfsync_every_ms = 50\n{peers}{}",
            tls.toml_keys()
        );
        std::fs::write(
            &config,
            port_zero_config(&dir.path().join(name), &counters, "enabled = false\n")
                + "[dns]\nenabled = false\n",
        )
        .unwrap();
        NodeProcess::start(dir.path(), &["--config", config.to_str().unwrap()])
    };
    let first = start("first", None, fleet.issue(dir.path(), "first"));
    let gossip = first.address("counters gossip");
    let second = start("second", Some(gossip), fleet.issue(dir.path(), "second"));
    // Signed by another CA, though it trusts the fleet's: the fleet must not take its state.
    let impostor = start(
        "impostor",
        Some(gossip),
        other.issue_trusting(dir.path(), "impostor", &fleet),
    );
    let incr = |node: &NodeProcess, by: &str| {
        let http = node.address("counters http").to_string();
        let output = edgekit(&["counters", "incr", "hits", "--by", by, "--node", &http]);
        assert!(output.status.success(), "{output:?}");
    };
    incr(&impostor, "100");
    for _ in 0..3 {
        incr(&first, "2");
    }
    incr(&second, "5");
    for node in [&first, &second] {
        let http = node.address("counters http").to_string();
        eventually_prints(&["counters", "get", "hits", "--node", &http], "11");
    }
    // Ten gossip intervals later the impostor's increment is still nowhere in the fleet, and
    // the fleet's are not in the impostor.
    std::thread::sleep(std::time::Duration::from_secs(1));
    for (node, expected) in [(&first, "11"), (&second, "11"), (&impostor, "100")] {
        let http = node.address("counters http").to_string();
        let output = edgekit(&["counters", "get", "hits", "--node", &http]);
        assert_eq!(stdout(&output).trim(), expected, "{output:?}");
    }
}

#[test]
fn a_replica_waiting_for_its_upstream_is_live_but_not_ready_and_still_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream address where nothing listens: the bootstrap retries and never completes.
    let nobody = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        port_zero_config(
            &dir.path().join("data"),
            "",
            &format!("upstream = \"{nobody}\"\n"),
        ) + "[dns]\nenabled = false\n",
    )
    .unwrap();
    let mut node = NodeProcess::spawn(dir.path(), &["--config", config.to_str().unwrap()]);
    node.wait_for_line(|line| line.starts_with("kv api listening on"));
    let admin = node.address("admin");
    assert_eq!(http_get(admin, "/healthz").0, 200);
    let (status, body) = http_get(admin, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "dns disabled\ncounters up\nkv starting\n")
    );
    let (_, metrics) = http_get(admin, "/metrics");
    assert!(
        metrics.contains("edgekit_node_part_up{part=\"kv\"} 0\n"),
        "{metrics}"
    );
    let started = std::time::Instant::now();
    assert_eq!(node.terminate().code(), Some(0), "{}", node.log.join("\n"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!node.log.iter().any(|line| line == "node ready"));
}
