//! Crash consistency with real processes: a child writes batches and prints each one it got
//! acknowledged; it is killed with SIGKILL at random moments, 20 times. After every kill the
//! store reopens with no repair, holds every acknowledged batch, its log chain verifies and its
//! digest matches a rescan. Meanwhile this process reads the live store read-only (another
//! process on the same box).
//!
//! `harness = false`: the same binary is the child when `QSKV_CRASH_CHILD` is set.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use quicksilver_kv::{Batch, Reader, Store, StoreConfig};

const CHILD_VAR: &str = "QSKV_CRASH_CHILD";
const KILLS: u64 = 20;
const KEYS_PER_BATCH: u64 = 4;

fn main() {
    if let Ok(spec) = std::env::var(CHILD_VAR) {
        child(&spec);
        return;
    }
    parent();
    println!("crash: {KILLS} SIGKILLs survived");
}

fn config() -> StoreConfig {
    StoreConfig {
        map_size: 256 << 20,
        ..StoreConfig::default()
    }
}

/// Write batches forever (until killed), printing `acked N SEQ` after each commit returns.
fn child(spec: &str) {
    let (dir, start) = spec.split_once(';').expect("DIR;START");
    let start: u64 = start.parse().expect("a start number");
    let store = Store::open(dir, config()).expect("the child opens the store");
    let writers: Vec<_> = (0..4)
        .map(|lane| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in (start + lane..).step_by(4) {
                    let mut batch = Batch::new();
                    for k in 0..KEYS_PER_BATCH {
                        batch = batch.put(format!("b/{n}/{k}"), format!("value of {n}"));
                    }
                    let seq = store.write(batch).expect("write");
                    println!("acked {n} {seq}");
                }
            })
        })
        .collect();
    for writer in writers {
        let _ = writer.join();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn parent() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut next_random = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for round in 0..KILLS {
        let start = round * 1_000_000;
        let mut child = KillOnDrop(
            Command::new(&exe)
                .env(CHILD_VAR, format!("{};{start}", dir.path().display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // Let it write for a random while (at least until its first ack is likely), reading
        // the live store read-only from this process in between.
        let run_for = Duration::from_millis(30 + next_random() % 170);
        let started = Instant::now();
        let mut last_seen = 0;
        while started.elapsed() < run_for {
            if let Ok(reader) = Reader::open_read_only(dir.path()) {
                let seq = reader.head().unwrap().seq;
                assert!(seq >= last_seen, "a read-only reader saw the head go back");
                last_seen = seq;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Child::kill sends SIGKILL on Unix.
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        drop(child);
        for line in lines.join().unwrap() {
            let mut parts = line.split_whitespace();
            assert_eq!(
                parts.next(),
                Some("acked"),
                "unexpected child output {line:?}"
            );
            let n: u64 = parts.next().unwrap().parse().unwrap();
            let seq: u64 = parts.next().unwrap().parse().unwrap();
            acked.push((n, seq));
        }
        check(dir.path(), &acked, round);
    }
    assert!(
        acked.len() as u64 > KILLS,
        "the children acknowledged only {} batches",
        acked.len()
    );
}

/// Reopen (no repair step exists) and check everything acknowledged so far.
fn check(dir: &std::path::Path, acked: &[(u64, u64)], round: u64) {
    let store = Store::open(dir, config())
        .unwrap_or_else(|err| panic!("reopen after kill {round} failed: {err}"));
    let verified = store
        .reader()
        .verify()
        .unwrap_or_else(|err| panic!("after kill {round}: {err}"));
    let head = store.reader().head().unwrap();
    assert_eq!(verified.digest, head.digest);
    let view = store.reader().view().unwrap();
    for &(n, seq) in acked {
        assert!(
            seq <= head.seq,
            "batch {n} acked at {seq} but head is {}",
            head.seq
        );
        for k in 0..KEYS_PER_BATCH {
            let value = view.get(format!("b/{n}/{k}").as_bytes()).unwrap();
            assert_eq!(
                value,
                Some(format!("value of {n}").as_bytes()),
                "acknowledged batch {n} (seq {seq}) lost after kill {round}"
            );
        }
    }
    // Every batch is whole: the number of keys is a multiple of the batch size.
    assert_eq!(
        verified.pairs % KEYS_PER_BATCH,
        0,
        "a partial batch survived"
    );
    drop(view);
    store.close();
}
