//! A client history against a real 3-node EEA group — concurrent puts, reads and compare-and-sets on a few
//! keys, with the leader killed in the middle — written as JSON lines in Jepsen's shape and checked for
//! linearizability by an independent checker (porcupine). `info` operations are those whose outcome is
//! unknown (the call timed out or its node died): they may or may not have happened.
//!
//! The history is kept at `$CARGO_TARGET_TMPDIR/linearizability-history.jsonl` for inspection.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, ONE_CLUSTER_AT_A_TIME, cluster, group};
use placement::NodeId;
use porcupine_rs::{CheckResult, Model, Operation};
use raft::host::{HostError, ReadConsistency};
use serde_json::json;
use storage::{Command, CommandError, RecordKey, Response, WriteId};
use tokio::sync::Mutex;
use tokio::time::Instant;

const PROCESSES: u64 = 3;
const OPERATIONS_PER_PROCESS: u64 = 40;
const KEYS: u64 = 2;
/// A call with no answer by then is recorded as `info`: its outcome is unknown.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
enum Op {
    Read {
        key: u64,
        value: Option<String>,
    },
    Write {
        key: u64,
        value: String,
    },
    /// `succeeded: None` for an unknown outcome.
    Cas {
        key: u64,
        expected: Option<String>,
        new: String,
        succeeded: Option<bool>,
    },
}

impl Op {
    fn key(&self) -> u64 {
        match self {
            Op::Read { key, .. } | Op::Write { key, .. } | Op::Cas { key, .. } => *key,
        }
    }
}

/// One register per key; values are unique, so comparing values is comparing the revisions the CAS checks.
#[derive(Clone)]
struct Registers;

impl Model for Registers {
    type State = Option<String>;
    type Op = Op;
    type Metadata = ();

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        let mut by_key: BTreeMap<u64, Vec<Operation<Self>>> = BTreeMap::new();
        for operation in history {
            by_key
                .entry(operation.op.key())
                .or_default()
                .push(operation.clone());
        }
        by_key.into_values().collect()
    }

    fn init() -> Option<String> {
        None
    }

    fn step(state: &Option<String>, op: &Op) -> (bool, Option<String>) {
        match op {
            Op::Read { value, .. } => (value == state, state.clone()),
            Op::Write { value, .. } => (true, Some(value.clone())),
            Op::Cas {
                expected,
                new,
                succeeded: Some(true),
                ..
            } => (expected == state, Some(new.clone())),
            Op::Cas {
                expected,
                succeeded: Some(false),
                ..
            } => (expected != state, state.clone()),
            // Unknown outcome: if it took effect it did so where the state matched; if not, nothing changed.
            Op::Cas {
                expected,
                new,
                succeeded: None,
                ..
            } => (
                true,
                if expected == state {
                    Some(new.clone())
                } else {
                    state.clone()
                },
            ),
        }
    }
}

struct History {
    start: Instant,
    lines: Vec<serde_json::Value>,
    operations: Vec<Operation<Registers>>,
}

impl History {
    fn nanos(&self) -> i64 {
        self.start.elapsed().as_nanos() as i64
    }

    fn line(&mut self, process: u64, kind: &str, f: &str, key: u64, value: serde_json::Value) {
        let time = self.nanos();
        self.lines.push(
            json!({"process": process, "type": kind, "f": f, "key": key, "value": value, "time": time}),
        );
    }
}

fn key(index: u64) -> RecordKey {
    RecordKey::new("EEA", format!("user-{index}"), "register")
}

/// SplitMix64: the workload is seeded, so a failing history can be regenerated.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// The outcome of one call through whichever node leads now, retrying while leadership moves (a write
/// carries a fixed write id, so a retry is applied at most once).
async fn call(
    cluster: &Cluster,
    alive: &Mutex<Vec<u64>>,
    command: Command,
    read: Option<RecordKey>,
) -> Result<Response, HostError> {
    let give_up = Instant::now() + CALL_DEADLINE;
    loop {
        let among = alive.lock().await.clone();
        let attempt = match cluster
            .leader("users-eea", &among, Duration::from_millis(500))
            .await
        {
            None => Err(HostError::NotLeader {
                group: group("users-eea"),
                leader: None,
            }),
            Some(leader) => {
                let host = &cluster.nodes[&leader].host;
                match &read {
                    Some(key) => host
                        .read(&group("users-eea"), key.clone(), ReadConsistency::Linearizable)
                        .await
                        .map(|outcome| Response::Value(outcome.record)),
                    None => host.write(&group("users-eea"), command.clone()).await,
                }
            }
        };
        match attempt {
            Err(error) if error.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(30)).await
            }
            outcome => return outcome,
        }
    }
}

