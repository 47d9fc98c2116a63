//! Root hints in the `named.root` format IANA publishes, and IANA's current hints built in.
//!
//! The format is a zone-file subset: `. TTL NS name` lines naming the root servers and
//! `name TTL A|AAAA address` lines giving their addresses; `;` starts a comment, the TTL and an
//! `IN` class are optional. Anything else is an error naming the line.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, path::Path};

use hickory_proto::rr::Name;

use crate::error::RootHintsError;

/// IANA's `named.root`, shipped with the crate (root zone version 2024041801).
pub const IANA_NAMED_ROOT: &str = include_str!("named.root");

/// One root server: its name and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootServer {
    /// The server's name, e.g. `a.root-servers.net.`.
    pub name: Name,
    /// Its IPv4 and IPv6 addresses.
    pub addresses: Vec<IpAddr>,
}

/// The root servers the resolver starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootHints {
    servers: Vec<RootServer>,
}

impl RootHints {
    /// IANA's current hints.
    pub fn iana() -> Self {
        // The embedded file is tested to parse (see tests below); fall back to an empty list is
        // impossible, so a parse failure here would be a build defect caught by that test.
        Self::parse(IANA_NAMED_ROOT).unwrap_or(Self {
            servers: Vec::new(),
        })
    }

    /// Read hints from a `named.root` file.
    pub fn from_file(path: &Path) -> Result<Self, RootHintsError> {
        let text = std::fs::read_to_string(path).map_err(|err| RootHintsError::Io {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Parse `named.root` text.
    pub fn parse(text: &str) -> Result<Self, RootHintsError> {
        let mut ns_names: Vec<Name> = Vec::new();
        let mut addresses: BTreeMap<Name, Vec<IpAddr>> = BTreeMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw_line.split(';').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| RootHintsError::Parse {
                line: line_no,
                reason,
            };
            let mut tokens = line.split_whitespace();
            let owner_text = tokens.next().ok_or_else(|| err("empty line".into()))?;
            let owner = Name::from_ascii(owner_text)
                .map_err(|e| err(format!("bad owner name {owner_text:?}: {e}")))?
                .to_lowercase();
            if !owner_text.ends_with('.') {
                return Err(err(format!(
                    "owner name {owner_text:?} must be fully qualified (end with '.')"
                )));
            }
            let mut rest: Vec<&str> = tokens.collect();
            // Optional TTL and class, in either order, before the type.
            while let Some(first) = rest.first() {
                if first.parse::<u32>().is_ok() || first.eq_ignore_ascii_case("IN") {
                    rest.remove(0);
                } else {
                    break;
                }
            }
            let [rtype, rdata] = rest.as_slice() else {
                return Err(err(format!(
                    "expected `TYPE DATA` after the owner, got {rest:?}"
                )));
            };
            match rtype.to_ascii_uppercase().as_str() {
                "NS" => {
                    if !owner.is_root() {
                        return Err(err(format!("NS record for {owner}, expected the root `.`")));
                    }
                    let target = Name::from_ascii(rdata)
                        .map_err(|e| err(format!("bad NS name {rdata:?}: {e}")))?
                        .to_lowercase();
                    if !ns_names.contains(&target) {
                        ns_names.push(target);
                    }
                }
                "A" | "AAAA" => {
                    let address: IpAddr = rdata
                        .parse()
                        .map_err(|e| err(format!("bad address {rdata:?}: {e}")))?;
                    if address.is_ipv4() != rtype.eq_ignore_ascii_case("A") {
                        return Err(err(format!("{rtype} record with address {address}")));
                    }
                    addresses.entry(owner).or_default().push(address);
                }
                other => return Err(err(format!("unsupported record type {other}"))),
            }
        }
        let servers: Vec<RootServer> = ns_names
            .into_iter()
            .filter_map(|name| {
                let addrs = addresses.remove(&name)?;
                Some(RootServer {
                    name,
                    addresses: addrs,
                })
            })
            .collect();
        if servers.is_empty() {
            return Err(RootHintsError::Empty);
        }
        Ok(Self { servers })
    }

    /// Hints from a list of servers (e.g. a test hierarchy).
    pub fn from_servers(servers: Vec<RootServer>) -> Result<Self, RootHintsError> {
        if servers.iter().all(|server| server.addresses.is_empty()) {
            return Err(RootHintsError::Empty);
        }
        Ok(Self { servers })
    }

    /// The root servers.
    pub fn servers(&self) -> &[RootServer] {
        &self.servers
    }

    /// Render in `named.root` format (parses back to the same hints).
    pub fn to_named_root(&self) -> String {
        let mut out = String::new();
        for server in &self.servers {
            let _ = writeln!(out, ".\t3600000\tNS\t{}", server.name);
            for address in &server.addresses {
                let rtype = if address.is_ipv4() { "A" } else { "AAAA" };
                let _ = writeln!(out, "{}\t3600000\t{rtype}\t{address}", server.name);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iana_hints_name_thirteen_servers_with_both_families() {
        let hints = RootHints::parse(IANA_NAMED_ROOT).unwrap();
        assert_eq!(hints.servers().len(), 13);
        let a = &hints.servers()[0];
        assert_eq!(a.name, Name::from_ascii("a.root-servers.net.").unwrap());
        assert_eq!(
            a.addresses,
            vec![
                "198.41.0.4".parse::<IpAddr>().unwrap(),
                "2001:503:ba3e::2:30".parse().unwrap()
            ]
        );
        assert_eq!(RootHints::iana(), hints);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = RootHints::parse(". NS a.example.\na.example. A 1.2.3.x\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(RootHints::parse("; nothing\n"), Err(RootHintsError::Empty));
        assert!(RootHints::parse("example. NS a.example.\n").is_err());
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            servers in proptest::collection::vec(
                ("[a-z]{1,10}", proptest::collection::vec(any::<IpAddr>(), 1..4)), 1..6)
        ) {
            let mut seen = std::collections::BTreeSet::new();
            let servers: Vec<RootServer> = servers
                .into_iter()
                .filter(|(label, _)| seen.insert(label.clone()))
                .map(|(label, addresses)| RootServer {
                    name: Name::from_ascii(format!("{label}.root.test.")).unwrap(),
                    addresses,
                })
                .collect();
            let hints = RootHints::from_servers(servers).unwrap();
            prop_assert_eq!(RootHints::parse(&hints.to_named_root()).unwrap(), hints);
        }

        #[test]
        fn parser_never_panics_on_garbage(text in "\\PC{0,200}") {
            let _ = RootHints::parse(&text);
        }
    }
}
