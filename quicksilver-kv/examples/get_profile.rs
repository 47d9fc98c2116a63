//! Point reads for an instruction-count profile: the store's read paths next to raw heed on
//! the same keys, each in its own never-inlined function so `callgrind` can attribute them.
//!
//! ```text
//! cargo build --release -p quicksilver-kv --example get_profile
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/get_profile 1000000 100000
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep probe_
//! ```
//!
//! Arguments: keys in the store (default 1,000,000), gets per read path (default 100,000).
//! Divide each `probe_*` function's inclusive instruction count by the gets.

use std::hint::black_box;

use quicksilver_kv::{Batch, Durability, Reader, Store, StoreConfig};

type RawDb = heed::Database<'static, heed::types::Bytes, heed::types::Bytes>;

fn key(i: u64) -> String {
    format!("config/{i:08}")
}

fn probes(keys: u64, count: usize) -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            key(state % keys)
        })
        .collect()
}

#[inline(never)]
fn probe_raw_heed(env: &heed::Env, db: RawDb, probes: &[String]) -> Result<usize, heed::Error> {
    let txn = env.read_txn()?;
    let mut found = 0;
    for probe in probes {
        found += black_box(db.get(&txn, probe.as_bytes())?).map_or(0, <[u8]>::len);
    }
    Ok(found)
}

#[inline(never)]
fn probe_cached_reader(reader: &Reader, probes: &[String]) -> Result<usize, quicksilver_kv::Error> {
    let mut cached = reader.cached();
    let mut found = 0;
    for probe in probes {
        found += black_box(cached.get(probe.as_bytes())?.value).map_or(0, <[u8]>::len);
    }
    Ok(found)
}

#[inline(never)]
fn probe_pooled_get_copy(
    reader: &Reader,
    probes: &[String],
) -> Result<usize, quicksilver_kv::Error> {
    let mut found = 0;
    for probe in probes {
        found += black_box(reader.get(probe.as_bytes())?.value).map_or(0, |v| v.len());
    }
    Ok(found)
}

#[inline(never)]
fn probe_view_per_get(reader: &Reader, probes: &[String]) -> Result<usize, quicksilver_kv::Error> {
    let mut found = 0;
    for probe in probes {
        let view = reader.view()?;
        found += black_box(view.get(probe.as_bytes())?).map_or(0, <[u8]>::len);
    }
    Ok(found)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let gets: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(
        dir.path().join("kv"),
        StoreConfig {
            durability: Durability::NoSync,
            ..StoreConfig::default()
        },
    )?;
    let raw_dir = dir.path().join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    // SAFETY: a fresh private directory that nothing else maps or writes.
    let env = unsafe {
        heed::EnvOpenOptions::new()
            .map_size(1 << 30)
            .flags(heed::EnvFlags::NO_SYNC)
            .open(&raw_dir)?
    };
    let db: RawDb = env
        .create_databases_and_commit(env.write_txn()?, |opener, wtxn| {
            let db = opener.create_database(wtxn, None)?;
            Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit(db))
        })?
        .unwrap_commit();
    let mut txn = env.write_txn()?;
    let mut batch = Batch::new();
    for i in 0..keys {
        db.put(&mut txn, key(i).as_bytes(), &[b'v'; 32][..])?;
        batch = batch.put(key(i), [b'v'; 32]);
        if (i + 1) % 10_000 == 0 {
            store.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.ops.is_empty() {
        store.write(batch)?;
    }
    txn.commit()?;
    let probes = probes(keys, gets);
    let reader = store.reader();
    println!("raw heed        {}", probe_raw_heed(&env, db, &probes)?);
    println!("cached reader   {}", probe_cached_reader(reader, &probes)?);
    println!(
        "pooled get copy {}",
        probe_pooled_get_copy(reader, &probes)?
    );
    println!("view per get    {}", probe_view_per_get(reader, &probes)?);
    Ok(())
}
