//! The cluster the client tests run against: three EEA sites (two in Dublin, Hamar), one group, real QUIC,
//! TLS and disks in one process, with production Raft settings (`group_raft_config`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientTls};
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

pub async fn cluster(dir: &std::path::Path) -> LocalCluster {
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let config = raft::config::group_raft_config("client-test", 50, 300, 600).unwrap();
    let cluster = LocalCluster::start(TOPOLOGY, dir, validity, Arc::new(config)).unwrap();
    cluster.create_groups().await.unwrap();
    cluster
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
