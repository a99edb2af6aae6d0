//! The client library against a real 3-node cluster (QUIC, TLS and disks on loopback, in one process).

// A tokio program against real sockets: it waits on tokio's clock and spawns tokio tasks directly.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use client::ClientError;
use common::{ONE_CLUSTER_AT_A_TIME, client_of, cluster, leader};
use placement::NodeId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_failover_during_a_write_loop_loses_nothing_and_applies_nothing_twice() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let client = Arc::new(client_of(&cluster, Duration::from_secs(8)).await);
    let first_leader = leader(&cluster, &[]).await;

    // Create-if-absent writes: were a retried write applied twice, its second application would find the
    // record present and the client would see a conflict for a write that had succeeded.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0..120u32 {
                let record = format!("record-{index}");
                let value = format!("value-{index}").into_bytes();
                match client
                    .compare_and_set("user-1", &record, None, value.clone())
                    .await
                {
                    Ok(_) => acknowledged.push((record, value)),
                    Err(error) => return Err((index, error)),
                }
            }
            Ok(acknowledged)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop_node(first_leader).await;
    let acknowledged = writer
        .await
        .unwrap()
        .unwrap_or_else(|(index, error)| panic!("write {index} failed: {error}"));
    assert_eq!(acknowledged.len(), 120);
    leader(&cluster, &[first_leader]).await; // a new leader took over (or this panics)

    for (record, value) in &acknowledged {
        let stored = client.get("user-1", record).await.unwrap();
        assert_eq!(
            stored.map(|record| record.value).as_ref(),
            Some(value),
            "{record}"
        );
    }
    let all = client.scan_user("user-1").await.unwrap();
    assert_eq!(
        all.len(),
        acknowledged.len(),
        "exactly the acknowledged records exist"
    );
    // Stale reads are served from any replica and may lag, but they only ever return written values.
    if let Some(record) = client.get("user-1", "record-0").stale().await.unwrap() {
        assert_eq!(record.value, b"value-0");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_dead_cluster_fail_with_a_timeout_inside_their_deadline() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let deadline = Duration::from_secs(2);
    let client = client_of(&cluster, deadline).await;
    client.put("user-2", "profile", b"x".to_vec()).await.unwrap();
    // Data of a jurisdiction with no group is refused, never stored elsewhere; retrying can't help. (The
    // cluster says so: a client holds no directory of its own, only the maps it has learnt.)
    let error = client
        .in_jurisdiction("EU")
        .put("user-3", "profile", b"z".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Residency(_)) && !error.is_retryable(),
        "{error}"
    );
    cluster.stop().await;

    let started = Instant::now();
    let error = client.put("user-2", "profile", b"y".to_vec()).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    assert!(error.is_retryable());
    // The deadline is the contract: the call returns once it has passed, not seconds later.
    assert!(
        took < deadline + Duration::from_secs(1),
        "the call took {took:?} with a {deadline:?} deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_certificate_used_as_a_clients_is_forbidden_for_good() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    // Node 2's own certificate (Dublin B, inside the EEA) in a service's client: nodes talk Raft,
    // services talk client, so even an inside node gets no client call served — not even the shard map
    // the client asks for when it connects.
    let node_certificate = cluster.node_certificate(NodeId(2)).unwrap();
    let (ca, _) = cluster.client_certificate("unused").unwrap();
    let connected = client::Client::builder()
        .endpoints(cluster.endpoints())
        .tls(client::ClientTls {
            ca_cert_pem: ca,
            cert_pem: node_certificate.cert_pem,
            key_pem: node_certificate.key_pem,
        })
        .default_jurisdiction("EEA")
        .timeout(Duration::from_secs(8))
        .build()
        .await;
    let Err(error) = connected else {
        panic!("a client with a node's certificate connected")
    };
    match &error {
        ClientError::Forbidden {
            caller, jurisdiction, ..
        } => {
            assert_eq!(caller, "n2 at dublin-b (IE)");
            assert_eq!(jurisdiction, "EEA");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(!error.is_retryable(), "{error}");
    let refused: u64 = cluster
        .nodes
        .values()
        .map(|node| node.host.incidents().client_calls_refused)
        .sum();
    assert_eq!(
        refused, 1,
        "refused for good at the first node asked, and counted"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_may_name_nodes_by_host_name() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path()).await;
    let (ca, certificate) = cluster.client_certificate("tests").unwrap();
    let tls = client::ClientTls {
        ca_cert_pem: ca,
        cert_pem: certificate.cert_pem,
        key_pem: certificate.key_pem,
    };
    // The nodes listen on 127.0.0.1: name them `localhost`, as a Service's DNS name would be used.
    let by_name: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|endpoint| endpoint.replace("127.0.0.1", "localhost"))
        .collect();
    let client = client::Client::builder()
        .endpoints(&by_name)
        .tls(tls.clone())
        .timeout(Duration::from_secs(8))
        .build()
        .await
        .unwrap();
    let revision = client.put("user-7", "name", b"Ada".to_vec()).await.unwrap();
    let stored = client.get("user-7", "name").await.unwrap().unwrap();
    assert_eq!((stored.value, stored.revision), (b"Ada".to_vec(), revision));

    // A name that does not resolve (`.invalid` never does, RFC 6761) is bad input, named.
    let unresolvable = client::Client::builder()
        .endpoints(["n1@no-such-node.invalid:7101"])
        .tls(tls)
        .build()
        .await;
    match unresolvable {
        Err(ClientError::InvalidEndpoint { endpoint, reason }) => {
            assert_eq!(endpoint, "n1@no-such-node.invalid:7101");
            assert!(reason.contains("no-such-node.invalid"), "{reason}");
        }
        Err(other) => panic!("expected a bad endpoint, got {other}"),
        Ok(_) => panic!("a client was built for a name that does not resolve"),
    }
    cluster.stop().await;
}
