//! `edgekit dns serve` as a real process in front of an in-process hierarchy on 127.0.0.x.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use edgekit_dns::proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use edgekit_testkit::dns::example_test_hierarchy;

/// Kills the server if the test ends before it exits by itself.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `edgekit dns serve`, with its UDP address and the rest of its stderr.
struct RunningServer {
    guard: ChildGuard,
    udp: SocketAddr,
    stderr_lines: mpsc::Receiver<String>,
}

/// Start `edgekit dns serve` on 127.0.0.1:0 in front of the hierarchy on `authority_port`, and
/// wait until it prints its UDP address. Later stderr lines stay readable from the receiver.
fn start_server(authority_port: u16, hints: &Path, extra_args: &[&str]) -> RunningServer {
    let child = Command::new(env!("CARGO_BIN_EXE_edgekit"))
        .args([
            "dns",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-loopback",
        ])
        .arg("--root-hints")
        .arg(hints)
        .args(extra_args)
        .env("EDGEKIT_AUTHORITY_PORT", authority_port.to_string())
        // The test asserts the binary's own default for huge pages, which this would override.
        .env_remove("MIMALLOC_ALLOW_THP")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let stderr = guard.0.stderr.take().unwrap();
    let (lines_tx, stderr_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let udp = loop {
        let line = stderr_lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the server prints its address");
        if let Some(address) = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.strip_suffix(" (udp)"))
        {
            break address.parse().unwrap();
        }
    };
    RunningServer {
        guard,
        udp,
        stderr_lines,
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    message.to_vec().unwrap()
}

fn ask(server: SocketAddr, id: u16, name: &str) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.send_to(&query(id, name), server).unwrap();
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).expect("the server answers");
    Message::from_vec(&buffer[..length]).expect("the answer parses")
}

#[test]
fn serves_the_hierarchy_and_exits_0_on_sigterm() {
    let authorities = example_test_hierarchy("").start_with_hints().unwrap();

    let running = start_server(
        authorities.hierarchy.port(),
        &authorities.hints,
        &["--threads", "2"],
    );
    let (mut guard, server) = (running.guard, running.udp);

    let answer = ask(server, 42, "www.example.test.");
    assert_eq!(answer.metadata.id, 42);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let addresses: Vec<_> = answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(addresses, [Ipv4Addr::new(192, 0, 2, 1)]);
    let nxdomain = ask(server, 43, "nope.example.test.");
    assert_eq!(nxdomain.metadata.response_code, ResponseCode::NXDomain);

    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = guard.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the server exits after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn a_bad_server_table_is_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dns.toml");
    std::fs::write(&config, "[server]\nmax_udp_payload = 100\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edgekit"))
        .args(["dns", "serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_udp_payload"), "stderr: {stderr}");
}

#[test]
fn sighup_reloads_the_acl_without_restarting() {
    let authorities = example_test_hierarchy("").start_with_hints().unwrap();
    let config = authorities.dir.path().join("dns.toml");
    std::fs::write(&config, "[server]\nallow = [\"127.0.0.0/8\"]\n").unwrap();

    let config_arg = config.to_str().unwrap();
    let running = start_server(
        authorities.hierarchy.port(),
        &authorities.hints,
        &["--threads", "1", "--config", config_arg],
    );
    let (mut guard, server, lines) = (running.guard, running.udp, running.stderr_lines);
    assert_eq!(
        ask(server, 1, "www.example.test.").metadata.response_code,
        ResponseCode::NoError
    );

    std::fs::write(&config, "[server]\nallow = [\"10.0.0.0/8\"]\n").unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &guard.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the server reports the reload");
        if line.contains("reload") {
            break line;
        }
    };
    assert!(
        reloaded.starts_with("reloaded the configuration"),
        "{reloaded}"
    );
    assert_eq!(
        ask(server, 2, "www.example.test.").metadata.response_code,
        ResponseCode::Refused
    );
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "the server is still running"
    );
}

/// The binary turns transparent huge pages off for itself: a huge-page fault zeroes 2 MiB at once
/// and stalled a fresh server's first answers by milliseconds (docs/benchmarks.md, session 9).
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_without_transparent_huge_pages() {
    let authorities = example_test_hierarchy("").start_with_hints().unwrap();

    let running = start_server(
        authorities.hierarchy.port(),
        &authorities.hints,
        &["--threads", "1"],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.guard.0.id())).unwrap();
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("the kernel reports THP_enabled (Linux 5.0 and later)");
    assert_eq!(thp.trim(), "0", "THP_enabled in /proc/<pid>/status");
}
