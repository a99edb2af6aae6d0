//! `domicile node --config node.toml`: one node of a cluster.
//!
//! Start-up: read the config, the topology and the certificates (the node's identity — node id, site,
//! country — is what its certificate attests, whatever the config says); refuse a data directory of
//! another cluster; bind the QUIC endpoint (peers and clients) and the admin endpoint; open the replica
//! groups this node belongs to in the initial placement (the pure planner run on the topology, the same on
//! every node) and bootstrap those it is first in. Replicas added later open on demand when a leader
//! contacts the node. Peers named by host name are resolved at start-up and again every few seconds, so a
//! peer that comes back at a new address (a rescheduled pod) is found there. On SIGTERM or SIGINT the node
//! hands its leaderships to other voters inside each group's jurisdiction, then stops.
//!
//! The node keeps its audit trail in `audit_dir` (`<data_dir>/audit` by default), signed with its
//! certificate's key and stamped with the wall clock: the host records into it, and so do admin requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use audit::{AuditConfig, AuditLog, Signer};
use placement::{NodeId, Step, TopologyFile};
use raft::bootstrap::open_initial_groups;
use raft::client_access::ClientAccess;
use raft::client_protocol::{ClientOp, ClientRequest, Envelope, EnvelopeResponse};
use raft::config::{DeclaredRoundTrips, TokioConfig, group_raft_config, with_snapshot_policy};
use raft::directory::Directory;
use raft::host::{Host, HostError};
use raft::identity::{CertifiedKey, Peer, check_against_topology, node_identity_of_pem, tls_configs};
use raft::prompt_election::ElectionPrompter;
use raft::purge::Purged;
use raft::quic::{Handler, LateHandler, QuicConfig, QuicNode};
use raft::repair::{Repair, Repairer};
use raft::routing::Router;
use raft::service::NodeService;
use raft::session_clock::SessionClock;
use raft::stores::DiskStores;

use crate::metrics::{GroupLabel, Metrics, OpLabel};
use crate::node_config::{NodeConfig, PeerAddress};
use crate::purge_log::PurgeLog;

pub type NodeHost = Host<TokioConfig, QuicNode, DiskStores>;
pub type Service = NodeService<TokioConfig, QuicNode, DiskStores>;

pub struct Node {
    pub config: NodeConfig,
    pub file: TopologyFile,
    pub host: Arc<NodeHost>,
    pub quic: Arc<QuicNode>,
    pub metrics: Arc<Metrics>,
    /// The topology file's text, as read at start-up (`GET /topology`).
    pub topology_text: String,
    /// The replicas this node purged, with their proofs (`purged.jsonl` in the data directory).
    pub purges: PurgeLog,
    /// The node's signed audit trail (also the host's).
    pub audit: Arc<AuditLog>,
    /// Round trips to peers as measured, and the hosted groups' members past their timing.
    pub round_trips: crate::round_trip_watch::RoundTrips,
    /// The node's front door to its groups, with its directory of shard maps (map changes use it).
    pub service: Arc<Service>,
    /// Where the peers were found at start-up; those named by host name are followed after.
    resolved_at_start: BTreeMap<NodeId, SocketAddr>,
}

pub async fn run(config: NodeConfig) -> anyhow::Result<ExitCode> {
    plant_canary();
    let node = Arc::new(Node::start(config).await?);
    let admin = crate::admin::serve(node.clone()).await?;
    let preference = tokio::spawn(honour_leader_preferences(node.clone()));
    let repair = tokio::spawn(repair_groups(node.clone()));
    let purge = tokio::spawn(purge_removed_replicas(node.clone()));
    let prompts = tokio::spawn(prompt_elections(node.clone()));
    let names = tokio::spawn(follow_peer_names(node.clone()));
    let round_trips = tokio::spawn(crate::round_trip_watch::watch(node.clone()));
    let session_clock = tokio::spawn(tick_session_clocks(node.clone()));
    let incidents = crate::incident_sink::spawn(&node);
    tracing::info!(node = %node.config.node, listen = %node.config.listen, admin = %node.config.admin, "node started");
    wait_for_stop_signal().await?;
    tracing::info!("stopping: handing over leaderships");
    let moved = node.drain().await;
    tracing::info!(moved = moved.len(), "leaderships handed over");
    admin.abort();
    preference.abort();
    repair.abort();
    purge.abort();
    prompts.abort();
    names.abort();
    round_trips.abort();
    session_clock.abort();
    if let Some(incidents) = incidents {
        incidents.abort();
    }
    node.host.shutdown().await;
    node.quic.close();
    Ok(ExitCode::SUCCESS)
}

