//! The drill's client workload: reads, writes and compare-and-sets through the client library, on users
//! reserved for the drill in every jurisdiction some group is fenced to, recorded as a history the
//! linearizability checker can judge, plus a ledger of acknowledged writes to read back (the RPO).
//!
//! Each user has one register (`register`: puts, linearizable reads, compare-and-sets on the revision just
//! read — the history) and ledger records (`ack-W-N`, each written once and never overwritten, so every
//! acknowledged one must be read back unchanged after the drill). Users are named
//! `drill-RUN-JURISDICTION-N`, chosen so every group holds some of them (by the topology's routing, which
//! the published shard maps follow), and every record of theirs is deleted when the drill ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use client::{Client, ClientError};
use linearizability::{NEVER_RETURNED, Op, Operation, Registers};
use raft::routing::Router;

/// The record holding a user's register.
const REGISTER: &str = "register";

/// Users in every drill's key range start with this: reserved for drills, never for real users.
pub const USER_PREFIX: &str = "drill-";

/// Candidate names tried per group before giving up on finding it users (the hash spreads names evenly,
/// so a group of `n` in a jurisdiction needs about `n` candidates per user).
const CANDIDATES_PER_USER: u64 = 1_000;

/// The most workers a drill runs (a retired worker's next process id is this much higher).
pub const WORKERS_MAX: u64 = 64;

/// A user the drill writes to.
#[derive(Clone, Debug)]
pub struct DrillUser {
    pub jurisdiction: String,
    pub name: String,
    pub group: String,
}

/// `users_per_group` users for every group of every jurisdiction, named after the run.
pub fn choose_users(router: &Router, run: &str, users_per_group: u32) -> anyhow::Result<Vec<DrillUser>> {
    let mut users = Vec::new();
    for (jurisdiction, _) in router.shards() {
        // Reserve groups own no range until a split gives them one: no user routes there at first.
        let groups = router.first_map_groups(jurisdiction);
        let mut wanted: BTreeMap<&str, u32> = groups.iter().map(|group| (group.0.as_str(), 0)).collect();
        let limit = CANDIDATES_PER_USER * u64::from(users_per_group) * groups.len() as u64;
        for candidate in 0..limit {
            if wanted.values().all(|&count| count >= users_per_group) {
                break;
            }
            let name = format!("{USER_PREFIX}{run}-{}-{candidate}", jurisdiction.to_lowercase());
            let group = router
                .route(jurisdiction, &name)
                .map_err(|error| anyhow!("{error}"))?;
            let count = wanted
                .get_mut(group.0.as_str())
                .expect("routed to a shard of the jurisdiction");
            if *count < users_per_group {
                *count += 1;
                users.push(DrillUser {
                    jurisdiction: jurisdiction.clone(),
                    name,
                    group: group.0.clone(),
                });
            }
        }
        if let Some((group, _)) = wanted.iter().find(|(_, count)| **count < users_per_group) {
            bail!("found no drill users for group `{group}` in {limit} names");
        }
    }
    Ok(users)
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A definite answer (for a compare-and-set, also "the revision did not match").
    Ok,
    /// A definite failure: nothing was changed.
    Failed,
    /// No answer: a write may or may not have taken effect.
    Unknown,
}

/// One operation as the report counts it.
#[derive(Clone, Debug)]
pub struct Sample {
    pub group: String,
    /// Since the drill started.
    pub invoked: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// A write the cluster acknowledged, to be read back after the drill.
#[derive(Clone, Debug)]
pub struct Acknowledged {
    pub user: usize,
    pub record: String,
    pub value: Vec<u8>,
}

/// What the workload did: every operation's outcome, the registers' history, the acknowledged ledger writes.
#[derive(Default)]
pub struct Record {
    pub samples: Vec<Sample>,
    /// Register operations by user index, for the checker (times in nanoseconds since the drill started).
    pub history: Vec<(usize, Operation<Registers>)>,
    pub acknowledged: Vec<Acknowledged>,
}

/// The workload's shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub workers: u32,
    /// Operations per second, all workers together, at most.
    pub rate: u32,
}

pub struct Workload {
    pub client: Arc<Client>,
    pub users: Arc<Vec<DrillUser>>,
    pub run: String,
    /// Seeds each worker's choices (with the worker's number).
    pub seed: u64,
    pub started: Instant,
}

