//! Replica groups across real hosts: QUIC with mutual TLS over loopback UDP, real disks, the residency
//! fence at membership, egress and ingress.
//!
//! Waiting for a condition (a leader, a commit) polls with a deadline on tokio's clock: these tests drive
//! real sockets, so wall-clock waits are what they are made of; no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ONE_CLUSTER_AT_A_TIME, cluster, group, put};
use placement::{GroupId, Membership, NodeId, RefusalReason, SiteName, Step};
use raft::client_protocol::{Envelope, EnvelopeResponse};
use raft::config::TokioConfig;
use raft::host::{HostError, ReadConsistency};
use raft::prompt_election::{ElectionPrompter, PROMPT_EVERY};
use raft::routing::group_number;
use raft::transport::{PeerRequest, PeerResponse, RequestKind};

fn peer_reply(response: EnvelopeResponse) -> PeerResponse {
    match response {
        EnvelopeResponse::Peer(response) => response,
        other => panic!("a peer request got {other:?}"),
    }
}
use storage::{Command, RecordKey, WriteId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eea_group_never_gains_a_us_member_and_survives_losing_its_leader() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let eea = group("users-eea");
    cluster.open("users-eea", &[1, 2, 3], &[]).await;

    // The US node may not even open a replica of the group.
    let policy = cluster.file.policies[&eea].clone();
    let refused = cluster
        .node(4)
        .host
        .open_group(policy, BTreeSet::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, HostError::Residency(refusal) if refusal.reason == RefusalReason::IngressOutsideJurisdiction),
        "{refused}"
    );

    let members = Membership::new([NodeId(1), NodeId(2), NodeId(3)], []);
    let fenced = cluster
        .node(1)
        .host
        .fence(&eea)
        .unwrap()
        .admit_change(&Membership::default(), &members)
        .unwrap();
    cluster.node(1).host.bootstrap(fenced).await.unwrap();
    let mut acknowledged = Vec::new();
    for sequence in 1..=30 {
        cluster
            .write("users-eea", &[1, 2, 3], put(sequence))
            .await
            .unwrap();
        acknowledged.push(sequence);
    }
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");
    let leader_host = &cluster.nodes[&leader].host;

    // Whatever the admin API is asked, the US node never joins: the typed refusal names everything.
    for step in [
        Step::AddLearner {
            group: eea.clone(),
            node: NodeId(4),
        },
        Step::TransferLeader {
            group: eea.clone(),
            to: NodeId(5),
        },
    ] {
        let error = leader_host.execute(&step).await.unwrap_err();
        let HostError::Residency(refusal) = error else {
            panic!("expected a residency refusal for {step:?}, got {error}")
        };
        assert_eq!(refusal.group, eea);
        assert_eq!(
            refusal.country.map(|country| country.to_string()),
            Some("US".into())
        );
        assert_eq!(refusal.site, Some(SiteName("ashburn".into())));
        assert_eq!(refusal.jurisdiction, "EEA");
    }
    assert_eq!(leader_host.incidents().membership_refused, 2);
    let status = leader_host.status(&eea).unwrap();
    assert!(!status.membership.contains(NodeId(4)) && !status.membership.contains(NodeId(5)));

    // Reads: linearizable through the leader; stale from a follower, marked as such.
    let key = RecordKey::new("EEA", "user-1", "record-1");
    let read = leader_host
        .read(&eea, key.clone(), ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.record.unwrap().value, b"value-1");
    assert!(!read.stale);
    let follower = [1, 2, 3]
        .into_iter()
        .map(NodeId)
        .find(|&id| id != leader)
        .unwrap();
    let stale = cluster.nodes[&follower]
        .host
        .read(&eea, key.clone(), ReadConsistency::Stale)
        .await
        .unwrap();
    assert!(stale.stale);
    assert!(matches!(
        cluster.nodes[&follower].host.read(&eea, key, ReadConsistency::Linearizable).await,
        Err(HostError::NotLeader { leader: Some(hint), .. }) if hint == leader
    ));

    // Lose the leader: the survivors (all inside) elect a new one, and every acknowledged write is there.
    cluster.nodes[&leader].host.shutdown().await;
    cluster.nodes[&leader].quic.close();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| NodeId(id) != leader).collect();
    let successor = cluster
        .leader("users-eea", &survivors, Duration::from_secs(10))
        .await
        .expect("a new leader");
    assert_ne!(successor, leader);
    assert!(
        cluster
            .file
            .topology
            .is_inside(successor, &cluster.file.policies[&eea].jurisdiction)
    );
    for sequence in acknowledged {
        let key = RecordKey::new(
            "EEA",
            format!("user-{}", sequence % 5),
            format!("record-{sequence}"),
        );
        let read = cluster.nodes[&successor]
            .host
            .read(&eea, key, ReadConsistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(
            read.record.map(|record| record.value),
            Some(format!("value-{sequence}").into_bytes())
        );
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_outside_messages_are_refused_and_counted() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let eu = group("users-eu");
    cluster.create("users-eu", &[1, 2]).await;
    let leader = cluster.write("users-eu", &[1, 2], put(1)).await.unwrap();

    // An AppendEntries for the EU group, carrying an entry, as a leader at term 1 would send it.
    let forged = |leader_claimed: u64| {
        use openraft::vote::{RaftLeaderId, RaftVote};
        let leader_id = openraft::alias::LeaderIdOf::<TokioConfig>::new(1, leader_claimed);
        let vote = openraft::alias::VoteOf::<TokioConfig>::from_leader_id(leader_id, true);
        let entry = openraft::alias::EntryOf::<TokioConfig> {
            log_id: openraft::testing::log_id::<TokioConfig>(1, leader_claimed, 9),
            payload: openraft::EntryPayload::Normal(put(99)),
        };
        let rpc = openraft::raft::AppendEntriesRequest::<TokioConfig> {
            vote,
            prev_log_id: None,
            entries: vec![entry],
            leader_commit: None,
        };
        PeerRequest {
            group: group_number(&eu),
            kind: RequestKind::AppendEntries,
            carries_data: true,
            body: storage::codec::encode(&rpc).unwrap(),
        }
    };

    // Sent to the US node, which must never hold EU data: refused, and an incident there.
    let reply = peer_reply(
        cluster
            .node(1)
            .quic
            .request(NodeId(4), &Envelope::Peer(forged(1)))
            .await
            .unwrap(),
    );
    let PeerResponse::Refused { reason, .. } = reply else {
        panic!("the US node accepted EU data: {reply:?}")
    };
    assert!(reason.contains("ashburn") && reason.contains("EU"), "{reason}");
    assert_eq!(cluster.node(4).host.incidents().ingress_refused, 1);

    // Sent by the US node to an EU follower, pretending to be the leader: the certificate says otherwise.
    let follower = if leader == NodeId(1) { 2 } else { 1 };
    let reply = peer_reply(
        cluster
            .node(4)
            .quic
            .request(NodeId(follower), &Envelope::Peer(forged(leader.0)))
            .await
            .unwrap(),
    );
    assert!(
        matches!(&reply, PeerResponse::Refused { reason, .. } if reason.contains("forged sender")),
        "{reply:?}"
    );

    // Sent by the US node as itself: a leader outside the jurisdiction is refused, and counted.
    let before = cluster.node(follower).host.incidents().ingress_refused;
    let reply = peer_reply(
        cluster
            .node(4)
            .quic
            .request(NodeId(follower), &Envelope::Peer(forged(4)))
            .await
            .unwrap(),
    );
    assert!(
        matches!(&reply, PeerResponse::Refused { reason, .. } if reason.contains("may not lead")),
        "{reply:?}"
    );
    assert_eq!(
        cluster.node(follower).host.incidents().ingress_refused,
        before + 1
    );

    // None of it reached the log.
    let key = RecordKey::new("EEA", "user-4", "record-99");
    let read = cluster.nodes[&leader]
        .host
        .read(&eu, key, ReadConsistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.record, None);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_cut_off_from_its_inside_voters_elects_no_one_outside() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let legacy = group("users-legacy");
    // A group placed in the US before it was fenced to the EEA: one inside voter, two legacy US voters.
    cluster.open("users-legacy", &[1, 4, 5], &[4, 5]).await;
    let members = Membership::new([NodeId(1), NodeId(4), NodeId(5)], []);
    let fence = cluster.node(1).host.fence(&legacy).unwrap();
    let adopted = fence
        .admit_change(&members, &members)
        .expect("legacy members may stay in place");
    cluster.node(1).host.bootstrap(adopted).await.unwrap();
    let leader = cluster
        .leader("users-legacy", &[1, 4, 5], Duration::from_secs(10))
        .await
        .expect("a leader");
    assert_eq!(leader, NodeId(1), "only the inside voter may lead");
    cluster.write("users-legacy", &[1, 4, 5], put(1)).await.unwrap();

    // Cut the only inside voter away. Ashburn's two voters are a majority of three, but may not lead.
    cluster.partition(&[1], &[4, 5]);
    // Their leader silent for over three of its leases (600 ms), neither is ever prompted to campaign.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (prompted, ()) = tokio::join!(prompting(&cluster, &[4, 5], &stop), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(prompted, Vec::new(), "a node outside was prompted to campaign");
    // Even forced to campaign, a US node gets no vote: its peers refuse candidates outside the jurisdiction.
    cluster.node(4).host.campaign(&legacy).await.unwrap();
    let elected = cluster
        .leader("users-legacy", &[4, 5], Duration::from_secs(3))
        .await;
    assert_eq!(elected, None, "a leader was elected outside the jurisdiction");
    let write = cluster.node(4).host.write(&legacy, put(2)).await;
    assert!(
        write.is_err(),
        "the group must be unavailable to its US replicas: {write:?}"
    );
    assert!(
        cluster.node(5).host.incidents().ingress_refused > 0,
        "node 5 refused node 4's vote request"
    );

    // Healed, the inside voter leads again and the group is available.
    for node in cluster.nodes.values() {
        node.faults.heal_all();
    }
    let leader = cluster
        .write("users-legacy", &[1, 4, 5], put(3))
        .await
        .expect("available again after healing");
    assert_eq!(leader, NodeId(1));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preferred_leader_takes_over_once_caught_up_and_never_one_outside() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let eu = group("users-eu");
    cluster.create("users-eu", &[1, 2]).await;
    cluster.write("users-eu", &[1, 2], put(1)).await.unwrap();
    // The policy prefers Dublin B (n2). Whoever leads asks; only a leader that is not preferred moves.
    let mut moved = None;
    for _ in 0..100 {
        let leader = cluster
            .leader("users-eu", &[1, 2], Duration::from_secs(10))
            .await
            .expect("a leader");
        if leader == NodeId(2) {
            break;
        }
        moved = cluster.nodes[&leader]
            .host
            .honour_leader_preference(&eu)
            .await
            .unwrap()
            .or(moved);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = cluster
        .leader("users-eu", &[1, 2], Duration::from_secs(10))
        .await
        .expect("a leader");
    assert_eq!(leader, NodeId(2), "leadership reached the preferred site");
    assert!(moved.is_none() || moved == Some(NodeId(2)));
    // The preferred leader stays put: nobody is preferred over it.
    assert_eq!(
        cluster.node(2).host.honour_leader_preference(&eu).await.unwrap(),
        None
    );
    cluster.stop().await;
}

/// A drained node declines leadership offers: the leader preference of the groups it is a voter of does
/// not hand back what the drain moved, even to the node the policy prefers (an evacuation's leaving node
/// got leadership back within two seconds, and executed its own removal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_is_not_handed_leadership_back_by_preference() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let eu = group("users-eu");
    cluster.create("users-eu", &[1, 2]).await;
    cluster.write("users-eu", &[1, 2], put(1)).await.unwrap();
    assert!(cluster.node(1).host.takes_leadership(&eu, NodeId(2)).await);

    // The policy prefers n2. It drains: leadership moves to n1, and stays there.
    cluster.node(2).host.start_draining();
    assert!(!cluster.node(1).host.takes_leadership(&eu, NodeId(2)).await);
    assert!(cluster.node(2).host.takes_leadership(&eu, NodeId(1)).await);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = cluster
            .leader("users-eu", &[1, 2], Duration::from_secs(10))
            .await
            .expect("a leader");
        if leader == NodeId(1) {
            break;
        }
        let transfer = Step::TransferLeader {
            group: eu.clone(),
            to: NodeId(1),
        };
        if let Err(error) = cluster.nodes[&leader].host.execute(&transfer).await {
            eprintln!("transfer to n1: {error}; trying again");
        }
        assert!(tokio::time::Instant::now() < give_up, "leadership never left n2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            cluster.node(1).host.honour_leader_preference(&eu).await.unwrap(),
            None,
            "leadership offered to the drained node"
        );
    }
    assert_eq!(
        cluster.leader("users-eu", &[1, 2], Duration::from_secs(10)).await,
        Some(NodeId(1))
    );
    // A node that holds no replica of the group takes no leadership of it either.
    assert!(
        !cluster
            .node(1)
            .host
            .takes_leadership(&group("users-eea"), NodeId(2))
            .await
    );
    cluster.stop().await;
}