/// A planted bug, in a build with the `canaries` feature only (never a production one): with
/// `DOMICILE_CANARY=ingress-off` this node's ingress fence admits everything and its outside legacy
/// replicas campaign (`raft::residency::canary`), so the multi-host suite can show it catches that.
fn plant_canary() {
    #[cfg(feature = "canaries")]
    if std::env::var("DOMICILE_CANARY").as_deref() == Ok("ingress-off") {
        raft::residency::canary::set_ingress_off(true);
        tracing::error!("PLANTED BUG (DOMICILE_CANARY=ingress-off): this node's ingress fence is off");
    }
}

/// Every few seconds, each group this node leads hands leadership to a caught-up voter its policy prefers
/// (inside the jurisdiction, through the fence), so leaders settle where the policy wants them when healthy.
async fn honour_leader_preferences(node: Arc<Node>) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        for group in node.host.hosted_groups() {
            match node.host.honour_leader_preference(&group).await {
                Ok(Some(to)) => tracing::info!(%group, %to, "leadership moved to the preferred voter"),
                Ok(None) => {}
                Err(error) => tracing::debug!(%group, %error, "leader preference not applied"),
            }
        }
    }
}

/// Every few milliseconds, each group whose leader has been silent past the leader's lease and this node's
/// turn is prompted to campaign (`raft::prompt_election`): a failover takes the lease, not the lease and a
/// random election timeout more.
async fn prompt_elections(node: Arc<Node>) {
    if !node.config.raft.prompt_elections {
        return;
    }
    let prompter = ElectionPrompter::<TokioConfig>::default();
    loop {
        tokio::time::sleep(raft::prompt_election::PROMPT_EVERY).await;
        for (group, leader) in prompter.round(&node.host).await {
            tracing::info!(%group, silent = %leader, "leader silent past its lease: campaigning");
            if let Some(policy) = node.file.policies.get(&group) {
                let label = GroupLabel {
                    group: group.0.clone(),
                    jurisdiction: policy.jurisdiction.name().to_string(),
                };
                node.metrics.elections_prompted.get_or_create(&label).inc();
            }
        }
    }
}

/// Every second, each group this node leads whose session clock is due a tick is sent one, which expires
/// the client sessions idle past their bound on every replica alike (`raft::session_clock`).
async fn tick_session_clocks(node: Arc<Node>) {
    let every = node.config.raft.session_tick_ms;
    if every == 0 {
        return;
    }
    let idle_max = Duration::from_millis(every) * storage::apply::SESSION_IDLE_TICKS_MAX as u32;
    if idle_max < Duration::from_secs(600) {
        // Safe only while no client retries a write for longer than this (tests shorten it on purpose).
        tracing::warn!(
            session_tick_ms = every,
            idle_max_s = idle_max.as_secs_f64(),
            "client sessions expire after less than ten minutes idle: a write retried for longer would be applied again"
        );
    }
    let clock = SessionClock::<TokioConfig>::new(Duration::from_millis(every));
    loop {
        tokio::time::sleep(Duration::from_millis(every.min(1000))).await;
        for (group, ticked) in clock.round(&node.host).await {
            match ticked {
                Ok(storage::Response::SessionClock { clock, expired }) => {
                    if expired > 0 {
                        tracing::info!(%group, clock, expired, "idle client sessions expired");
                    }
                    if let Some(policy) = node.file.policies.get(&group) {
                        let label = GroupLabel {
                            group: group.0.clone(),
                            jurisdiction: policy.jurisdiction.name().to_string(),
                        };
                        node.metrics
                            .sessions_expired
                            .get_or_create(&label)
                            .inc_by(expired);
                    }
                }
                Ok(other) => tracing::warn!(%group, ?other, "a session tick answered something else"),
                Err(error) => {
                    tracing::debug!(%group, %error, "session tick not applied; the next period retries")
                }
            }
        }
    }
}

