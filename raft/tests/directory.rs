//! Each jurisdiction's routing metadata lives in a group fenced to it: published once by the directory
//! group, learnt by nodes inside from their replica or a peer, refused to nodes outside.
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{ONE_CLUSTER_AT_A_TIME, ask, cluster, group};
use placement::{GroupId, NodeId};
use raft::client_protocol::{ClientOp, ClientRequest, ClientResponse, Consistency};
use raft::directory::{ShardMap, shard_map_key};
use raft::host::ReadConsistency;
use raft::routing::group_number;
use raft::transport::{PeerRequest, PeerResponse, RequestKind};

fn shard_map_request(jurisdiction: &str) -> ClientRequest {
    ClientRequest::ShardMap {
        jurisdiction: jurisdiction.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jurisdictions_shard_map_is_published_in_its_directory_group_and_kept_from_outside() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let (_, certificate) = cluster.client_certificate("directory-test").unwrap();
    let client = cluster.dialer(&certificate).unwrap();
    // The EEA's shards by name are users-eea and users-legacy: users-eea is its directory group. It is
    // created on the three EEA nodes; node 3 (Hamar) asks, whichever of them leads.
    cluster.create("users-eea", &[1, 2, 3]).await;
    cluster
        .leader("users-eea", &[1, 2, 3], Duration::from_secs(10))
        .await
        .expect("the directory group elects a leader");

    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    let (epoch, groups) = loop {
        match ask(&client, 3, shard_map_request("EEA")).await {
            ClientResponse::ShardMap {
                jurisdiction,
                epoch,
                groups,
            } => {
                assert_eq!(jurisdiction, "EEA");
                break (epoch, groups);
            }
            ClientResponse::Unavailable { .. } if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("node 3 could not learn the EEA map: {other:?}"),
        }
    };
    assert_eq!(epoch, 1);
    assert_eq!(groups, ["users-eea", "users-legacy"]);

    // The map is a record of the directory group, replicated to its members: every EEA replica holds it.
    let directory = group("users-eea");
    for id in [1, 2, 3] {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        let stored = loop {
            let read = cluster
                .node(id)
                .host
                .read(&directory, shard_map_key("EEA"), ReadConsistency::Stale)
                .await
                .unwrap();
            match read.record {
                Some(record) => break record,
                None if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                None => panic!("node {id} never received the published map"),
            }
        };
        let map = ShardMap::decode("EEA", &stored.value).unwrap();
        assert_eq!(
            map.groups(),
            [GroupId("users-eea".into()), GroupId("users-legacy".into())]
        );
        assert_eq!(map.epoch(), 1);
        // Damage is named, never routed by.
        let mut damaged = stored.value.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(ShardMap::decode("EEA", &damaged).is_err());
        assert!(
            ShardMap::decode("EU", &stored.value).is_err(),
            "sealed to its jurisdiction"
        );
    }

    // The US node holds none of the EEA's routing metadata: it sends clients elsewhere, for the map and
    // for calls alike, and never asks an EEA node for it.
    assert!(
        matches!(ask(&client, 4, shard_map_request("EEA")).await, ClientResponse::NotHosted { group } if group == "users-eea")
    );
    let call = ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: "alice".into(),
        op: ClientOp::Get {
            record: "email".into(),
            consistency: Consistency::Stale,
        },
    };
    assert!(matches!(
        ask(&client, 4, call).await,
        ClientResponse::NotHosted { .. }
    ));

    // Asked anyway, by the US node's own certificate: the egress fence refuses, and it is an incident.
    let blocked_before: u64 = [1, 2, 3]
        .iter()
        .map(|&id| cluster.node(id).host.incidents().egress_blocked)
        .sum();
    let read = PeerRequest {
        group: group_number(&directory),
        kind: RequestKind::DirectoryRead,
        carries_data: false,
        body: storage::codec::encode("EEA").unwrap(),
    };
    let reply = cluster
        .node(4)
        .host
        .ask_peer(NodeId(1), read.clone())
        .await
        .unwrap();
    let PeerResponse::Refused { reason, .. } = reply else {
        panic!("an EEA node gave the EEA shard map to a US node: {reply:?}")
    };
    assert!(reason.contains("ashburn") && reason.contains("EEA"), "{reason}");
    let blocked_after: u64 = [1, 2, 3]
        .iter()
        .map(|&id| cluster.node(id).host.incidents().egress_blocked)
        .sum();
    assert_eq!(blocked_after, blocked_before + 1);

    // A directory read never opens a replica: node 5 (US) has none of users-eea and says so.
    let reply = cluster.node(1).host.ask_peer(NodeId(5), read).await.unwrap();
    assert!(matches!(reply, PeerResponse::Refused { .. }), "{reply:?}");
    assert!(!cluster.node(5).host.hosted_groups().contains(&directory));

    // A jurisdiction no group is fenced to has no map anywhere: a residency refusal, not a retry.
    assert!(matches!(
        ask(&client, 1, shard_map_request("US")).await,
        ClientResponse::Residency { .. }
    ));
    // The directory's reserved user id is not a client's to use.
    let forged = ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: "\u{0}directory".into(),
        op: ClientOp::Get {
            record: "shard-map".into(),
            consistency: Consistency::Stale,
        },
    };
    assert!(matches!(
        ask(&client, 1, forged).await,
        ClientResponse::Invalid { .. }
    ));
    cluster.stop().await;
}

