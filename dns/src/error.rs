//! Typed errors: one enum per operation whose failures differ.

use std::path::PathBuf;

/// A resolver configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field holds a value outside its allowed range.
    #[error("invalid resolver setting `{field}` = {value}: {reason}")]
    Invalid {
        /// The config key.
        field: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// The root hints could not be loaded.
    #[error("root hints: {0}")]
    RootHints(#[from] RootHintsError),
}

/// Root hints text or file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootHintsError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// A line is not a valid root hints record.
    #[error("line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The hints name no root server with an address.
    #[error("no root server with an address")]
    Empty,
}

/// Why a resolution produced no answer (SERVFAIL to a client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The wall-time budget of the resolution ran out.
    #[error("resolution timed out after {elapsed_ms} ms")]
    Timeout {
        /// Time spent.
        elapsed_ms: u64,
    },
    /// The resolution sent as many upstream queries as it may.
    #[error("gave up after {limit} upstream queries (max_queries_per_resolution)")]
    QueryBudgetExhausted {
        /// The limit reached.
        limit: u32,
    },
    /// A CNAME/DNAME chain was longer than allowed, or looped.
    #[error("CNAME/DNAME chain longer than {limit} links (or a loop) at {name}")]
    ChainTooLong {
        /// The limit reached.
        limit: u8,
        /// Where the chain stopped.
        name: String,
    },
    /// No server of a zone gave a usable answer (all dead, lame, refused or unreachable).
    #[error("no server for zone {zone} gave a usable answer ({detail})")]
    NoUsableServer {
        /// The zone being asked.
        zone: String,
        /// What happened to the servers.
        detail: String,
    },
    /// The name given is not something we can ask (e.g. a relative or malformed name).
    #[error("cannot resolve {name}: {reason}")]
    BadQuery {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl ResolveError {
    /// True when the resolution ran out of time (wall clock), as opposed to servers failing.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}