/// Every second, each group this node leads replaces members that stopped answering with nodes inside its
/// jurisdiction, or reports itself under-replicated (see `raft::repair`).
async fn repair_groups(node: Arc<Node>) {
    let down_after = node.config.raft.repair_down_after_ms;
    if down_after == 0 {
        return;
    }
    let repairer = Repairer::<TokioConfig>::new(Duration::from_millis(down_after));
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let outcomes = repairer.round(&node.host).await;
        for group in node.host.hosted_groups() {
            let Some(policy) = node.file.policies.get(&group) else {
                continue;
            };
            let label = GroupLabel {
                group: group.0.clone(),
                jurisdiction: policy.jurisdiction.name().to_string(),
            };
            let outcome = outcomes.get(&group);
            if let Some(Repair::Executed(_)) = outcome {
                node.metrics.repair_steps.get_or_create(&label).inc();
            }
            let under = matches!(outcome, Some(Repair::UnderReplicated { .. }));
            node.metrics
                .under_replicated
                .get_or_create(&label)
                .set(i64::from(under));
        }
    }
}

/// Every `purge_check_ms`, replicas here that may have been removed while this node was away ask their
/// group's leader, and are deleted if it shows a committed membership without this node (`raft::purge`).
async fn purge_removed_replicas(node: Arc<Node>) {
    let every = node.config.raft.purge_check_ms;
    if every == 0 {
        return;
    }
    let silence = Duration::from_millis(every);
    loop {
        tokio::time::sleep(silence).await;
        for (group, outcome) in raft::purge::purge_removed_replicas(&node.host, silence).await {
            match outcome {
                Ok(Purged::Deleted {
                    leader,
                    term,
                    log_index,
                    membership,
                }) => {
                    tracing::info!(%group, %leader, log_index, "purged a removed replica");
                    node.purges.record(&group, leader, term, log_index, &membership);
                    if let Some(policy) = node.file.policies.get(&group) {
                        let label = GroupLabel {
                            group: group.0.clone(),
                            jurisdiction: policy.jurisdiction.name().to_string(),
                        };
                        node.metrics.replicas_purged.get_or_create(&label).inc();
                    }
                }
                Ok(Purged::AlreadyPurged) | Err(HostError::StillMember { .. }) => {}
                Err(error) => tracing::debug!(%group, %error, "replica kept"),
            }
        }
    }
}

/// How often peers named by host name are resolved again.
const PEER_NAMES_EVERY: Duration = Duration::from_secs(5);

/// Every [`PEER_NAMES_EVERY`], resolves the peers named by host name and tells the QUIC endpoint where
/// they are now: a peer that was not resolvable at start-up (its pod not scheduled yet) is found once it
/// is, and one that restarted at a new address is dialled there once its old connection has closed.
async fn follow_peer_names(node: Arc<Node>) {
    let named: Vec<(NodeId, PeerAddress)> = node
        .config
        .peers
        .iter()
        .filter(|(_, peer)| matches!(peer.addr, PeerAddress::Name { .. }))
        .map(|(&id, peer)| (id, peer.addr.clone()))
        .collect();
    if named.is_empty() {
        return;
    }
    let mut known: BTreeMap<NodeId, SocketAddr> = node.resolved_at_start.clone();
    loop {
        tokio::time::sleep(PEER_NAMES_EVERY).await;
        for (id, address) in &named {
            match resolve_peer(address, node.config.listen).await {
                Ok(addr) if known.get(id) != Some(&addr) => {
                    tracing::info!(peer = %id, %address, %addr, "peer address resolved");
                    node.quic.learn_address(*id, addr);
                    known.insert(*id, addr);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(peer = %id, %address, %error, "can't resolve a peer's address"),
            }
        }
    }
}

/// Where a peer listens now: an IP address as configured, a host name through the system's resolver
/// (within 5 s). Of several addresses, one of the same family as `listen` is preferred: the node dials
/// from its listening socket.
pub async fn resolve_peer(address: &PeerAddress, listen: SocketAddr) -> std::io::Result<SocketAddr> {
    let (host, port) = match address {
        PeerAddress::Ip(addr) => return Ok(*addr),
        PeerAddress::Name { host, port } => (host.as_str(), *port),
    };
    let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"))??;
    let candidates: Vec<SocketAddr> = lookup.collect();
    pick_address(&candidates, listen)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("`{host}` has no address")))
}

fn pick_address(candidates: &[SocketAddr], listen: SocketAddr) -> Option<SocketAddr> {
    candidates
        .iter()
        .find(|addr| addr.is_ipv4() == listen.is_ipv4())
        .or(candidates.first())
        .copied()
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("can't listen for SIGTERM")?;
    tokio::select! {
        _ = terminate.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("can't listen for Ctrl-C")?,
    }
    Ok(())
}

