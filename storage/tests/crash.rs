//! Crash test with a real child process: the child appends entries to the log and applies them
//! to the state machine, printing `ACK n` once entries up to `n` are durable and applied; the
//! parent SIGKILLs it at a seeded, random point, restarts it, and the restarted child checks that
//! every acknowledged entry is present and identical, and that the state machine, re-applied from
//! its last durable point, holds exactly the expected records.
//!
//! Replay a failure with `DOMICILE_CRASH_SEED=<seed> cargo test -p storage --test crash`.

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use common::*;
use openraft::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftStateMachine;
use storage::log::LogConfig;

const CHILD_DIR: &str = "DOMICILE_CRASH_CHILD_DIR";
const CHILD_ACKED: &str = "DOMICILE_CRASH_ACKED";
const CHILD_VERIFY_ONLY: &str = "DOMICILE_CRASH_VERIFY_ONLY";
const ROUNDS: u64 = 5;
/// A child appends at most this many entries per life, so a round is bounded even if not killed.
const ENTRIES_PER_LIFE_MAX: u64 = 20_000;

fn main() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let acked = std::env::var(CHILD_ACKED)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let verify_only = std::env::var_os(CHILD_VERIFY_ONLY).is_some();
        if let Err(reason) = runtime().block_on(child(Path::new(&dir), acked, verify_only)) {
            println!("FAILED {reason}");
            std::process::exit(1);
        }
        return;
    }
    parent();
    println!("crash: 1 passed, 0 failed");
}

fn log_config() -> LogConfig {
    // Small segments so the run crosses rotations.
    LogConfig {
        segment_bytes_max: 256 << 10,
    }
}

async fn child(dir: &Path, acked: u64, verify_only: bool) -> Result<(), String> {
    let node = Node::open(dir, log_config()).map_err(|e| format!("log refused to start: {e}"))?;
    let mut log = node.log(1);
    let mut sm = open_state_machine(dir, 1).map_err(|e| format!("state machine refused to start: {e}"))?;
    let last = log
        .get_log_state()
        .await
        .map_err(|e| e.to_string())?
        .last_log_id
        .map_or(0, |l| l.index);
    if last < acked {
        return Err(format!(
            "acknowledged entries lost: log ends at {last}, {acked} were acknowledged"
        ));
    }
    let entries = log
        .try_get_log_entries(1..=last)
        .await
        .map_err(|e| e.to_string())?;
    if entries.len() as u64 != last {
        return Err(format!("log has {} entries up to index {last}", entries.len()));
    }
    if let Some(bad) = entries
        .iter()
        .enumerate()
        .find(|(i, entry)| **entry != put_entry(*i as u64 + 1))
    {
        return Err(format!(
            "entry {} differs from what was written: {:?}",
            bad.0 + 1,
            bad.1
        ));
    }
    // Recover the state machine as openraft would: re-apply from its last durable point.
    let applied = sm
        .applied_state()
        .await
        .map_err(|e| e.to_string())?
        .0
        .map_or(0, |l| l.index);
    if applied > last {
        return Err(format!(
            "state machine applied {applied} but the log ends at {last}"
        ));
    }
    for chunk in (applied + 1..=last).collect::<Vec<_>>().chunks(64) {
        apply_entries(&mut sm, chunk.iter().map(|&i| put_entry(i)).collect())
            .await
            .map_err(|e| e.to_string())?;
    }
    for (key, record) in expected_records(last) {
        let found = sm.read_record(key.clone()).await.map_err(|e| e.to_string())?;
        if found.as_ref() != Some(&record) {
            return Err(format!(
                "record {key:?} is {found:?}, expected revision {}",
                record.revision
            ));
        }
    }
    println!("VERIFIED acked={acked} last={last} applied_before_restart={applied}");
    if verify_only {
        return Ok(());
    }
    let mut next = last + 1;
    while next <= last + ENTRIES_PER_LIFE_MAX {
        let count = 1 + next % 4;
        let batch: Vec<_> = (next..next + count).map(put_entry).collect();
        log.blocking_append(batch.clone())
            .await
            .map_err(|e| e.to_string())?;
        apply_entries(&mut sm, batch).await.map_err(|e| e.to_string())?;
        next += count;
        println!("ACK {}", next - 1);
    }
    Ok(())
}

fn spawn_child(dir: &Path, acked: u64, verify_only: bool) -> std::process::Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .env(CHILD_DIR, dir)
        .env(CHILD_ACKED, acked.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if verify_only {
        command.env(CHILD_VERIFY_ONLY, "1");
    }
    command.spawn().expect("spawn child")
}

fn parent() {
    let seed = std::env::var("DOMICILE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_251_123u64);
    println!(
        "crash test seed {seed} (replay: DOMICILE_CRASH_SEED={seed} cargo test -p storage --test crash)"
    );
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut acked = 0u64;
    for round in 0..ROUNDS {
        let kill_after_acks = 1 + rng.below(600);
        let mut child = spawn_child(dir.path(), acked, false);
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = lines
            .next()
            .expect("child said nothing")
            .expect("read child output");
        assert!(
            first.starts_with("VERIFIED"),
            "seed {seed} round {round}: restart check failed: {first}"
        );
        let mut acks = 0;
        for line in lines {
            let line = line.expect("read child output");
            let index: u64 = line
                .strip_prefix("ACK ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("seed {seed} round {round}: unexpected child output: {line}"));
            acked = acked.max(index);
            acks += 1;
            if acks == kill_after_acks {
                child.kill().expect("SIGKILL the child");
                break;
            }
        }
        let status = child.wait().expect("wait for child");
        assert!(
            !status.success() || acks < kill_after_acks,
            "seed {seed} round {round}: child was not killed"
        );
        println!("round {round}: killed after {acks} acknowledgements, {acked} acknowledged in total");
    }
    let mut verifier = spawn_child(dir.path(), acked, true);
    let output = BufReader::new(verifier.stdout.take().expect("piped stdout"))
        .lines()
        .next()
        .expect("verifier output")
        .unwrap();
    assert!(
        output.starts_with("VERIFIED"),
        "seed {seed}: final check failed: {output}"
    );
    assert!(verifier.wait().unwrap().success());
    assert!(acked > ROUNDS, "the test must have acknowledged entries to check");
}
