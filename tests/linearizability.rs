//! A client history against three `domicile node` processes (Dublin A, Dublin B, Hamar; one EEA group) —
//! concurrent puts, reads and compare-and-sets on a few keys through the client library, with the leader's
//! process SIGKILLed in the middle — written as JSON lines in Jepsen's shape and checked for
//! linearizability by an independent checker (porcupine; the workload and model are shared with
//! `raft/tests/linearizability.rs`). `info` operations are those whose outcome is unknown.
//!
//! The history is kept at `$CARGO_TARGET_TMPDIR/sigkill-history.jsonl` for inspection. Waits poll with
//! deadlines on the wall clock (real processes); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "../raft/tests/common/jepsen.rs"]
mod jepsen;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientError, ClientTls};
use jepsen::{Boxed, History, RegisterStore, Workload, WriteOutcome};

const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]

[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]

[[site]]
name = "hamar"
country = "NO"
nodes = [3]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
"#;

const WORKLOAD: Workload = Workload {
    processes: 3,
    operations_per_process: 40,
    registers: 2,
};

struct Registers(Client);

fn user(register: u64) -> String {
    format!("user-{register}")
}

fn outcome<T>(result: Result<T, ClientError>) -> WriteOutcome {
    match result {
        Ok(_) => WriteOutcome::Written,
        Err(ClientError::Conflict { .. }) => WriteOutcome::Mismatch,
        // A timeout or a lost connection: the write may have been applied.
        Err(_) => WriteOutcome::Unknown,
    }
}

impl RegisterStore for Registers {
    fn read(&self, register: u64) -> Boxed<'_, Result<Option<(String, u64)>, String>> {
        Box::pin(async move {
            let record = self
                .0
                .get(&user(register), "register")
                .await
                .map_err(|error| error.to_string())?;
            Ok(record.map(|record| (String::from_utf8(record.value).unwrap(), record.revision)))
        })
    }

    // The client library numbers and deduplicates its own writes.
    fn write(&self, register: u64, value: String, _: u64, _: u64) -> Boxed<'_, WriteOutcome> {
        Box::pin(async move { outcome(self.0.put(&user(register), "register", value.into_bytes()).await) })
    }

    fn compare_and_set(
        &self,
        register: u64,
        expected_revision: Option<u64>,
        value: String,
        _: u64,
        _: u64,
    ) -> Boxed<'_, WriteOutcome> {
        Box::pin(async move {
            let user = user(register);
            outcome(
                self.0
                    .compare_and_set(&user, "register", expected_revision, value.into_bytes())
                    .await,
            )
        })
    }
}

/// The leader of `users-eea` as the nodes' admin endpoints report it, waiting up to 20 s.
async fn leader(admins: &BTreeMap<u64, std::net::SocketAddr>) -> u64 {
    // reqwest's TLS has no crypto provider of its own: ring, as everywhere.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (&id, admin) in admins {
            let Ok(response) = http.get(format!("http://{admin}/status")).send().await else {
                continue;
            };
            let Ok(status) = response.json::<serde_json::Value>().await else {
                continue;
            };
            let groups = status["groups"].as_array().cloned().unwrap_or_default();
            let leads = groups
                .iter()
                .any(|group| group["group"] == "users-eea" && group["leader"] == id);
            if leads {
                return id;
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "users-eea elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_with_the_leaders_process_sigkilled_is_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::cluster_files(
        dir.path(),
        "jepsen",
        TOPOLOGY,
        &[(1, "dublin-a"), (2, "dublin-b"), (3, "hamar")],
    );
    let mut processes: BTreeMap<u64, common::KillOnDrop> =
        files.iter().map(|node| (node.id, node.start())).collect();
    let admins: BTreeMap<u64, std::net::SocketAddr> =
        files.iter().map(|node| (node.id, node.admin)).collect();
    leader(&admins).await;

    let client = Client::builder()
        .endpoints(files.iter().map(|node| node.endpoint()))
        .tls(ClientTls::from_dir(dir.path().join("certs"), "tests").unwrap())
        .default_jurisdiction("EEA")
        .timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let registers = Arc::new(Registers(client));
    let history = History::new();
    let mut clients = tokio::task::JoinSet::new();
    for process in 0..WORKLOAD.processes {
        clients.spawn(jepsen::process(
            process,
            WORKLOAD,
            registers.clone(),
            history.clone(),
        ));
    }
    // SIGKILL the leader's process once the clients are well under way.
    let total = WORKLOAD.processes * WORKLOAD.operations_per_process;
    while history.lock().await.operations.len() < (total / 3) as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = leader(&admins).await;
    processes.get_mut(&killed).unwrap().sigkill();
    while let Some(joined) = clients.join_next().await {
        joined.unwrap();
    }
    // The survivors elected a leader inside the jurisdiction (every node here is inside).
    let survivors: BTreeMap<u64, std::net::SocketAddr> = admins
        .iter()
        .filter(|(id, _)| **id != killed)
        .map(|(&id, &admin)| (id, admin))
        .collect();
    assert_ne!(leader(&survivors).await, killed);

    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sigkill-history.jsonl");
    jepsen::verify(&*history.lock().await, &path, (total / 2) as usize);
    drop(processes);
}
