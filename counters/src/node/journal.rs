//! The durable record of this node's own entries: an fsynced, append-only log.
//!
//! Each record is `len u32 LE | xxh3-64 of payload u64 LE | payload`, the payload being the
//! postcard encoding of `(key: String, increments: u64, decrements: u64)`: the node's whole own
//! entry for the key after a batch of increments. Entries only grow, so loading takes the
//! per-key maximum, and a torn record at the end (a crash during a write) is simply dropped:
//! the increments it carried were never acknowledged.
//!
//! A retirement (the node folding a retired node's entries into its own) is one record with the
//! top bit of the length set, whose payload is the postcard encoding of `(Retirement, [(key,
//! increments, decrements)])`: the tombstone and every own entry the fold changed, so a crash
//! keeps both or neither.
//!
//! Appends go to the logical end of the file. The per-increment append of
//! [`Durability::FsyncEvery`](super::Durability::FsyncEvery) copies its record into a shared
//! memory mapping of the file's tail instead of calling `write` (the syscall was ~15% of the
//! server's time per HTTP increment): the bytes are in the page cache the moment the copy ends,
//! which survives the process being killed exactly as a `write` does, and `fdatasync` on the
//! file flushes them as it flushes written pages. The mapped tail is preallocated (zeros), which
//! the loader reads as the end of the log (a zero header fails its checksum); a clean close
//! trims it.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{fd::AsRawFd, unix::fs::FileExt},
    path::{Path, PathBuf},
    ptr::NonNull,
};

use crate::{PnCount, Retirement};

const FILE_NAME: &str = "own-entries.log";
const HEADER_LEN: usize = 12;
/// Keys are bounded by the HTTP API; anything longer in the file is corruption.
const MAX_RECORD_LEN: usize = 64 * 1024;
/// Set in a record's length: the record is a retirement.
const RETIREMENT_FLAG: u32 = 1 << 31;
/// A retirement record lists every key the retired node counted.
const MAX_RETIREMENT_RECORD_LEN: usize = 1 << 30;

/// What a journal holds: every own entry (per-key maximum) and every retirement.
pub(crate) type Loaded = (HashMap<String, PnCount>, Vec<Retirement>);

/// Bytes of the file mapped at a time for per-increment appends: room for thousands of
/// records, and more than the largest record plus the alignment of the window's start.
const WINDOW_LEN: usize = 1 << 20;
/// Windows start at a multiple of this (a multiple of every common page size).
const WINDOW_ALIGN: u64 = 64 * 1024;

pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// The logical end of the log: where the next record goes.
    len: u64,
    /// The mapped tail, once a per-increment append has needed it.
    window: Option<MappedWindow>,
    /// Reused for every append, so the per-increment path does not allocate.
    buffer: Vec<u8>,
}

/// A shared, writable mapping of `len` bytes of the journal file from offset `start`, with the
/// file's blocks for that range allocated up front.
struct MappedWindow {
    ptr: NonNull<u8>,
    start: u64,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (nothing else holds the pointer), and it is
// written only through `&mut self`; moving it to another thread moves that sole ownership.
unsafe impl Send for MappedWindow {}

impl MappedWindow {
    fn new(file: &File, start: u64, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(start).map_err(io::Error::other)?;
        let size = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // Allocate the blocks now: a store into a mapped page whose block cannot be allocated
        // (disk full) would kill the process with SIGBUS; here it is an error instead.
        // SAFETY: plain syscall on a file descriptor we own; no memory is passed.
        let code = unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, size) };
        if code != 0 {
            return Err(io::Error::from_raw_os_error(code));
        }
        // SAFETY: a fresh mapping at an address the kernel chooses, of a range of a file we
        // hold open for writing and that the line above made at least `start + len` long.
        // Nothing else in this process maps or truncates the journal while the window lives
        // (the file is private to the node's data directory).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, start, len })
    }

    /// Copy `bytes` into the window at file offset `at` (which the caller checked fits).
    fn write_at(&mut self, at: u64, bytes: &[u8]) {
        let offset = usize::try_from(at - self.start).unwrap_or(usize::MAX);
        assert!(
            offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.len),
            "journal record outside its mapped window"
        );
        // SAFETY: the range lies inside the live mapping (checked above), which is writable,
        // and `bytes` is ordinary memory that cannot overlap a range no one else references.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            );
        }
    }
}

