//! Storage benchmarks (criterion, short measurement times).
//!
//! `cargo bench -p storage --bench storage`
//!
//! * `raw/*`: the baseline: a plain file, 256-byte write + fdatasync per entry, and batched by 100.
//! * `raw_after/*`: the same baseline again, right after `append/*`: on a shared machine the disk's
//!   speed drifts within one run, so the fraction is reported against both.
//! * `append/*`: durable appends of 256-byte entries through `GroupLog` (acknowledged by the flush
//!   callback after group commit) with 1, 16 and 64 concurrent appenders over 1 and 16 groups,
//!   one entry per append call.
//! * `append_16_per_call/*`: the same, but each append call carries 16 entries, as openraft hands
//!   the log a batch per call when it replicates or has queued client writes. Throughput counts
//!   entries; every call still waits for its own fdatasync-backed acknowledgement.
//! * `paired/*`: 64 appenders again, each criterion sample preceded by the raw batched baseline
//!   writing as many entries; prints the fraction of the two rates summed over all samples, so
//!   drift in the disk's speed hits both sides alike.
//! * `apply`: state-machine apply on redb, 100 entries per batch.
//! * `snapshot/*`: building and installing a snapshot of about 5 MB.
//!
//! Wall-clock time is what a benchmark measures, so this file allows `Instant::now`.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;
use storage::Command;
use storage::RecordKey;
use storage::Response;
use storage::WriteId;
use storage::disk::FsDisk;
use storage::log::LogConfig;
use storage::raft_log::GroupLog;
use storage::raft_log::LogEngine;
use storage::redb_store::RedbBackend;
use storage::state_machine::Execution;
use storage::state_machine::StateMachine;

openraft::declare_raft_types!(pub BenchConfig: D = Command, R = Response);

type Entry = openraft::alias::EntryOf<BenchConfig>;

const ENTRY_BYTES: usize = 256;

fn bench_dir() -> tempfile::TempDir {
    // Same file system for the baseline and our log.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench temp dir")
}

fn entry(index: u64) -> Entry {
    let command = Command::Put {
        write: WriteId {
            client_id: 1,
            sequence: index,
        },
        key: RecordKey::new("eu", format!("user-{}", index % 1000), "profile"),
        value: vec![(index % 251) as u8; ENTRY_BYTES],
    };
    openraft::Entry {
        log_id: openraft::testing::log_id::<BenchConfig>(1, 1, index),
        payload: openraft::EntryPayload::Normal(command),
    }
}

fn raw(c: &mut Criterion) {
    raw_with(c, "raw");
}

fn raw_after(c: &mut Criterion) {
    raw_with(c, "raw_after");
}

fn raw_with(c: &mut Criterion, name: &str) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let dir = bench_dir();
    let mut file = File::create(dir.path().join("raw")).unwrap();
    let record = [7u8; ENTRY_BYTES];
    group.throughput(Throughput::Elements(1));
    group.bench_function("append_fdatasync_1", |b| {
        b.iter(|| {
            file.write_all(&record).unwrap();
            file.sync_data().unwrap();
        })
    });
    let batch = [7u8; ENTRY_BYTES * 100];
    group.throughput(Throughput::Elements(100));
    group.bench_function("append_fdatasync_batched_100", |b| {
        b.iter(|| {
            file.write_all(&batch).unwrap();
            file.sync_data().unwrap();
        })
    });
    group.finish();
}

/// One group's log and its next index, shared by the appenders of that group.
type SharedLog = Arc<tokio::sync::Mutex<(GroupLog<BenchConfig, FsDisk>, u64)>>;

struct Appending {
    runtime: tokio::runtime::Runtime,
    engine: Arc<LogEngine<FsDisk>>,
    logs: Vec<SharedLog>,
    _sync: storage::group_commit::SyncThread,
    dir: tempfile::TempDir,
}

fn appending(groups: u64) -> Appending {
    let dir = bench_dir();
    let engine = LogEngine::open(FsDisk::new(dir.path()).unwrap(), LogConfig::default()).unwrap();
    let sync = engine.spawn_sync_thread().unwrap();
    let logs = (1..=groups)
        .map(|g| Arc::new(tokio::sync::Mutex::new((engine.group::<BenchConfig>(g), 0))))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Appending {
        runtime,
        engine,
        logs,
        _sync: sync,
        dir,
    }
}

/// `total` appends of `entries_per_append` entries each, by `appenders` tasks spread round-robin
/// over the groups; each append waits for its flush callback before the appender issues the next.
fn run_appends(setup: &Appending, appenders: u64, total: u64, entries_per_append: u64) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|a| {
            let log = setup.logs[(a % setup.logs.len() as u64) as usize].clone();
            let count = total / appenders + u64::from(a < total % appenders);
            setup.runtime.spawn(async move {
                for _ in 0..count {
                    let (tx, rx) = BenchConfig::oneshot();
                    {
                        let mut guard = log.lock().await;
                        let first = guard.1 + 1;
                        guard.1 += entries_per_append;
                        let entries = (first..first + entries_per_append).map(entry);
                        guard.0.append(entries, IOFlushed::signal(tx)).await.unwrap();
                    }
                    rx.await.unwrap().unwrap();
                }
            })
        })
        .collect();
    setup.runtime.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    start.elapsed()
}