async fn client(
    process: u64,
    cluster: Arc<Cluster>,
    alive: Arc<Mutex<Vec<u64>>>,
    history: Arc<Mutex<History>>,
) {
    let mut rng = Rng(0xd0_111c11e ^ process);
    // After an `info` (unknown outcome) a Jepsen process is retired and a fresh one takes its place.
    let mut logical = process;
    let mut sequence = 0;
    for _ in 0..OPERATIONS_PER_PROCESS {
        let register = rng.below(KEYS);
        let choice = rng.below(10);
        if choice < 4 {
            let invoked = history.lock().await.nanos();
            history
                .lock()
                .await
                .line(logical, "invoke", "read", register, json!(null));
            let outcome = call(
                &cluster,
                &alive,
                Command::Get { key: key(register) },
                Some(key(register)),
            )
            .await;
            let mut history = history.lock().await;
            let returned = history.nanos();
            match outcome {
                Ok(Response::Value(record)) => {
                    let value = record.map(|record| String::from_utf8(record.value).unwrap());
                    history.line(logical, "ok", "read", register, json!(value));
                    let op = Op::Read { key: register, value };
                    history.operations.push(Operation {
                        client_id: Some(logical as u32),
                        call_time: invoked,
                        return_time: returned,
                        op,
                        metadata: None,
                    });
                }
                // A read that fails changes nothing: it is simply not in the history the checker sees.
                _ => history.line(logical, "fail", "read", register, json!(null)),
            }
            continue;
        }
        sequence += 1;
        let value = format!("p{process}-{sequence}");
        let write = WriteId {
            client_id: 1000 + logical,
            sequence,
        };
        let (f, command, expected) = if choice < 8 {
            (
                "write",
                Command::Put {
                    write,
                    key: key(register),
                    value: value.clone().into_bytes(),
                },
                None,
            )
        } else {
            // CAS on the revision just read (that read is a helper step, not an operation in the history).
            let current = call(
                &cluster,
                &alive,
                Command::Get { key: key(register) },
                Some(key(register)),
            )
            .await;
            let Ok(Response::Value(record)) = current else {
                continue;
            };
            let expected_value = record
                .as_ref()
                .map(|record| String::from_utf8(record.value.clone()).unwrap());
            let cas = Command::CompareAndSet {
                write,
                key: key(register),
                expected_revision: record.map(|record| record.revision),
                value: value.clone().into_bytes(),
            };
            ("cas", cas, Some(expected_value))
        };
        let shown = match &expected {
            Some(expected) => json!([expected, value]),
            None => json!(value),
        };
        let invoked = {
            let mut history = history.lock().await;
            history.line(logical, "invoke", f, register, shown.clone());
            history.nanos()
        };
        let outcome = call(&cluster, &alive, command, None).await;
        let mut history = history.lock().await;
        let (kind, succeeded, returned) = match outcome {
            Ok(Response::Written { .. }) => ("ok", Some(true), history.nanos()),
            Ok(Response::Rejected(CommandError::RevisionMismatch { .. })) => {
                ("fail", Some(false), history.nanos())
            }
            // No answer: it may have happened, at any time from now on.
            _ => ("info", None, i64::MAX),
        };
        history.line(logical, kind, f, register, shown);
        // A failed CAS is still an observation (the register did not hold `expected`).
        let op = match expected {
            None => Op::Write { key: register, value },
            Some(expected) => Op::Cas {
                key: register,
                expected,
                new: value,
                succeeded,
            },
        };
        history.operations.push(Operation {
            client_id: Some(logical as u32),
            call_time: invoked,
            return_time: returned,
            op,
            metadata: None,
        });
        if kind == "info" {
            logical += PROCESSES;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_with_a_leader_kill_is_linearizable() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = Arc::new(cluster().await);
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");

    let alive = Arc::new(Mutex::new(vec![1, 2, 3]));
    let history = Arc::new(Mutex::new(History {
        start: Instant::now(),
        lines: Vec::new(),
        operations: Vec::new(),
    }));
    let mut clients = tokio::task::JoinSet::new();
    for process in 0..PROCESSES {
        clients.spawn(client(process, cluster.clone(), alive.clone(), history.clone()));
    }
    // Kill the leader once the clients are well under way.
    loop {
        if history.lock().await.operations.len() >= (PROCESSES * OPERATIONS_PER_PROCESS / 3) as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");
    alive.lock().await.retain(|&id| NodeId(id) != leader);
    cluster.nodes[&leader].host.shutdown().await;
    cluster.nodes[&leader].quic.close();
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }

    let history = history.lock().await;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-history.jsonl");
    let text: String = history.lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&path, text).unwrap();
    let ok = history.lines.iter().filter(|line| line["type"] == "ok").count();
    assert!(
        ok >= (PROCESSES * OPERATIONS_PER_PROCESS / 2) as usize,
        "too few operations completed: {ok}"
    );

    let verdict =
        porcupine_rs::check_operations_timeout::<Registers>(&history.operations, Duration::from_secs(60));
    assert!(
        matches!(verdict, CheckResult::Ok),
        "history at {} is not linearizable (or undecided): {verdict:?}",
        path.display()
    );

    // The checker can fail: the same history with one read's value changed to one never written is refused.
    let mut corrupted = history.operations.clone();
    let read = corrupted
        .iter_mut()
        .find(|operation| matches!(operation.op, Op::Read { value: Some(_), .. }));
    if let Some(operation) = read {
        operation.op = Op::Read {
            key: operation.op.key(),
            value: Some("never-written".into()),
        };
        let verdict =
            porcupine_rs::check_operations_timeout::<Registers>(&corrupted, Duration::from_secs(60));
        assert!(
            matches!(verdict, CheckResult::Illegal),
            "a read of a value never written passed: {verdict:?}"
        );
    }
    drop(history);
    Arc::try_unwrap(cluster)
        .ok()
        .expect("clients are done")
        .stop()
        .await;
}
