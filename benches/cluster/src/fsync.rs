//! The sanity ceiling: one thread writing `batch` entries and calling `fdatasync`, in a loop, on a
//! preallocated file (so the sync never has a size change to record — the fastest a durable log can go).
//! A replicated durable write needs at least one such sync on the leader and one on a follower; with
//! `batch` concurrent clients no sync can cover more than `batch` entries, so a put step faster than this
//! loop with the same batch means something acknowledged before its sync.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

const FILE_BYTES: u64 = 64 << 20;

pub fn baseline(
    dir: &Path,
    batches: &[usize],
    entry_bytes: usize,
    seconds: f64,
    out: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-baseline.dat");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    // Preallocate with real blocks (not a hole), durably, before measuring.
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(FILE_BYTES >> 20) {
        file.write_all(&zeros)?;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;

    let mut lines = String::new();
    for &batch in batches {
        let chunk = vec![0x5au8; batch * entry_bytes];
        let (mut syncs, mut offset) = (0u64, 0u64);
        let started = Instant::now();
        let limit = Duration::from_secs_f64(seconds);
        while started.elapsed() < limit && syncs < 100_000 {
            if offset + chunk.len() as u64 > FILE_BYTES {
                offset = 0;
            }
            file.write_all_at(&chunk, offset)?;
            file.sync_data()?;
            offset += chunk.len() as u64;
            syncs += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let record = json!({
            "kind": "fsync",
            "batch": batch,
            "syncs_per_s": syncs as f64 / elapsed,
            "entries_per_s": (syncs * batch as u64) as f64 / elapsed,
            "sync_ms": elapsed * 1000.0 / syncs as f64,
        });
        eprintln!("fsync baseline: {record}");
        lines.push_str(&format!("{record}\n"));
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let mut output = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    output.write_all(lines.as_bytes())?;
    Ok(())
}