/// A call routed by an epoch no node has (a buggy or hostile client's) makes the node it reaches ask the
/// nodes inside for that map. Asked again and again, the node asks them at most once per
/// `UNMET_REFRESH_INTERVAL` and answers `Unavailable` from the map it knows meanwhile: the client's calls
/// never become a multiple of themselves in peer requests. Once the interval is over it asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_routed_by_an_epoch_no_node_has_cost_bounded_peer_requests() {
    use raft::service::UNMET_REFRESH_INTERVAL;
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    let (_, certificate) = cluster.client_certificate("directory-test").unwrap();
    let client = cluster.dialer(&certificate).unwrap();
    cluster.create("users-eea", &[1, 2, 3]).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match ask(&client, 3, shard_map_request("EEA")).await {
            ClientResponse::ShardMap { epoch: 1, .. } => break,
            ClientResponse::Unavailable { .. } if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("node 3 could not learn the EEA map: {other:?}"),
        }
    }
    let directory = cluster.node(3).service.directory();
    let far_future = || ClientRequest::RoutedCall {
        jurisdiction: "EEA".into(),
        user_id: "alice".into(),
        epoch: u64::MAX,
        op: ClientOp::Get {
            record: "email".into(),
            consistency: Consistency::Stale,
        },
    };
    // Nodes 1 and 2 are the other nodes inside the EEA: one refresh asks each of them once.
    const PEERS_INSIDE: u64 = 2;
    const CALLS: u64 = 40;
    let before = directory.peer_asks();
    let started = tokio::time::Instant::now();
    for _ in 0..CALLS {
        match ask(&client, 3, far_future()).await {
            ClientResponse::Unavailable { reason, .. } => {
                assert!(reason.contains("up to epoch 1"), "{reason}");
            }
            other => panic!("a call routed by an epoch no node has got {other:?}"),
        }
    }
    let elapsed = started.elapsed();
    let asks = directory.peer_asks() - before;
    // However slow the machine, the calls span at most this many intervals, each allowing one refresh.
    let intervals = (elapsed.as_millis() / UNMET_REFRESH_INTERVAL.as_millis()) as u64 + 1;
    assert!(
        asks >= PEERS_INSIDE,
        "the first call asks the peers inside: {asks}"
    );
    assert!(
        asks <= PEERS_INSIDE * intervals,
        "{CALLS} calls over {elapsed:?} made {asks} peer requests; at most {} allowed",
        PEERS_INSIDE * intervals
    );

    // After the interval the node asks again: the hold is a rate, not a ban.
    tokio::time::sleep(UNMET_REFRESH_INTERVAL).await;
    let before = directory.peer_asks();
    assert!(matches!(
        ask(&client, 3, far_future()).await,
        ClientResponse::Unavailable { .. }
    ));
    assert_eq!(directory.peer_asks() - before, PEERS_INSIDE);
    cluster.stop().await;
}

/// A node that must learn a map asks every node inside at once and takes the first answer that has it:
/// one peer that neither answers nor fails (a host stopped without closing its connection) does not hold
/// the answer up. Asked one after the other, the stalled peer, first in id order, held up the others until
/// its request timed out, and the client's call with it (the demo's read-back after a kill failed so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_is_learnt_from_the_peer_that_answers_while_another_stalls() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster().await;
    // The directory group on nodes 1 and 2 only: node 3, inside the EEA, holds no replica and must ask.
    cluster.create("users-eea", &[1, 2]).await;
    cluster
        .leader("users-eea", &[1, 2], Duration::from_secs(10))
        .await
        .expect("the directory group elects a leader");
    let host = &cluster.node(3).host;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    // Both replicas hold the first map before node 1 stalls.
    for id in [1, 2] {
        let directory = cluster.node(id).service.directory();
        loop {
            let own = cluster
                .node(id)
                .host
                .read(&group("users-eea"), shard_map_key("EEA"), ReadConsistency::Stale)
                .await;
            if matches!(&own, Ok(read) if read.record.is_some()) {
                break;
            }
            let _ = directory.shard_map(cluster.node(id).host.as_ref(), "EEA").await;
            assert!(
                tokio::time::Instant::now() < give_up,
                "n{id} holds no map: {own:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    cluster.node(3).faults.stall(NodeId(1));
    let directory = cluster.node(3).service.directory();
    assert!(directory.known("EEA").is_none());
    // Generous: a bound on liveness, not a timing (a sequential ask would wait on node 1 for ever).
    let learnt = tokio::time::timeout(Duration::from_secs(60), directory.shard_map(host.as_ref(), "EEA"))
        .await
        .expect("the map was not learnt while node 1 stalled")
        .expect("node 2 holds the map");
    assert_eq!(learnt.epoch(), 1);
    cluster.node(3).faults.heal_all();
    cluster.stop().await;
}
