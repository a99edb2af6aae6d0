//! The model of a key-value store as independent registers, for checking client histories with
//! porcupine (an independent implementation of Knossos' and Porcupine's linearizability search).
//!
//! Two places record histories of reads, writes and compare-and-sets and ask whether some
//! sequential order of them explains every response: the simulator's checker (operations of the
//! tracked keys in simulated time) and the Jepsen-style tests of the `raft` crate and of the node
//! binary (real clients, real time, a SIGKILLed leader). They check against this one model, so a
//! change to what "linearizable" means for Domicile is made once.
//!
//! Values are unique per write, so comparing a register's value compares the revision that a
//! compare-and-set checks.

use std::collections::BTreeMap;

pub use porcupine_rs::CheckResult;
use porcupine_rs::Model;
pub use porcupine_rs::Operation;
pub use porcupine_rs::check_operations_timeout;

/// The return time of an operation whose outcome is unknown (no answer came): it may have taken
/// effect at any point after its call, or never, which the checker sees as taking effect after
/// everything else.
pub const NEVER_RETURNED: i64 = i64::MAX;

/// One client operation on one register, with what it returned.
#[derive(Clone, Debug)]
pub enum Op {
    Read {
        key: u64,
        /// `None`: the register was absent.
        value: Option<String>,
    },
    Write {
        key: u64,
        value: String,
    },
    Cas {
        key: u64,
        /// The value the register had to hold (`None`: absent).
        expected: Option<String>,
        new: String,
        /// `None` when the outcome is unknown (its return time is [`NEVER_RETURNED`]).
        succeeded: Option<bool>,
    },
}

impl Op {
    pub fn key(&self) -> u64 {
        match self {
            Op::Read { key, .. } | Op::Write { key, .. } | Op::Cas { key, .. } => *key,
        }
    }
}

/// The history's operations grouped by key, in key order: what the checker searches one at a time,
/// and what a report names when it says which keys broke.
pub fn by_key(history: &[Operation<Registers>]) -> BTreeMap<u64, Vec<Operation<Registers>>> {
    let mut by_key: BTreeMap<u64, Vec<Operation<Registers>>> = BTreeMap::new();
    for operation in history {
        by_key
            .entry(operation.op.key())
            .or_default()
            .push(operation.clone());
    }
    by_key
}

/// One register per key; keys are independent, so the checker searches each key's operations alone.
#[derive(Clone)]
pub struct Registers;

impl Model for Registers {
    type State = Option<String>;
    type Op = Op;
    type Metadata = ();

    fn partition_operations(history: &[Operation<Self>]) -> Vec<Vec<Operation<Self>>> {
        by_key(history).into_values().collect()
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
            // Unknown outcome: where the state matched it took effect at this point of the order; where
            // it did not, nothing changed. (That it never took effect is the order that puts it last:
            // see `NEVER_RETURNED`.)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn operation(client: u32, call_time: i64, return_time: i64, op: Op) -> Operation<Registers> {
        Operation {
            client_id: Some(client),
            call_time,
            return_time,
            op,
            metadata: None,
        }
    }

    fn check(history: &[Operation<Registers>]) -> CheckResult {
        check_operations_timeout::<Registers>(history, Duration::from_secs(10))
    }

    fn read(key: u64, value: Option<&str>) -> Op {
        Op::Read {
            key,
            value: value.map(str::to_owned),
        }
    }

    fn write(key: u64, value: &str) -> Op {
        Op::Write {
            key,
            value: value.to_owned(),
        }
    }

    fn cas(expected: Option<&str>, new: &str, succeeded: Option<bool>) -> Op {
        Op::Cas {
            key: 1,
            expected: expected.map(str::to_owned),
            new: new.to_owned(),
            succeeded,
        }
    }

    #[test]
    fn a_read_after_a_completed_write_must_see_it() {
        let fresh = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, 30, read(1, Some("a"))),
        ];
        assert!(matches!(check(&fresh), CheckResult::Ok));
        let stale = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, 30, read(1, None)),
        ];
        assert!(matches!(check(&stale), CheckResult::Illegal));
        // Overlapping in time, either order explains it.
        let concurrent = [
            operation(0, 0, 30, write(1, "a")),
            operation(1, 10, 20, read(1, None)),
        ];
        assert!(matches!(check(&concurrent), CheckResult::Ok));
    }

    #[test]
    fn keys_are_independent_registers() {
        let history = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, 30, read(2, None)),
        ];
        assert!(matches!(check(&history), CheckResult::Ok));
    }

    #[test]
    fn a_compare_and_set_succeeds_only_where_its_expectation_held() {
        let refused_wrongly = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, 30, cas(Some("a"), "b", Some(false))),
        ];
        assert!(matches!(check(&refused_wrongly), CheckResult::Illegal));
        let applied_wrongly = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, 30, cas(None, "b", Some(true))),
        ];
        assert!(matches!(check(&applied_wrongly), CheckResult::Illegal));
    }

    #[test]
    fn an_unknown_compare_and_set_may_or_may_not_have_happened() {
        for seen in [Some("a"), Some("b")] {
            let history = [
                operation(0, 0, 10, write(1, "a")),
                operation(1, 20, NEVER_RETURNED, cas(Some("a"), "b", None)),
                operation(2, 40, 50, read(1, seen)),
            ];
            assert!(matches!(check(&history), CheckResult::Ok), "read {seen:?}");
        }
        // But never a value it could not have written.
        let history = [
            operation(0, 0, 10, write(1, "a")),
            operation(1, 20, NEVER_RETURNED, cas(Some("x"), "b", None)),
            operation(2, 40, 50, read(1, Some("b"))),
        ];
        assert!(matches!(check(&history), CheckResult::Illegal));
    }
}
