//! A Raft log's appends as near as a bench gets without the log: 4-KiB `O_DSYNC` writes to one
//! file, each its own sync, over and over the same 64 MiB (preallocated, as the log's segments are,
//! once the first pass is done). Shared by the storage benches that measure what bulk work costs the
//! fsyncs beside it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// When each write started and how long it took, until `stop` is set.
pub fn log_writer(dir: &Path, stop: &AtomicBool) -> Vec<(Instant, Duration)> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DSYNC)
        .open(dir.join("log"))
        .expect("open the log writer's file");
    let block = [0x5au8; 4096];
    let mut offset = 0u64;
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        file.write_all_at(&block, offset).expect("the log writer's write");
        samples.push((started, started.elapsed()));
        offset = (offset + 4096) % (64 << 20);
    }
    samples
}
