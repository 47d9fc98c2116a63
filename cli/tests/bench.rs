//! `edgekit bench dns` end to end: a real process against an in-process responder on loopback.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use assert_cmd::Command;
use predicates::prelude::*;

/// Echoes each query back with QR set until dropped: NXDOMAIN for names with a label
/// `missing`, NOERROR otherwise.
struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((length, peer)) = socket.recv_from(&mut buffer)
                    && length >= 12
                {
                    buffer[2] |= 0x80;
                    if buffer[12..length]
                        .windows(8)
                        .any(|label| label == b"\x07missing")
                    {
                        buffer[3] = (buffer[3] & 0xF0) | 3;
                    }
                    let _ = socket.send_to(&buffer[..length], peer);
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn query_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

fn bench_dns(server: SocketAddr, queries: &tempfile::NamedTempFile) -> Command {
    let mut command = Command::cargo_bin("edgekit").unwrap();
    command
        .args(["bench", "dns", "--server", &server.to_string(), "--queries"])
        .arg(queries.path());
    command.timeout(Duration::from_secs(60));
    command
}

#[test]
fn json_report_parses_and_counts_add_up() {
    let responder = Responder::start();
    let queries = query_file("www.example.com A\nexample.net AAAA\n");
    let output = bench_dns(responder.addr, &queries)
        .args(["--count", "400", "--concurrency", "8", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(report["sent"], 400);
    assert_eq!(report["answered"], 400);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["rcodes"]["NOERROR"], 400);
    assert!(report["qps"].as_f64().unwrap() > 0.0);
    for key in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(report["latency_ms"][key].is_number(), "no latency {key}");
    }
}

#[test]
fn text_report_and_plot_are_written() {
    let responder = Responder::start();
    let queries = query_file("www.example.com A\n");
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("latency.svg");
    bench_dns(responder.addr, &queries)
        .args(["--duration", "300ms", "--tcp"])
        .arg("--plot")
        .arg(&chart)
        .assert()
        .failure()
        // The responder speaks UDP only: TCP cannot connect, and the message says where.
        .stderr(predicate::str::contains(responder.addr.to_string()));
    assert!(!chart.exists(), "a failed run wrote a chart");

    bench_dns(responder.addr, &queries)
        .args(["--duration", "300ms", "--rate", "300"])
        .arg("--plot")
        .arg(&chart)
        .assert()
        .success()
        .stdout(predicate::str::contains("Queries/second:"))
        .stdout(predicate::str::contains("Latency (ms):"))
        .stdout(predicate::str::contains("300 qps offered"));
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}

#[test]
fn without_count_or_duration_the_file_is_sent_once() {
    let responder = Responder::start();
    let queries = query_file("a.example A\nb.example A\nc.example MX\n");
    let output = bench_dns(responder.addr, &queries)
        .arg("--json")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(report["sent"], 3);
}

#[test]
fn bad_query_file_fails_naming_the_line() {
    let queries = query_file("www.example.com A\nexample.com NOTATYPE\n");
    bench_dns("127.0.0.1:9".parse().unwrap(), &queries)
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("line 2").and(predicate::str::contains("NOTATYPE")));
}

#[test]
fn no_answers_at_all_is_a_failure() {
    // Nothing listens on a port that was just released.
    let silent = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let queries = query_file("www.example.com A\n");
    bench_dns(silent, &queries)
        .args(["--count", "3", "--timeout", "100ms", "--json"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("\"lost\": 3"))
        .stderr(predicate::str::contains("answered none of 3 queries"));
}

#[test]
fn concurrency_and_rate_are_exclusive() {
    let queries = query_file("www.example.com A\n");
    bench_dns("127.0.0.1:9".parse().unwrap(), &queries)
        .args(["--concurrency", "4", "--rate", "10"])
        .assert()
        .code(2);
}

#[test]
fn query_log_lists_every_answer_in_send_order() {
    let responder = Responder::start();
    let queries = query_file("www.example.com A\nmissing.example.net AAAA\n");
    let log = tempfile::NamedTempFile::new().unwrap();
    bench_dns(responder.addr, &queries)
        .args([
            "--count",
            "50",
            "--concurrency",
            "4",
            "--sockets",
            "2",
            "--json",
        ])
        .arg("--query-log")
        .arg(log.path())
        .assert()
        .success();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sent_us,latency_us,rcode,name,type"));
    let rows: Vec<Vec<&str>> = lines.map(|line| line.split(',').collect()).collect();
    assert_eq!(rows.len(), 50, "one line per answered query");
    let mut previous_sent = 0;
    let mut missing = 0;
    for row in &rows {
        assert_eq!(row.len(), 5, "five fields: {row:?}");
        let sent: u64 = row[0].parse().unwrap();
        let latency: u64 = row[1].parse().unwrap();
        assert!(sent >= previous_sent, "lines are in send order");
        assert!(latency >= 1);
        previous_sent = sent;
        match (row[2], row[3], row[4]) {
            ("NOERROR", "www.example.com.", "A") => {}
            ("NXDOMAIN", "missing.example.net.", "AAAA") => missing += 1,
            other => panic!("unexpected line {other:?}"),
        }
    }
    assert_eq!(missing, 25, "the file's two queries alternate");
}

#[test]
fn query_log_to_an_unwritable_path_is_an_error_naming_it() {
    let responder = Responder::start();
    let queries = query_file("www.example.com A\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("log.csv");
    bench_dns(responder.addr, &queries)
        .args(["--count", "5"])
        .arg("--query-log")
        .arg(&path)
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot write the query log"))
        .stderr(predicate::str::contains("no-such-dir"));
}
