//! Failover time on loopback (issue 17, part 4): three real `domicile node` processes (Dublin A, Dublin
//! B, Hamar; one EEA group) with the multi-host suite's timing (base 100 ms / 0.5–1 s, the group stretched
//! to the estimate's 80 ms round trip between Ireland and Norway). Each of FAILOVER_ROUNDS rounds (5; at
//! most 50) SIGKILLs the leader and measures, from the kill, the time until a survivor reports another
//! leader and the time until the client's next put is acknowledged (each call's deadline
//! FAILOVER_CALL_TIMEOUT_MS, 2000, retries included; calls repeated until one succeeds, for at most 60 s),
//! then restarts the node and waits until all three agree on the leader. DOMICILE_BIN runs another build
//! of the node (a before/after comparison); FAILOVER_LOG_DIR appends each node's log to node-ID.log there;
//! FAILOVER_PROMPT_ELECTIONS=0 runs the nodes without election prompts. It prints every round, then the
//! median and the largest of each: a benchmark, nothing is asserted on a duration.
//!
//! ```sh
//! bash benches/failover.sh                  # cargo bench --bench failover, bounded by timeout(1)
//! FAILOVER_ROUNDS=9 DOMICILE_BIN=/path/to/old/domicile bash benches/failover.sh
//! ```
//!
//! Loopback only; every node is stopped by pid when the run ends (its guards). Wall-clock time is what a
//! benchmark measures, so this file allows `Instant::now` and `sleep`.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::{Client, ClientTls};
use common::failover::{RAFT, TOPOLOGY, leader, next_leader};

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(failover_time_after_the_leader_is_killed());
}

/// The median and the largest of `times`, in milliseconds.
fn median_max(times: &mut [Duration]) -> (u128, u128) {
    times.sort_unstable();
    (
        times[times.len() / 2].as_millis(),
        times[times.len() - 1].as_millis(),
    )
}

async fn failover_time_after_the_leader_is_killed() {
    let env_u64 = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let rounds = env_u64("FAILOVER_ROUNDS", 5).clamp(1, 50);
    let call_timeout = Duration::from_millis(env_u64("FAILOVER_CALL_TIMEOUT_MS", 2000).clamp(100, 60_000));
    let binary = std::env::var_os("DOMICILE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_domicile").into());
    // FAILOVER_LOG_DIR: each node's log appended to node-ID.log there (RUST_LOG as the caller sets it).
    let log_dir = std::env::var_os("FAILOVER_LOG_DIR").map(std::path::PathBuf::from);
    let start = |node: &common::NodeFiles| {
        let stderr = match &log_dir {
            Some(dir) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(format!("node-{}.log", node.id)))
                .unwrap()
                .into(),
            None => std::process::Stdio::null(),
        };
        common::KillOnDrop(
            std::process::Command::new(&binary)
                .args(["node", "--config", node.config.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let files = common::cluster_files(
        dir.path(),
        "failover-time",
        TOPOLOGY,
        &[(1, "dublin-a"), (2, "dublin-b"), (3, "hamar")],
    );
    // FAILOVER_PROMPT_ELECTIONS=0: the nodes without election prompts (`raft::prompt_election`), for a
    // before/after in one sitting.
    let tuning = match std::env::var("FAILOVER_PROMPT_ELECTIONS").as_deref() {
        Ok("0") => format!("{RAFT}prompt_elections = false\n"),
        _ => RAFT.to_string(),
    };
    for node in &files {
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str(&tuning);
        std::fs::write(&node.config, config).unwrap();
    }
    let mut processes: BTreeMap<u64, common::KillOnDrop> =
        files.iter().map(|node| (node.id, start(node))).collect();
    let admins: BTreeMap<u64, SocketAddr> = files.iter().map(|node| (node.id, node.admin)).collect();
    let client = Client::builder()
        .endpoints(files.iter().map(|node| node.endpoint()))
        .tls(ClientTls::from_dir(dir.path().join("certs"), "tests").unwrap())
        .default_jurisdiction("EEA")
        .timeout(call_timeout)
        .build()
        .await
        .unwrap();
    println!(
        "failover on loopback: {} ({}), {rounds} rounds, calls' deadline {} ms",
        binary.display(),
        tuning.trim().replace('\n', " "),
        call_timeout.as_millis()
    );
    let (mut to_leader, mut to_write) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let dead = leader(&admins).await;
        // The client is talking to the leader: a put acknowledged (retried while the group settles).
        let settle = Instant::now() + Duration::from_secs(60);
        while client.put("user-1", "profile", b"before".to_vec()).await.is_err() {
            assert!(
                Instant::now() < settle,
                "no put acknowledged before round {round}"
            );
        }
        processes.get_mut(&dead).unwrap().sigkill();
        let killed = Instant::now();
        eprintln!(
            "round {round}: n{dead} SIGKILLed at {:?}",
            std::time::SystemTime::now()
        );
        let survivors: BTreeMap<u64, SocketAddr> = admins
            .iter()
            .filter(|(id, _)| **id != dead)
            .map(|(&id, &admin)| (id, admin))
            .collect();
        let watch = tokio::spawn(async move { next_leader(&survivors, dead, Duration::from_secs(60)).await });
        let written = loop {
            if client.put("user-1", "profile", b"after".to_vec()).await.is_ok() {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "round {round}: no put acknowledged within 60 s of n{dead}'s kill"
            );
        };
        let (next, elected) = watch
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: no new leader within 60 s of n{dead}'s kill"));
        let elected = elected.duration_since(killed);
        println!(
            "round {round}: n{dead} SIGKILLed; n{next} reported leader after {} ms; next put acknowledged after {} ms",
            elected.as_millis(),
            written.as_millis()
        );
        to_leader.push(elected);
        to_write.push(written);
        let node = files.iter().find(|node| node.id == dead).unwrap();
        processes.insert(dead, start(node));
        // All three agree on the leader before the next round (the restarted node has heard from it).
        let agreed = Instant::now() + Duration::from_secs(60);
        loop {
            let mut leaders = std::collections::BTreeSet::new();
            for &admin in admins.values() {
                let one: BTreeMap<u64, SocketAddr> = BTreeMap::from([(0, admin)]);
                leaders.insert(
                    next_leader(&one, 0, Duration::from_millis(500))
                        .await
                        .map(|(id, _)| id),
                );
            }
            if leaders.len() == 1 && !leaders.contains(&None) {
                break;
            }
            assert!(
                Instant::now() < agreed,
                "round {round}: the nodes do not agree on a leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (leader_median, leader_max) = median_max(&mut to_leader);
    let (write_median, write_max) = median_max(&mut to_write);
    println!(
        "failover over {rounds} rounds: new leader reported after median {leader_median} ms, max {leader_max} ms; next put acknowledged after median {write_median} ms, max {write_max} ms"
    );
    drop(processes);
}
