//! The tracked keys' client history: Jepsen-shaped lines for `--history`, operations for porcupine,
//! and the acknowledged writes the lost-write checker looks for in the final log.
//!
//! Values are unique per write, so a register's value identifies the write that produced it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub use linearizability::Op;
use linearizability::{CheckResult, NEVER_RETURNED, Operation, Registers};
use placement::GroupId;
use serde_json::json;
use storage::WriteId;

use crate::checkers::{Checker, Checks, Involved};
use crate::timeline::Timeline;

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
    /// When the history's clock started, in simulated time since the world was built: a violation is
    /// reported on the world's clock.
    pub started: Duration,
    /// Each tracked key's name and group, for the report.
    pub keys: BTreeMap<u64, (String, GroupId)>,
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
    /// The timeline names the node that led a broken key's group when it broke.
    pub fn check(&self, checks: &Checks, budget: Duration, timeline: &Timeline) {
        for operation in &self.operations {
            if let Op::Read {
                key,
                value: Some(value),
            } = &operation.op
                && !self.written_values.contains(value)
            {
                let at = self.world_time(operation.return_time);
                checks.violation_at(
                    Checker::LostAckedWrites,
                    Some(at),
                    self.involved([*key], at, timeline),
                    format!("key {key} read {value:?}, which was never written"),
                );
            }
        }
        match linearizability::check_operations_timeout::<Registers>(&self.operations, budget) {
            CheckResult::Ok => {}
            CheckResult::Illegal => self.report_illegal(checks, budget, timeline),
            CheckResult::Unknown => checks.violation_at(
                Checker::Linearizability,
                None,
                Involved::default(),
                format!("porcupine could not decide within {budget:?} (counts as a failure)"),
            ),
        }
    }

    /// Which keys broke, and when: the earliest moment by which a key's operations can no longer be
    /// linearized, and the operation that returned then.
    fn report_illegal(&self, checks: &Checks, budget: Duration, timeline: &Timeline) {
        let mut illegal = Vec::new();
        let mut first: Option<(i64, Operation<Registers>)> = None;
        for (key, operations) in linearizability::by_key(&self.operations) {
            if !matches!(
                linearizability::check_operations_timeout::<Registers>(&operations, budget),
                CheckResult::Illegal
            ) {
                continue;
            }
            illegal.push(key);
            let broken = first_illegal(&operations, budget);
            if first.as_ref().is_none_or(|(at, _)| broken.0 < *at) {
                first = Some(broken);
            }
        }
        let (at, operation) = first.expect("an illegal history has an illegal key");
        let at = self.world_time(at);
        // The key that broke first leads the list (and names the group).
        let first_key = operation.op.key();
        let keys = std::iter::once(first_key).chain(illegal.iter().copied().filter(|&key| key != first_key));
        checks.violation_at(
            Checker::Linearizability,
            Some(at),
            self.involved(keys, at, timeline),
            format!(
                "the history of {} operations is not linearizable; keys {illegal:?}; key {first_key} breaks \
                 first, when client p{}'s {}",
                self.operations.len(),
                operation.client_id.unwrap_or_default(),
                describe(&operation.op)
            ),
        )
    }

    /// A time on the history's clock (nanoseconds) on the world's.
    fn world_time(&self, nanos: i64) -> Duration {
        self.started + Duration::from_nanos(nanos.max(0) as u64)
    }

    /// The keys, the group of the first, and the node that led that group at `at`.
    fn involved(&self, keys: impl IntoIterator<Item = u64>, at: Duration, timeline: &Timeline) -> Involved {
        let mut involved = Involved::default();
        for key in keys {
            match self.keys.get(&key) {
                Some((name, group)) => {
                    involved.keys.push(format!("{key} ({name})"));
                    involved.group.get_or_insert_with(|| group.clone());
                }
                None => involved.keys.push(key.to_string()),
            }
        }
        if let Some(leader) = involved
            .group
            .as_ref()
            .and_then(|group| timeline.leader_at(group, at))
        {
            involved.nodes.push(leader);
        }
        involved
    }
}

