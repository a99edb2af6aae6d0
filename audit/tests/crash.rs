//! Crash test with a real child process: the child appends refusals to an audit trail, printing
//! `ACK sequence number` as each `append` returns (after its sync); the parent SIGKILLs it after a
//! different number of acknowledgements each round, while it keeps appending, then reopens the trail
//! (which cuts a torn tail, if the kill left one), and checks that every acknowledged entry is there,
//! unchanged, and that the whole trail verifies with the CA. Small segments make the rounds cross
//! rotations.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use audit::event::Event;
use audit::{VerifyOptions, read_entries, verify};
use common::{NodeKey, TestCa, open, refusal};

const CHILD_DIR: &str = "DOMICILE_AUDIT_CRASH_CHILD_DIR";
const CHILD_FIRST: &str = "DOMICILE_AUDIT_CRASH_FIRST";
const SEGMENT_BYTES_MAX: u64 = 4096;
/// Acknowledgements the parent waits for before each kill.
const KILL_AFTER: [u64; 4] = [1, 37, 120, 250];

fn main() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let first = std::env::var(CHILD_FIRST).unwrap().parse().unwrap();
        child(Path::new(&dir), first);
        return;
    }
    parent();
    println!("crash: 1 passed, 0 failed");
}

fn key_in(dir: &Path) -> NodeKey {
    NodeKey {
        cert_pem: std::fs::read_to_string(dir.join("node.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("node.key")).unwrap(),
    }
}

/// Appends refusals numbered from `first` until killed (or 100,000 of them).
fn child(dir: &Path, first: u64) {
    let log = open(&dir.join("audit"), &key_in(dir), SEGMENT_BYTES_MAX);
    for number in first..first + 100_000 {
        let sequence = log.append(refusal(number)).expect("an append");
        println!("ACK {sequence} {number}");
    }
}

fn parent() {
    let ca = TestCa::new("crash");
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let key = ca.node(1, "dublin-a", "IE");
    std::fs::write(dir.join("node.pem"), &key.cert_pem).unwrap();
    std::fs::write(dir.join("node.key"), &key.key_pem).unwrap();
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    let mut next_number = 0;
    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD_DIR, dir)
            .env(CHILD_FIRST, next_number.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked_this_round = 0;
        while acked_this_round < kill_after {
            let line = lines.next().expect("the child stopped early").unwrap();
            let mut words = line.split(' ').skip(1).map(|word| word.parse::<u64>().unwrap());
            let (sequence, number) = (words.next().unwrap(), words.next().unwrap());
            acknowledged.push((sequence, number));
            next_number = number + 1;
            acked_this_round += 1;
        }
        // SIGKILL while it keeps appending: no clean close, no flush.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acknowledgements already in the pipe count too: they were printed after a sync.
        for line in lines {
            let line = line.unwrap();
            let mut words = line.split(' ').skip(1).map(|word| word.parse::<u64>().unwrap());
            let (Some(sequence), Some(number)) = (words.next(), words.next()) else {
                break;
            };
            acknowledged.push((sequence, number));
            next_number = number + 1;
        }
        // The next open cuts whatever torn write the kill left; then everything acknowledged is there.
        drop(open(&dir.join("audit"), &key, SEGMENT_BYTES_MAX));
        let report = verify(&dir.join("audit"), &ca.cluster_ca(), VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "round {round}: {report}");
        let mut entries = Vec::new();
        read_entries(&dir.join("audit"), |read| entries.push(read.entry)).unwrap();
        for &(sequence, number) in &acknowledged {
            let entry = entries
                .get(sequence as usize)
                .unwrap_or_else(|| panic!("round {round}: acknowledged entry {sequence} lost"));
            assert_eq!(entry.sequence, sequence);
            assert_eq!(
                entry.event,
                refusal(number),
                "round {round}: entry {sequence} changed"
            );
        }
        let opened = entries
            .iter()
            .filter(|entry| matches!(entry.event, Event::Opened { .. }))
            .count();
        assert_eq!(
            opened,
            2 * (round + 1),
            "round {round}: the child's and the check's opens"
        );
        println!(
            "round {round}: {} acknowledged, {} entries, {} segments",
            acknowledged.len(),
            entries.len(),
            report.segments
        );
    }
}
