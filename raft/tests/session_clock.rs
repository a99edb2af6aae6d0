//! The session clock on a live group: its leader ticks it, a period apart, and the client sessions idle
//! for more ticks than `SESSION_IDLE_TICKS_MAX` are forgotten while an active one is kept; a node that
//! only just leads, in a term, proposes nothing.
//!
//! Waits poll with deadlines on tokio's clock (real sockets); no assertion is on a duration, only on what
//! the count of ticks may be at most given the time that passed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{ONE_CLUSTER_AT_A_TIME, cluster, group};
use placement::{NodeId, Step};
use raft::config::TokioConfig;
use raft::session_clock::SessionClock;
use storage::apply::SESSION_IDLE_TICKS_MAX;
use storage::{Command, RecordKey, Response, WriteId};

fn put(client_id: u64, sequence: u64) -> Command {
    Command::Put {
        write: WriteId { client_id, sequence },
        key: RecordKey::new("EEA", format!("user-{client_id}"), "profile"),
        value: format!("{client_id}/{sequence}").into_bytes(),
    }
}

/// A cluster whose `users-eea` group runs on nodes 1–3, with one write of client 70 applied.
async fn eea_group_written_by_client_70() -> (common::Cluster, placement::GroupId) {
    let cluster = cluster().await;
    cluster.create("users-eea", &NODES).await;
    cluster.write("users-eea", &NODES, put(70, 1)).await.unwrap();
    (cluster, group("users-eea"))
}

/// The group's sessions after client `after`, read on its leader through a linearizable barrier, asked
/// again while the barrier fails for the moment (a ReadIndex round not acknowledged by a quorum within the
/// leader's lease, on a loaded machine). Gives up after 20 s.
async fn sessions_on_leader(
    cluster: &common::Cluster,
    group: &placement::GroupId,
    after: Option<u64>,
) -> Vec<storage::record::CopiedSession> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster
            .leader(&group.0, &NODES, Duration::from_secs(5))
            .await
            .unwrap();
        match cluster.nodes[&leader].host.read_sessions(group, after, 16).await {
            Ok(batch) => return batch.sessions,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "the sessions could not be read for 20 s: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

const NODES: [u64; 3] = [1, 2, 3];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_ticks_the_session_clock_and_idle_sessions_are_forgotten() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    // Client 70 has written once and goes idle; client 80 keeps writing.
    let (cluster, eea) = eea_group_written_by_client_70().await;
    let nodes = NODES;
    let mut active_sequence = 1;
    cluster
        .write("users-eea", &nodes, put(80, active_sequence))
        .await
        .unwrap();

    let every = Duration::from_millis(20);
    let clocks: Vec<(u64, SessionClock<TokioConfig>)> =
        nodes.iter().map(|&id| (id, SessionClock::new(every))).collect();
    let started = tokio::time::Instant::now();
    let give_up = started + Duration::from_secs(60);
    let mut ticks = Vec::new();
    loop {
        for (id, clock) in &clocks {
            for (ticked_group, outcome) in clock.round(&cluster.node(*id).host).await {
                assert_eq!(ticked_group, eea);
                match outcome {
                    Ok(Response::SessionClock { clock, expired }) => ticks.push((*id, clock, expired)),
                    Ok(other) => panic!("a tick answered {other:?}"),
                    // A tick proposed as leadership moved: the next period tries again.
                    Err(error) => assert!(error.is_retryable(), "{error}"),
                }
            }
        }
        if ticks.len() % 10 == 9 {
            active_sequence += 1;
            cluster
                .write("users-eea", &nodes, put(80, active_sequence))
                .await
                .unwrap();
        }
        let sessions = sessions_on_leader(&cluster, &eea, None).await;
        let clients: Vec<u64> = sessions.iter().map(|session| session.client_id).collect();
        if !clients.contains(&70) {
            assert!(clients.contains(&80), "the active session is kept: {clients:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "session 70 still there after {} ticks: {ticks:?}",
            ticks.len()
        );
        tokio::time::sleep(every / 2).await;
    }
    // The clock went up by one a tick, and the idle session went only after the bound.
    let counts: Vec<u64> = ticks.iter().map(|(_, clock, _)| *clock).collect();
    assert_eq!(counts, (1..=ticks.len() as u64).collect::<Vec<_>>(), "{ticks:?}");
    let (_, expired_at, _) = ticks
        .iter()
        .find(|(_, _, expired)| *expired > 0)
        .expect("a tick expired the idle session");
    assert!(*expired_at > SESSION_IDLE_TICKS_MAX, "{ticks:?}");
    // Never two ticks of one leader closer than the period: at most one per period since the start.
    let elapsed = started.elapsed();
    assert!(
        (ticks.len() as u128) <= elapsed.as_millis() / every.as_millis() + 1,
        "{} ticks in {elapsed:?} at one per {every:?}",
        ticks.len()
    );
    // A retry of the active session's last write is still answered from its entry, not applied again.
    let first = sessions_on_leader(&cluster, &eea, Some(79)).await;
    assert_eq!(first[0].client_id, 80);
    assert_eq!(first[0].sequence, active_sequence);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_only_just_leads_proposes_no_tick() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let (cluster, eea) = eea_group_written_by_client_70().await;
    let nodes = NODES;
    let leader = cluster
        .leader("users-eea", &nodes, Duration::from_secs(5))
        .await
        .unwrap();
    // A period long enough that no tick can come due in this test: only the first sight of leadership
    // counts, and it proposes nothing.
    let clock = SessionClock::<TokioConfig>::new(Duration::from_secs(3600));
    assert!(clock.round(&cluster.nodes[&leader].host).await.is_empty());
    // Leadership moves; the new leader's first round is a first sight too.
    let to = nodes
        .iter()
        .map(|&id| NodeId(id))
        .find(|&id| id != leader)
        .unwrap();
    cluster.nodes[&leader]
        .host
        .execute(&Step::TransferLeader {
            group: eea.clone(),
            to,
        })
        .await
        .unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster
        .leader("users-eea", &[to.0], Duration::from_millis(200))
        .await
        != Some(to)
    {
        assert!(
            tokio::time::Instant::now() < give_up,
            "leadership did not move to {to}"
        );
    }
    let other = SessionClock::<TokioConfig>::new(Duration::from_secs(3600));
    assert!(other.round(&cluster.nodes[&to].host).await.is_empty());
    assert!(
        clock.round(&cluster.nodes[&leader].host).await.is_empty(),
        "no longer leads"
    );
    let sessions = sessions_on_leader(&cluster, &eea, None).await;
    assert_eq!(sessions.len(), 1, "nothing expired");
    cluster.stop().await;
}