/// One leadership hand-over made (or attempted) by [`Node::drain`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    pub group: String,
    pub to: Option<u64>,
    pub error: Option<String>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let text = std::fs::read_to_string(&config.topology)
            .with_context(|| format!("can't read the topology {}", config.topology.display()))?;
        let file =
            TopologyFile::parse(&text).map_err(|error| anyhow!("{}:{error}", config.topology.display()))?;
        let topology = Arc::new(file.topology.clone());

        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("missing {what}: can't read {}", path.display()))
        };
        let ca = read(&config.ca, "the cluster CA certificate")?;
        let certified = CertifiedKey {
            cert_pem: read(&config.cert, "the node certificate")?,
            key_pem: read(&config.key, "the node key")?,
        };
        let identity = own_identity(&certified.cert_pem)?;
        if identity.node != config.node {
            bail!(
                "the certificate {} is for node {}, but the config says node {}",
                config.cert.display(),
                identity.node,
                config.node
            );
        }
        if identity.site.0 != config.site {
            // The certificate is what peers will believe; this node believes it too.
            tracing::error!(
                configured = %config.site, attested = %identity.site, country = %identity.country,
                "the config claims a site the certificate does not attest: running as the certificate says"
            );
        }
        check_against_topology(&identity, &topology)
            .context("the node's certificate disagrees with the topology")?;
        claim_data_dir(&config.data_dir, &config.cluster, &ca)?;
        let audit = open_audit(&config, &certified)?;
        let purges = PurgeLog::open(&config.data_dir)?;
        let tls = tls_configs(&ca, &certified).context("the TLS configuration is unusable")?;

        let handler = Arc::new(LateHandler::<Front>::default());
        let mut addresses: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        for (&id, peer) in &config.peers {
            match resolve_peer(&peer.addr, config.listen).await {
                Ok(addr) => {
                    addresses.insert(id, addr);
                }
                Err(error) => tracing::warn!(
                    peer = %id, address = %peer.addr, %error,
                    "can't resolve a peer's address yet: trying again every few seconds"
                ),
            }
        }
        let quic = QuicNode::bind(
            identity.clone(),
            config.listen,
            &tls,
            topology.clone(),
            addresses.clone(),
            link_tuning(config.listen, &addresses),
            handler.clone(),
        )
        .map_err(|error| anyhow!("can't listen on {}: {error} (is the port in use?)", config.listen))?;

        let stores = DiskStores::open(&config.data_dir.join("store"), identity.node)
            .map_err(|error| anyhow!("{error}"))?
            .with_build_pace(config.raft.snapshot_build_bytes_per_s());
        let groups = file
            .policies
            .values()
            .map(|policy| (policy.clone(), file.legacy_members(&policy.group)));
        let tuning = config.raft;
        let raft_config = group_raft_config(
            &config.cluster,
            tuning.heartbeat_interval_ms,
            tuning.election_timeout_min_ms,
            tuning.election_timeout_max_ms,
        );
        let raft_config = raft_config.and_then(|config| {
            with_snapshot_policy(
                &config,
                tuning.snapshot_every_entries,
                tuning.log_kept_behind_snapshot_entries,
            )
        });
        let raft_config = Arc::new(raft_config.context("invalid Raft timing or snapshot policy")?);
        let me = identity.node;
        let keys = crate::pseudonym_keys::load(&config.pseudonym_keys, &file, identity.country)?;
        let access = ClientAccess::new(file.access.clone(), file.policies.values(), keys);
        let host = Arc::new(
            Host::new(identity, topology, groups, quic.clone(), stores, raft_config)
                .with_round_trips(Arc::new(DeclaredRoundTrips::new(file.round_trips.clone())))
                .with_audit(audit.clone()),
        );
        let router = Router::new(file.policies.values()).context("routing")?;
        let metrics = Arc::new(Metrics::new());
        let service = Arc::new(NodeService::new(
            host.clone(),
            Directory::new(me, &file.topology, router),
            access,
        ));
        handler.install(Arc::new(Front {
            service: service.clone(),
            metrics: metrics.clone(),
        }));

        open_initial_groups(&host, &file).await?;
        Ok(Node {
            config,
            file,
            host,
            quic,
            metrics,
            topology_text: text,
            purges,
            audit,
            service,
            resolved_at_start: addresses,
            round_trips: Default::default(),
        })
    }

    /// Hands each leadership this node holds to the most preferred other voter inside the jurisdiction
    /// that takes it (not one that drains too), and declines leadership from now until a restart.
    pub async fn drain(&self) -> Vec<Handover> {
        let me = self.config.node;
        self.host.start_draining();
        let mut handovers = Vec::new();
        for group in self.host.hosted_groups() {
            let Ok(status) = self.host.status(&group) else {
                continue;
            };
            if status.leader != Some(me) {
                continue;
            }
            let policy = &self.file.policies[&group];
            let fence = match self.host.fence(&group) {
                Ok(fence) => fence,
                Err(error) => {
                    handovers.push(Handover {
                        group: group.0.clone(),
                        to: None,
                        error: Some(error.to_string()),
                    });
                    continue;
                }
            };
            let mut candidates: Vec<NodeId> = status
                .membership
                .voters
                .iter()
                .copied()
                .filter(|&node| node != me && fence.admit_leader(&status.membership, node).is_ok())
                .collect();
            candidates.sort_by_key(|&node| (policy.leader_rank(&self.file.topology, node), node));
            let mut target = None;
            for node in candidates {
                if self.host.takes_leadership(&group, node).await {
                    target = Some(node);
                    break;
                }
            }
            let Some(to) = target else {
                let error = "no other voter inside the jurisdiction takes leadership".to_string();
                handovers.push(Handover {
                    group: group.0.clone(),
                    to: None,
                    error: Some(error),
                });
                continue;
            };
            let step = Step::TransferLeader {
                group: group.clone(),
                to,
            };
            let outcome = self.host.execute(&step).await;
            handovers.push(Handover {
                group: group.0.clone(),
                to: Some(to.0),
                error: outcome.err().map(|error| error.to_string()),
            });
        }
        // Give the new leaders a moment to take over before this node stops answering.
        for _ in 0..30 {
            let still_leading = self.host.hosted_groups().iter().any(|group| {
                self.host
                    .status(group)
                    .is_ok_and(|status| status.leader == Some(me))
            });
            if !still_leading {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        handovers
    }
}

/// Opens the node's audit trail, signed with the key of its certificate; refuses to start on a damaged one.
fn open_audit(config: &NodeConfig, certified: &CertifiedKey) -> anyhow::Result<Arc<AuditLog>> {
    let signer = Signer::from_pem(&certified.cert_pem, &certified.key_pem)
        .context("the node's key can't sign its audit trail")?;
    let clock: audit::Clock = Arc::new(unix_ms);
    let log = AuditLog::open(AuditConfig::new(&config.audit_dir), signer, clock)
        .with_context(|| format!("can't open the audit trail in {}", config.audit_dir.display()))?;
    Ok(Arc::new(log))
}

/// The wall clock, in milliseconds since the Unix epoch: audit entries' time, for monitors.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn own_identity(cert_pem: &str) -> anyhow::Result<raft::identity::NodeIdentity> {
    node_identity_of_pem(cert_pem).context("the node certificate carries no usable node identity")
}

