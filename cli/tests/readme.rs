//! The README cannot rot: every shell command in it is run here, as written.
//!
//! Commands live in ```sh blocks. A trailing `# -> TEXT` says what the command's output must
//! contain (reads, `get` and `curl`, may take a few tries while replicas converge; other
//! commands must print it the first time). The quick start's two commands are covered elsewhere (`edgekit node` on the
//! embedded defaults in tests/node.rs; `bash scripts/test.sh` is this suite); every other
//! command belongs to the "Try it" section, which the tour test below runs in order against real
//! nodes, with only the documented default addresses replaced by the ports the nodes bound.

mod common;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Instant,
};

use common::{NodeProcess, WAIT, dns_section, run_bounded};
use edgekit_testkit::dns::HierarchyBuilder;

const README: &str = include_str!("../../README.md");
const REPLICA_EXAMPLE: &str = include_str!("../../examples/replica.toml");
const TOUR_SECTION: &str = "Try it: a running node";
const QUICK_START: [&str; 2] = [
    "cargo run --release -p edgekit -- node",
    "bash scripts/test.sh",
];

/// One command of the README and the output it promises, if any.
#[derive(Debug)]
struct Step {
    command: String,
    expect: Option<String>,
}

/// Every line of every ```sh block, with the `## ` section it is in.
fn commands() -> Vec<(String, Step)> {
    let mut section = String::new();
    let mut in_sh = false;
    let mut steps = Vec::new();
    for line in README.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            in_sh = !in_sh && fence == "sh";
            assert!(
                fence == "sh" || fence.is_empty(),
                "README has a ```{fence} block: commands go in ```sh blocks so they are run"
            );
            continue;
        }
        if !in_sh {
            if let Some(heading) = line.strip_prefix("## ") {
                section = heading.to_owned();
            }
            continue;
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (command, expect) = match line.split_once("# -> ") {
            Some((command, expect)) => (command.trim_end(), Some(expect.trim().to_owned())),
            None => (line.trim_end(), None),
        };
        steps.push((
            section.clone(),
            Step {
                command: command.to_owned(),
                expect,
            },
        ));
    }
    steps
}

#[test]
fn every_readme_command_is_run_by_a_test() {
    let commands = commands();
    let quick_start: Vec<&str> = commands
        .iter()
        .filter(|(section, _)| section == "Quick start")
        .map(|(_, step)| step.command.as_str())
        .collect();
    assert_eq!(quick_start, QUICK_START);
    for (section, step) in &commands {
        assert!(
            section == "Quick start" || section == TOUR_SECTION,
            "`{}` is in section {section:?}, which no test runs: move it to the tour or add a test",
            step.command
        );
    }
    assert!(
        commands.iter().filter(|(s, _)| s == TOUR_SECTION).count() >= 8,
        "the tour lost its commands"
    );
    // Indented code blocks would escape this check.
    for line in README.lines() {
        let indented = line.strip_prefix("    ").unwrap_or_default().trim_start();
        for word in ["edgekit ", "cargo ", "curl ", "bash "] {
            assert!(
                !indented.starts_with(word),
                "README has an indented command {line:?}: put it in a ```sh block"
            );
        }
    }
}

/// A tree that holds `www.example.com`, so the README's name resolves without the internet.
const ROOT_ZONE: &str = "
$TTL 86400
@        IN SOA a.root. hostmaster.root. 1 1800 900 604800 86400
@        IN NS  a.root.
a.root.  IN A   127.0.0.2
com.     IN NS  ns1.com.
ns1.com. IN A   127.0.0.3
";
const COM_ZONE: &str = "
$TTL 86400
@            IN SOA ns1.com. hostmaster.com. 1 1800 900 604800 300
@            IN NS  ns1.com.
ns1          IN A   127.0.0.3
example      IN NS  ns1.example.com.
ns1.example  IN A   127.0.0.4
";
const EXAMPLE_ZONE: &str = "
$TTL 300
@    IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 60
@    IN NS  ns1.example.com.
ns1  IN A   127.0.0.4
www  IN A   192.0.2.1
";

/// The addresses the README uses for the first node: `edgekit node`'s embedded defaults
/// (tests/node.rs checks that these are the defaults), by the part that prints them.
const FIRST_NODE_DEFAULTS: [(&str, &str); 6] = [
    ("admin", "127.0.0.1:9090"),
    ("dns", "127.0.0.1:5353"),
    ("kv api", "127.0.0.1:7380"),
    ("kv replication", "127.0.0.1:7390"),
    ("counters http", "127.0.0.1:7381"),
    ("counters gossip", "127.0.0.1:7946"),
];

