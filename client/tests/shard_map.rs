//! The client library follows a jurisdiction's map across epochs, against real groups (QUIC, TLS and disks
//! on loopback, in one process): a client that learnt epoch 1 writes, after a split published epoch 2, to a
//! user whose range moved; a node answers `Moved` with epoch 2, and the client routes again and succeeds
//! within its deadline, its record in the group that owns the range now.

// A tokio program against real sockets: it waits on tokio's clock.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use client::{Client, ClientTls};
use placement::{GroupId, NodeId};
use raft::directory::DirectoryError;
use raft::identity::Validity;
use raft::local_cluster::LocalCluster;
use raft::map_change::{self, MapChange};
use storage::RecordKey;
use wire::routing::range_position;

const TOPOLOGY: &str = r#"
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
name = "users-eea-1"
jurisdiction = "EEA"
voters = 3
[[group]]
name = "users-eea-2"
jurisdiction = "EEA"
voters = 3
[[grant]]
service = "tests"
jurisdiction = "EEA"
access = "read-write"
"#;

const QUARTER: u64 = 1 << 62;
const HALF: u64 = 1 << 63;

async fn leader_of(cluster: &LocalCluster, name: &str) -> NodeId {
    let group = GroupId(name.into());
    for _ in 0..600 {
        for node in cluster.nodes.values() {
            // A replica a node opens when its group's leader first contacts it is not there before.
            if node
                .host
                .status(&group)
                .is_ok_and(|status| status.leader == Some(node.id))
            {
                return node.id;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{name} elected no leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_routing_by_an_older_epoch_is_moved_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let config = raft::config::group_raft_config("client-test", 50, 300, 600).unwrap();
    let cluster = LocalCluster::start(TOPOLOGY, dir.path(), validity, Arc::new(config)).unwrap();
    cluster.create_groups().await.unwrap();
    leader_of(&cluster, "users-eea-2").await;
    let (ca, certificate) = cluster.client_certificate("tests").unwrap();
    let client = Client::builder()
        .endpoints(cluster.endpoints())
        .tls(ClientTls {
            ca_cert_pem: ca,
            cert_pem: certificate.cert_pem,
            key_pem: certificate.key_pem,
        })
        .timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let staying = (0..)
        .map(|n| format!("staying-{n}"))
        .find(|user| range_position(user) < QUARTER)
        .unwrap();
    let moving = (0..)
        .map(|n| format!("moving-{n}"))
        .find(|user| (QUARTER..HALF).contains(&range_position(user)))
        .unwrap();
    // The client learns epoch 1 (users-eea-1 below 2^63) with its first call.
    client.put(&staying, "profile", b"before".to_vec()).await.unwrap();

    // A split hands QUARTER..HALF to users-eea-2 (epoch 2), each step on its group's leader.
    let first = &cluster.nodes[&NodeId(1)];
    let current = first
        .service
        .directory()
        .refresh(&first.host, "EEA", 1)
        .await
        .unwrap();
    let change = MapChange::Split {
        at: QUARTER,
        to: GroupId("users-eea-2".into()),
    };
    let (next, steps) = map_change::plan(first.service.directory(), &current, &change).unwrap();
    for step in &steps {
        // A step is idempotent and run on its group's leader: repeated, as an operator's tool would, while
        // leadership moves or the leader can't reach a quorum for a moment (a loaded machine), for at most
        // 30 s.
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let node = &cluster.nodes[&leader_of(&cluster, &step.group().0).await];
            match map_change::execute(node.service.directory(), &node.host, step).await {
                Err(DirectoryError::NotLeader { .. } | DirectoryError::Unavailable { .. })
                    if tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                outcome => break outcome.unwrap(),
            }
        }
    }

    // Still routing by epoch 1, the client sends the moving user's write to users-eea-1; it is moved, routes
    // by epoch 2 and succeeds.
    let revision = client.put(&moving, "profile", b"after".to_vec()).await.unwrap();
    let record = client.get(&moving, "profile").await.unwrap().unwrap();
    assert_eq!(
        (record.value.as_slice(), record.revision),
        (&b"after"[..], revision)
    );
    let key = RecordKey::new("EEA", moving.clone(), "profile");
    let new_owner = &cluster.nodes[&leader_of(&cluster, "users-eea-2").await].host;
    let held = new_owner
        .read_local_copy(&GroupId("users-eea-2".into()), key.clone())
        .await
        .unwrap();
    assert_eq!(held.map(|record| record.value), Some(b"after".to_vec()));
    for node in cluster.nodes.values() {
        let old = node
            .host
            .read_local_copy(&GroupId("users-eea-1".into()), key.clone())
            .await
            .unwrap();
        assert_eq!(
            old, None,
            "node {} holds the moved user's write in users-eea-1",
            node.id
        );
    }
    // The user whose range stayed is where it was.
    let record = client.get(&staying, "profile").await.unwrap().unwrap();
    assert_eq!(record.value, b"before");
    assert_eq!(next.route(&staying).0, "users-eea-1");
    cluster.stop().await;
}
