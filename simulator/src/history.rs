//! The tracked keys' client history: Jepsen-shaped lines for `--history`, operations for porcupine,
//! and the acknowledged writes the lost-write checker looks for in the final log.
//!
//! Values are unique per write, so a register's value identifies the write that produced it.

use std::collections::HashSet;
use std::time::Duration;

pub use linearizability::Op;
use linearizability::{CheckResult, Operation, Registers};
use serde_json::json;
use storage::WriteId;

use crate::checkers::{Checker, Checks};

/// A write the cluster acknowledged: it must be in the committed log at `revision`.
#[derive(Clone, Debug)]
pub struct AckedWrite {
    pub group: placement::GroupId,
    pub key: u64,
    pub write: WriteId,
    pub revision: u64,
}

/// One line of the Jepsen-shaped history, kept as its fields: a run renders its lines as JSON only when
/// `--history` asks for them.
pub struct Line {
    process: u64,
    kind: &'static str,
    f: &'static str,
    key: u64,
    value: serde_json::Value,
    nanos: u64,
}

impl Line {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "process": self.process,
            "type": self.kind,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "time": self.nanos,
        })
    }
}

#[derive(Default)]
pub struct History {
    pub lines: Vec<Line>,
    pub operations: Vec<Operation<Registers>>,
    pub acked: Vec<AckedWrite>,
    /// Every value any write tried to store (only ever asked whether it holds a value, never iterated,
    /// so its order can't reach the run).
    pub written_values: HashSet<String>,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl History {
    pub fn line(
        &mut self,
        process: u64,
        kind: &'static str,
        f: &'static str,
        key: u64,
        value: serde_json::Value,
        nanos: u64,
    ) {
        match kind {
            "ok" => self.ok += 1,
            "fail" => self.failed += 1,
            "info" => self.unknown += 1,
            _ => {}
        }
        self.lines.push(Line {
            process,
            kind,
            f,
            key,
            value,
            nanos,
        });
    }

    pub fn jsonl(&self) -> String {
        self.lines
            .iter()
            .map(|line| format!("{}\n", line.to_json()))
            .collect()
    }

    /// Porcupine on the whole history; an undecided check counts as a failure. Also: no read of a
    /// value that no write ever tried to store.
    pub fn check(&self, checks: &Checks, budget: Duration) {
        for operation in &self.operations {
            if let Op::Read {
                key,
                value: Some(value),
            } = &operation.op
                && !self.written_values.contains(value)
            {
                checks.violation(
                    Checker::LostAckedWrites,
                    format!("key {key} read {value:?}, which was never written"),
                );
            }
        }
        match linearizability::check_operations_timeout::<Registers>(&self.operations, budget) {
            CheckResult::Ok => {}
            CheckResult::Illegal => {
                let illegal: Vec<u64> = linearizability::by_key(&self.operations)
                    .iter()
                    .filter(|(_, operations)| {
                        matches!(
                            linearizability::check_operations_timeout::<Registers>(operations, budget),
                            CheckResult::Illegal
                        )
                    })
                    .map(|(key, _)| *key)
                    .collect();
                checks.violation(
                    Checker::Linearizability,
                    format!(
                        "the history of {} operations is not linearizable; keys {illegal:?}",
                        self.operations.len()
                    ),
                )
            }
            CheckResult::Unknown => checks.violation(
                Checker::Linearizability,
                format!("porcupine could not decide within {budget:?} (counts as a failure)"),
            ),
        }
    }
}
