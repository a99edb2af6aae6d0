//! What a bulk writer costs the fsyncs beside it: a small `O_DSYNC` writer (a Raft log's append, as near
//! as one file can be) runs while another thread writes a large file at a fixed rate, the way a
//! snapshot's spool or a fresh install's store is written (buffered, its writeback started a window at a
//! time by `storage::writeback::Writeback`).
//!
//! ```sh
//! cargo bench -p storage --bench bulk_beside_fsync              # rates 0 25 50 100 200 MB/s, 10 s each
//! RATES="0 50 100" SECONDS=10 BENCH_DIR=/data cargo bench -p storage --bench bulk_beside_fsync
//! ```
//!
//! The question it answers: how much of a write's latency during a migration is the bulk bytes
//! themselves (on a virtual disk, a cache flush waits for everything written before it), and so how
//! much writing each copied byte once instead of twice would buy. `BENCH_DIR` must be on the disk the
//! nodes use (by default `target/`). Bounded: each rate runs `SECONDS` and its file is deleted.
//!
//! Wall-clock time is what a benchmark measures, so this file allows `Instant::now` and `sleep`.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use storage::writeback::Writeback;

#[path = "common/log_writer.rs"]
mod log_writer;

/// Writes `rate` MB a second into a new file, 1 MiB at a time on a fixed schedule, until stopped;
/// returns the bytes written.
fn bulk_writer(path: &Path, rate_mb: u64, stop: &AtomicBool) -> u64 {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("open the bulk file");
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let interval = Duration::from_secs_f64(chunk.len() as f64 / (rate_mb as f64 * 1e6));
    let mut writeback = Writeback::default();
    let (mut written, started) = (0u64, Instant::now());
    let mut due = started;
    while !stop.load(Ordering::Relaxed) {
        file.write_all_at(&chunk, written).expect("the bulk write");
        written += chunk.len() as u64;
        writeback.written(&file, written);
        due += interval;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    written
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn main() {
    let rates: Vec<u64> = std::env::var("RATES")
        .unwrap_or_else(|_| "0 25 50 100 200".into())
        .split_whitespace()
        .map(|rate| rate.parse().expect("RATES: MB/s, whole numbers"))
        .collect();
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = base.join(format!("bulk-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the bench directory");
    println!(
        "a 4-KiB O_DSYNC writer beside a bulk writer, {seconds} s a rate, in {}",
        dir.display()
    );
    println!("| bulk rate asked | bulk written | small writes/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|");
    for rate in rates {
        let stop = Arc::new(AtomicBool::new(false));
        let bulk = (rate > 0).then(|| {
            let (path, stop) = (dir.join("bulk"), stop.clone());
            std::thread::spawn(move || bulk_writer(&path, rate, &stop))
        });
        let small = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || log_writer::log_writer(&dir, &stop))
        };
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        let mut latencies: Vec<f64> = (small.join().expect("the small writer").iter())
            .map(|(_, took)| took.as_secs_f64() * 1000.0)
            .collect();
        let written = bulk.map_or(0, |bulk| bulk.join().expect("the bulk writer"));
        let _ = fs::remove_file(dir.join("bulk"));
        latencies.sort_by(f64::total_cmp);
        println!(
            "| {rate} MB/s | {:.0} MB/s | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms |",
            written as f64 / 1e6 / seconds as f64,
            latencies.len() as f64 / seconds as f64,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
            quantile(&latencies, 0.999),
            latencies.last().copied().unwrap_or(f64::NAN),
        );
        // Let the disk settle before the next rate.
        std::thread::sleep(Duration::from_secs(2));
    }
    fs::remove_dir_all(&dir).expect("remove the bench directory");
}
