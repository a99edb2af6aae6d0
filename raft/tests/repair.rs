//! Re-replication after a node is lost: the leader replaces it with a node inside the jurisdiction, and
//! when none is left inside it reports under-replication rather than place a replica outside.
//!
//! Waits poll with deadlines on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{EEA_SITES_WITH_A_SPARE, ONE_CLUSTER_AT_A_TIME, cluster_of, group, put};
use placement::{Membership, NodeId, Problem, Step};
use raft::config::TokioConfig;
use raft::host::ReadConsistency;
use raft::repair::{Repair, Repairer};
use storage::RecordKey;

/// Repair rounds on every live node until `done` holds for the leader's membership; returns it.
async fn repair_until(
    cluster: &common::Cluster,
    repairers: &[(u64, Repairer<TokioConfig>)],
    done: impl Fn(&Membership, &[Repair]) -> bool,
) -> (Membership, Vec<Repair>) {
    let eea = group("users-eea");
    let give_up = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut seen = Vec::new();
    loop {
        for (id, repairer) in repairers {
            if let Some(outcome) = repairer.round(&cluster.node(*id).host).await.remove(&eea) {
                seen.push(outcome);
            }
        }
        let ids: Vec<u64> = repairers.iter().map(|(id, _)| *id).collect();
        if let Some(leader) = cluster.leader("users-eea", &ids, Duration::from_secs(5)).await {
            let membership = cluster.nodes[&leader].host.status(&eea).unwrap().membership;
            assert!(
                !membership.contains(NodeId(5)),
                "a replica in the US: {membership:?}"
            );
            if done(&membership, &seen) {
                return (membership, seen);
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no repair; outcomes so far: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_voter_is_replaced_inside_the_jurisdiction_and_never_outside() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_of(EEA_SITES_WITH_A_SPARE).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster.write("users-eea", &[1, 2, 3], put(1)).await.unwrap();
    let down_after = Duration::from_secs(1);

    // Hamar's node is lost: Frankfurt, the only spare node inside the EEA, takes its place.
    cluster.node(3).host.shutdown().await;
    cluster.node(3).quic.close();
    let repairers: Vec<(u64, Repairer<TokioConfig>)> = [1, 2, 4]
        .iter()
        .map(|&id| (id, Repairer::new(down_after)))
        .collect();
    let (membership, seen) = repair_until(&cluster, &repairers, |membership, _| {
        membership.voters == [NodeId(1), NodeId(2), NodeId(4)].into() && membership.learners.is_empty()
    })
    .await;
    assert!(
        seen.iter().any(|outcome| matches!(
            outcome,
            Repair::Executed(Step::AddLearner { node: NodeId(4), .. })
        )),
        "{seen:?} ({membership:?})"
    );
    // The new voter holds what was written before it joined, and the group still takes writes.
    cluster.write("users-eea", &[1, 2, 4], put(2)).await.unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let key = RecordKey::new("EEA", "user-1", "record-1");
        let read = cluster
            .node(4)
            .host
            .read(&eea, key, ReadConsistency::Stale)
            .await
            .unwrap();
        if read.record.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "Frankfurt never received the group's data"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Frankfurt is lost too: no healthy node is left inside the EEA, and the US node is never used. The
    // group keeps its two live voters (a quorum) and reports itself under-replicated.
    cluster.node(4).host.shutdown().await;
    cluster.node(4).quic.close();
    let repairers: Vec<(u64, Repairer<TokioConfig>)> =
        [1, 2].iter().map(|&id| (id, Repairer::new(down_after))).collect();
    let (membership, seen) = repair_until(&cluster, &repairers, |_, seen| {
        seen.iter()
            .any(|outcome| matches!(outcome, Repair::UnderReplicated { .. }))
    })
    .await;
    let reported = seen.iter().find_map(|outcome| match outcome {
        Repair::UnderReplicated { down, problems } => Some((down.clone(), problems.clone())),
        _ => None,
    });
    let (down, problems) = reported.unwrap();
    assert_eq!(down, [NodeId(4)]);
    assert!(
        problems
            .iter()
            .any(|problem| matches!(problem, Problem::UnderReplicated { .. })),
        "{problems:?}"
    );
    assert!(!membership.contains(NodeId(5)));
    cluster.write("users-eea", &[1, 2], put(3)).await.unwrap();
    cluster.stop().await;
}