/// A value the drill writes: unique, and a JSON object whose one field (`drill`) is not personal, so a
/// jurisdiction that declares personal fields still answers it in clear (a value that is not an object
/// would be pseudonymised whole for a reader outside).
pub fn value_of(unique: &str) -> String {
    serde_json::json!({ FIELD: unique }).to_string()
}

/// The one field of the drill's values.
pub const FIELD: &str = "drill";

/// SplitMix64: each worker's choices are seeded (`--seed`), so a run's mix can be replayed.
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

fn nanos(duration: Duration) -> i64 {
    duration.as_nanos().min(i64::MAX as u128 - 1) as i64
}

/// A write's outcome from the client's answer. Errors raised before anything was sent change nothing; any
/// other may follow an attempt that took effect.
fn write_outcome<T>(result: &Result<T, ClientError>) -> Outcome {
    if let Err(error) = result
        && !matches!(error, ClientError::Conflict(_))
    {
        tracing::debug!(%error, "a drill write failed");
    }
    match result {
        Ok(_) | Err(ClientError::Conflict(_)) => Outcome::Ok,
        Err(
            ClientError::Residency(_)
            | ClientError::Invalid(_)
            | ClientError::Forbidden { .. }
            | ClientError::Rejected(_),
        ) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

impl Workload {
    fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// Before anything is written: every jurisdiction answers a read of a drill user (so a client
    /// certificate without a grant, or a jurisdiction with no answering group, is found while nothing has
    /// changed).
    pub async fn preflight(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for user in self.users.iter() {
            if !seen.insert(user.jurisdiction.clone()) {
                continue;
            }
            self.client
                .in_jurisdiction(&user.jurisdiction)
                .get(&user.name, REGISTER)
                .await
                .with_context(|| {
                    format!(
                        "the drill's client can't read in jurisdiction {} (group {})",
                        user.jurisdiction, user.group
                    )
                })?;
        }
        Ok(())
    }

    /// Runs `shape.workers` workers until `stop` is set; returns what they did.
    pub async fn run(self: Arc<Self>, shape: Shape, stop: Arc<AtomicBool>) -> Record {
        let mut workers = tokio::task::JoinSet::new();
        // Each worker paces itself to its share of the rate.
        let pause = Duration::from_secs_f64(f64::from(shape.workers) / f64::from(shape.rate.max(1)));
        for worker in 0..shape.workers {
            let workload = self.clone();
            let stop = stop.clone();
            workers.spawn(async move { workload.worker(worker, pause, stop).await });
        }
        let mut record = Record::default();
        while let Some(done) = workers.join_next().await {
            if let Ok(part) = done {
                record.samples.extend(part.samples);
                record.history.extend(part.history);
                record.acknowledged.extend(part.acknowledged);
            }
        }
        record
    }

    async fn worker(&self, worker: u32, pause: Duration, stop: Arc<AtomicBool>) -> Record {
        let mut rng = Rng(self.seed ^ raft::routing::stable_hash(&worker.to_le_bytes()));
        let mut record = Record::default();
        // After an operation with no answer, a Jepsen process is retired and a fresh one takes its place.
        let mut process = u64::from(worker);
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let next = Instant::now() + pause;
            let user = rng.below(self.users.len() as u64) as usize;
            sequence += 1;
            let value = value_of(&format!("{}-w{worker}-{sequence}", self.run));
            let unknown = match rng.below(10) {
                0..=2 => self.read(&mut record, process, user).await,
                3..=5 => self.put(&mut record, process, user, value).await,
                6..=7 => self.compare_and_set(&mut record, process, user, value).await,
                _ => {
                    let name = format!("ack-w{worker}-{sequence}");
                    self.ledger(&mut record, user, name, value).await
                }
            };
            if unknown {
                process += WORKERS_MAX;
            }
            tokio::time::sleep_until(next.into()).await;
        }
        record
    }

    fn sample(&self, record: &mut Record, user: usize, invoked: Duration, outcome: Outcome) {
        record.samples.push(Sample {
            group: self.users[user].group.clone(),
            invoked,
            latency: self.since_start().saturating_sub(invoked),
            outcome,
        });
    }

    fn operation(record: &mut Record, user: usize, process: u64, invoked: Duration, returned: i64, op: Op) {
        record.history.push((
            user,
            Operation {
                client_id: Some(process as u32),
                call_time: nanos(invoked),
                return_time: returned,
                op,
                metadata: None,
            },
        ));
    }

    /// A linearizable read of the user's register: its value and revision.
    async fn read_register(&self, user: usize) -> Result<Option<(String, u64)>, ClientError> {
        let user = &self.users[user];
        let record = self
            .client
            .in_jurisdiction(&user.jurisdiction)
            .get(&user.name, REGISTER)
            .await?;
        Ok(record.map(|record| {
            (
                String::from_utf8_lossy(&record.value).into_owned(),
                record.revision,
            )
        }))
    }

    /// Returns whether the outcome is unknown.
    async fn read(&self, record: &mut Record, process: u64, user: usize) -> bool {
        let invoked = self.since_start();
        let read = self.read_register(user).await;
        let returned = self.since_start();
        match read {
            Ok(value) => {
                self.sample(record, user, invoked, Outcome::Ok);
                let op = Op::Read {
                    key: user as u64,
                    value: value.map(|(value, _)| value),
                };
                Self::operation(record, user, process, invoked, nanos(returned), op);
            }
            // A read that fails changes nothing, and tells the checker nothing.
            Err(error) => {
                tracing::debug!(%error, "a drill read failed");
                self.sample(record, user, invoked, Outcome::Failed)
            }
        }
        false
    }

    async fn put(&self, record: &mut Record, process: u64, user: usize, value: String) -> bool {
        let invoked = self.since_start();
        let target = &self.users[user];
        let result = self
            .client
            .in_jurisdiction(&target.jurisdiction)
            .put(&target.name, REGISTER, value.clone().into_bytes())
            .await;
        let outcome = write_outcome(&result);
        self.sample(record, user, invoked, outcome);
        let returned = match outcome {
            Outcome::Ok => nanos(self.since_start()),
            Outcome::Unknown => NEVER_RETURNED,
            Outcome::Failed => return false,
        };
        let op = Op::Write {
            key: user as u64,
            value,
        };
        Self::operation(record, user, process, invoked, returned, op);
        outcome == Outcome::Unknown
    }

    /// A compare-and-set on the revision just read (the read is a helper, not an operation of the history).
    async fn compare_and_set(&self, record: &mut Record, process: u64, user: usize, value: String) -> bool {
        let invoked = self.since_start();
        let current = match self.read_register(user).await {
            Ok(current) => current,
            Err(error) => {
                tracing::debug!(%error, "a drill read failed");
                self.sample(record, user, invoked, Outcome::Failed);
                return false;
            }
        };
        let invoked = self.since_start();
        let target = &self.users[user];
        let result = self
            .client
            .in_jurisdiction(&target.jurisdiction)
            .compare_and_set(
                &target.name,
                REGISTER,
                current.as_ref().map(|(_, revision)| *revision),
                value.clone().into_bytes(),
            )
            .await;
        let outcome = write_outcome(&result);
        self.sample(record, user, invoked, outcome);
        let (succeeded, returned) = match (&result, outcome) {
            (_, Outcome::Failed) => return false,
            (_, Outcome::Unknown) => (None, NEVER_RETURNED),
            (Ok(_), _) => (Some(true), nanos(self.since_start())),
            (Err(_), _) => (Some(false), nanos(self.since_start())),
        };
        let op = Op::Cas {
            key: user as u64,
            expected: current.map(|(value, _)| value),
            new: value,
            succeeded,
        };
        Self::operation(record, user, process, invoked, returned, op);
        outcome == Outcome::Unknown
    }

    /// A ledger record, written once: acknowledged, it must be read back after the drill.
    async fn ledger(&self, record: &mut Record, user: usize, name: String, value: String) -> bool {
        let invoked = self.since_start();
        let target = &self.users[user];
        let result = self
            .client
            .in_jurisdiction(&target.jurisdiction)
            .put(&target.name, &name, value.clone().into_bytes())
            .await;
        let outcome = write_outcome(&result);
        self.sample(record, user, invoked, outcome);
        if result.is_ok() {
            record.acknowledged.push(Acknowledged {
                user,
                record: name,
                value: value.into_bytes(),
            });
        }
        false
    }

    /// After the workload: every register read once more (into the history, so an acknowledged write that
    /// was lost shows as a read the checker can't explain).
    pub async fn final_reads(&self, record: &mut Record) {
        let process = 1_000_000;
        for user in 0..self.users.len() {
            self.read(record, process + user as u64, user).await;
        }
    }

    /// Reads back every acknowledged ledger write: per group, how many were lost (absent or changed) and
    /// how many could not be read.
    pub async fn read_back(&self, acknowledged: &[Acknowledged]) -> BTreeMap<String, ReadBack> {
        let mut by_group: BTreeMap<String, ReadBack> = BTreeMap::new();
        for write in acknowledged {
            let user = &self.users[write.user];
            let mut answer = Err(ClientError::Unavailable("not asked".into()));
            for _ in 0..3 {
                answer = self
                    .client
                    .in_jurisdiction(&user.jurisdiction)
                    .get(&user.name, &write.record)
                    .await;
                if answer.is_ok() {
                    break;
                }
            }
            let entry = by_group.entry(user.group.clone()).or_default();
            entry.acknowledged += 1;
            match answer {
                Ok(Some(record)) if record.value == write.value => {}
                Ok(_) => entry.lost.push(format!("{}/{}", user.name, write.record)),
                Err(error) => {
                    entry.unverified += 1;
                    entry.last_error = Some(error.to_string());
                }
            }
        }
        by_group
    }

    /// Deletes every record of every drill user; returns how many were deleted and the users whose records
    /// could not all be deleted.
    pub async fn clean_up(&self) -> (u64, Vec<String>) {
        let mut deleted = 0;
        let mut left = Vec::new();
        for user in self.users.iter() {
            let scoped = self.client.in_jurisdiction(&user.jurisdiction);
            let mut clean = false;
            for _ in 0..3 {
                let Ok(records) = scoped.scan_user(&user.name).await else {
                    continue;
                };
                let mut failed = false;
                for (name, _) in &records {
                    match scoped.delete(&user.name, name).await {
                        Ok(_) => deleted += 1,
                        Err(_) => failed = true,
                    }
                }
                if !failed {
                    clean = true;
                    break;
                }
            }
            if !clean {
                left.push(user.name.clone());
            }
        }
        (deleted, left)
    }
}

/// The acknowledged writes of one group, read back.
#[derive(Clone, Debug, Default)]
pub struct ReadBack {
    pub acknowledged: u64,
    /// Absent or changed: `user/record`.
    pub lost: Vec<String>,
    pub unverified: u64,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_objects_of_one_field_that_is_not_personal() {
        let value: serde_json::Value = serde_json::from_str(&value_of("r1-w0-7")).unwrap();
        assert_eq!(value, serde_json::json!({"drill": "r1-w0-7"}));
    }

    #[test]
    fn every_group_gets_its_drill_users_in_the_reserved_range() {
        let file = placement::TopologyFile::parse(
            "[[site]]\nname = \"dublin\"\ncountry = \"IE\"\nnodes = [1]\n\n\
             [[group]]\nname = \"eea-0\"\njurisdiction = \"EEA\"\nvoters = 1\n\n\
             [[group]]\nname = \"eea-1\"\njurisdiction = \"EEA\"\nvoters = 1\n\n\
             [[group]]\nname = \"eu-0\"\njurisdiction = \"EU\"\nvoters = 1\n",
        )
        .unwrap();
        let router = Router::new(file.policies.values()).unwrap();
        let users = choose_users(&router, "r1", 3).unwrap();
        assert_eq!(users.len(), 9);
        for group in ["eea-0", "eea-1", "eu-0"] {
            let of_group: Vec<_> = users.iter().filter(|user| user.group == group).collect();
            assert_eq!(of_group.len(), 3, "{group}: {users:?}");
            for user in of_group {
                assert!(user.name.starts_with("drill-r1-"), "{user:?}");
                assert_eq!(router.route(&user.jurisdiction, &user.name).unwrap().0, group);
            }
        }
        let again = choose_users(&router, "r1", 3).unwrap();
        let names = |users: &[DrillUser]| users.iter().map(|user| user.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&users), names(&again), "the same run names the same users");
    }
}
