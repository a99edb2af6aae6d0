//! Nodes talk Raft, services talk client. Over real QUIC: a node's certificate presented for a client
//! call — the US node's around the egress fence, or an EEA node's — is refused for every kind of call
//! (shard map, get, put, delete, compare-and-set, scan), typed, named and counted as an incident, and
//! changes nothing; a client service's certificate is served as before.
//!
//! Waiting polls with a deadline on tokio's clock (real sockets); no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{EEA_SITES_AND_ASHBURN, ONE_CLUSTER_AT_A_TIME, ask, cluster_of};
use placement::NodeId;
use raft::client_protocol::{ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency};
use raft::quic::Dialer;
use storage::WriteId;

const EEA_NODES: [u64; 3] = [1, 2, 3];

fn call(op: ClientOp) -> ClientRequest {
    ClientRequest::Call {
        jurisdiction: "EEA".into(),
        user_id: "user-42".into(),
        op,
    }
}

fn write_id(sequence: u64) -> WriteId {
    WriteId {
        client_id: 42,
        sequence,
    }
}

/// Every kind of client request, each on user-42's phone number in the EEA.
fn every_kind_of_call() -> Vec<ClientRequest> {
    vec![
        ClientRequest::ShardMap {
            jurisdiction: "EEA".into(),
        },
        call(ClientOp::Get {
            record: "phone".into(),
            consistency: Consistency::Linearizable,
        }),
        call(ClientOp::Get {
            record: "phone".into(),
            consistency: Consistency::Stale,
        }),
        call(ClientOp::Put {
            record: "phone".into(),
            value: b"overwritten from outside".to_vec(),
            write: write_id(100),
        }),
        call(ClientOp::Delete {
            record: "phone".into(),
            write: write_id(101),
        }),
        call(ClientOp::CompareAndSet {
            record: "phone".into(),
            expected_revision: None,
            value: b"set from outside".to_vec(),
            write: write_id(102),
        }),
        call(ClientOp::Scan),
    ]
}

/// Sends `request` to each EEA node in turn until one serves it (leadership and the shard map settle
/// after start-up), for up to 20 s.
async fn served(dialer: &Dialer, request: ClientRequest) -> ClientResult {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while tokio::time::Instant::now() < give_up {
        for node in EEA_NODES {
            match ask(dialer, node, request.clone()).await {
                ClientResponse::Done { result, .. } => return result,
                other => last = Some(other),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no EEA node served {request:?}; last answer {last:?}")
}

fn client_calls_refused(cluster: &common::Cluster, node: u64) -> u64 {
    cluster.node(node).host.incidents().client_calls_refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_certificate_makes_no_client_call_and_a_services_still_does() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = cluster_of(EEA_SITES_AND_ASHBURN).await;
    cluster.create_groups().await.unwrap();
    let (_, billing) = cluster.client_certificate("billing").unwrap();
    let billing = cluster.dialer(&billing).unwrap();

    // A legitimate service stores user-42's phone number.
    let stored = call(ClientOp::Put {
        record: "phone".into(),
        value: b"+353 1 555 0142".to_vec(),
        write: write_id(1),
    });
    let ClientResult::Written { revision } = served(&billing, stored).await else {
        panic!("the put was not written")
    };

    // The Ashburn node's own certificate, presented as a client's to every EEA node, for every kind of
    // call: each is refused, typed and naming the node, its site and country and the jurisdiction asked.
    let ashburn = cluster
        .dialer(&cluster.node_certificate(NodeId(9)).unwrap())
        .unwrap();
    for node in EEA_NODES {
        let before = client_calls_refused(&cluster, node);
        for request in every_kind_of_call() {
            let kind = request.name();
            match ask(&ashburn, node, request).await {
                ClientResponse::Forbidden {
                    caller,
                    jurisdiction,
                    reason,
                } => {
                    assert_eq!(caller, "n9 at ashburn (US)", "{kind}");
                    assert_eq!(jurisdiction, "EEA", "{kind}");
                    assert!(
                        reason.contains("n9")
                            && reason.contains("ashburn")
                            && reason.contains("US")
                            && reason.contains("EEA")
                            && reason.contains(kind),
                        "{kind}: {reason}"
                    );
                }
                other => panic!("n{node} answered the Ashburn node's {kind} with {other:?}"),
            }
        }
        assert_eq!(
            client_calls_refused(&cluster, node),
            before + every_kind_of_call().len() as u64,
            "n{node} counts each refused call as an incident"
        );
    }

    // A node inside the jurisdiction acting as a client is refused too: nodes talk Raft.
    let dublin = cluster
        .dialer(&cluster.node_certificate(NodeId(2)).unwrap())
        .unwrap();
    let before = client_calls_refused(&cluster, 1);
    for request in every_kind_of_call() {
        let answer = ask(&dublin, 1, request).await;
        assert!(
            matches!(&answer, ClientResponse::Forbidden { caller, .. } if caller == "n2 at dublin-b (IE)"),
            "{answer:?}"
        );
    }
    assert_eq!(
        client_calls_refused(&cluster, 1),
        before + every_kind_of_call().len() as u64
    );

    // Nothing the refused calls asked for happened: the record is as the service wrote it.
    let read = call(ClientOp::Get {
        record: "phone".into(),
        consistency: Consistency::Linearizable,
    });
    match served(&billing, read).await {
        ClientResult::Value {
            record: Some(record), ..
        } => {
            assert_eq!(record.value, b"+353 1 555 0142");
            assert_eq!(record.revision, revision);
        }
        other => panic!("user-42's phone number: {other:?}"),
    }
    let map = ClientRequest::ShardMap {
        jurisdiction: "EEA".into(),
    };
    let answer = ask(&billing, 1, map).await;
    assert!(
        matches!(&answer, ClientResponse::ShardMap { groups, .. } if groups == &["users-eea".to_string()]),
        "{answer:?}"
    );
    // No other fence counter moved: these were refusals at the front door, not Raft traffic.
    for node in EEA_NODES {
        let incidents = cluster.node(node).host.incidents();
        assert_eq!(
            (incidents.egress_blocked, incidents.ingress_refused),
            (0, 0),
            "n{node}"
        );
    }
    cluster.stop().await;
}
