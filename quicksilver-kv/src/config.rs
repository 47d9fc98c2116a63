//! Store configuration, validated once when the store opens.

use serde::Deserialize;

use crate::Error;

/// LMDB's own key size limit (its default `MDB_MAXKEYSIZE`): keys are 1 to 511 bytes.
pub const MAX_KEY_LEN: usize = 511;

/// When a committed batch is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Durability {
    /// fsync every group commit before acknowledging it (the default): an acknowledged batch
    /// survives a power cut.
    #[default]
    Fsync,
    /// Leave flushing to the OS (LMDB `MDB_NOSYNC`). Survives a process crash (SIGKILL) but a
    /// machine crash may lose recent batches or, per LMDB's documentation, damage the file.
    /// For tests, benchmarks and replicas that can re-fetch from upstream.
    NoSync,
    /// fsync each group commit's data pages but not LMDB's meta page (`MDB_NOMETASYNC`): one
    /// disk flush per commit instead of two. The store is never damaged, but a machine crash
    /// may undo the last committed group (the next commit's flush makes it durable). Meant
    /// for replicas: they acknowledge nothing to writers and re-fetch anything they lose from
    /// their upstream, whose chain checksum they continue.
    DataSync,
}

/// How long the replication log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Retention {
    /// Keep at most this many log entries (at least 1).
    pub max_entries: u64,
    /// Keep at most this many bytes of log entries (at least 1 MiB).
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Everything [`crate::Store::open`] can be told.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Size of the LMDB memory map: the most the store can ever hold (data + log). Multiple of
    /// the page size (4 KiB); at least 1 MiB. Default 4 GiB (only the used part takes disk).
    pub map_size: usize,
    /// Largest value accepted, in bytes. Default 1 MiB; at most 64 MiB.
    pub max_value_len: usize,
    /// Most ops in one batch. Default 10,000.
    pub max_batch_ops: usize,
    /// Most bytes (encoded) in one batch. Default 16 MiB.
    pub max_batch_bytes: usize,
    /// Most batches folded into one group commit (one transaction, one fsync). Default 1,024.
    pub max_group_batches: usize,
    /// fsync per group commit or not.
    pub durability: Durability,
    /// Log retention.
    pub retention: Retention,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            map_size: 4 << 30,
            max_value_len: 1 << 20,
            max_batch_ops: 10_000,
            max_batch_bytes: 16 << 20,
            max_group_batches: 1024,
            durability: Durability::Fsync,
            retention: Retention::default(),
        }
    }
}

impl StoreConfig {
    /// Check every field; the error names the field and the value.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, value: String, reason| Error::Config {
            field,
            value,
            reason,
        };
        if self.map_size < (1 << 20) || !self.map_size.is_multiple_of(4096) {
            return Err(bad(
                "map_size",
                self.map_size.to_string(),
                "must be at least 1 MiB and a multiple of 4096",
            ));
        }
        if self.max_value_len > (64 << 20) {
            return Err(bad(
                "max_value_len",
                self.max_value_len.to_string(),
                "must be at most 64 MiB",
            ));
        }
        if self.max_batch_ops == 0 {
            return Err(bad("max_batch_ops", "0".into(), "must be at least 1"));
        }
        if self.max_batch_bytes < 1024 || self.max_batch_bytes > self.map_size / 4 {
            return Err(bad(
                "max_batch_bytes",
                self.max_batch_bytes.to_string(),
                "must be between 1 KiB and a quarter of map_size",
            ));
        }
        if self.max_group_batches == 0 {
            return Err(bad("max_group_batches", "0".into(), "must be at least 1"));
        }
        if self.retention.max_entries == 0 {
            return Err(bad(
                "retention.max_entries",
                "0".into(),
                "must be at least 1",
            ));
        }
        if self.retention.max_bytes < (1 << 20) {
            return Err(bad(
                "retention.max_bytes",
                self.retention.max_bytes.to_string(),
                "must be at least 1 MiB",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_field() {
        StoreConfig::default().validate().unwrap();
        let config = StoreConfig {
            map_size: 12345,
            ..StoreConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("map_size = 12345"), "{message}");
        let config = StoreConfig {
            retention: Retention {
                max_entries: 0,
                ..Retention::default()
            },
            ..StoreConfig::default()
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("retention.max_entries"), "{message}");
    }
}
