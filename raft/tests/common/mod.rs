//! The test harness for hosts on real QUIC sockets over loopback: a topology with two Dublin sites, Hamar
//! and Ashburn, a cluster CA, one host per node with its own data directory, and a switchable fault layer.
//!
//! Waiting for a condition (a leader, a commit) polls with a deadline on tokio's clock: these tests drive
//! real sockets, so wall-clock waits are what they are made of; no assertion is on a duration.
#![allow(clippy::disallowed_methods, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use placement::{GroupId, NodeId, Topology, TopologyFile};
use raft::config::TokioConfig;
use raft::host::{Host, HostError};
use raft::identity::{ClusterCa, NodeIdentity, Validity, tls_configs};
use raft::quic::{LateHandler, QuicConfig, QuicNode};
use raft::stores::DiskStores;
use raft::transport::Faulty;
use storage::{Command, RecordKey, WriteId};
use time::OffsetDateTime;

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

[[site]]
name = "ashburn"
country = "US"
nodes = [4, 5]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3

[[group]]
name = "users-eu"
jurisdiction = "EU"
voters = 2

[[group]]
name = "users-legacy"
jurisdiction = "EEA"
voters = 3

[group.current]
voters = [1, 4, 5]
"#;

pub type TestHost = Host<TokioConfig, Faulty<QuicNode>, DiskStores>;

pub struct Node {
    pub id: NodeId,
    pub host: Arc<TestHost>,
    pub quic: Arc<QuicNode>,
    pub faults: Arc<Faulty<QuicNode>>,
    _dir: tempfile::TempDir,
}

pub struct Cluster {
    pub file: TopologyFile,
    pub nodes: BTreeMap<NodeId, Node>,
}

pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "domicile-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// The cluster tests share two cores with everything else: run them one at a time so elections and
/// heartbeats are not starved by a neighbouring test's.
pub static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn cluster() -> Cluster {
    let file = TopologyFile::parse(TOPOLOGY).unwrap();
    let topology: Arc<Topology> = Arc::new(file.topology.clone());
    let now = OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let ca = ClusterCa::generate("cluster-test", validity).unwrap();
    let mut nodes = BTreeMap::new();
    for site in topology.sites() {
        for &id in &site.nodes {
            let identity = NodeIdentity {
                node: id,
                site: site.name.clone(),
                country: site.country,
            };
            let tls = tls_configs(
                &ca.certified_key().cert_pem,
                &ca.issue(&identity, validity).unwrap(),
            )
            .unwrap();
            let late = Arc::new(LateHandler::<TestHost>::default());
            let loopback = "127.0.0.1:0".parse().unwrap();
            let quic = QuicNode::bind(
                identity.clone(),
                loopback,
                &tls,
                topology.clone(),
                BTreeMap::new(),
                QuicConfig::loopback(),
                late.clone(),
            )
            .unwrap();
            let faults = Arc::new(Faulty::new(quic.clone()));
            let dir = tempfile::tempdir().unwrap();
            let stores = DiskStores::open(dir.path()).unwrap();
            let groups = file
                .policies
                .values()
                .map(|policy| (policy.clone(), legacy_members(&file, policy)));
            let host = Arc::new(Host::new(
                identity,
                topology.clone(),
                groups,
                faults.clone(),
                stores,
                raft_config(),
            ));
            late.install(host.clone());
            nodes.insert(
                id,
                Node {
                    id,
                    host,
                    quic,
                    faults,
                    _dir: dir,
                },
            );
        }
    }
    let addresses: Vec<(NodeId, std::net::SocketAddr)> = nodes
        .values()
        .map(|node| (node.id, node.quic.local_addr().unwrap()))
        .collect();
    for node in nodes.values() {
        for &(peer, addr) in &addresses {
            node.quic.learn_address(peer, addr);
        }
    }
    Cluster { file, nodes }
}

/// A group's declared members outside its jurisdiction (from `[group.current]`): its legacy members.
pub fn legacy_members(file: &TopologyFile, policy: &placement::GroupPolicy) -> BTreeSet<NodeId> {
    let Some(state) = file.current.get(&policy.group) else {
        return BTreeSet::new();
    };
    state
        .membership
        .members()
        .filter(|&node| !file.topology.is_inside(node, &policy.jurisdiction))
        .collect()
}

pub fn group(name: &str) -> GroupId {
    GroupId(name.into())
}

pub fn put(sequence: u64) -> Command {
    Command::Put {
        write: WriteId {
            client_id: 7,
            sequence,
        },
        key: RecordKey::new(
            "EEA",
            format!("user-{}", sequence % 5),
            format!("record-{sequence}"),
        ),
        value: format!("value-{sequence}").into_bytes(),
    }
}

impl Cluster {
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&NodeId(id)]
    }

    pub async fn open(&self, name: &str, on: &[u64], legacy: &[u64]) {
        let policy = self.file.policies[&group(name)].clone();
        let legacy: BTreeSet<NodeId> = legacy.iter().map(|&id| NodeId(id)).collect();
        for &id in on {
            self.node(id)
                .host
                .open_group(policy.clone(), legacy.clone())
                .await
                .unwrap();
        }
    }

    /// The node that reports itself leader of `name`, among `among`, waiting up to `deadline`.
    pub async fn leader(&self, name: &str, among: &[u64], deadline: Duration) -> Option<NodeId> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            for &id in among {
                let status = self.node(id).host.status(&group(name)).unwrap();
                if status.leader == Some(NodeId(id)) {
                    return Some(NodeId(id));
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes through whichever of `among` leads, retrying (as a client would) while leadership settles;
    /// returns the node that acknowledged the write. Gives up after 15 s.
    pub async fn write(&self, name: &str, among: &[u64], command: Command) -> Result<NodeId, HostError> {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let attempt = match self.leader(name, among, Duration::from_secs(5)).await {
                Some(leader) => self.nodes[&leader]
                    .host
                    .write(&group(name), command.clone())
                    .await
                    .map(|_| leader),
                None => Err(HostError::NotLeader {
                    group: group(name),
                    leader: None,
                }),
            };
            match attempt {
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                outcome => return outcome,
            }
        }
    }

    pub fn partition(&self, side_a: &[u64], side_b: &[u64]) {
        for &a in side_a {
            for &b in side_b {
                self.node(a).faults.cut(NodeId(b));
                self.node(b).faults.cut(NodeId(a));
            }
        }
    }

    pub async fn stop(self) {
        for node in self.nodes.values() {
            node.host.shutdown().await;
            node.quic.close();
        }
    }
}
