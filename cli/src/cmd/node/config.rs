//! The `edgekit node` config file (docs/configuration.md): one TOML file with a table per part.
//!
//! Loading reads and checks everything (syntax, unknown keys, addresses, ranges, data
//! directories) without writing anything, so a bad file leaves the disk as it was.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use edgekit_counters::{CounterNodeConfig, Durability as CounterDurability, NodeId, NodeTls};
use edgekit_dns::{ResolverConfig, ServerConfig};
use quicksilver_kv::{Durability, Retention, StoreConfig};
use serde::Deserialize;

use crate::dns_config::DnsConfigFile;

/// The whole file. Every table and key is optional; an absent one means its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeConfig {
    /// Where every part keeps its state, one subdirectory per part.
    #[serde(default = "default_data_dir")]
    pub(crate) data_dir: PathBuf,
    #[serde(default)]
    pub(crate) admin: AdminSection,
    #[serde(default)]
    pub(crate) dns: DnsSection,
    #[serde(default)]
    pub(crate) counters: CountersSection,
    #[serde(default)]
    pub(crate) kv: KvSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminSection {
    /// `/healthz`, `/readyz` and `/metrics`.
    pub(crate) listen: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[dns]`: the `[dns.resolver]` and `[dns.server]` tables are the ones `edgekit dns serve`
/// reads (docs/dns-config.md), parsed into the same library types.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DnsSection {
    pub(crate) enabled: bool,
    pub(crate) resolver: ResolverConfig,
    pub(crate) server: ServerConfig,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            resolver: ResolverConfig::default(),
            server: ServerConfig::default(),
        }
    }
}

impl DnsSection {
    /// The tables as `edgekit dns serve` holds them.
    pub(crate) fn tables(&self) -> DnsConfigFile {
        DnsConfigFile {
            resolver: self.resolver.clone(),
            server: self.server.clone(),
        }
    }
}

/// The node's resolver address when `[dns.server] listen` is absent (53 needs root).
const DEFAULT_DNS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5353);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CountersSection {
    pub(crate) enabled: bool,
    /// This node's stable id; unique in the fleet, kept across restarts.
    pub(crate) node_id: String,
    /// Node-to-node gossip.
    pub(crate) listen: SocketAddr,
    /// The HTTP API (`edgekit counters incr/get --node`).
    pub(crate) http: SocketAddr,
    /// Peers' gossip addresses.
    pub(crate) peers: Vec<SocketAddr>,
    pub(crate) interval_ms: u64,
    /// Accept gossip on a non-loopback address without TLS.
    pub(crate) insecure: bool,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
    /// Acknowledge increments once written and fsync the journal this often, instead of
    /// fsyncing before every acknowledgement.
    pub(crate) fsync_every_ms: Option<u64>,
    /// Overrides `<data_dir>/counters`.
    pub(crate) data_dir: Option<PathBuf>,
}

impl Default for CountersSection {
    fn default() -> Self {
        Self {
            enabled: true,
            node_id: "node-1".to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
            http: SocketAddr::from(([127, 0, 0, 1], 7381)),
            peers: Vec::new(),
            interval_ms: 1000,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            fsync_every_ms: None,
            data_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KvSection {
    pub(crate) enabled: bool,
    /// The HTTP API (`edgekit kv put/get --node`).
    pub(crate) api: SocketAddr,
    /// Be a read-only replica of this upstream replication address (the root or a relay).
    pub(crate) upstream: Option<SocketAddr>,
    /// Serve replication to downstream replicas here. Absent: 127.0.0.1:7390 on a root, off on
    /// a replica (a replica with it set is a relay).
    pub(crate) repl_listen: Option<SocketAddr>,
    pub(crate) fsync: bool,
    pub(crate) max_value_len: usize,
    pub(crate) retain_entries: u64,
    /// Serve replication in clear text on a non-loopback address.
    pub(crate) insecure: bool,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
    /// Overrides `<data_dir>/kv`.
    pub(crate) data_dir: Option<PathBuf>,
}

impl Default for KvSection {
    fn default() -> Self {
        Self {
            enabled: true,
            api: SocketAddr::from(([127, 0, 0, 1], 7380)),
            upstream: None,
            repl_listen: None,
            fsync: true,
            max_value_len: 1 << 20,
            retain_entries: 1_000_000,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            data_dir: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("edgekit-data")
}

/// The config as loaded, with the file's own keys kept to tell what a reload changed.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) config: NodeConfig,
    /// Every key the file sets, flattened (`dns.server.allow`), with its value.
    pub(crate) keys: BTreeMap<String, toml::Value>,
}

/// Settings that a SIGHUP applies to the running node; every other change needs a restart.
pub(crate) const RELOADABLE: &[&str] = &[
    "dns.server.allow",
    "dns.server.prefetch_percent",
    "dns.server.stale_client_timeout_ms",
];

/// Read and check `path` (the embedded defaults without one). Nothing is written.
pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Loaded> {
    let text = match path {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?,
        None => String::new(),
    };
    let shown = path.map_or_else(|| "(embedded defaults)".into(), |p| p.display().to_string());
    let loaded = parse(&text).with_context(|| format!("bad config file {shown}"))?;
    loaded
        .config
        .validate()
        .with_context(|| format!("bad config file {shown}"))?;
    Ok(loaded)
}

/// Parse the text and fill the defaults that depend on what the file leaves out.
fn parse(text: &str) -> anyhow::Result<Loaded> {
    let table: toml::Table = text.parse()?;
    // From the text, an error shows the line; from the table, it names the whole key path.
    let mut config: NodeConfig = match toml::from_str(text) {
        Ok(config) => config,
        Err(error) => {
            let path = NodeConfig::deserialize(toml::Value::Table(table))
                .err()
                .and_then(|error| {
                    let message = error.to_string();
                    let (_, path) = message.rsplit_once("\nin ")?;
                    Some(format!("in {}", path.trim()))
                })
                .unwrap_or_default();
            bail!("{}\n{path}", error.to_string().trim_end());
        }
    };
    let mut keys = BTreeMap::new();
    flatten("", &table, &mut keys);
    if !keys.contains_key("dns.server.listen") {
        config.dns.server.listen = vec![DEFAULT_DNS_LISTEN];
    }
    if !keys.contains_key("dns.server.udp_sockets_per_address") {
        config.dns.server.udp_sockets_per_address =
            std::thread::available_parallelism().map_or(1, usize::from);
    }
    if config.kv.upstream.is_none() && !keys.contains_key("kv.repl_listen") {
        config.kv.repl_listen = Some(SocketAddr::from(([127, 0, 0, 1], 7390)));
    }
    Ok(Loaded { config, keys })
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&path, inner, out),
            other => {
                out.insert(path, other.clone());
            }
        }
    }
}

/// Keys whose value differs between two loads (set, changed or removed).
pub(crate) fn changed_keys(old: &Loaded, new: &Loaded) -> Vec<String> {
    let mut changed: Vec<String> = old
        .keys
        .keys()
        .chain(new.keys.keys())
        .filter(|key| old.keys.get(*key) != new.keys.get(*key))
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

impl NodeConfig {
    /// Every check that needs no write: ranges, address clashes, TLS files, data directories.
    fn validate(&self) -> anyhow::Result<()> {
        if self.dns.enabled {
            self.dns.resolver.validate().context("in [dns.resolver]")?;
            self.dns.server.validate().context("in [dns.server]")?;
        }
        if self.counters.enabled {
            let section = &self.counters;
            let tls_given = check_tls_files(
                "counters",
                [&section.tls_cert, &section.tls_key, &section.tls_ca],
            )?;
            if let Some(every) = section.fsync_every_ms
                && !(1..=3_600_000).contains(&every)
            {
                bail!("[counters] fsync_every_ms = {every}: must be between 1 and 3600000");
            }
            self.counter_node_config()?
                .validate()
                .context("in [counters]")?;
            if !section.listen.ip().is_loopback() && !tls_given && !section.insecure {
                bail!(
                    "[counters] listen = \"{}\": gossip in clear text on a non-loopback address \
                     needs tls_cert, tls_key and tls_ca, or insecure = true",
                    section.listen
                );
            }
        }
        if self.kv.enabled {
            // The store calls this `retention.max_entries`; name it as the file does.
            if self.kv.retain_entries == 0 {
                bail!("[kv] retain_entries = 0: must be at least 1");
            }
            self.store_config().validate().context("in [kv]")?;
            let tls_given =
                check_tls_files("kv", [&self.kv.tls_cert, &self.kv.tls_key, &self.kv.tls_ca])?;
            if let Some(addr) = self.kv.repl_listen
                && !addr.ip().is_loopback()
                && !tls_given
                && !self.kv.insecure
            {
                bail!(
                    "[kv] repl_listen = \"{addr}\": replication in clear text on a non-loopback \
                     address needs tls_cert, tls_key and tls_ca, or insecure = true"
                );
            }
        }
        self.check_address_clashes()?;
        let shared_dir_used = self.data_dirs().iter().any(|(key, _)| key == "data_dir");
        if shared_dir_used {
            check_data_dir("data_dir", &self.data_dir)?;
        }
        for (key, dir) in self.data_dirs() {
            check_data_dir(&key, &dir)?;
        }
        Ok(())
    }

    /// Two parts on one fixed address would fail at bind time, after other parts started.
    fn check_address_clashes(&self) -> anyhow::Result<()> {
        let mut seen: Vec<(String, SocketAddr)> = vec![("admin.listen".into(), self.admin.listen)];
        if self.dns.enabled {
            seen.extend(
                self.dns
                    .server
                    .listen
                    .iter()
                    .map(|addr| ("dns.server.listen".into(), *addr)),
            );
        }
        if self.counters.enabled {
            seen.push(("counters.listen".into(), self.counters.listen));
            seen.push(("counters.http".into(), self.counters.http));
        }
        if self.kv.enabled {
            seen.push(("kv.api".into(), self.kv.api));
            if let Some(addr) = self.kv.repl_listen {
                seen.push(("kv.repl_listen".into(), addr));
            }
        }
        for (index, (key, addr)) in seen.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = seen[..index].iter().find(|(_, seen)| seen == addr) {
                // DNS binds UDP and TCP; others bind TCP only, so any repeat is a clash.
                bail!("{key} = \"{addr}\" is also {other}: each part needs its own address");
            }
        }
        Ok(())
    }

    /// The data directory of each enabled part, with the key that sets it.
    pub(crate) fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut dirs = Vec::new();
        if self.counters.enabled {
            dirs.push(match &self.counters.data_dir {
                Some(dir) => ("counters.data_dir".into(), dir.clone()),
                None => ("data_dir".into(), self.data_dir.join("counters")),
            });
        }
        if self.kv.enabled {
            dirs.push(match &self.kv.data_dir {
                Some(dir) => ("kv.data_dir".into(), dir.clone()),
                None => ("data_dir".into(), self.data_dir.join("kv")),
            });
        }
        dirs
    }

    pub(crate) fn counters_dir(&self) -> PathBuf {
        self.counters
            .data_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("counters"))
    }

    pub(crate) fn kv_dir(&self) -> PathBuf {
        self.kv
            .data_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("kv"))
    }

    pub(crate) fn counter_node_config(&self) -> anyhow::Result<CounterNodeConfig> {
        let section = &self.counters;
        let node_id = NodeId::new(&section.node_id).with_context(|| {
            format!(
                "[counters] node_id = {:?} is not a valid node id",
                section.node_id
            )
        })?;
        let mut config = CounterNodeConfig::new(node_id, section.listen, self.counters_dir());
        config.peers.clone_from(&section.peers);
        config.http = Some(section.http);
        config.interval = Duration::from_millis(section.interval_ms);
        if let Some(every) = section.fsync_every_ms {
            config.durability = CounterDurability::FsyncEvery(Duration::from_millis(every));
        }
        if let (Some(cert), Some(key), Some(ca)) =
            (&section.tls_cert, &section.tls_key, &section.tls_ca)
        {
            config.tls = Some(
                NodeTls::from_pem_files(cert, key, ca)
                    .context("[counters] tls_cert, tls_key, tls_ca: cannot set up mutual TLS")?,
            );
        }
        Ok(config)
    }

    pub(crate) fn store_config(&self) -> StoreConfig {
        StoreConfig {
            durability: if self.kv.fsync {
                Durability::Fsync
            } else {
                Durability::NoSync
            },
            max_value_len: self.kv.max_value_len,
            retention: Retention {
                max_entries: self.kv.retain_entries,
                ..Retention::default()
            },
            ..StoreConfig::default()
        }
    }
}

/// A data directory must be a readable, writable directory, or not exist yet under one; the
/// check reads metadata only, so a bad config writes nothing.
fn check_data_dir(key: &str, dir: &Path) -> anyhow::Result<()> {
    let shown = || format!("{key} = \"{}\"", dir.display());
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!("{}: exists and is not a directory", shown()),
        Ok(meta) => {
            std::fs::read_dir(dir).with_context(|| format!("{}: cannot read it", shown()))?;
            if meta.permissions().readonly() {
                bail!("{}: the directory is not writable", shown());
            }
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            // Created at start: the nearest existing ancestor must be a writable directory.
            let mut ancestor = dir.parent();
            while let Some(candidate) = ancestor {
                let candidate = if candidate.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    candidate
                };
                match std::fs::metadata(candidate) {
                    Ok(meta) if !meta.is_dir() => bail!(
                        "{}: cannot be created, {} is not a directory",
                        shown(),
                        candidate.display()
                    ),
                    Ok(meta) if meta.permissions().readonly() => bail!(
                        "{}: cannot be created, {} is not writable",
                        shown(),
                        candidate.display()
                    ),
                    Ok(_) => return Ok(()),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        ancestor = candidate.parent();
                    }
                    Err(err) => bail!("{}: cannot inspect {}: {err}", shown(), candidate.display()),
                }
            }
            Ok(())
        }
        Err(err) => bail!("{}: cannot read it: {err}", shown()),
    }
}

/// The three TLS keys of `[section]` go together and must be readable; returns whether they are
/// given.
fn check_tls_files(section: &str, paths: [&Option<PathBuf>; 3]) -> anyhow::Result<bool> {
    let given = paths.iter().filter(|path| path.is_some()).count();
    if given != 0 && given != 3 {
        bail!("[{section}] tls_cert, tls_key and tls_ca go together: give all three or none");
    }
    for (key, path) in ["tls_cert", "tls_key", "tls_ca"].into_iter().zip(paths) {
        if let Some(path) = path {
            std::fs::metadata(path).with_context(|| {
                format!("[{section}] {key} = \"{}\": cannot read it", path.display())
            })?;
        }
    }
    Ok(given == 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_embedded_defaults() {
        let loaded = parse("").unwrap();
        let config = loaded.config;
        assert_eq!(config.data_dir, PathBuf::from("edgekit-data"));
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.dns.server.listen, [DEFAULT_DNS_LISTEN]);
        assert_eq!(config.kv.api.to_string(), "127.0.0.1:7380");
        assert_eq!(
            config.kv.repl_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:7390")
        );
        assert!(config.dns.enabled && config.counters.enabled && config.kv.enabled);
    }

    #[test]
    fn a_replica_serves_no_replication_unless_asked() {
        let loaded = parse("[kv]\nupstream = \"127.0.0.1:7390\"\n").unwrap();
        assert_eq!(loaded.config.kv.repl_listen, None);
    }

    #[test]
    fn unknown_keys_are_named_at_every_level() {
        for (text, key) in [
            ("frobnicate = 1\n", "frobnicate"),
            ("[kv]\nfsnyc = false\n", "fsnyc"),
            ("[dns.server]\nlisten_on = []\n", "listen_on"),
            ("[dns.resolver]\nroot_hint = \"x\"\n", "root_hint"),
        ] {
            let error = format!("{:#}", parse(text).unwrap_err());
            assert!(error.contains(key), "{text:?}: {error}");
        }
    }

    #[test]
    fn range_errors_name_the_key_as_the_file_spells_it() {
        for (text, named) in [
            ("[kv]\nretain_entries = 0\n", "[kv] retain_entries = 0"),
            (
                "[kv]\nmax_value_len = 100000000\n",
                "max_value_len = 100000000",
            ),
            ("[counters]\ninterval_ms = 0\n", "interval"),
            ("[counters]\nnode_id = \"a b\"\n", "node_id = \"a b\""),
            (
                "[dns.resolver]\nedns_buffer_size = 100\n",
                "edns_buffer_size",
            ),
        ] {
            let loaded = parse(text).unwrap();
            let error = format!("{:#}", loaded.config.validate().unwrap_err());
            assert!(error.contains(named), "{text:?}: {error}");
        }
    }

    #[test]
    fn clashing_addresses_name_both_keys() {
        let loaded = parse("[kv]\napi = \"127.0.0.1:9090\"\n").unwrap();
        let error = format!("{:#}", loaded.config.validate().unwrap_err());
        assert!(
            error.contains("kv.api") && error.contains("admin.listen"),
            "{error}"
        );
    }

    #[test]
    fn a_reload_reports_the_keys_it_changed() {
        let old = parse("[dns.server]\nprefetch_percent = 10\n").unwrap();
        let new = parse("[dns.server]\nprefetch_percent = 20\n[kv]\nfsync = false\n").unwrap();
        assert_eq!(
            changed_keys(&old, &new),
            ["dns.server.prefetch_percent", "kv.fsync"]
        );
    }
}
