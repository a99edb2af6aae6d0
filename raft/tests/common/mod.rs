//! The test harness for hosts on real QUIC sockets over loopback: a topology with two Dublin sites, Hamar
//! and Ashburn, a cluster CA, one host per node with its own data directory, and a switchable fault layer.
//!
//! Waiting for a condition (a leader, a commit) polls with a deadline on tokio's clock: these tests drive
//! real sockets, so wall-clock waits are what they are made of; no assertion is on a duration.
#![allow(clippy::disallowed_methods, dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use std::ops::Deref;

use placement::{GroupId, Membership, NodeId};
use raft::host::HostError;
use raft::identity::Validity;
use raft::local_cluster::{LocalCluster, LocalNode};
use storage::{Command, RecordKey, WriteId};
use time::OffsetDateTime;

pub mod jepsen;

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
leader_preference = ["dublin-b"]

[[group]]
name = "users-legacy"
jurisdiction = "EEA"
voters = 3

[group.current]
voters = [1, 4, 5]

[[grant]]
service = "directory-test"
jurisdiction = "EEA"
access = "read-write"

[[grant]]
service = "directory-test"
jurisdiction = "EU"
access = "read-write"
"#;

/// Three EEA sites holding one group, a fourth EEA site to spare (Frankfurt) and Ashburn, outside: for
/// replacing and purging replicas.
pub const EEA_SITES_WITH_A_SPARE: &str = r#"
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
name = "frankfurt"
country = "DE"
nodes = [4]

[[site]]
name = "ashburn"
country = "US"
nodes = [5]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3
"#;

/// Three EEA sites holding one group and Ashburn (node 9) outside it: for what a node outside may not do.
pub const EEA_SITES_AND_ASHBURN: &str = r#"
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
nodes = [9]

[[group]]
name = "users-eea"
jurisdiction = "EEA"
voters = 3

[[grant]]
service = "billing"
jurisdiction = "EEA"
access = "read-write"
"#;

/// A local cluster of the topology above, in a temporary directory that lives as long as it.
pub struct Cluster {
    pub local: LocalCluster,
    _dir: tempfile::TempDir,
}

impl Deref for Cluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.local
    }
}

pub fn raft_config() -> Arc<openraft::Config> {
    Arc::new(raft::config::group_raft_config("domicile-test", 50, 300, 600).unwrap())
}

/// The cluster tests share two cores with everything else: run them one at a time so elections and
/// heartbeats are not starved by a neighbouring test's.
pub static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn cluster() -> Cluster {
    cluster_of(TOPOLOGY).await
}

/// A local cluster of another topology.
pub async fn cluster_of(topology: &str) -> Cluster {
    cluster_with(topology, raft_config()).await
}

/// A local cluster of another topology, its groups run with `config`.
pub async fn cluster_with(topology: &str, config: Arc<openraft::Config>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let local = LocalCluster::start(topology, dir.path(), validity, config).unwrap();
    Cluster { local, _dir: dir }
}

/// A local cluster whose nodes keep signed audit trails in `<dir>/n<id>/audit`, stamped by the wall
/// clock.
pub async fn audited_cluster_of(topology: &str) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::hours(1),
        not_after: now + time::Duration::days(1),
    };
    let clock: audit::Clock = Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64)
    });
    let local = LocalCluster::start_audited(topology, dir.path(), validity, raft_config(), clock).unwrap();
    Cluster { local, _dir: dir }
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
    /// The directory under which node `n` keeps its data in `n<n>/`.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn node(&self, id: u64) -> &LocalNode {
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

    /// Opens `name` on `voters` and bootstraps it from the first of them, through the fence.
    pub async fn create(&self, name: &str, voters: &[u64]) {
        self.open(name, voters, &[]).await;
        let members = Membership::new(voters.iter().map(|&id| NodeId(id)), []);
        let first = self.node(voters[0]);
        let fenced = first
            .host
            .fence(&group(name))
            .unwrap()
            .admit_change(&Membership::default(), &members)
            .unwrap();
        first.host.bootstrap(fenced).await.unwrap();
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
        self.local.stop().await;
    }
}

/// A client call over `dialer` to node `to`, answered as a client response.
pub async fn ask(
    dialer: &raft::quic::Dialer,
    to: u64,
    request: raft::client_protocol::ClientRequest,
) -> raft::client_protocol::ClientResponse {
    use raft::client_protocol::{Envelope, EnvelopeResponse};
    match dialer.request(to, &Envelope::Client(request)).await.unwrap() {
        EnvelopeResponse::Client(response) => response,
        other => panic!("a client request got {other:?}"),
    }
}

/// Node `node`'s audit trail as its disk holds it (clusters started with `audited_cluster_of`).
pub fn events(cluster: &Cluster, node: u64) -> Vec<audit::event::Event> {
    let mut events = Vec::new();
    audit::read_entries(&cluster.dir().join(format!("n{node}/audit")), |read| {
        events.push(read.entry.event)
    })
    .unwrap();
    events
}
