//! The binary's contract with a person at a terminal: help that lists everything, honest errors
//! and exit codes.

use assert_cmd::Command;
use predicates::prelude::*;

fn edgekit() -> Command {
    Command::cargo_bin("edgekit").expect("the edgekit binary is built for tests")
}

#[test]
fn help_lists_every_subcommand_group_with_a_description() {
    let output = edgekit()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(output).unwrap();
    for group in ["resolve", "dns", "bench", "counters", "kv", "node"] {
        let line = help
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{group} ")))
            .unwrap_or_else(|| panic!("--help has no line for `{group}`:\n{help}"));
        let description = line.trim_start()[group.len()..].trim();
        assert!(
            description.len() > 10,
            "`{group}` has no real description: {line:?}"
        );
    }
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    edgekit()
        .arg("frobnicate")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "unrecognized subcommand 'frobnicate'",
        ));
}

#[test]
fn version_matches_the_crate() {
    edgekit()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn closed_stdout_is_not_an_error() {
    // `edgekit --help | head -c1`: the reader went away; that must not print an error.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("edgekit"))
        .arg("--help")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "closed stdout made edgekit panic: {stderr}"
    );
}
