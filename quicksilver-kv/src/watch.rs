//! Watches: changes served from the log, from any retained sequence, then live.

use tokio::sync::watch;

use crate::{Error, LogEntry, Op, Reader, Store};

/// Log entries read per step, so one watcher never holds a read transaction for long.
const WATCH_CHUNK: usize = 256;

/// A subscription to changes after a sequence, optionally under a key prefix.
///
/// Resumable: remember the last `seq` you processed and start a new watch from it.
#[derive(Debug)]
pub struct Watch {
    reader: Reader,
    head: watch::Receiver<u64>,
    after: u64,
    prefix: Vec<u8>,
}

impl Store {
    /// Watch changes after sequence `after` (use the current head for "from now on") to keys
    /// starting with `prefix`. Fails with [`Error::Compacted`] when `after + 1` is no longer in
    /// the log, and [`Error::FutureSequence`] when `after` is beyond the head.
    pub fn watch(&self, after: u64, prefix: &[u8]) -> Result<Watch, Error> {
        let head = self.subscribe();
        // Validate the start now, so the caller gets the error before streaming anything.
        self.reader().log_after(after, 0)?;
        Ok(Watch {
            reader: self.reader().clone(),
            head,
            after,
            prefix: prefix.to_vec(),
        })
    }
}

impl Watch {
    /// The last sequence delivered (or the starting point).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next entries with at least one change under the prefix (ops outside it removed).
    /// Waits while nothing new is committed. [`Error::Compacted`] if retention overtook the
    /// watcher; [`Error::Closed`] when the store closes.
    pub async fn next(&mut self) -> Result<Vec<LogEntry>, Error> {
        loop {
            // Mark the current head seen *before* reading, so a commit landing between the
            // read and the wait still wakes us.
            self.head.borrow_and_update();
            let reader = self.reader.clone();
            let after = self.after;
            let records = tokio::task::spawn_blocking(move || reader.log_after(after, WATCH_CHUNK))
                .await
                .map_err(|_| Error::Closed)??;
            if let Some(last) = records.last() {
                self.after = last.seq;
                let mut out = Vec::new();
                for record in &records {
                    let mut entry = record.decode()?;
                    entry.ops.retain(|op| op.key().starts_with(&self.prefix));
                    if !entry.ops.is_empty() {
                        out.push(entry);
                    }
                }
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            self.head.changed().await.map_err(|_| Error::Closed)?;
        }
    }
}

/// Keep only ops under `prefix` (used by callers that read the log directly).
pub fn filter_ops(ops: &[Op], prefix: &[u8]) -> Vec<Op> {
    ops.iter()
        .filter(|op| op.key().starts_with(prefix))
        .cloned()
        .collect()
}
