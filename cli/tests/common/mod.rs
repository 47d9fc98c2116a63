//! Running `edgekit node` processes in tests: start, read their bound addresses, talk HTTP and
//! DNS to them, stop them. Shared by tests/node.rs and tests/readme.rs.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use edgekit_dns::proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};

pub const EDGEKIT: &str = env!("CARGO_BIN_EXE_edgekit");

/// How long any one wait in these tests may take before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running `edgekit node`, killed if the test ends before it exits by itself.
pub struct NodeProcess {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    /// What it printed: `"admin"`, `"dns"` (UDP), `"counters gossip"`, `"counters http"`,
    /// `"kv api"`, `"kv replication"` to the bound address.
    pub addresses: HashMap<String, SocketAddr>,
    /// Every stderr line read so far.
    pub log: Vec<String>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Start `edgekit node ARGS` in `cwd` and wait until it prints `node ready`.
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut node = Self::spawn(cwd, args);
        node.wait_for_line(|line| line == "node ready");
        node
    }

    /// Start without waiting for anything.
    pub fn spawn(cwd: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(EDGEKIT)
            .arg("node")
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("edgekit starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (lines_tx, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr_lines,
            addresses: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// Read stderr until a line matches; every `<part> listening on ADDR` line on the way is
    /// recorded. Panics with the log so far after [`WAIT`].
    pub fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.stderr_lines.recv_timeout(left) else {
                panic!(
                    "the node exited, or printed no wanted line within {WAIT:?}; stderr so far:\n{}",
                    self.log.join("\n")
                );
            };
            self.log.push(line.clone());
            if let Some((part, rest)) = line.split_once(" listening on ") {
                let (address, protocol) = rest.split_once(' ').unwrap_or((rest, ""));
                if protocol != "(tcp)" {
                    self.addresses
                        .insert(part.to_owned(), address.parse().expect("an address"));
                }
            }
            if wanted(&line) {
                return line;
            }
        }
    }

    pub fn address(&self, part: &str) -> SocketAddr {
        *self
            .addresses
            .get(part)
            .unwrap_or_else(|| panic!("the node printed no `{part} listening on` line"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Keep what it said on the way out.
                while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the node did not exit within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection: the status code and the body.
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Run `edgekit ARGS` to completion (killed, and the test failed, after [`WAIT`]).
pub fn edgekit(args: &[&str]) -> Output {
    let mut command = Command::new(EDGEKIT);
    command.args(args);
    run_bounded(command)
}

/// Run a command to completion with stdout and stderr captured, killing it after [`WAIT`].
pub fn run_bounded(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let err = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Run `edgekit ARGS` until its stdout (trimmed) is `expected`, for values that converge.
pub fn eventually_prints(args: &[&str], expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let output = edgekit(args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && stdout.trim() == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`edgekit {}` printed {stdout:?} (stderr {:?}), not {expected:?}, for {WAIT:?}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ask `server` for NAME A over UDP; the A addresses of the answer.
pub fn resolve_a(server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    ask(server, name)
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Ask `server` for NAME A over UDP; the whole answer.
pub fn ask(server: SocketAddr, name: &str) -> Message {
    let mut message = Message::new(4242, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("a name"),
        RecordType::A,
    ));
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    socket
        .send_to(&message.to_vec().expect("encode"), server)
        .expect("send");
    let mut buffer = [0u8; 4096];
    let (length, _) = socket.recv_from(&mut buffer).expect("the node answers");
    let answer = Message::from_vec(&buffer[..length]).expect("the answer parses");
    assert_eq!(answer.metadata.id, 4242);
    answer
}

/// A `[dns]` section pointing the resolver at an in-process hierarchy on `authority_port`.
pub fn dns_section(hints: &Path, authority_port: u16) -> String {
    format!(
        "[dns.resolver]\nroot_hints_file = \"{}\"\nallow_loopback = true\nauthority_port = {authority_port}\n\n\
         [dns.server]\nlisten = [\"127.0.0.1:0\"]\nudp_sockets_per_address = 1\n",
        hints.display()
    )
}

/// Every listening address on port 0, fsync off (tests), data under `data_dir`; the extra
/// lines go into the `[counters]` and `[kv]` tables.
pub fn port_zero_config(data_dir: &Path, counters_extra: &str, kv_extra: &str) -> String {
    format!(
        "data_dir = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [counters]\nlisten = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\ninterval_ms = 100\n{counters_extra}\n\
         [kv]\napi = \"127.0.0.1:0\"\nfsync = false\n{kv_extra}\n",
        data_dir.display()
    )
}
