//! `edgekit resolve` against an in-process hierarchy of authoritative servers on 127.0.0.x.

use assert_cmd::Command;
use edgekit_testkit::dns::{HintedHierarchy, example_test_hierarchy};
use predicates::prelude::*;

/// Records in `example.test.` beyond the fixture's `www`.
const EXAMPLE_RECORDS: &str = "
alias     IN CNAME www
";

/// The hierarchy runs on its own runtime while the test thread waits for the child process.
struct Fixture(HintedHierarchy);

fn fixture() -> Fixture {
    Fixture(
        example_test_hierarchy(EXAMPLE_RECORDS)
            .start_with_hints()
            .unwrap(),
    )
}

impl Fixture {
    fn resolve(&self, args: &[&str]) -> Command {
        let mut command = Command::cargo_bin("edgekit").unwrap();
        command
            .arg("resolve")
            .args(args)
            .arg("--root-hints")
            .arg(&self.0.hints)
            .arg("--authority-port")
            .arg(self.0.hierarchy.port().to_string())
            .timeout(std::time::Duration::from_secs(20));
        command
    }
}

#[test]
fn prints_the_answer_like_dig() {
    let fixture = fixture();
    fixture
        .resolve(&["alias.example.test", "A", "--allow-loopback"])
        .assert()
        .success()
        .stdout(predicate::str::contains("status: NOERROR"))
        .stdout(predicate::str::contains(
            "alias.example.test.\t300\tIN\tCNAME\twww.example.test.",
        ))
        .stdout(predicate::str::contains(
            "www.example.test.\t300\tIN\tA\t192.0.2.1",
        ));
}

#[test]
fn short_prints_only_rdata() {
    let fixture = fixture();
    fixture
        .resolve(&["www.example.test", "--allow-loopback", "--short"])
        .assert()
        .success()
        .stdout("192.0.2.1\n");
}

#[test]
fn json_is_machine_readable() {
    let fixture = fixture();
    let output = fixture
        .resolve(&[
            "www.example.test",
            "A",
            "--allow-loopback",
            "--json",
            "--trace",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let value: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(value["status"], "NOERROR");
    assert_eq!(value["answers"][0]["data"], "192.0.2.1");
    assert_eq!(value["answers"][0]["type"], "A");
    assert_eq!(value["trace"].as_array().unwrap().len(), 3, "{value:#}");
}

#[test]
fn trace_names_each_server_and_what_it_said() {
    let fixture = fixture();
    let port = fixture.0.hierarchy.port();
    fixture
        .resolve(&["www.example.test", "A", "--allow-loopback", "--trace"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("@127.0.0.2:{port}")))
        .stdout(predicate::str::contains("referral to test. (ns1.test.)"))
        .stdout(predicate::str::contains(
            "referral to example.test. (ns1.example.test.)",
        ))
        .stdout(predicate::str::contains("answer (1 records)"))
        .stdout(predicate::str::contains(" ms]"));
}

#[test]
fn nxdomain_is_an_answer_and_exits_zero() {
    let fixture = fixture();
    fixture
        .resolve(&["nope.example.test", "A", "--allow-loopback"])
        .assert()
        .success()
        .stdout(predicate::str::contains("status: NXDOMAIN"))
        .stdout(predicate::str::contains("AUTHORITY SECTION"));
}

#[test]
fn servfail_exits_one_with_the_reason() {
    let fixture = fixture();
    // Without --allow-loopback the hierarchy's addresses are refused: nothing can be asked.
    fixture
        .resolve(&["www.example.test", "A"])
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains("failed (SERVFAIL)"))
        .stderr(predicate::str::contains("refused by policy"));
    assert_eq!(fixture.0.hierarchy.total_queries(), 0);
}

#[test]
fn bad_input_is_named() {
    let fixture = fixture();
    fixture
        .resolve(&["www.example.test", "NOTATYPE", "--allow-loopback"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "\"NOTATYPE\" is not a record type",
        ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgekit.toml");
    std::fs::write(&config, "[resolver]\nedns_buffer_size = 100\n").unwrap();
    let config_arg = format!("--config={}", config.display());
    fixture
        .resolve(&["www.example.test", "--allow-loopback", &config_arg])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("edns_buffer_size"))
        .stderr(predicate::str::contains("100"));
    std::fs::write(&config, "[resolver]\nno_such_key = 1\n").unwrap();
    let config_arg = format!("--config={}", config.display());
    fixture
        .resolve(&["www.example.test", "--allow-loopback", &config_arg])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no_such_key"));
}

#[test]
fn trace_shows_the_steps_before_a_failure() {
    let fixture = fixture();
    // Nothing serves example.test. at 127.0.0.4 once the leaf server misbehaves: it refuses.
    fixture
        .0
        .hierarchy
        .server("ns1.example.test.")
        .set_behaviour(edgekit_testkit::dns::Behaviour {
            refuse: true,
            ..Default::default()
        });
    fixture
        .resolve(&["www.example.test", "A", "--allow-loopback", "--trace"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("referral to example.test."))
        .stdout(predicate::str::contains("lame: REFUSED"))
        .stderr(predicate::str::contains("failed (SERVFAIL)"))
        .stderr(predicate::str::contains("example.test."));
}
