//! The audit trail on real nodes, over real QUIC: what a node refuses — the Ashburn node's certificate
//! making a client call, a client asking for a jurisdiction no group is fenced to, the EEA group's leader
//! asked to add the Ashburn node — is in that node's signed trail by the time the refusal is answered,
//! beside the changes the fence admitted and the leadership each node saw; and every node's trail verifies
//! intact with the cluster CA's certificate alone.
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use audit::event::{ClientRefusalKind, Enforcement, Event};
use audit::{ClusterCa, VerifyOptions};
use common::{EEA_SITES_AND_ASHBURN, ONE_CLUSTER_AT_A_TIME, ask, audited_cluster_of, events, group};
use placement::{NodeId, Step};
use raft::client_protocol::{ClientOp, ClientRequest, ClientResponse, Consistency};
use raft::host::HostError;

/// The leader of the EEA group, waiting up to 20 s (a replica may still be opening on demand).
async fn leader_of(cluster: &common::Cluster, among: &[u64]) -> NodeId {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for &id in among {
            if let Ok(status) = cluster.node(id).host.status(&group("users-eea"))
                && status.leader == Some(NodeId(id))
            {
                return NodeId(id);
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the EEA group elects no leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_real_nodes_are_in_their_audit_trails_when_answered_and_the_trails_verify() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = audited_cluster_of(EEA_SITES_AND_ASHBURN).await;
    cluster.create_groups().await.unwrap();
    let eea = [1, 2, 3];
    let leader = leader_of(&cluster, &eea).await;

    // The Ashburn node's certificate makes a client call to n1: refused, and in n1's trail already.
    let ashburn = cluster
        .dialer(&cluster.node_certificate(NodeId(9)).unwrap())
        .unwrap();
    let get = ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: "user-42".into(),
        op: ClientOp::Get {
            record: "phone".into(),
            consistency: Consistency::Linearizable,
        },
    };
    let answer = ask(&ashburn, 1, get).await;
    assert!(matches!(answer, ClientResponse::Forbidden { .. }), "{answer:?}");
    let refused = events(&cluster, 1).into_iter().find_map(|event| match event {
        Event::ClientRefused(refusal) if refusal.kind == ClientRefusalKind::NodeCertificate => Some(refusal),
        _ => None,
    });
    let refused = refused.expect("n1's trail holds the refused client call once it is answered");
    assert_eq!(refused.caller, "n9 at ashburn (US)");
    assert_eq!(
        (refused.jurisdiction.as_str(), refused.request.as_str()),
        ("EEA", "get")
    );

    // A client service asking for a jurisdiction no group is fenced to: refused for residency.
    let (_, billing) = cluster.client_certificate("billing").unwrap();
    let billing = cluster.dialer(&billing).unwrap();
    let answer = ask(
        &billing,
        2,
        ClientRequest::ShardMap {
            jurisdiction: "US".into(),
        },
    )
    .await;
    assert!(matches!(answer, ClientResponse::Residency { .. }), "{answer:?}");
    assert!(events(&cluster, 2).iter().any(|event| matches!(
        event,
        Event::ClientRefused(refusal)
            if refusal.kind == ClientRefusalKind::Residency && refusal.caller == "client `billing`"
    )));

    // The leader asked to add the Ashburn node: the fence refuses, and the refusal is in its trail.
    let host = &cluster.nodes[&leader].host;
    let add = Step::AddLearner {
        group: group("users-eea"),
        node: NodeId(9),
    };
    assert!(matches!(host.execute(&add).await, Err(HostError::Residency(_))));
    assert!(events(&cluster, leader.0).iter().any(|event| matches!(
        event,
        Event::Refused(refusal)
            if refusal.enforcement == Enforcement::Membership
                && refusal.node == Some(9)
                && refusal.reason == "outside_jurisdiction"
    )));

    // An admitted leadership transfer is recorded before it is proposed.
    let to = eea.into_iter().map(NodeId).find(|&node| node != leader).unwrap();
    let transfer = Step::TransferLeader {
        group: group("users-eea"),
        to,
    };
    host.execute(&transfer).await.unwrap();
    assert!(events(&cluster, leader.0).iter().any(|event| matches!(
        event,
        Event::ChangeAdmitted(change) if change.step == format!("transfer leadership to {to}")
    )));

    // Each node records what it sees its groups become, with the fence's verdict.
    for node in eea {
        let host = &cluster.node(node).host;
        host.observe_groups();
        host.audit_durable().await.unwrap();
        let seen = events(&cluster, node).into_iter().any(
            |event| matches!(event, Event::GroupObserved(seen) if seen.group == "users-eea" && seen.admitted),
        );
        assert!(seen, "n{node} recorded the group it holds");
    }

    // An auditor with the CA's certificate alone finds every node's trail intact, signed by that node.
    let ca = ClusterCa::from_pem(&cluster.ca.certified_key().cert_pem).unwrap();
    for node in [1, 2, 3, 9] {
        let dir = cluster.dir().join(format!("n{node}/audit"));
        let report = audit::verify(&dir, &ca, VerifyOptions::default()).unwrap();
        assert!(report.is_intact(), "n{node}: {report}");
        let identity = report.identity.unwrap();
        assert!(
            identity.starts_with(&format!("domicile://v1/node/{node}/")),
            "{identity}"
        );
    }
    cluster.stop().await;
}
