//! A whole DNS tree on loopback: several authoritative servers on distinct 127.0.0.x
//! addresses sharing one port, chosen at random per hierarchy so tests can run in parallel.

use std::{fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use hickory_proto::rr::Name;

use super::{server::AuthServer, zone::Zone};

/// A server to start: its name, address and zones (origin, zone-file text).
#[derive(Debug, Clone)]
struct ServerSpec {
    name: String,
    ip: Ipv4Addr,
    zones: Vec<(String, String)>,
}

/// Describes a hierarchy; [`HierarchyBuilder::start`] runs it.
#[derive(Debug, Default, Clone)]
pub struct HierarchyBuilder {
    servers: Vec<ServerSpec>,
}

/// Running authoritative servers. Dropping it stops them all.
#[derive(Debug)]
pub struct DnsHierarchy {
    port: u16,
    servers: Vec<AuthServer>,
    root_hints: String,
}

impl HierarchyBuilder {
    /// An empty hierarchy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a server named `name` (e.g. `a.root.test.`) on `ip` serving `zones`, each given as
    /// (origin, zone-file text). The servers hosting `.` become the root hints.
    pub fn server(mut self, name: &str, ip: Ipv4Addr, zones: &[(&str, &str)]) -> Self {
        self.servers.push(ServerSpec {
            name: name.to_string(),
            ip,
            zones: zones
                .iter()
                .map(|(origin, text)| ((*origin).to_string(), (*text).to_string()))
                .collect(),
        });
        self
    }

    /// Start on a runtime of its own (one worker thread) and write a root hints file naming
    /// the root servers into a fresh temporary directory: for tests that run `edgekit` as a
    /// child process and wait on it from a plain thread while the servers answer.
    pub fn start_with_hints(self) -> Result<HintedHierarchy, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?;
        let hierarchy = runtime.block_on(self.start())?;
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let hints = dir.path().join("test.root");
        std::fs::write(&hints, hierarchy.root_hints()).map_err(|err| err.to_string())?;
        Ok(HintedHierarchy {
            hierarchy,
            hints,
            dir,
            _runtime: runtime,
        })
    }

    /// Parse the zones and start every server on one random port (retrying a few ports if one
    /// is taken on some address).
    pub async fn start(self) -> Result<DnsHierarchy, String> {
        let mut parsed = Vec::new();
        for spec in &self.servers {
            let zones = spec
                .zones
                .iter()
                .map(|(origin, text)| Zone::parse(origin, text))
                .collect::<Result<Vec<_>, _>>()?;
            let name = Name::from_ascii(&spec.name).map_err(|e| e.to_string())?;
            parsed.push((name, spec.ip, zones));
        }
        let mut last_error = String::from("no servers");
        for _attempt in 0..20 {
            let mut servers = Vec::new();
            let mut port = 0;
            let mut failed = false;
            for (name, ip, zones) in &parsed {
                match AuthServer::start(name.clone(), *ip, port, zones.clone()).await {
                    Ok(server) => {
                        port = server.address().port();
                        servers.push(server);
                    }
                    Err(err) => {
                        last_error = format!("{ip}:{port}: {err}");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                let mut root_hints = String::new();
                for (server, (_, _, zones)) in servers.iter().zip(&parsed) {
                    if zones.iter().any(|zone| zone.origin().is_root()) {
                        let _ = writeln!(root_hints, ".\t3600000\tNS\t{}", server.name());
                        let _ = writeln!(
                            root_hints,
                            "{}\t3600000\tA\t{}",
                            server.name(),
                            server.address().ip()
                        );
                    }
                }
                return Ok(DnsHierarchy {
                    port,
                    servers,
                    root_hints,
                });
            }
        }
        Err(format!("could not start the hierarchy: {last_error}"))
    }
}

/// A running hierarchy on a runtime of its own, with a root hints file for it.
#[derive(Debug)]
pub struct HintedHierarchy {
    /// The servers. Declared before the runtime, so they are dropped while it still runs.
    pub hierarchy: DnsHierarchy,
    /// The root hints file, for `--root-hints`.
    pub hints: PathBuf,
    /// The directory holding `hints`; a test may put its own files there.
    pub dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl DnsHierarchy {
    /// The port every server listens on (the resolver's `authority_port`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Root hints in `named.root` format naming the servers that host `.`.
    pub fn root_hints(&self) -> &str {
        &self.root_hints
    }

    /// The server called `name`.
    ///
    /// # Panics
    /// If there is no such server (a bug in the test).
    pub fn server(&self, name: &str) -> &AuthServer {
        let wanted = Name::from_ascii(name).unwrap_or_default();
        self.servers
            .iter()
            .find(|server| *server.name() == wanted)
            .unwrap_or_else(|| panic!("no server {name} in the hierarchy"))
    }

    /// Every server.
    pub fn servers(&self) -> &[AuthServer] {
        &self.servers
    }

    /// Total questions received by all servers.
    pub fn total_queries(&self) -> usize {
        self.servers
            .iter()
            .map(|server| server.queries().len())
            .sum()
    }
}
