//! The storage side of copying a snapshot to a new replica, at volume: what a node's CPU does per
//! gigabyte on the sending side (reading each chunk from the spool file) and on the receiving side
//! (each chunk checked and written into a receiving spool while the install ahead reads it back and
//! fills redb's install transaction, then the commit), without the network.
//!
//! ```sh
//! cargo bench -p storage --bench snapshot_copy                 # 200,000 records of 1 KiB
//! RECORDS=500000 VALUE_BYTES=1024 cargo bench -p storage --bench snapshot_copy
//! ```
//!
//! Prints wall time, the process's CPU time (user + system, from `/proc/self/stat`) and both per
//! gigabyte of snapshot, for each phase. On a shared machine the wall-clock rate is noisy; CPU seconds
//! per gigabyte is the figure to compare between builds.
//!
//! Wall-clock time is what a benchmark measures, so this file allows `Instant::now`.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use storage::backend::Backend;
use storage::backend::MemBackend;
use storage::backend::Table;
use storage::backend::WriteBatch;
use storage::codec;
use storage::redb_store::RedbBackend;
use storage::snapshot;
use storage::snapshot::SnapshotData;
use storage::snapshot::SnapshotHeader;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) this process has used, all threads.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = &stat[stat.rfind(')').expect("stat command") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Phase {
    name: &'static str,
    started: Instant,
    cpu: f64,
}

impl Phase {
    fn start(name: &'static str) -> Phase {
        Phase {
            name,
            started: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    fn end(self, bytes: u64) {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - self.cpu;
        let gb = bytes as f64 / 1e9;
        println!(
            "{:<62} wall {wall:7.2} s  {:7.1} MB/s   cpu {cpu:7.2} s  {:6.2} cpu-s/GB",
            self.name,
            bytes as f64 / 1e6 / wall,
            cpu / gb
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a criterion filter) is not ours.
    let records = env_or("RECORDS", 200_000);
    let value_bytes = env_or("VALUE_BYTES", 1024);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench temp dir");
    println!(
        "snapshot copy: {records} records x {value_bytes} B, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut source = MemBackend::new();
    let mut batch = WriteBatch::default();
    let mut state = 0x5eed_u64;
    for i in 0..records {
        let key = format!("EU/user-{:08}/record-{i:08}", i % 100_000).into_bytes();
        // Incompressible values, as user data may be.
        let value: Vec<u8> = (0..value_bytes)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect();
        let sealed = codec::seal(&key, &value).expect("seal");
        batch.changes.insert((Table::Records, key), Some(sealed));
    }
    source.commit(batch).expect("fill the source");
    let header = SnapshotHeader {
        last_log_id: vec![1],
        membership: vec![2],
        policy_version: 3,
    };

    let sender = RedbBackend::open(dir.path().join("sender")).expect("sender store");
    let phase = Phase::start("build (memory view → spool file)");
    let built = snapshot::build_into(
        &source.view().expect("view"),
        header,
        sender.snapshot_spool().expect("spool"),
    )
    .expect("build");
    let bytes = built.len();
    phase.end(bytes);
    drop(source);

    let phase = Phase::start("send side (read every chunk)");
    let mut read = 0u64;
    for chunk in built.chunks() {
        read += chunk.expect("chunk").len() as u64;
    }
    assert_eq!(read, bytes, "every chunk read");
    phase.end(bytes);

    let mut receiver = RedbBackend::open(dir.path().join("receiver")).expect("receiver store");
    let whole = Phase::start("receive and install (push every chunk, install ahead, take)");
    let phase = Phase::start("  of which: every chunk pushed");
    let mut spool = receiver.snapshot_receive_spool().expect("receive spool");
    for chunk in built.chunks() {
        spool.push(&chunk.expect("chunk")).expect("push");
    }
    let received: SnapshotData = spool.finish().expect("finish");
    phase.end(bytes);
    // What a new replica waits for after its last chunk: the install ahead's lag, its last commit, the take.
    let phase = Phase::start("  of which: the install after the last chunk");
    receiver.install_snapshot(&received).expect("install");
    phase.end(bytes);
    whole.end(bytes);
    assert_eq!(receiver.installed_ahead(), 1, "the install followed the transfer");

    let phase = Phase::start("rebuild on the receiver (redb → spool)");
    let view = receiver.view().expect("view");
    let header = snapshot::header_from_view(&view).expect("header");
    let rebuilt =
        snapshot::build_into(&view, header, receiver.snapshot_spool().expect("spool")).expect("rebuild");
    phase.end(rebuilt.len());
    assert_eq!(rebuilt.chunk_count(), built.chunk_count(), "the same chunks");
}
