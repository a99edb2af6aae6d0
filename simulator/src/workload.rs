//! Client processes on the tracked keys: reads, writes and compare-and-sets through the client
//! routing (jurisdiction, then a stable hash of the user id over that jurisdiction's groups) to the
//! group's leader, retrying while leadership moves, with a deadline after which the outcome is unknown.
//!
//! Every operation goes into the [`History`] as Jepsen would record it. After an unknown outcome the
//! process is retired and a fresh one (a new client id) takes its place, as in Jepsen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linearizability::Operation;
use openraft::AsyncRuntime;
use openraft::async_runtime::Instant as _;
use openraft_rt_sim::{SimInstant, SimRuntime};
use placement::GroupId;
use raft::host::{HostError, ReadConsistency};
use raft::routing::Router;
use serde_json::json;
use storage::{Command, CommandError, RecordKey, Response, WriteId};

use crate::history::{AckedWrite, History, Op};
use crate::prng::Prng;
use crate::world::{Canary, World};

/// A call with no answer by then has an unknown outcome.
const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// Bound on the operations of one process (every loop is bounded).
const OPERATIONS_PER_PROCESS_MAX: u64 = 100_000;

/// A tracked key: fully materialised, its every operation checked.
#[derive(Clone, Debug)]
pub struct TrackedKey {
    pub index: u64,
    pub key: RecordKey,
    pub group: GroupId,
}

/// A record key as the report names it: `jurisdiction/user/record`.
pub fn key_name(key: &RecordKey) -> String {
    format!("{}/{}/{}", key.jurisdiction, key.user_id, key.record_name)
}

pub fn tracked_keys(router: &Router, jurisdictions: &[&str], per_jurisdiction: u64) -> Vec<TrackedKey> {
    let mut keys = Vec::new();
    for jurisdiction in jurisdictions {
        for user in 0..per_jurisdiction {
            let user_id = format!("user-{user}");
            let Ok(group) = router.route(jurisdiction, &user_id) else {
                continue;
            };
            keys.push(TrackedKey {
                index: keys.len() as u64,
                key: RecordKey::new(*jurisdiction, user_id, "register"),
                group: group.clone(),
            });
        }
    }
    keys
}

#[derive(Clone)]
pub struct Workload {
    world: World,
    keys: Arc<Vec<TrackedKey>>,
    pub history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    start: SimInstant,
    running: Arc<std::sync::atomic::AtomicU64>,
    think_millis: (u64, u64),
}

enum Outcome {
    Ok(Response),
    /// Definitely did not happen (a read that failed, a refused command).
    Failed(String),
    /// May or may not have happened.
    Unknown(String),
    /// Refused every time it reached a leader, as a range between groups is (`NotOwned`): never applied,
    /// and nothing observed.
    Refused(String),
}

impl Workload {
    pub fn new(world: World, keys: Vec<TrackedKey>, think_millis: (u64, u64)) -> Workload {
        let start = SimInstant::now();
        let history = History {
            started: start - world.started(),
            keys: keys
                .iter()
                .map(|tracked| (tracked.index, (key_name(&tracked.key), tracked.group.clone())))
                .collect(),
            ..History::default()
        };
        Workload {
            world,
            keys: Arc::new(keys),
            history: Arc::new(Mutex::new(history)),
            stop: Arc::default(),
            start,
            running: Arc::default(),
            think_millis,
        }
    }

    fn nanos(&self) -> u64 {
        (SimInstant::now() - self.start).as_nanos() as u64
    }

    pub fn start(&self, processes: u64) {
        for process in 0..processes {
            let workload = self.clone();
            let rng = self.world.fork_rng(0xc11e_0000 + process);
            self.running.fetch_add(1, Ordering::Relaxed);
            drop(SimRuntime::spawn(async move {
                workload.process(process, processes, rng).await;
                workload.running.fetch_sub(1, Ordering::Relaxed);
            }));
        }
    }

