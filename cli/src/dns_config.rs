//! The DNS config file shared by `edgekit resolve` and `edgekit dns serve`: a TOML file whose
//! `[resolver]` table configures the engine and whose `[server]` table configures the server
//! (see docs/dns-config.md). Flags override the file; the library validates the result.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edgekit_dns::{ResolverConfig, ServerConfig};
use serde::Deserialize;

/// The tables of the file; other tables belong to other commands and are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DnsConfigFile {
    #[serde(default)]
    pub(crate) resolver: ResolverConfig,
    #[serde(default)]
    pub(crate) server: ServerConfig,
}

/// Flags that override the `[resolver]` table.
#[derive(Debug, Default)]
pub(crate) struct ResolverOverrides {
    pub(crate) root_hints: Option<PathBuf>,
    pub(crate) allow_loopback: bool,
    pub(crate) authority_port: Option<u16>,
}

/// Read `path` (or use the defaults without one) and apply the resolver flags.
pub(crate) fn load(
    path: Option<&Path>,
    overrides: &ResolverOverrides,
) -> anyhow::Result<DnsConfigFile> {
    let mut file = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<DnsConfigFile>(&text)
                .with_context(|| format!("bad config file {}", path.display()))?
        }
        None => DnsConfigFile::default(),
    };
    let config = &mut file.resolver;
    if let Some(path) = &overrides.root_hints {
        config.root_hints_file = Some(path.clone());
    }
    if overrides.allow_loopback {
        config.allow_loopback = true;
        config.allow_private = true;
    }
    if let Some(port) = overrides.authority_port {
        config.authority_port = port;
    }
    Ok(file)
}