/// Where examples/replica.toml sets each part's address.
fn replica_addresses() -> Vec<(&'static str, String)> {
    let table: toml::Table = REPLICA_EXAMPLE
        .parse()
        .expect("examples/replica.toml parses");
    let at = |path: &[&str]| {
        let mut value = &table[path[0]];
        for key in &path[1..] {
            value = &value[*key];
        }
        match value {
            toml::Value::Array(items) => items[0].as_str().expect("an address").to_owned(),
            other => other.as_str().expect("an address").to_owned(),
        }
    };
    vec![
        ("admin", at(&["admin", "listen"])),
        ("dns", at(&["dns", "server", "listen"])),
        ("kv api", at(&["kv", "api"])),
        ("counters http", at(&["counters", "http"])),
        ("counters gossip", at(&["counters", "listen"])),
    ]
}

fn substitute(text: &str, addresses: &BTreeMap<String, SocketAddr>) -> String {
    addresses
        .iter()
        .fold(text.to_owned(), |text, (documented, bound)| {
            text.replace(documented.as_str(), &bound.to_string())
        })
}

/// Run one non-daemon command through bash in `cwd`, with the test's `edgekit` first on PATH,
/// until its output contains what the README promises (bounded).
fn run_step(step: &Step, command: &str, cwd: &Path) {
    let bin_dir = Path::new(common::EDGEKIT).parent().expect("a directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let mut bash = Command::new("bash");
        bash.args(["-o", "pipefail", "-c", command])
            .current_dir(cwd)
            .env("PATH", &path);
        let output = run_bounded(bash);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let promised = step
            .expect
            .as_deref()
            .is_none_or(|expect| stdout.contains(expect));
        if output.status.success() && promised {
            return;
        }
        // Reads may be retried while a replica catches up; anything else must be right the
        // first time (retrying a write would change what it prints).
        let read_only = command.starts_with("curl ") || command.split(' ').any(|w| w == "get");
        assert!(
            Instant::now() < deadline && step.expect.is_some() && read_only,
            "README command `{}` (run as `{command}`) gave {:?}, stdout {stdout:?}, stderr {:?}; \
             the README promises {:?}",
            step.command,
            output.status,
            String::from_utf8_lossy(&output.stderr),
            step.expect
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_readme_tour_runs_as_written() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hierarchy = runtime
        .block_on(
            HierarchyBuilder::new()
                .server("a.root.", Ipv4Addr::new(127, 0, 0, 2), &[(".", ROOT_ZONE)])
                .server(
                    "ns1.com.",
                    Ipv4Addr::new(127, 0, 0, 3),
                    &[("com.", COM_ZONE)],
                )
                .server(
                    "ns1.example.com.",
                    Ipv4Addr::new(127, 0, 0, 4),
                    &[("example.com.", EXAMPLE_ZONE)],
                )
                .start(),
        )
        .expect("the hierarchy starts");
    // The repository root as the README's reader has it, but in a scratch directory.
    let cwd = tempfile::tempdir().unwrap();
    let hints = cwd.path().join("lab.root");
    std::fs::write(&hints, hierarchy.root_hints()).unwrap();

    // The quick start's node, on port 0 and pointed at the lab tree instead of the internet.
    let first_config = cwd.path().join("first.toml");
    std::fs::write(
        &first_config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[counters]\nlisten = \"127.0.0.1:0\"\n\
             http = \"127.0.0.1:0\"\ninterval_ms = 100\n\n[kv]\napi = \"127.0.0.1:0\"\n\
             repl_listen = \"127.0.0.1:0\"\nfsync = false\n\n{}",
            dns_section(&hints, hierarchy.port())
        ),
    )
    .unwrap();
    let mut nodes = vec![NodeProcess::start(
        cwd.path(),
        &["--config", first_config.to_str().unwrap()],
    )];
    let mut addresses: BTreeMap<String, SocketAddr> = FIRST_NODE_DEFAULTS
        .iter()
        .map(|(part, documented)| ((*documented).to_owned(), nodes[0].address(part)))
        .collect();

    // examples/replica.toml as shipped, its own addresses on port 0 and the first node's
    // addresses replaced by where the first node really listens.
    std::fs::create_dir(cwd.path().join("examples")).unwrap();
    let mut replica = substitute(REPLICA_EXAMPLE, &addresses);
    for (_, documented) in replica_addresses() {
        replica = replica.replace(&documented, "127.0.0.1:0");
    }
    std::fs::write(cwd.path().join("examples/replica.toml"), replica).unwrap();

    let tour: Vec<Step> = commands()
        .into_iter()
        .filter(|(section, _)| section == TOUR_SECTION)
        .map(|(_, step)| step)
        .collect();
    for step in &tour {
        if let Some(args) = step.command.strip_prefix("edgekit node ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            let node = NodeProcess::start(cwd.path(), &args);
            for (part, documented) in replica_addresses() {
                addresses.insert(documented, node.address(part));
            }
            nodes.push(node);
            continue;
        }
        run_step(step, &substitute(&step.command, &addresses), cwd.path());
    }
    assert_eq!(nodes.len(), 2, "the tour starts a second node");
    for mut node in nodes.into_iter().rev() {
        let exit = node.terminate();
        assert_eq!(exit.code(), Some(0), "{}", node.log.join("\n"));
    }
}
