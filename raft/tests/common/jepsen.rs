//! Jepsen-shaped register histories, checked by an independent linearizability checker (porcupine).
//!
//! Shared by the in-process history test (`raft/tests/linearizability.rs`, calls on hosts) and the
//! process-level one (`tests/linearizability.rs`, calls through the client library against `domicile node`
//! processes, one of them SIGKILLed): the workload, the history's JSON lines
//! (`{"process","type","f","key","value","time"}`), the register model and the verdict live here once; each
//! test supplies a [`RegisterStore`] that says how a read, a write and a compare-and-set reach the cluster.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use linearizability::{CheckResult, NEVER_RETURNED, Op, Operation, Registers};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a write or compare-and-set came to.
pub enum WriteOutcome {
    Written,
    /// A compare-and-set whose expected revision did not match: a definite "no".
    Mismatch,
    /// No answer (timeout, the node died, any error after the request may have been sent): it may or may
    /// not have taken effect.
    Unknown,
}

/// How a test's calls reach the cluster. Registers are numbered; values are unique strings.
pub trait RegisterStore: Send + Sync + 'static {
    /// A linearizable read: the value and its revision, `None` if absent; `Err` if the read failed.
    fn read(&self, register: u64) -> Boxed<'_, Result<Option<(String, u64)>, String>>;
    /// A put. `(writer, sequence)` identify the write for deduplication where the store needs that.
    fn write(&self, register: u64, value: String, writer: u64, sequence: u64) -> Boxed<'_, WriteOutcome>;
    /// Writes `value` only if the register is at `expected_revision` (`None`: absent).
    fn compare_and_set(
        &self,
        register: u64,
        expected_revision: Option<u64>,
        value: String,
        writer: u64,
        sequence: u64,
    ) -> Boxed<'_, WriteOutcome>;
}

/// The history as JSON lines and as the checker's operations.
pub struct History {
    start: Instant,
    pub lines: Vec<serde_json::Value>,
    pub operations: Vec<Operation<Registers>>,
}

impl History {
    pub fn new() -> Arc<Mutex<History>> {
        Arc::new(Mutex::new(History {
            start: Instant::now(),
            lines: Vec::new(),
            operations: Vec::new(),
        }))
    }

    fn nanos(&self) -> i64 {
        self.start.elapsed().as_nanos() as i64
    }

    fn line(&mut self, process: u64, kind: &str, f: &str, key: u64, value: serde_json::Value) {
        let time = self.nanos();
        self.lines.push(
            json!({"process": process, "type": kind, "f": f, "key": key, "value": value, "time": time}),
        );
    }

    fn push(&mut self, process: u64, call_time: i64, return_time: i64, op: Op) {
        self.operations.push(Operation {
            client_id: Some(process as u32),
            call_time,
            return_time,
            op,
            metadata: None,
        });
    }
}

/// The shape of one test's workload.
#[derive(Clone, Copy)]
pub struct Workload {
    pub processes: u64,
    pub operations_per_process: u64,
    pub registers: u64,
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

/// One Jepsen process: reads (40%), puts (40%) and compare-and-sets on the revision just read (20%).
pub async fn process<S: RegisterStore>(
    process: u64,
    workload: Workload,
    store: Arc<S>,
    history: Arc<Mutex<History>>,
) {
    let mut rng = Rng(0xd0_111c11e ^ process);
    // After an `info` (unknown outcome) a Jepsen process is retired and a fresh one takes its place.
    let mut logical = process;
    let mut sequence = 0;
    for _ in 0..workload.operations_per_process {
        let register = rng.below(workload.registers);
        let choice = rng.below(10);
        if choice < 4 {
            let invoked = {
                let mut history = history.lock().await;
                history.line(logical, "invoke", "read", register, json!(null));
                history.nanos()
            };
            let outcome = store.read(register).await;
            let mut history = history.lock().await;
            let returned = history.nanos();
            match outcome {
                Ok(read) => {
                    let value = read.map(|(value, _)| value);
                    history.line(logical, "ok", "read", register, json!(value));
                    history.push(logical, invoked, returned, Op::Read { key: register, value });
                }
                // A read that fails changes nothing: it is simply not in the history the checker sees.
                Err(_) => history.line(logical, "fail", "read", register, json!(null)),
            }
            continue;
        }
        sequence += 1;
        let value = format!("p{process}-{sequence}");
        let writer = 1000 + logical;
        let expected = if choice < 8 {
            None
        } else {
            // CAS on the revision just read (that read is a helper step, not an operation in the history).
            let Ok(current) = store.read(register).await else {
                continue;
            };
            Some(current)
        };
        let (f, shown) = match &expected {
            Some(current) => ("cas", json!([current.as_ref().map(|(value, _)| value), value])),
            None => ("write", json!(value)),
        };
        let invoked = {
            let mut history = history.lock().await;
            history.line(logical, "invoke", f, register, shown.clone());
            history.nanos()
        };
        let outcome = match &expected {
            None => store.write(register, value.clone(), writer, sequence).await,
            Some(current) => {
                let revision = current.as_ref().map(|(_, revision)| *revision);
                store
                    .compare_and_set(register, revision, value.clone(), writer, sequence)
                    .await
            }
        };
        let mut history = history.lock().await;
        let (kind, succeeded, returned) = match outcome {
            WriteOutcome::Written => ("ok", Some(true), history.nanos()),
            WriteOutcome::Mismatch => ("fail", Some(false), history.nanos()),
            // No answer: it may have happened, at any time from now on.
            WriteOutcome::Unknown => ("info", None, NEVER_RETURNED),
        };
        history.line(logical, kind, f, register, shown);
        // A failed CAS is still an observation (the register did not hold `expected`).
        let op = match expected {
            None => Op::Write { key: register, value },
            Some(current) => Op::Cas {
                key: register,
                expected: current.map(|(value, _)| value),
                new: value,
                succeeded,
            },
        };
        history.push(logical, invoked, returned, op);
        if kind == "info" {
            logical += workload.processes;
        }
    }
}

/// Writes the history to `path`, then checks it: enough operations completed, the checker decides it is
/// linearizable, and — proof the checker can fail — the same history with one read's value replaced by one
/// never written is refused.
pub fn verify(history: &History, path: &Path, ok_at_least: usize) {
    let text: String = history.lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).unwrap();
    let ok = history.lines.iter().filter(|line| line["type"] == "ok").count();
    assert!(
        ok >= ok_at_least,
        "too few operations completed: {ok} (history at {})",
        path.display()
    );

    let verdict =
        linearizability::check_operations_timeout::<Registers>(&history.operations, Duration::from_secs(60));
    assert!(
        matches!(verdict, CheckResult::Ok),
        "history at {} is not linearizable (or undecided): {verdict:?}",
        path.display()
    );

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
            linearizability::check_operations_timeout::<Registers>(&corrupted, Duration::from_secs(60));
        assert!(
            matches!(verdict, CheckResult::Illegal),
            "a read of a value never written passed: {verdict:?}"
        );
    }
}
