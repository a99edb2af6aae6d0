//! What deleting a large file does to the fsyncs beside it: a small `O_DSYNC` writer (a Raft log's
//! append, as near as one file can be) runs while a large file is removed at once (`unlink`) or
//! paced (`storage::paced_removal`), on the same filesystem.
//!
//! ```sh
//! cargo bench -p storage --bench removal                       # 2 GiB file, 3 rounds of each
//! FILE_MIB=1024 ROUNDS=5 BENCH_DIR=/data cargo bench -p storage --bench removal
//! ```
//!
//! `BENCH_DIR` must be on the disk the nodes use (not tmpfs: the point is the filesystem's journal and
//! the device's discards); by default `target/removal-bench`. For each round and way it writes the file
//! (then syncs it and waits 2 s), runs the writer for 1 s, removes the file, runs the writer 1 s more,
//! and prints the writer's latency before and during the removal, its writes a second in each, and how
//! long the removal took. Bounded: `ROUNDS` × 2 removals, then it stops and deletes its directory.
//!
//! Wall-clock time is what a benchmark measures, so this file allows `Instant::now` and `sleep`.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use storage::paced_removal;

#[path = "common/log_writer.rs"]
mod log_writer;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn write_file(path: &Path, mib: u64) {
    let mut file = fs::File::create(path).expect("create the large file");
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for _ in 0..mib {
        file.write_all(&chunk).expect("write the large file");
    }
    file.sync_all().expect("sync the large file");
}

struct Phase {
    writes: usize,
    seconds: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn phase(samples: &[(Instant, Duration)], from: Instant, to: Instant) -> Phase {
    let mut ms: Vec<f64> = samples
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .map(|(_, took)| took.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if ms.is_empty() {
            f64::NAN
        } else {
            ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)]
        }
    };
    Phase {
        writes: ms.len(),
        seconds: (to - from).as_secs_f64(),
        p50: quantile(0.5),
        p99: quantile(0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}

fn main() {
    let mib = env_or("FILE_MIB", 2048);
    let rounds = env_or("ROUNDS", 3);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = base.join(format!("removal-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the bench directory");
    println!(
        "removing a {mib}-MiB file beside a 4-KiB O_DSYNC writer, in {}",
        dir.display()
    );
    println!(
        "| round | way | removal | writes/s before → during | p50 before → during | p99 before → during | max during |"
    );
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        for paced in [false, true] {
            let big = dir.join("large");
            write_file(&big, mib);
            std::thread::sleep(Duration::from_secs(2));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (dir, stop) = (dir.clone(), stop.clone());
                std::thread::spawn(move || log_writer::log_writer(&dir, &stop))
            };
            let before = Instant::now();
            std::thread::sleep(Duration::from_secs(1));
            let removing = Instant::now();
            if paced {
                paced_removal::remove_file(&big).expect("paced removal");
            } else {
                fs::remove_file(&big).expect("unlink");
                fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .expect("sync the directory");
            }
            let removed = Instant::now();
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, Ordering::Relaxed);
            let samples = thread.join().expect("the writer");
            let (b, d) = (
                phase(&samples, before, removing),
                phase(&samples, removing, removed),
            );
            println!(
                "| {round} | {} | {:.2} s | {:.0} → {:.0} | {:.2} → {:.2} ms | {:.2} → {:.2} ms | {:.1} ms ({} writes) |",
                if paced { "paced" } else { "at once" },
                d.seconds,
                b.writes as f64 / b.seconds,
                d.writes as f64 / d.seconds,
                b.p50,
                d.p50,
                b.p99,
                d.p99,
                d.max,
                d.writes,
            );
        }
    }
    fs::remove_dir_all(&dir).expect("remove the bench directory");
}
