//! The cluster the client tests run against: three EEA sites (two in Dublin, Hamar), one group, real QUIC,
//! TLS and disks in one process, with production Raft settings (`group_raft_config`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientTls};
use placement::NodeId;
use raft::identity::Validity;
use raft::local_cluster::LocalCluster;

pub const TOPOLOGY: &str = r#"
[[site]]
name = "dublin-a"
country = "IE"
nodes = [1]
[[site]]
name = "dublin-b"
country = "IE"
nodes = [2]
[[site]]
name = "hamar"
country = "NO"
nodes = [3]
[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
[[grant]]
service = "tests"
jurisdiction = "EEA"
access = "read-write"
"#;

/// The cluster tests of one binary run one at a time: four clusters of three nodes at once on two shared
/// cores starved the one whose calls have a 2-s deadline (its client's first call timed out).
pub static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn cluster(dir: &std::path::Path) -> LocalCluster {
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let config = raft::config::group_raft_config("client-test", 50, 300, 600).unwrap();
    let cluster = LocalCluster::start(TOPOLOGY, dir, validity, Arc::new(config)).unwrap();
    cluster.create_groups().await.unwrap();
    // The group elects its first leader after start-up. A client built before that waits on the election
    // in its first call (the shard map), which on a loaded machine (four clusters in this binary at once,
    // others' builds) outlasted the tests' 2-s deadline: the tests are about calls, not start-up.
    leader(&cluster, &[]).await;
    cluster
}

/// The node that reports itself leader, ignoring `stopped` nodes (their last metrics stay frozen).
pub async fn leader(cluster: &LocalCluster, stopped: &[NodeId]) -> NodeId {
    let group = placement::GroupId("users-eea".into());
    for _ in 0..200 {
        for node in cluster.nodes.values().filter(|node| !stopped.contains(&node.id)) {
            if let Ok(status) = node.host.status(&group)
                && status.leader == Some(node.id)
            {
                return node.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader");
}

pub async fn client_of(cluster: &LocalCluster, timeout: Duration) -> Client {
    let (ca, certificate) = cluster.client_certificate("tests").unwrap();
    let tls = ClientTls {
        ca_cert_pem: ca,
        cert_pem: certificate.cert_pem,
        key_pem: certificate.key_pem,
    };
    Client::builder()
        .endpoints(cluster.endpoints())
        .tls(tls)
        .timeout(timeout)
        .build()
        .await
        .unwrap()
}