/// A follower that fell behind by more than one request of large values catches up: openraft sends up to
/// 300 entries per request, and 300 values of 200 KiB are some 60 MB, nearly four times what one peer
/// message may carry (16 MiB). Sent whole, the request is refused by the link every time and the
/// follower never catches up; the network cuts it into parts within the bound (`raft::append_split`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_large_values_catches_up() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster.write("users-eea", &[1, 2, 3], put(0)).await.unwrap();
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader");
    let behind = [1u64, 2, 3].into_iter().find(|&id| NodeId(id) != leader).unwrap();
    let others: Vec<u64> = [1u64, 2, 3].into_iter().filter(|&id| id != behind).collect();
    cluster.partition(&[behind], &others);

    const VALUES: u64 = 320;
    const VALUE_BYTES: usize = 200 << 10;
    let value = |sequence: u64| {
        let mut bytes = vec![(sequence % 251) as u8; VALUE_BYTES];
        bytes[..8].copy_from_slice(&sequence.to_be_bytes());
        bytes
    };
    let key = |sequence: u64| {
        RecordKey::new(
            "EEA",
            format!("large-{}", sequence % 7),
            format!("record-{sequence}"),
        )
    };
    for sequence in 1..=VALUES {
        let command = Command::Put {
            write: WriteId {
                client_id: 11,
                sequence,
            },
            key: key(sequence),
            value: value(sequence),
        };
        cluster.write("users-eea", &others, command).await.unwrap();
    }
    let last = cluster
        .node(others[0])
        .host
        .status(&group("users-eea"))
        .unwrap()
        .committed;
    for id in [1u64, 2, 3] {
        cluster.node(behind).faults.heal(NodeId(id));
        cluster.node(id).faults.heal(NodeId(behind));
    }

    // Bounded wait, not a timing assertion: a follower that never catches up fails here.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster.node(behind).host.status(&group("users-eea")).unwrap();
        if status.last_applied >= last {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "node {behind} stuck at {:?}, the group committed {last:?}",
            status.last_applied
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for sequence in [1, VALUES / 2, VALUES] {
        let record = cluster
            .node(behind)
            .host
            .read_local_copy(&group("users-eea"), key(sequence))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("node {behind} lacks record {sequence}"));
        assert_eq!(
            record.value,
            value(sequence),
            "record {sequence} on node {behind}"
        );
    }
    cluster.stop().await;
}

