//! Purging a removed replica (the planner's `PurgeReplica` step): a node deletes its copy of a group only
//! once the group's leader shows a committed membership without it; a purged replica is neither reopened
//! nor bootstrapped again at start-up, and a leader can add the node back.
//!
//! Waits poll with deadlines on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Cluster, EEA_SITES_WITH_A_SPARE, ONE_CLUSTER_AT_A_TIME, cluster_of, group, put};
use placement::{GroupId, NodeId, Step};
use raft::bootstrap::{initial_placement, open_initial_groups};
use raft::host::{HostError, ReadConsistency};
use raft::purge::{Purged, purge_removed_replicas, purge_replica};
use raft::routing::group_number;
use raft::transport::{PeerRequest, PeerResponse, RequestKind};
use storage::RecordKey;

/// Executes `step` on the group's leader among `among`, retrying while leadership settles.
async fn execute(cluster: &Cluster, among: &[u64], step: Step) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster.leader("users-eea", among, Duration::from_secs(5)).await;
        let outcome = match leader {
            Some(leader) => cluster.nodes[&leader].host.execute(&step).await,
            None => Err(HostError::NotLeader {
                group: step.group().clone(),
                leader: None,
            }),
        };
        match outcome {
            Ok(()) => return,
            Err(error) if tokio::time::Instant::now() < give_up => {
                eprintln!("{step:?}: {error}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{step:?}: {error}"),
        }
    }
}

/// Replaces `removed` by `spare` in the group: the spare joins as a learner, catches up and is promoted,
/// then `removed` leaves. Leadership is first moved off `removed`.
async fn replace(cluster: &Cluster, voters: &[u64], removed: u64, spare: u64) {
    let eea = group("users-eea");
    let others: Vec<u64> = voters.iter().copied().filter(|&id| id != removed).collect();
    if cluster.leader("users-eea", voters, Duration::from_secs(10)).await == Some(NodeId(removed)) {
        execute(
            cluster,
            voters,
            Step::TransferLeader {
                group: eea.clone(),
                to: NodeId(others[0]),
            },
        )
        .await;
    }
    let node = NodeId(spare);
    execute(
        cluster,
        &others,
        Step::AddLearner {
            group: eea.clone(),
            node,
        },
    )
    .await;
    let leader = cluster
        .leader("users-eea", &others, Duration::from_secs(10))
        .await
        .unwrap();
    cluster.nodes[&leader]
        .host
        .wait_caught_up(&eea, node, Duration::from_secs(20))
        .await
        .unwrap();
    execute(
        cluster,
        &others,
        Step::PromoteVoter {
            group: eea.clone(),
            node,
        },
    )
    .await;
    execute(
        cluster,
        &others,
        Step::RemoveMember {
            group: eea,
            node: NodeId(removed),
        },
    )
    .await;
}

