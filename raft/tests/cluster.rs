//! Replica groups across real hosts: QUIC with mutual TLS over loopback UDP, real disks, the residency
//! fence at membership, egress and ingress.
//!
//! Waiting for a condition (a leader, a commit) polls with a deadline on tokio's clock: these tests drive
//! real sockets, so wall-clock waits are what they are made of; no assertion is on a duration.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use placement::{GroupId, Membership, NodeId, RefusalReason, SiteName, Step, Topology, TopologyFile};
use raft::config::TokioConfig;
use raft::host::{Host, HostError, ReadConsistency};
use raft::identity::{ClusterCa, NodeIdentity, Validity, tls_configs};
use raft::quic::{LateHandler, QuicConfig, QuicNode};
use raft::routing::group_number;
use raft::stores::DiskStores;
use raft::transport::{Faulty, PeerRequest, PeerResponse, RequestKind};
use storage::{Command, RecordKey, WriteId};
use time::OffsetDateTime;

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

type TestHost = Host<TokioConfig, Faulty<QuicNode>, DiskStores>;

struct Node {
    id: NodeId,
    host: Arc<TestHost>,
    quic: Arc<QuicNode>,
    faults: Arc<Faulty<QuicNode>>,
    _dir: tempfile::TempDir,
}

struct Cluster {
    file: TopologyFile,
    nodes: BTreeMap<NodeId, Node>,
}

fn raft_config() -> Arc<openraft::Config> {
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
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster() -> Cluster {
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
            let policies = file.policies.values().cloned();
            let host = Arc::new(Host::new(
                identity,
                topology.clone(),
                policies,
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

fn group(name: &str) -> GroupId {
    GroupId(name.into())
}

fn put(sequence: u64) -> Command {
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
    fn node(&self, id: u64) -> &Node {
        &self.nodes[&NodeId(id)]
    }

    async fn open(&self, name: &str, on: &[u64], legacy: &[u64]) {
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
    async fn leader(&self, name: &str, among: &[u64], deadline: Duration) -> Option<NodeId> {
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
    async fn write(&self, name: &str, among: &[u64], command: Command) -> Result<NodeId, HostError> {
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

    fn partition(&self, side_a: &[u64], side_b: &[u64]) {
        for &a in side_a {
            for &b in side_b {
                self.node(a).faults.cut(NodeId(b));
                self.node(b).faults.cut(NodeId(a));
            }
        }
    }

    async fn stop(self) {
        for node in self.nodes.values() {
            node.host.shutdown().await;
            node.quic.close();
        }
    }
}

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

    let fence = cluster.node(1).host.fence(&eea).unwrap();
    let members = Membership::new([NodeId(1), NodeId(2), NodeId(3)], []);
    let fenced = fence.admit_change(&Membership::default(), &members).unwrap();
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
    cluster.open("users-eu", &[1, 2], &[]).await;
    let members = Membership::new([NodeId(1), NodeId(2)], []);
    let fenced = cluster
        .node(1)
        .host
        .fence(&eu)
        .unwrap()
        .admit_change(&Membership::default(), &members)
        .unwrap();
    cluster.node(1).host.bootstrap(fenced).await.unwrap();
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
    let reply: PeerResponse = cluster.node(1).quic.request(NodeId(4), &forged(1)).await.unwrap();
    let PeerResponse::Refused { reason, .. } = reply else {
        panic!("the US node accepted EU data: {reply:?}")
    };
    assert!(reason.contains("ashburn") && reason.contains("EU"), "{reason}");
    assert_eq!(cluster.node(4).host.incidents().ingress_refused, 1);

    // Sent by the US node to an EU follower, pretending to be the leader: the certificate says otherwise.
    let follower = if leader == NodeId(1) { 2 } else { 1 };
    let reply: PeerResponse = cluster
        .node(4)
        .quic
        .request(NodeId(follower), &forged(leader.0))
        .await
        .unwrap();
    assert!(
        matches!(&reply, PeerResponse::Refused { reason, .. } if reason.contains("forged sender")),
        "{reply:?}"
    );

    // Sent by the US node as itself: a leader outside the jurisdiction is refused, and counted.
    let before = cluster.node(follower).host.incidents().ingress_refused;
    let reply: PeerResponse = cluster
        .node(4)
        .quic
        .request(NodeId(follower), &forged(4))
        .await
        .unwrap();
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
