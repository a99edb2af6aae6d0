//! A client history against a real 3-node EEA group — concurrent puts, reads and compare-and-sets on a few
//! keys, with the leader's host shut down in the middle — written as JSON lines in Jepsen's shape and
//! checked for linearizability by an independent checker (porcupine). `info` operations are those whose
//! outcome is unknown (the call timed out or its node died): they may or may not have happened.
//!
//! This one calls the hosts in one process; `tests/linearizability.rs` at the workspace root runs the same
//! workload through the client library against `domicile node` processes and SIGKILLs the leader's.
//! The history is kept at `$CARGO_TARGET_TMPDIR/linearizability-history.jsonl` for inspection.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::jepsen::{self, Boxed, History, RegisterStore, Workload, WriteOutcome};
use common::{Cluster, ONE_CLUSTER_AT_A_TIME, cluster, group};
use placement::NodeId;
use raft::host::{HostError, ReadConsistency};
use storage::{Command, CommandError, RecordKey, Response, WriteId};
use tokio::sync::Mutex;
use tokio::time::Instant;

const WORKLOAD: Workload = Workload {
    processes: 3,
    operations_per_process: 40,
    registers: 2,
};
/// A call with no answer by then is recorded as `info`: its outcome is unknown.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

fn key(index: u64) -> RecordKey {
    RecordKey::new("EEA", format!("user-{index}"), "register")
}

/// Calls through whichever live node leads now, retrying while leadership moves (a write carries a fixed
/// write id, so a retry is applied at most once).
struct Hosts {
    cluster: Arc<Cluster>,
    alive: Mutex<Vec<u64>>,
}

impl Hosts {
    async fn call(&self, command: Command, read: Option<RecordKey>) -> Result<Response, HostError> {
        let give_up = Instant::now() + CALL_DEADLINE;
        loop {
            let among = self.alive.lock().await.clone();
            let attempt = match self
                .cluster
                .leader("users-eea", &among, Duration::from_millis(500))
                .await
            {
                None => Err(HostError::NotLeader {
                    group: group("users-eea"),
                    leader: None,
                }),
                Some(leader) => {
                    let host = &self.cluster.nodes[&leader].host;
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

    async fn written(&self, command: Command) -> WriteOutcome {
        match self.call(command, None).await {
            Ok(Response::Written { .. }) => WriteOutcome::Written,
            Ok(Response::Rejected(CommandError::RevisionMismatch { .. })) => WriteOutcome::Mismatch,
            _ => WriteOutcome::Unknown,
        }
    }
}

impl RegisterStore for Hosts {
    fn read(&self, register: u64) -> Boxed<'_, Result<Option<(String, u64)>, String>> {
        Box::pin(async move {
            match self
                .call(Command::Get { key: key(register) }, Some(key(register)))
                .await
            {
                Ok(Response::Value(record)) => {
                    Ok(record.map(|record| (String::from_utf8(record.value).unwrap(), record.revision)))
                }
                other => Err(format!("{other:?}")),
            }
        })
    }

    fn write(&self, register: u64, value: String, writer: u64, sequence: u64) -> Boxed<'_, WriteOutcome> {
        let command = Command::Put {
            write: WriteId {
                client_id: writer,
                sequence,
            },
            key: key(register),
            value: value.into_bytes(),
        };
        Box::pin(self.written(command))
    }

    fn compare_and_set(
        &self,
        register: u64,
        expected_revision: Option<u64>,
        value: String,
        writer: u64,
        sequence: u64,
    ) -> Boxed<'_, WriteOutcome> {
        let command = Command::CompareAndSet {
            write: WriteId {
                client_id: writer,
                sequence,
            },
            key: key(register),
            expected_revision,
            value: value.into_bytes(),
        };
        Box::pin(self.written(command))
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

    let hosts = Arc::new(Hosts {
        cluster: cluster.clone(),
        alive: Mutex::new(vec![1, 2, 3]),
    });
    let history = History::new();
    let mut clients = tokio::task::JoinSet::new();
    for process in 0..WORKLOAD.processes {
        clients.spawn(jepsen::process(process, WORKLOAD, hosts.clone(), history.clone()));
    }
    // Kill the leader once the clients are well under way.
    let total = WORKLOAD.processes * WORKLOAD.operations_per_process;
    while history.lock().await.operations.len() < (total / 3) as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");
    hosts.alive.lock().await.retain(|&id| NodeId(id) != leader);
    cluster.nodes[&leader].host.shutdown().await;
    cluster.nodes[&leader].quic.close();
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("linearizability-history.jsonl");
    jepsen::verify(&*history.lock().await, &path, (total / 2) as usize);
    drop(hosts);
    Arc::try_unwrap(cluster)
        .ok()
        .expect("clients are done")
        .stop()
        .await;
}
