//! The corruption matrix: damage the log segments, the snapshot file and the state-machine file
//! of a stopped node in every way the issue lists (random bit flips, a zeroed 4 KiB block,
//! truncation at and inside a record), reopen, and check the only two acceptable outcomes:
//! exact recovery (every value returned is the value written), or a named refusal to start.
//! A panic anywhere fails the test. Seeded: a failure prints the seed and case to replay.

mod common;

use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::path::PathBuf;

use common::*;
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use storage::error::LogError;
use storage::error::StateMachineError;
use storage::log::LogConfig;
use storage::segment;

const GROUPS: u64 = 3;
const ENTRIES: u64 = 80;
const SEED: u64 = 0xc044;

fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 10,
    }
}

/// A stopped node: three groups' logs over several segments, group 1's state machine with a
/// snapshot taken half way.
fn build_pristine(dir: &Path) {
    runtime().block_on(async {
        let node = Node::open(dir, log_config()).unwrap();
        for group in 1..=GROUPS {
            let mut log = node.log(group);
            log.save_vote(&openraft::Vote::new(1, 1)).await.unwrap();
            for chunk in (1..=ENTRIES).collect::<Vec<_>>().chunks(10) {
                log.blocking_append(chunk.iter().map(|&i| put_entry(i)))
                    .await
                    .unwrap();
            }
            log.save_committed(Some(openraft::testing::log_id::<TestConfig>(1, 1, ENTRIES / 2)))
                .await
                .unwrap();
        }
        let mut sm = open_state_machine(dir, 1).unwrap();
        apply_entries(&mut sm, (1..=ENTRIES / 2).map(put_entry).collect())
            .await
            .unwrap();
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        apply_entries(&mut sm, (ENTRIES / 2 + 1..=ENTRIES).map(put_entry).collect())
            .await
            .unwrap();
    });
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[derive(Debug, Clone)]
enum Damage {
    FlipBit { offset: u64, bit: u8 },
    ZeroBlock { offset: u64 },
    Truncate { len: u64 },
}

fn damage(path: &Path, how: &Damage) {
    let mut bytes = fs::read(path).unwrap();
    match *how {
        Damage::FlipBit { offset, bit } => bytes[offset as usize] ^= 1 << bit,
        Damage::ZeroBlock { offset } => {
            let end = (offset as usize + 4096).min(bytes.len());
            bytes[offset as usize..end].fill(0);
        }
        Damage::Truncate { len } => bytes.truncate(len as usize),
    }
    fs::write(path, bytes).unwrap();
}

/// The damages of the matrix for one file, given where its records start.
fn matrix(rng: &mut Rng, len: u64, record_starts: &[u64]) -> Vec<Damage> {
    let mut cases = Vec::new();
    for _ in 0..6 {
        cases.push(Damage::FlipBit {
            offset: rng.below(len),
            bit: rng.below(8) as u8,
        });
    }
    cases.push(Damage::ZeroBlock {
        offset: rng.below(len) / 4096 * 4096,
    });
    cases.push(Damage::ZeroBlock {
        offset: len.saturating_sub(4096),
    });
    if let Some(&boundary) = record_starts.get(rng.below(record_starts.len().max(1) as u64) as usize) {
        cases.push(Damage::Truncate { len: boundary });
        cases.push(Damage::Truncate {
            len: boundary + 1 + rng.below(8),
        });
    }
    cases.push(Damage::Truncate { len: len - 1 });
    cases
}

fn record_starts(path: &Path) -> Vec<u64> {
    let name = path.file_name().unwrap().to_str().unwrap();
    let id = segment::parse_segment_name(name).unwrap();
    let mut starts = Vec::new();
    segment::scan(name, id, &fs::read(path).unwrap(), true, |record| {
        starts.push(record.offset);
        Ok(())
    })
    .unwrap();
    starts
}

fn run_case(what: &str, case: &Damage, check: impl FnOnce() -> Outcome) -> Outcome {
    match std::panic::catch_unwind(AssertUnwindSafe(check)) {
        Ok(outcome) => outcome,
        Err(_) => panic!("seed {SEED:#x}: {what} {case:?} panicked"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Recovered,
    Refused,
}

/// Reopens the log; every entry it returns must be the one written, and what is missing must be
/// a tail (truncation) — or it refuses with a named error.
fn check_log(dir: &Path, damaged_file: &str) -> Outcome {
    runtime().block_on(async {
        let node = match Node::open(dir, log_config()) {
            Ok(node) => node,
            Err(LogError::Corrupt { file, .. }) => {
                assert!(file.ends_with(".wal"), "refusal names a segment: {file}");
                return Outcome::Refused;
            }
            Err(LogError::LostCommittedEntries { .. }) => return Outcome::Refused,
            Err(other) => panic!("unexpected error kind for {damaged_file}: {other}"),
        };
        for group in 1..=GROUPS {
            let mut log = node.log(group);
            let entries = match log.try_get_log_entries(1..=ENTRIES).await {
                Ok(entries) => entries,
                Err(error) => {
                    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
                    return Outcome::Refused;
                }
            };
            for (position, entry) in entries.iter().enumerate() {
                assert_eq!(
                    entry,
                    &put_entry(position as u64 + 1),
                    "group {group}: wrong entry returned"
                );
            }
            let vote = log.read_vote().await.unwrap();
            assert_eq!(vote, Some(openraft::Vote::new(1, 1)), "group {group}: vote");
        }
        Outcome::Recovered
    })
}

#[test]
fn log_segments_recover_exactly_or_refuse_by_name() {
    let pristine = tempfile::tempdir().unwrap();
    build_pristine(pristine.path());
    let log_dir = pristine.path().join("log");
    let mut segments: Vec<PathBuf> = fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(
        segments.len() >= 3,
        "the matrix needs several segments, got {}",
        segments.len()
    );
    let mut rng = Rng(SEED);
    let (mut recovered, mut refused) = (0, 0);
    // The first (sealed) segment and the last (active) one behave differently for torn records.
    for segment_path in [
        &segments[0],
        &segments[segments.len() / 2],
        segments.last().unwrap(),
    ] {
        let len = fs::metadata(segment_path).unwrap().len();
        let starts = record_starts(segment_path);
        for case in matrix(&mut rng, len, &starts) {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let name = segment_path.file_name().unwrap().to_str().unwrap().to_string();
            damage(&work.path().join("log").join(&name), &case);
            match run_case(&name, &case, || check_log(work.path(), &name)) {
                Outcome::Recovered => recovered += 1,
                Outcome::Refused => refused += 1,
            }
        }
    }
    assert!(
        refused > 0 && recovered > 0,
        "the matrix must exercise both outcomes ({recovered} recovered, {refused} refused)"
    );
}

/// Reopens the state machine; returned records must be ones that were written (with the
/// revision that wrote them), never something else — or it refuses with a named error.
fn check_state_machine(dir: &Path) -> Outcome {
    runtime().block_on(async {
        let mut sm = match open_state_machine(dir, 1) {
            Ok(sm) => sm,
            Err(
                StateMachineError::Corrupt { .. }
                | StateMachineError::Snapshot(_)
                | StateMachineError::Backend(_),
            ) => {
                return Outcome::Refused;
            }
            Err(other) => panic!("unexpected error: {other}"),
        };
        let applied = match sm.applied_state().await {
            Ok((applied, _)) => applied.map_or(0, |log_id| log_id.index),
            Err(_) => return Outcome::Refused,
        };
        let expected = expected_records(applied);
        for index in 1..=ENTRIES {
            match sm.read_record(put_key(index)).await {
                Ok(found) => assert_eq!(
                    found.as_ref(),
                    expected.get(&put_key(index)),
                    "record {:?}",
                    put_key(index)
                ),
                Err(StateMachineError::Corrupt { .. } | StateMachineError::Backend(_)) => {
                    return Outcome::Refused;
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        match sm.get_current_snapshot().await {
            Ok(Some(snapshot)) => assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(ENTRIES / 2)),
            Ok(None) => panic!("the snapshot vanished without an error"),
            Err(_) => return Outcome::Refused,
        }
        Outcome::Recovered
    })
}

#[test]
fn snapshot_and_state_machine_files_recover_exactly_or_refuse_by_name() {
    let pristine = tempfile::tempdir().unwrap();
    build_pristine(pristine.path());
    let mut rng = Rng(SEED ^ 0x5a5a);
    for file in ["current.snap", "state.redb"] {
        let path = pristine.path().join("sm-1").join(file);
        let len = fs::metadata(&path).unwrap().len();
        let (mut recovered, mut refused) = (0, 0);
        for case in matrix(&mut rng, len, &[0, len / 3, len / 2]) {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            damage(&work.path().join("sm-1").join(file), &case);
            match run_case(file, &case, || check_state_machine(work.path())) {
                Outcome::Recovered => recovered += 1,
                Outcome::Refused => refused += 1,
            }
        }
        if file == "current.snap" {
            assert_eq!(recovered, 0, "every damage to a snapshot is detected");
        }
        assert!(refused > 0, "{file}: the matrix must detect damage");
    }
}