/// After its leader dies, a group with a survivor whose log is behind (it was cut off while the others
/// went on) elects the up-to-date survivor in the very next term. The lagging one, which can't win, must
/// not have raised its term meanwhile (nor in the election): it would vote for itself in the term the
/// other needs and refuse it, and the group waits out another election timeout for a later term. With
/// openraft's default (no pre-vote), the cut-off follower raised its term at each of its election
/// timeouts, so the survivor could win only terms later. Asserts terms, not durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_survivor_does_not_delay_the_next_leader_by_a_term() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    for sequence in 1..=5 {
        cluster
            .write("users-eea", &[1, 2, 3], put(sequence))
            .await
            .unwrap();
    }
    let leader = cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("a leader")
        .0;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (lagging, current) = (followers[0], followers[1]);

    // The lagging follower is cut off for ten of its longest election timeouts (600 ms) while the group
    // commits more.
    cluster.partition(&[lagging], &[leader, current]);
    for sequence in 6..=10 {
        cluster
            .write("users-eea", &[leader], put(sequence))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let term = cluster.node(current).host.status(&eea).unwrap().term;
    assert_eq!(
        cluster.node(leader).host.status(&eea).unwrap().term,
        term,
        "the leader kept its term while a follower was cut off"
    );
    let cut_off_term = cluster.node(lagging).host.status(&eea).unwrap().term;
    assert_eq!(
        cut_off_term, term,
        "a follower cut off from every peer raised its term: it campaigned without asking first"
    );

    // The leader dies; the two survivors reach each other again.
    cluster.stop_node(NodeId(leader)).await;
    cluster.node(lagging).faults.heal_all();
    cluster.node(current).faults.heal(NodeId(lagging));
    let next = cluster
        .leader("users-eea", &[lagging, current], Duration::from_secs(20))
        .await
        .expect("a new leader");
    assert_eq!(
        next,
        NodeId(current),
        "only the survivor with every entry can win"
    );
    assert_eq!(
        cluster.node(current).host.status(&eea).unwrap().term,
        term + 1,
        "elected in the first term after its dead leader's"
    );
    cluster.write("users-eea", &[current], put(11)).await.unwrap();
    cluster.stop().await;
}