/// The data directory belongs to one cluster: its name and CA are recorded on first start and checked on
/// every start after, so a node pointed at another cluster's data refuses instead of mixing them.
fn claim_data_dir(dir: &Path, cluster: &str, ca_pem: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("can't create the data directory {}", dir.display()))?;
    let marker = dir.join("CLUSTER");
    let identity = format!(
        "cluster {cluster}\nca {:016x}\n",
        raft::routing::stable_hash(ca_pem.trim().as_bytes())
    );
    match std::fs::read_to_string(&marker) {
        Ok(existing) if existing == identity => Ok(()),
        Ok(existing) => bail!(
            "the data directory {} belongs to another cluster ({}), not to `{cluster}` with this CA: refusing to mix their data",
            dir.display(),
            existing.lines().collect::<Vec<_>>().join(", ")
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&marker, identity).with_context(|| format!("can't write {}", marker.display()))
        }
        Err(error) => Err(error).with_context(|| format!("can't read {}", marker.display())),
    }
}

/// The node's front door: routes envelopes to the service and times client calls.
struct Front {
    service: Arc<Service>,
    metrics: Arc<Metrics>,
}

impl Handler<Envelope, EnvelopeResponse> for Front {
    fn handle(
        &self,
        peer: Peer,
        request: Envelope,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = EnvelopeResponse> + Send + '_>> {
        Box::pin(async move {
            let op = match &request {
                Envelope::Client(ClientRequest::Call { op, .. } | ClientRequest::RoutedCall { op, .. }) => {
                    Some(match op {
                        ClientOp::Put { .. } => "put",
                        ClientOp::Get { .. } => "get",
                        ClientOp::Delete { .. } => "delete",
                        ClientOp::CompareAndSet { .. } => "cas",
                        ClientOp::Scan => "scan",
                    })
                }
                _ => None,
            };
            let started = std::time::Instant::now();
            let response = self.service.handle(peer, request).await;
            if let Some(op) = op {
                self.metrics
                    .request_seconds
                    .get_or_create(&OpLabel { op: op.into() })
                    .observe(started.elapsed().as_secs_f64());
            }
            response
        })
    }
}