    /// Asks every process to stop and waits (bounded) until they have.
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..1_000 {
            if self.running.load(Ordering::Relaxed) == 0 {
                return;
            }
            SimRuntime::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The group `tracked` is routed to now: by the published map where the run publishes one (its range
    /// may have moved), else the group it started in.
    fn route(&self, tracked: &TrackedKey) -> GroupId {
        self.world
            .route(&tracked.key.jurisdiction, &tracked.key.user_id)
            .unwrap_or_else(|| tracked.group.clone())
    }

    /// One call through the leader of the key's group, retrying while leadership moves and, as a client
    /// told `Moved` does, while the key's range is between groups (refused by a group that no longer owns
    /// it: nothing applied), until the deadline. Also answers the group that answered.
    async fn call(
        &self,
        tracked: &TrackedKey,
        command: Command,
        read: Option<RecordKey>,
        rng: &mut Prng,
    ) -> (Outcome, GroupId) {
        let deadline = SimInstant::now() + CALL_DEADLINE;
        let mut last = String::from("no leader");
        let mut group = self.route(tracked);
        // Whether every answer so far was a refusal of the range (or there was no leader to ask).
        let mut refused_only = true;
        for _attempt in 0..1_000 {
            let now = SimInstant::now();
            if now >= deadline {
                break;
            }
            group = self.route(tracked);
            let group = &group;
            let follower_read = read.is_some() && self.world.canary == Some(Canary::FollowerReads);
            let target = if follower_read {
                let holders: Vec<_> = self
                    .world
                    .holders(group)
                    .into_iter()
                    .filter_map(|node| self.world.host(node))
                    .collect();
                (!holders.is_empty()).then(|| rng.pick(&holders).clone())
            } else {
                self.world.leader(group).map(|(_, host)| host)
            };
            let Some(host) = target else {
                SimRuntime::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let remaining = deadline - now;
            let attempt = match &read {
                Some(key) => {
                    let consistency = if follower_read {
                        ReadConsistency::Stale
                    } else {
                        ReadConsistency::Linearizable
                    };
                    let call = host.read(group, key.clone(), consistency);
                    match SimRuntime::timeout(remaining, call).await {
                        Ok(result) => result.map(|outcome| Response::Value(outcome.record)),
                        Err(_) => return (Outcome::Failed("read timed out".into()), group.clone()),
                    }
                }
                None => match SimRuntime::timeout(remaining, host.write(group, command.clone())).await {
                    Ok(result) => result,
                    Err(_) => return (Outcome::Unknown("timed out".into()), group.clone()),
                },
            };
            match attempt {
                Ok(Response::Rejected(refusal @ CommandError::NotOwned { .. })) => {
                    last = refusal.to_string();
                    SimRuntime::sleep(Duration::from_millis(20)).await;
                }
                Ok(response) => return (Outcome::Ok(response), group.clone()),
                // Not definitive: a leader that loses its leadership with the entry in flight says so too.
                Err(error @ HostError::NotLeader { .. }) => {
                    refused_only = false;
                    last = error.to_string();
                    SimRuntime::sleep(Duration::from_millis(10)).await;
                }
                Err(error) if error.is_retryable() => {
                    refused_only = false;
                    last = error.to_string();
                    SimRuntime::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => {
                    // A write that met an error other than "not the leader" may still have been proposed.
                    let outcome = if read.is_some() {
                        Outcome::Failed(error.to_string())
                    } else {
                        Outcome::Unknown(error.to_string())
                    };
                    return (outcome, group.clone());
                }
            }
        }
        let outcome = if read.is_some() {
            Outcome::Failed(last)
        } else if refused_only {
            Outcome::Refused(last)
        } else {
            Outcome::Unknown(last)
        };
        (outcome, group)
    }

    async fn process(&self, process: u64, processes: u64, mut rng: Prng) {
        let mut logical = process;
        let mut sequence = 0;
        for _ in 0..OPERATIONS_PER_PROCESS_MAX {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let think = rng.between(self.think_millis.0, self.think_millis.1);
            SimRuntime::sleep(Duration::from_millis(think)).await;
            let tracked = rng.pick(&self.keys).clone();
            let choice = rng.below(10);
            if choice < 4 {
                self.read(logical, &tracked, &mut rng).await;
                continue;
            }
            sequence += 1;
            let retire = self
                .write(logical, &tracked, sequence, choice >= 8, &mut rng)
                .await;
            if retire {
                logical += processes;
            }
        }
    }

    async fn read(&self, logical: u64, tracked: &TrackedKey, rng: &mut Prng) {
        let invoked = self.nanos();
        self.history.lock().expect("history lock").line(
            logical,
            "invoke",
            "read",
            tracked.index,
            json!(null),
            invoked,
        );
        let command = Command::Get {
            key: tracked.key.clone(),
        };
        let (outcome, _) = self.call(tracked, command, Some(tracked.key.clone()), rng).await;
        let returned = self.nanos();
        let mut history = self.history.lock().expect("history lock");
        match outcome {
            Outcome::Ok(Response::Value(record)) => {
                let value = record.map(|record| String::from_utf8_lossy(&record.value).into_owned());
                history.line(logical, "ok", "read", tracked.index, json!(value), returned);
                history.operations.push(Operation {
                    client_id: Some(logical as u32),
                    call_time: invoked as i64,
                    return_time: returned as i64,
                    op: Op::Read {
                        key: tracked.index,
                        value,
                    },
                    metadata: None,
                });
            }
            Outcome::Failed(reason) | Outcome::Unknown(reason) | Outcome::Refused(reason) => {
                history.line(logical, "fail", "read", tracked.index, json!(null), returned);
                drop(history);
                self.world.log(format!(
                    "p{logical} read key {}: failed ({reason})",
                    tracked.index
                ));
            }
            Outcome::Ok(other) => history.line(
                logical,
                "fail",
                "read",
                tracked.index,
                json!(format!("{other:?}")),
                returned,
            ),
        }
    }

    /// A write or compare-and-set; returns whether the process must retire (unknown outcome).
    async fn write(
        &self,
        logical: u64,
        tracked: &TrackedKey,
        sequence: u64,
        cas: bool,
        rng: &mut Prng,
    ) -> bool {
        let value = format!("p{logical}-{sequence}");
        let write = WriteId {
            client_id: 1000 + logical,
            sequence,
        };
        let (f, command, expected) = if cas {
            // CAS on the revision just read (that read is a helper, not an operation of the history).
            let read = Command::Get {
                key: tracked.key.clone(),
            };
            let (Outcome::Ok(Response::Value(record)), _) =
                self.call(tracked, read, Some(tracked.key.clone()), rng).await
            else {
                return false;
            };
            let expected_value = record
                .as_ref()
                .map(|record| String::from_utf8_lossy(&record.value).into_owned());
            let command = Command::CompareAndSet {
                write,
                key: tracked.key.clone(),
                expected_revision: record.map(|record| record.revision),
                value: value.clone().into_bytes(),
            };
            ("cas", command, Some(expected_value))
        } else {
            let command = Command::Put {
                write,
                key: tracked.key.clone(),
                value: value.clone().into_bytes(),
            };
            ("write", command, None)
        };
        let shown = match &expected {
            Some(expected) => json!([expected, value]),
            None => json!(value),
        };
        let invoked = self.nanos();
        {
            let mut history = self.history.lock().expect("history lock");
            history.written_values.insert(value.clone());
            history.line(logical, "invoke", f, tracked.index, shown.clone(), invoked);
        }
        let (outcome, group) = self.call(tracked, command, None, rng).await;
        let returned = self.nanos();
        match &outcome {
            Outcome::Failed(reason) | Outcome::Unknown(reason) | Outcome::Refused(reason) => {
                self.world
                    .log(format!("p{logical} {f} {value}: unknown ({reason})"));
            }
            Outcome::Ok(response) => self.world.log(format!("p{logical} {f} {value}: {response:?}")),
        }
        let mut history = self.history.lock().expect("history lock");
        let (kind, succeeded) = match &outcome {
            Outcome::Ok(Response::Written { revision }) => {
                history.acked.push(AckedWrite {
                    group,
                    key: tracked.index,
                    write,
                    revision: *revision,
                });
                ("ok", Some(true))
            }
            Outcome::Ok(Response::Rejected(CommandError::RevisionMismatch { .. })) => ("fail", Some(false)),
            Outcome::Failed(_) => ("fail", Some(false)),
            // Never applied and nothing observed: not an operation, whether a write or a compare-and-set.
            Outcome::Refused(_) => {
                history.line(logical, "fail", f, tracked.index, shown, returned);
                return false;
            }
            Outcome::Ok(_) | Outcome::Unknown(_) => ("info", None),
        };
        history.line(logical, kind, f, tracked.index, shown, returned);
        if kind == "fail" && expected.is_none() {
            // A plain write that definitely did not happen is not an operation.
            return false;
        }
        let op = match expected {
            None => Op::Write {
                key: tracked.index,
                value,
            },
            Some(expected) => Op::Cas {
                key: tracked.index,
                expected,
                new: value,
                succeeded,
            },
        };
        let return_time = if kind == "info" {
            linearizability::NEVER_RETURNED
        } else {
            returned as i64
        };
        history.operations.push(Operation {
            client_id: Some(logical as u32),
            call_time: invoked as i64,
            return_time,
            op,
            metadata: None,
        });
        kind == "info"
    }

    /// A key of the history (a tracked key's index, or a bulk range's `u64::MAX - range`) as the report
    /// names it.
    pub fn key_name(&self, key: u64) -> String {
        match self.keys.iter().find(|tracked| tracked.index == key) {
            Some(tracked) => key_name(&tracked.key),
            None => format!("EEA/bulk-{}/*", u64::MAX - key),
        }
    }

    pub fn operations_started(&self) -> usize {
        self.history.lock().expect("history lock").lines.len()
    }
}