/// An operation and what it returned, in words.
fn describe(op: &Op) -> String {
    match op {
        Op::Read { key, value: None } => format!("read of key {key} returned: absent"),
        Op::Read {
            key,
            value: Some(value),
        } => format!("read of key {key} returned {value:?}"),
        Op::Write { key, value } => format!("write of {value:?} to key {key} returned ok"),
        Op::Cas {
            key,
            expected,
            new,
            succeeded,
        } => {
            let outcome = match succeeded {
                Some(true) => "succeeded",
                Some(false) => "failed",
                None => "has an unknown outcome",
            };
            format!("compare-and-set of key {key} from {expected:?} to {new:?} {outcome}")
        }
    }
}

/// The first return time by which one key's operations can't be linearized, and the operation that
/// returned then. A prefix of the history grows only more constrained, so the first illegal one is
/// found by bisection over the return times.
fn first_illegal(operations: &[Operation<Registers>], budget: Duration) -> (i64, Operation<Registers>) {
    let mut returns: Vec<i64> = operations
        .iter()
        .map(|operation| operation.return_time)
        .filter(|&time| time != NEVER_RETURNED)
        .collect();
    returns.sort_unstable();
    returns.dedup();
    let illegal_at = |cutoff: i64| {
        matches!(
            linearizability::check_operations_timeout::<Registers>(&as_of(operations, cutoff), budget),
            CheckResult::Illegal
        )
    };
    // The first cutoff whose prefix is illegal; the whole history (the last) if none of the prefixes is.
    let (mut low, mut high) = (0, returns.len());
    while low < high {
        let middle = (low + high) / 2;
        if illegal_at(returns[middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let cutoff = returns.get(low).or(returns.last()).copied().unwrap_or(0);
    let operation = operations
        .iter()
        .find(|operation| operation.return_time == cutoff)
        .or(operations.last())
        .expect("an illegal key has operations")
        .clone();
    (cutoff, operation)
}

/// One key's operations as they stood at `cutoff`: those that had returned, and writes still under way
/// as unknown outcomes (a read still under way constrains nothing).
fn as_of(operations: &[Operation<Registers>], cutoff: i64) -> Vec<Operation<Registers>> {
    operations
        .iter()
        .filter(|operation| operation.call_time <= cutoff)
        .filter_map(|operation| {
            if operation.return_time <= cutoff {
                return Some(operation.clone());
            }
            let op = match &operation.op {
                Op::Read { .. } => return None,
                Op::Write { .. } => operation.op.clone(),
                Op::Cas {
                    key, expected, new, ..
                } => Op::Cas {
                    key: *key,
                    expected: expected.clone(),
                    new: new.clone(),
                    succeeded: None,
                },
            };
            Some(Operation {
                client_id: operation.client_id,
                call_time: operation.call_time,
                return_time: NEVER_RETURNED,
                op,
                metadata: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(call: i64, returned: i64, op: Op) -> Operation<Registers> {
        Operation {
            client_id: Some(0),
            call_time: call,
            return_time: returned,
            op,
            metadata: None,
        }
    }

    fn write(value: &str) -> Op {
        Op::Write {
            key: 0,
            value: value.into(),
        }
    }

    fn read(value: Option<&str>) -> Op {
        Op::Read {
            key: 0,
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn a_stale_read_is_found_when_it_returns() {
        let operations = [
            operation(0, 10, write("a")),
            operation(20, 30, write("b")),
            operation(40, 50, read(Some("b"))),
            operation(60, 70, read(Some("a"))),
            operation(80, 90, read(Some("b"))),
        ];
        let budget = Duration::from_secs(5);
        let (at, broken) = first_illegal(&operations, budget);
        assert_eq!(at, 70, "the stale read returned at 70");
        assert!(matches!(broken.op, Op::Read { .. }));
    }

    #[test]
    fn a_write_under_way_at_the_cutoff_may_or_may_not_have_happened() {
        let operations = [
            operation(0, 10, write("a")),
            operation(20, 100, write("b")),
            operation(30, 40, read(Some("b"))),
        ];
        let prefix = as_of(&operations, 40);
        assert_eq!(prefix.len(), 3);
        assert_eq!(prefix[1].return_time, NEVER_RETURNED);
        let budget = Duration::from_secs(5);
        assert!(matches!(
            linearizability::check_operations_timeout::<Registers>(&prefix, budget),
            CheckResult::Ok
        ));
        assert!(
            as_of(&operations, 15).len() == 1,
            "what was called later is left out"
        );
    }
}