fn append(c: &mut Criterion) {
    append_with(c, "append", 1);
}

fn append_16_per_call(c: &mut Criterion) {
    append_with(c, "append_16_per_call", 16);
}

fn append_with(c: &mut Criterion, name: &str, entries_per_append: u64) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(entries_per_append));
    for groups in [1u64, 16] {
        for appenders in [1u64, 16, 64] {
            let setup = appending(groups);
            let name = format!("appenders_{appenders}_groups_{groups}");
            group.bench_function(&name, |b| {
                b.iter_custom(|iters| run_appends(&setup, appenders, iters, entries_per_append))
            });
            // How well appends shared syncs, over warm-up and measurement alike.
            let entries: u64 = setup
                .logs
                .iter()
                .map(|log| setup.runtime.block_on(log.lock()).1)
                .sum();
            let syncs = setup.engine.commit_queue().sync_count().max(1);
            if entries == 0 {
                continue; // filtered out
            }
            eprintln!(
                "{name}: {entries} entries in {syncs} syncs, {:.1} entries per sync",
                entries as f64 / syncs as f64
            );
        }
    }
    group.finish();
}

/// See the module docs: the fraction ours / raw batched, measured in alternation.
fn paired(c: &mut Criterion) {
    let mut group = c.benchmark_group("paired");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(1));
    let batch = [7u8; ENTRY_BYTES * 100];
    for groups in [1u64, 16] {
        let setup = appending(groups);
        let mut raw_file = File::create(setup.dir.path().join("raw")).unwrap();
        let (mut raw_time, mut raw_entries) = (Duration::ZERO, 0u64);
        let (mut ours_time, mut ours_entries) = (Duration::ZERO, 0u64);
        group.bench_function(format!("appenders_64_groups_{groups}"), |b| {
            b.iter_custom(|iters| {
                let batches = iters.div_ceil(100);
                let start = Instant::now();
                for _ in 0..batches {
                    raw_file.write_all(&batch).unwrap();
                    raw_file.sync_data().unwrap();
                }
                raw_time += start.elapsed();
                raw_entries += batches * 100;
                let ours = run_appends(&setup, 64, iters, 1);
                ours_time += ours;
                ours_entries += iters;
                ours
            })
        });
        if ours_entries > 0 {
            let raw_rate = raw_entries as f64 / raw_time.as_secs_f64();
            let ours_rate = ours_entries as f64 / ours_time.as_secs_f64();
            eprintln!(
                "paired, 64 appenders over {groups} group(s): ours {:.1} K/s, raw batched {:.1} K/s, fraction {:.2}",
                ours_rate / 1000.0,
                raw_rate / 1000.0,
                ours_rate / raw_rate
            );
        }
    }
    group.finish();
}

fn state_machine(path: &Path) -> StateMachine<BenchConfig, RedbBackend> {
    StateMachine::open(RedbBackend::open(path).unwrap(), Execution::DedicatedThread).unwrap()
}

async fn apply_range(sm: &mut StateMachine<BenchConfig, RedbBackend>, range: std::ops::Range<u64>) {
    let stream = futures_util::stream::iter(range.map(|i| Ok((entry(i), None))));
    sm.apply(stream).await.unwrap();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let dir = bench_dir();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sm = state_machine(dir.path());
    let mut next = 1u64;
    group.throughput(Throughput::Elements(100));
    group.bench_function("batches_of_100", |b| {
        b.iter(|| {
            runtime.block_on(apply_range(&mut sm, next..next + 100));
            next += 100;
        })
    });
    // A lightly loaded group's shape (one client): one entry per apply call, so whatever a batch
    // costs regardless of its size is paid per entry (write-behind's reason to exist).
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_entries", |b| {
        b.iter(|| {
            runtime.block_on(apply_range(&mut sm, next..next + 1));
            next += 1;
        })
    });
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let dir = bench_dir();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut source = state_machine(&dir.path().join("source"));
    // 20,000 records of 256 bytes (1,000 distinct keys are overwritten; use distinct keys here).
    runtime.block_on(async {
        for start in (1..=20_000u64).step_by(1000) {
            let entries = (start..start + 1000).map(|i| {
                let mut e = entry(i);
                if let openraft::EntryPayload::Normal(Command::Put { key, .. }) = &mut e.payload {
                    key.user_id = format!("user-{i}");
                }
                Ok((e, None))
            });
            source.apply(futures_util::stream::iter(entries)).await.unwrap();
        }
    });
    let built = runtime.block_on(async {
        source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    });
    group.throughput(Throughput::Bytes(built.snapshot.len()));
    group.bench_function("build", |b| {
        b.iter(|| {
            runtime.block_on(async {
                source
                    .get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await
                    .unwrap()
            })
        })
    });
    let mut target = state_machine(&dir.path().join("target"));
    group.bench_function("install", |b| {
        b.iter(|| {
            runtime
                .block_on(target.install_snapshot(&built.meta, built.snapshot.clone()))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    raw,
    append,
    raw_after,
    paired,
    append_16_per_call,
    apply,
    snapshot
);
criterion_main!(benches);