impl Drop for MappedWindow {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` created; no reference into it outlives
        // `self` (`write_at` holds none past its return).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl Journal {
    /// Open (creating) the journal in `dir`, returning every own entry it holds. The file is
    /// rewritten compacted (one record per key) so it does not grow without bound over restarts.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Loaded)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err),
        };
        let (entries, retirements) = parse(&bytes);
        let compacted = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut file = File::create(&compacted)?;
            let mut buffer = Vec::new();
            for (key, count) in &entries {
                encode_record(&mut buffer, key, *count)?;
            }
            // The folds are in the entries now; the tombstones alone remain to be kept.
            for retirement in &retirements {
                encode_retirement(&mut buffer, retirement, &[]);
            }
            file.write_all(&buffer)?;
            file.sync_all()?;
        }
        fs::rename(&compacted, &path)?;
        // The rename itself must be durable before we acknowledge anything on top of it.
        File::open(dir)?.sync_all()?;
        // Readable too: a shared writable mapping needs a descriptor open for both.
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok((
            Self {
                file,
                path,
                len,
                window: None,
                buffer: Vec::new(),
            },
            (entries, retirements),
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Append `entries` and fsync: once this returns `Ok`, they survive a crash.
    pub(crate) fn append(&mut self, entries: &[(String, PnCount)]) -> io::Result<()> {
        self.append_unsynced(entries)?;
        self.file.sync_data()
    }

    /// Append `entries` without fsync: they survive a crash of the process (they are in the
    /// kernel's page cache) but not of the machine until the next fsync (see `sync_handle`).
    pub(crate) fn append_unsynced(&mut self, entries: &[(String, PnCount)]) -> io::Result<()> {
        self.buffer.clear();
        for (key, count) in entries {
            encode_record(&mut self.buffer, key, *count)?;
        }
        let buffer = std::mem::take(&mut self.buffer);
        let written = self.write_at_end(&buffer);
        self.buffer = buffer;
        written
    }

    /// Write `bytes` at the logical end, and move the end past them.
    fn write_at_end(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Append one key's entry without fsync, as [`append_unsynced`](Self::append_unsynced):
    /// copied into the mapped tail (no syscall, no allocation once the buffer has grown).
    pub(crate) fn append_one_unsynced(&mut self, key: &str, count: PnCount) -> io::Result<()> {
        self.buffer.clear();
        encode_record(&mut self.buffer, key, count)?;
        let end = self.len + self.buffer.len() as u64;
        let fits = self.window.as_ref().is_some_and(|window| {
            self.len >= window.start && end <= window.start + window.len as u64
        });
        if !fits {
            // Unmap the old window before mapping the next.
            self.window = None;
            let start = self.len - self.len % WINDOW_ALIGN;
            self.window = Some(MappedWindow::new(&self.file, start, WINDOW_LEN)?);
        }
        if let Some(window) = &mut self.window {
            window.write_at(self.len, &self.buffer);
        }
        self.len = end;
        Ok(())
    }

    /// A second handle on the journal file, for fsyncing it from another thread.
    pub(crate) fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Append a retirement and the own entries its fold produced as one record, and fsync.
    pub(crate) fn append_retirement(
        &mut self,
        retirement: &Retirement,
        own_after: &[(String, PnCount)],
    ) -> io::Result<()> {
        let mut buffer = Vec::new();
        encode_retirement(&mut buffer, retirement, own_after);
        if buffer.len() > MAX_RETIREMENT_RECORD_LEN {
            return Err(io::Error::other(format!(
                "retirement record of {} bytes exceeds the {MAX_RETIREMENT_RECORD_LEN}-byte bound",
                buffer.len()
            )));
        }
        self.write_at_end(&buffer)?;
        self.file.sync_data()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Trim the preallocated tail on a clean close (after a crash the next open's compaction
        // drops it). The records themselves are in the page cache whatever happens here.
        if self.window.take().is_some()
            && let Err(err) = self.file.set_len(self.len)
        {
            tracing::debug!(path = %self.path.display(), error = %err, "cannot trim the journal");
        }
    }
}

fn encode_retirement(
    buffer: &mut Vec<u8>,
    retirement: &Retirement,
    own_after: &[(String, PnCount)],
) {
    let entries: Vec<(&str, u64, u64)> = own_after
        .iter()
        .map(|(key, count)| (key.as_str(), count.increments, count.decrements))
        .collect();
    // Serializing plain data into a Vec cannot fail.
    let payload = postcard::to_stdvec(&(retirement, entries)).unwrap_or_default();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX >> 1) & !RETIREMENT_FLAG;
    buffer.extend_from_slice(&(len | RETIREMENT_FLAG).to_le_bytes());
    buffer.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    buffer.extend_from_slice(&payload);
}

fn encode_record(buffer: &mut Vec<u8>, key: &str, count: PnCount) -> io::Result<()> {
    // The payload is serialized in place after a header that is filled in afterwards, so a
    // record costs no allocation of its own.
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER_LEN]);
    let value = (key, count.increments, count.decrements);
    // Serializing a string and integers into a Vec does not fail; if it ever did, the
    // record would be missing, so the write fails (and the journal with it) instead.
    *buffer = postcard::to_extend(&value, std::mem::take(buffer))
        .map_err(|err| io::Error::other(format!("cannot encode a journal record: {err}")))?;
    let payload = &buffer[start + HEADER_LEN..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let sum = xxhash_rust::xxh3::xxh3_64(payload);
    buffer[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buffer[start + 4..start + HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// Every complete, intact record's entry, per-key maximum; stops at the first bad record.
fn parse(mut bytes: &[u8]) -> Loaded {
    let mut entries: HashMap<String, PnCount> = HashMap::new();
    let mut retirements: Vec<Retirement> = Vec::new();
    while bytes.len() >= HEADER_LEN {
        let (header, rest) = bytes.split_at(HEADER_LEN);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&header[..4]);
        let mut sum_bytes = [0u8; 8];
        sum_bytes.copy_from_slice(&header[4..]);
        let raw_len = u32::from_le_bytes(len_bytes);
        let is_retirement = raw_len & RETIREMENT_FLAG != 0;
        let len = (raw_len & !RETIREMENT_FLAG) as usize;
        let max = if is_retirement {
            MAX_RETIREMENT_RECORD_LEN
        } else {
            MAX_RECORD_LEN
        };
        if len > max || len > rest.len() {
            break;
        }
        let (payload, after) = rest.split_at(len);
        if xxhash_rust::xxh3::xxh3_64(payload) != u64::from_le_bytes(sum_bytes) {
            break;
        }
        if is_retirement {
            let Ok((retirement, own_after)) =
                postcard::from_bytes::<(Retirement, Vec<(String, u64, u64)>)>(payload)
            else {
                break;
            };
            for (key, increments, decrements) in own_after {
                let slot = entries.entry(key).or_default();
                *slot = slot.merged(PnCount {
                    increments,
                    decrements,
                });
            }
            if !retirements.contains(&retirement) {
                retirements.push(retirement);
            }
            bytes = after;
            continue;
        }
        let Ok((key, increments, decrements)) = postcard::from_bytes::<(String, u64, u64)>(payload)
        else {
            break;
        };
        let count = PnCount {
            increments,
            decrements,
        };
        let slot = entries.entry(key).or_default();
        *slot = slot.merged(count);
        bytes = after;
    }
    (entries, retirements)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(increments: u64, decrements: u64) -> PnCount {
        PnCount {
            increments,
            decrements,
        }
    }

    #[test]
    fn reopening_keeps_the_maximum_and_drops_a_torn_tail() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        {
            let (mut journal, (entries, _)) = Journal::open(dir.path())?;
            assert!(entries.is_empty());
            journal.append(&[("a".into(), count(3, 1)), ("b".into(), count(1, 0))])?;
            journal.append(&[("a".into(), count(5, 1))])?;
            journal.append(&[("b".into(), count(9, 9))])?;
            let path = journal.path().to_path_buf();
            drop(journal);
            // Tear the last record in half, as a crash mid-write would.
            let bytes = fs::read(&path)?;
            fs::write(&path, &bytes[..bytes.len() - 3])?;
        }
        let (mut journal, (entries, _)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("a"), Some(&count(5, 1)));
        assert_eq!(entries.get("b"), Some(&count(1, 0)));
        // Appending after the repaired tail is readable again.
        journal.append(&[("b".into(), count(2, 0))])?;
        drop(journal);
        let (_, (entries, _)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("b"), Some(&count(2, 0)));
        assert_eq!(entries.len(), 2);
        Ok(())
    }

    #[test]
    fn a_corrupted_record_ends_the_log_there() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (mut journal, _) = Journal::open(dir.path())?;
        journal.append(&[("a".into(), count(1, 0))])?;
        journal.append(&[("a".into(), count(2, 0))])?;
        let path = journal.path().to_path_buf();
        drop(journal);
        let mut bytes = fs::read(&path)?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes)?;
        let (_, (entries, _)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("a"), Some(&count(1, 0)));
        Ok(())
    }

    #[test]
    fn a_retirement_keeps_its_folds_and_tombstone_together() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let retirement = Retirement {
            retired: crate::NodeId::new("c").map_err(io::Error::other)?,
            survivor: crate::NodeId::new("a").map_err(io::Error::other)?,
        };
        let (mut journal, _) = Journal::open(dir.path())?;
        journal.append(&[("x".into(), count(5, 0))])?;
        journal.append_retirement(&retirement, &[("x".into(), count(16, 2))])?;
        let path = journal.path().to_path_buf();
        drop(journal);
        let (_, (entries, retirements)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("x"), Some(&count(16, 2)));
        assert_eq!(retirements, std::slice::from_ref(&retirement));
        // Compacted and reopened: still both.
        let (journal, (entries, retirements)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("x"), Some(&count(16, 2)));
        assert_eq!(retirements.len(), 1);
        // A torn retirement record is dropped whole: neither the fold nor the tombstone.
        let mut journal = journal;
        journal.append_retirement(
            &Retirement {
                retired: crate::NodeId::new("d").map_err(io::Error::other)?,
                ..retirement
            },
            &[("x".into(), count(99, 2))],
        )?;
        drop(journal);
        let bytes = fs::read(&path)?;
        fs::write(&path, &bytes[..bytes.len() - 2])?;
        let (_, (entries, retirements)) = Journal::open(dir.path())?;
        assert_eq!(entries.get("x"), Some(&count(16, 2)));
        assert_eq!(retirements.len(), 1);
        Ok(())
    }

    #[test]
    fn mapped_appends_mix_with_written_ones_across_windows() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let crashed = tempfile::tempdir()?;
        let long_key = "k".repeat(900);
        let (mut journal, _) = Journal::open(dir.path())?;
        journal.append(&[("w".into(), count(1, 0))])?;
        // ~1 KiB records: 3000 of them cross two window boundaries.
        for round in 1..=3000u64 {
            journal.append_one_unsynced(&long_key, count(round, 0))?;
            if round % 1000 == 0 {
                journal.append_unsynced(&[("w".into(), count(round, 1))])?;
            }
        }
        journal.append_one_unsynced("m", count(7, 7))?;
        let logical_len = journal.len;
        // What `kill -9` leaves: the records plus the zeroed, preallocated rest of the window.
        let live = fs::read(journal.path())?;
        assert!(live.len() as u64 > logical_len, "the tail is preallocated");
        assert!(live[logical_len as usize..].iter().all(|&byte| byte == 0));
        fs::write(crashed.path().join(FILE_NAME), &live)?;
        let path = journal.path().to_path_buf();
        drop(journal);
        // A clean close trims the tail.
        assert_eq!(fs::metadata(&path)?.len(), logical_len);
        for dir in [dir.path(), crashed.path()] {
            let (mut journal, (entries, _)) = Journal::open(dir)?;
            assert_eq!(entries.get(&long_key), Some(&count(3000, 0)));
            assert_eq!(entries.get("w"), Some(&count(3000, 1)));
            assert_eq!(entries.get("m"), Some(&count(7, 7)));
            assert_eq!(entries.len(), 3);
            // Appends after the reopened (compacted) end are read back too.
            journal.append_one_unsynced("m", count(8, 7))?;
            journal.append(&[("n".into(), count(1, 0))])?;
            drop(journal);
            let (_, (entries, _)) = Journal::open(dir)?;
            assert_eq!(entries.get("m"), Some(&count(8, 7)));
            assert_eq!(entries.get("n"), Some(&count(1, 0)));
        }
        Ok(())
    }
}