/// The QUIC tuning for this node's links: loopback's 1 ms first RTT estimate and 5 s request deadline
/// would, between sites, retransmit spuriously before the first round trip is measured and give up on a
/// large frame still in flight over a slow link, so any peer (or listening address) off loopback selects
/// the cross-site tuning. Unresolved peers do not count: a node whose peers all sit on this machine is a
/// same-machine deployment.
fn link_tuning(listen: SocketAddr, peers: &BTreeMap<NodeId, SocketAddr>) -> QuicConfig {
    let off_loopback = |addr: &SocketAddr| !addr.ip().is_loopback() && !addr.ip().is_unspecified();
    if off_loopback(&listen) || peers.values().any(off_loopback) {
        QuicConfig::cross_site()
    } else {
        QuicConfig::loopback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_off_loopback_get_the_cross_site_link_tuning() {
        let local: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7100".parse().unwrap();
        let same_machine: BTreeMap<NodeId, SocketAddr> =
            [(NodeId(2), "127.0.0.1:7102".parse().unwrap())].into();
        let across: BTreeMap<NodeId, SocketAddr> = [
            (NodeId(2), "127.0.0.1:7102".parse().unwrap()),
            (NodeId(3), "10.0.0.3:7100".parse().unwrap()),
        ]
        .into();
        let loopback = QuicConfig::loopback();
        let cross = QuicConfig::cross_site();
        assert_eq!(
            link_tuning(local, &same_machine).initial_rtt,
            loopback.initial_rtt
        );
        assert_eq!(link_tuning(any, &same_machine).initial_rtt, loopback.initial_rtt);
        assert_eq!(link_tuning(local, &across).initial_rtt, cross.initial_rtt);
        let site_address: SocketAddr = "10.0.0.1:7100".parse().unwrap();
        assert_eq!(
            link_tuning(site_address, &BTreeMap::new()).request_timeout,
            cross.request_timeout
        );
    }

    #[test]
    fn a_peer_is_dialled_at_an_address_of_the_listening_family() {
        let v4: SocketAddr = "10.0.0.7:7100".parse().unwrap();
        let v6: SocketAddr = "[fd00::7]:7100".parse().unwrap();
        let listen_v4: SocketAddr = "0.0.0.0:7100".parse().unwrap();
        let listen_v6: SocketAddr = "[::]:7100".parse().unwrap();
        assert_eq!(pick_address(&[v6, v4], listen_v4), Some(v4));
        assert_eq!(pick_address(&[v4, v6], listen_v6), Some(v6));
        assert_eq!(
            pick_address(&[v6], listen_v4),
            Some(v6),
            "the only address is tried"
        );
        assert_eq!(pick_address(&[], listen_v4), None);
    }

    #[tokio::test]
    async fn peer_names_resolve_and_addresses_pass_through() {
        let listen: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        let name: PeerAddress = "localhost:7102".parse().unwrap();
        assert_eq!(
            resolve_peer(&name, listen).await.unwrap(),
            "127.0.0.1:7102".parse::<SocketAddr>().unwrap()
        );
        let ip: PeerAddress = "192.0.2.9:7103".parse().unwrap();
        assert_eq!(
            resolve_peer(&ip, listen).await.unwrap().to_string(),
            "192.0.2.9:7103"
        );
        let nowhere: PeerAddress = "no-such-host.invalid:7104".parse().unwrap();
        assert!(resolve_peer(&nowhere, listen).await.is_err());
    }

    #[test]
    fn a_data_dir_belongs_to_one_cluster() {
        let dir = tempfile::tempdir().unwrap();
        claim_data_dir(dir.path(), "blue", "CA-ONE").unwrap();
        claim_data_dir(dir.path(), "blue", "CA-ONE").unwrap();
        let error = claim_data_dir(dir.path(), "green", "CA-ONE")
            .unwrap_err()
            .to_string();
        assert!(error.contains("another cluster"), "{error}");
        assert!(
            claim_data_dir(dir.path(), "blue", "CA-TWO").is_err(),
            "same name, another CA"
        );
    }
}