/// Waits until `node`'s replica holds the record `put(sequence)` wrote.
async fn wait_for_record(cluster: &Cluster, node: u64, sequence: u64) {
    let eea = group("users-eea");
    let key = RecordKey::new(
        "EEA",
        format!("user-{}", sequence % 5),
        format!("record-{sequence}"),
    );
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = cluster
            .node(node)
            .host
            .read(&eea, key.clone(), ReadConsistency::Stale)
            .await;
        if matches!(&read, Ok(read) if read.record.is_some()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "n{node} never got record {sequence}: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_machine_dir(cluster: &Cluster, node: u64, group: &GroupId) -> std::path::PathBuf {
    cluster
        .dir()
        .join(format!("n{node}"))
        .join("groups")
        .join(group_number(group).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_purged_only_after_a_committed_membership_leaves_it_out() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_of(EEA_SITES_WITH_A_SPARE).await;
    let eea = group("users-eea");
    // Created as at start-up, so the node purged below is the one that bootstraps the group at start.
    let initial = initial_placement(&cluster.file).unwrap();
    let voters: Vec<u64> = initial[0].membership.voters.iter().map(|node| node.0).collect();
    let spare = (1..=4).find(|id| !voters.contains(id)).unwrap();
    let removed = voters[0];
    cluster.create("users-eea", &voters).await;
    for sequence in 1..=20 {
        cluster.write("users-eea", &voters, put(sequence)).await.unwrap();
    }
    wait_for_record(&cluster, removed, 20).await;

    // Still members: the leader's committed membership lists every voter (followers ask it; the leader
    // knows), so nothing is deleted anywhere.
    let leader = cluster
        .leader("users-eea", &voters, Duration::from_secs(10))
        .await
        .unwrap();
    for &id in &voters {
        let refused = purge_replica(cluster.node(id).host.as_ref(), &eea).await;
        assert!(
            matches!(&refused, Err(HostError::StillMember { node, leader: answered, .. })
                if *node == NodeId(id) && *answered == leader),
            "n{id}: {refused:?}"
        );
        assert!(!cluster.node(id).host.is_retired(&eea));
        wait_for_record(&cluster, id, 1).await;
    }
    let host = &cluster.node(removed).host;

    replace(&cluster, &voters, removed, spare).await;
    let remaining: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|&id| id != removed)
        .chain([spare])
        .collect();
    let purged = purge_replica(host.as_ref(), &eea).await.unwrap();
    assert!(matches!(purged, Purged::Deleted { .. }), "{purged:?}");
    assert!(host.is_retired(&eea));
    assert!(!host.hosted_groups().contains(&eea));
    let dir = state_machine_dir(&cluster, removed, &eea);
    assert!(!dir.exists(), "{} survived the purge", dir.display());
    assert_eq!(
        purge_replica(host.as_ref(), &eea).await.unwrap(),
        Purged::AlreadyPurged
    );

    // What a restart runs: the purged group is not reopened, and so not bootstrapped a second time.
    open_initial_groups(host.as_ref(), &cluster.file).await.unwrap();
    assert!(!host.hosted_groups().contains(&eea));
    assert!(!dir.exists());

    // Asked for a vote — as a node removed from the group while away, still holding its old membership,
    // asks — a purged replica is not opened again: an empty one would grant any candidate its vote, and
    // with it a quorum of a membership the group left behind. Only a leader's replication reopens it.
    // A candidate of a far later term whose log runs ahead: what an empty replica grants.
    let candidate = openraft::raft::VoteRequest::<raft::config::TokioConfig>::new(
        openraft::alias::VoteOf::<raft::config::TokioConfig>::new(99, remaining[0]),
        Some(openraft::alias::LogIdOf::<raft::config::TokioConfig>::new_term_index(98, 1_000)),
    );
    for kind in [RequestKind::Vote, RequestKind::PreVote] {
        let asked = PeerRequest {
            group: group_number(&eea),
            kind,
            carries_data: false,
            body: storage::codec::encode(&candidate).unwrap(),
        };
        let reply = cluster
            .node(remaining[0])
            .host
            .ask_peer(NodeId(removed), asked)
            .await
            .unwrap();
        assert!(
            !host.hosted_groups().contains(&eea),
            "a {} reopened the purged replica and answered {reply:?}",
            kind.name()
        );
        assert!(
            matches!(&reply, PeerResponse::Refused { reason, .. } if reason.contains("opens none")),
            "{reply:?}"
        );
        assert!(host.is_retired(&eea));
    }

    // The group goes on without it, and a leader can add it back: an empty replica, filled again.
    cluster.write("users-eea", &remaining, put(21)).await.unwrap();
    execute(
        &cluster,
        &remaining,
        Step::AddLearner {
            group: eea.clone(),
            node: NodeId(removed),
        },
    )
    .await;
    wait_for_record(&cluster, removed, 21).await;
    wait_for_record(&cluster, removed, 1).await;
    assert!(!host.is_retired(&eea));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_while_it_was_removed_purges_itself_once_it_can_ask() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_of(EEA_SITES_WITH_A_SPARE).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster.write("users-eea", &[1, 2, 3], put(1)).await.unwrap();
    wait_for_record(&cluster, 3, 1).await;
    if cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        == Some(NodeId(3))
    {
        execute(
            &cluster,
            &[1, 2, 3],
            Step::TransferLeader {
                group: eea.clone(),
                to: NodeId(1),
            },
        )
        .await;
    }

    // Node 3 is cut off; the others replace it with node 4. It never hears of its removal.
    cluster.partition(&[3], &[1, 2, 4]);
    let silence = Duration::from_secs(2);
    // Unreachable leaders prove nothing: the replica is kept. (Waited for on the replica's own stamp: a
    // heartbeat already on the wire when the link was cut still lands, later under load.)
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.node(3).host.leader_silence(&eea).unwrap() < silence {
        assert!(
            tokio::time::Instant::now() < give_up,
            "node 3 still hears a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outcomes = purge_removed_replicas(cluster.node(3).host.as_ref(), silence).await;
    assert!(
        matches!(outcomes.get(&eea), Some(Err(HostError::NoRemovalProof { .. }))),
        "{outcomes:?}"
    );
    assert!(cluster.node(3).host.hosted_groups().contains(&eea));
    replace(&cluster, &[1, 2], 3, 4).await;
    let view = cluster.node(3).host.status(&eea).unwrap().membership;
    assert!(view.contains(NodeId(3)), "node 3 learnt of its removal: {view:?}");

    // Reconnected, the silent replica asks, learns it was removed and purges itself.
    for id in [1, 2, 4] {
        cluster.node(3).faults.heal(NodeId(id));
        cluster.node(id).faults.heal(NodeId(3));
    }
    let outcomes = purge_removed_replicas(cluster.node(3).host.as_ref(), silence).await;
    assert!(
        matches!(outcomes.get(&eea), Some(Ok(Purged::Deleted { .. }))),
        "{outcomes:?}"
    );
    assert!(cluster.node(3).host.is_retired(&eea));
    assert!(!state_machine_dir(&cluster, 3, &eea).exists());
    // Members that keep hearing from their leader are not even asked about.
    for id in [1, 2, 4] {
        let outcomes = purge_removed_replicas(cluster.node(id).host.as_ref(), silence).await;
        assert!(outcomes.is_empty(), "n{id}: {outcomes:?}");
    }
    cluster.write("users-eea", &[1, 2, 4], put(2)).await.unwrap();
    cluster.stop().await;
}

/// A leader asked to remove itself (an evacuation's removal reaching a leaving node that was handed
/// leadership back) commits its removal and steps down, but still names itself leader: nothing tells a
/// replica outside the membership otherwise. It must still ask, and be purged once another leader answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removed_itself_is_purged_once_another_node_leads() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_of(EEA_SITES_WITH_A_SPARE).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster.write("users-eea", &[1, 2, 3], put(1)).await.unwrap();
    let removed = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .unwrap();
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&id| id != removed.0).collect();
    execute(
        &cluster,
        &[1, 2, 3],
        Step::AddLearner {
            group: eea.clone(),
            node: NodeId(4),
        },
    )
    .await;
    wait_for_record(&cluster, 4, 1).await;
    execute(
        &cluster,
        &[1, 2, 3],
        Step::PromoteVoter {
            group: eea.clone(),
            node: NodeId(4),
        },
    )
    .await;

    // The leader removes itself: no transfer first.
    let host = cluster.node(removed.0).host.clone();
    host.execute(&Step::RemoveMember {
        group: eea.clone(),
        node: removed,
    })
    .await
    .unwrap();
    let successor = cluster
        .leader("users-eea", &remaining, Duration::from_secs(20))
        .await
        .expect("the remaining voters elect a leader");
    assert_ne!(successor, removed);
    let view = host.status(&eea).unwrap();
    assert!(!view.membership.contains(removed), "{view:?}");

    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let silence = Duration::from_millis(500);
    loop {
        let outcomes = purge_removed_replicas(host.as_ref(), silence).await;
        match outcomes.get(&eea) {
            Some(Ok(Purged::Deleted {
                leader, membership, ..
            })) => {
                assert_ne!(*leader, removed, "only another node's word is proof");
                assert!(!membership.contains(removed), "{membership:?}");
                break;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < give_up,
                    "the removed leader kept its replica: {other:?} (its view: {:?})",
                    host.status(&eea)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(host.is_retired(&eea));
    assert!(!state_machine_dir(&cluster, removed.0, &eea).exists());
    cluster.write("users-eea", &remaining, put(2)).await.unwrap();
    cluster.stop().await;
}