/// Runs election prompts on `nodes` every [`PROMPT_EVERY`] until `stop` is set; what each prompted.
async fn prompting(
    cluster: &common::Cluster,
    nodes: &[u64],
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(u64, GroupId, NodeId)> {
    let prompters: Vec<_> = nodes.iter().map(|_| ElectionPrompter::default()).collect();
    let mut prompted = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (prompter, &id) in prompters.iter().zip(nodes) {
            for (group, silent) in prompter.round(&cluster.node(id).host).await {
                prompted.push((id, group, silent));
            }
        }
        tokio::time::sleep(PROMPT_EVERY).await;
    }
    prompted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_prompted_to_campaign_once_its_dead_leaders_lease_has_run_out() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    // openraft's own election timer off: only a prompt can elect the next leader.
    let config = openraft::Config {
        enable_elect: false,
        ..(*common::raft_config()).clone()
    };
    let cluster = common::cluster_with(common::TOPOLOGY, std::sync::Arc::new(config)).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster.node(1).host.campaign(&eea).await.unwrap();
    cluster.write("users-eea", &[1], put(1)).await.unwrap();
    let term = cluster.node(1).host.status(&eea).unwrap().term;

    cluster.stop_node(NodeId(1)).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (prompted, next) = tokio::join!(prompting(&cluster, &[2, 3], &stop), async {
        let next = cluster
            .leader("users-eea", &[2, 3], Duration::from_secs(20))
            .await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        next
    });
    let next = next.expect("no leader after the leader died: no survivor was prompted");
    assert!(
        prompted.contains(&(next.0, eea.clone(), NodeId(1))),
        "the new leader {next} was not prompted about silent n1: {prompted:?}"
    );
    assert!(cluster.node(next.0).host.status(&eea).unwrap().term > term);
    cluster.write("users-eea", &[2, 3], put(2)).await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_is_heard_is_never_challenged_by_a_prompt() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    // The premise is a leader that *is* heard: heartbeats every 50 ms against a 3-s lease, so that a
    // debug build on two loaded cores cannot miss a whole lease of them (with the 600-ms lease of the
    // other tests it did once in CI: a gap of 650 ms is a real silence, and a prompt then is right). A
    // prompt that ignored the silence, or measured it from anything but the last heartbeat, still fires
    // within these 3 s of rounds every 20 ms, and fails the test.
    let config = openraft::Config {
        election_timeout_min: 2_500,
        election_timeout_max: 3_000,
        ..(*common::raft_config()).clone()
    };
    let cluster = common::cluster_with(common::TOPOLOGY, std::sync::Arc::new(config)).await;
    let eea = group("users-eea");
    cluster.create("users-eea", &[1, 2, 3]).await;
    let leader = cluster.write("users-eea", &[1, 2, 3], put(1)).await.unwrap();
    let term = cluster.node(leader.0).host.status(&eea).unwrap().term;

    // A whole lease (3 s) of prompting on every node, with writes going on.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (prompted, ()) = tokio::join!(prompting(&cluster, &[1, 2, 3], &stop), async {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut sequence = 2;
        while tokio::time::Instant::now() < give_up {
            cluster
                .write("users-eea", &[leader.0], put(sequence))
                .await
                .unwrap();
            sequence += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(prompted, Vec::new(), "a prompt while the leader was heard");
    for id in [1, 2, 3] {
        let status = cluster.node(id).host.status(&eea).unwrap();
        assert_eq!((status.leader, status.term), (Some(leader), term), "n{id}");
    }
    cluster.stop().await;
}
