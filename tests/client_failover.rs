//! The client library when the leader's process dies under a call (issue 17, part 4's finding): three
//! `domicile node` processes (Dublin A, Dublin B, Hamar; one EEA group) on loopback, and a call sent to
//! the leader that never answers it — the leader is SIGSTOPped before the call, so the request is in
//! flight, then SIGKILLed — while the two survivors can't reach each other for a while (an operator's
//! isolation, as a drill makes: Raft traffic between nodes dropped, clients still served), so the group
//! elects its next leader only then. The call must be answered by that leader within its deadline: the
//! attempt on the dead node is abandoned (its connection seen lost, at worst its per-attempt bound), the
//! dead node is not asked again while it does not answer a probe, and the call keeps asking the live
//! nodes, with backoff, until its deadline — as etcd's and TiKV's clients do.
//!
//! Before this was so, the call waited a quarter of its deadline on the dead node, went back to it two
//! seconds later whatever it had answered, and gave up after 16 attempts (about 2.5 s of backoff): here
//! it failed with the survivors still isolated, long before its deadline.
//!
//! No assertion is on a duration: the call either succeeds inside its deadline or fails. The isolation
//! (16 s) outlasts what the old client could spend (at most half its deadline plus 2.5 s: 14.5 s of 24),
//! and leaves the election well inside the deadline. Waits poll with deadlines on the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use client::{Client, ClientTls};
use common::failover::{RAFT, TOPOLOGY, leader};

/// The survivors' isolation from each other: longer than the old client could keep a call going.
const ISOLATION_MS: u64 = 16_000;

/// The call's deadline, retries included.
const DEADLINE: Duration = Duration::from_secs(24);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_to_a_leader_that_dies_is_answered_by_the_next_leader_within_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let files = common::cluster_files(
        dir.path(),
        "client-failover",
        TOPOLOGY,
        &[(1, "dublin-a"), (2, "dublin-b"), (3, "hamar")],
    );
    for node in &files {
        let mut config = std::fs::read_to_string(&node.config).unwrap();
        config.push_str(RAFT);
        std::fs::write(&node.config, config).unwrap();
    }
    let mut processes: BTreeMap<u64, common::KillOnDrop> =
        files.iter().map(|node| (node.id, node.start())).collect();
    let admins: BTreeMap<u64, SocketAddr> = files.iter().map(|node| (node.id, node.admin)).collect();
    let first = leader(&admins).await;

    let client = Client::builder()
        .endpoints(files.iter().map(|node| node.endpoint()))
        .tls(ClientTls::from_dir(dir.path().join("certs"), "tests").unwrap())
        .default_jurisdiction("EEA")
        .timeout(DEADLINE)
        .build()
        .await
        .unwrap();
    // The client learns who leads: a write served is served by the leader, which it then asks first.
    let mut revision = 0;
    for _ in 0..3 {
        revision = client.put("user-1", "profile", b"before".to_vec()).await.unwrap();
    }
    assert_eq!(leader(&admins).await, first, "the leader changed meanwhile");

    // The leader stops answering; a call goes to it; one survivor is cut off from the other (so no one
    // is elected until the isolation ends); the leader's process is killed under the call.
    let pid = processes[&first].0.id() as libc::pid_t;
    // SAFETY: kill(2) of a child this test spawned and has not reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let call = tokio::spawn(async move {
        let result = client.put("user-1", "profile", b"after".to_vec()).await;
        (client, result)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let isolated = files.iter().find(|node| node.id != first).unwrap();
    common::isolate_from_all(dir.path(), isolated, ISOLATION_MS).await;
    processes.get_mut(&first).unwrap().sigkill();
    let (client, result) = call.await.unwrap();
    eprintln!(
        "client_failover: n{first} SIGKILLed, n{} isolated for {ISOLATION_MS} ms; the call returned after {:?}: {result:?}",
        isolated.id,
        started.elapsed()
    );
    let written = result.unwrap_or_else(|error| {
        panic!("the call in flight to the dead leader n{first} did not reach the next one: {error}")
    });
    assert!(written > revision, "revision {written} after {revision}");

    // Answered by the group's new leader, and there to read.
    let survivors: BTreeMap<u64, SocketAddr> = admins
        .iter()
        .filter(|(id, _)| **id != first)
        .map(|(&id, &admin)| (id, admin))
        .collect();
    assert_ne!(leader(&survivors).await, first);
    let stored = client.get("user-1", "profile").await.unwrap().unwrap();
    assert_eq!((stored.value, stored.revision), (b"after".to_vec(), written));
    drop(processes);
}
