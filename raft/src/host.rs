//! A host runs the replica groups placed on one node.
//!
//! Everything that could move a group's data or authority passes the group's fence here:
//!
//! * membership changes and leader transfers ([`Host::execute`]) are admitted by the placement fence
//!   against the membership openraft holds *now*, and proposed with a precondition that the membership has
//!   not changed since — so openraft is never called with an unadmitted membership, even under a race;
//! * outgoing entries, snapshot chunks and leadership hand-overs are checked by the egress fence in
//!   [`crate::network`];
//! * incoming messages ([`Host::handle`]) are checked by the ingress fence: this node must be allowed to
//!   store the group's data, the sender's attested identity must match the leader or candidate the message
//!   claims to come from, and that would-be leader must stand inside the jurisdiction. A node outside the
//!   jurisdiction that still holds a legacy replica never campaigns (its election timer is off).
//!
//! What it admits and refuses goes into the node's audit trail ([`crate::audit`]); before answering a
//! refused request, or proposing an admitted change, it waits until the trail has it on disk.
//!
//! The host is generic over the openraft runtime (through [`GroupConfig`]), the transport and the stores, so
//! the simulator runs exactly this code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use openraft::Instant as _;
use openraft::alias::{InstantOf, SnapshotMetaOf};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::TypeConfigExt;
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::{ChangeMembers, Raft, Snapshot};
use placement::{FencedMembership, GroupId, GroupPolicy, Membership, NodeId, Refusal, Step, Topology};
use serde::Serialize;
use serde::de::DeserializeOwned;
use storage::record::Ownership;
use storage::snapshot::{SnapshotData, SnapshotSpool};
use storage::state_machine::StateMachine;
use storage::{Command, CommandError, Record, RecordKey, Response, codec};

use crate::audit::{AuditSink, Event, NoAudit, Observation, change_event, describe_step, members};
use crate::config::{GroupConfig, RoundTrips, covering_round_trip, group_round_trip_ms, read_index};
use crate::fault::Isolation;
use crate::identity::NodeIdentity;
use crate::message::{SNAPSHOT_CHUNKS_IN_FLIGHT, SnapshotChunkRef, SnapshotsSent};
use crate::network::{GroupNetworkFactory, MetricsCell, PeerReachability, flatten, membership_of};
use crate::prompt_election::Silence;
use crate::purge::CommittedMembership;
use crate::residency::{GroupFence, IncidentCounts, Incidents, NodeAsClient};
use crate::routing::group_number;
use crate::stores::Stores;
use crate::transport::{PeerRequest, PeerResponse, RequestKind, Transport, TransportError};

/// Chunks of a snapshot a receiver keeps in memory while it waits for an earlier one (the sender has
/// [`SNAPSHOT_CHUNKS_IN_FLIGHT`] in flight, which may arrive in any order): a sender can't make a
/// receiver hold more. The snapshot itself goes to the store's spool as it arrives, bounded by the store.
pub const SNAPSHOT_CHUNKS_AHEAD_MAX: u64 = 2 * SNAPSHOT_CHUNKS_IN_FLIGHT as u64;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Residency(#[from] Refusal),
    #[error("this node does not host group `{0}`")]
    UnknownGroup(String),
    #[error("not the leader of group `{group}`; the leader is {leader:?}")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("group `{group}`: {reason}")]
    Raft { group: GroupId, reason: String },
    #[error("storage: {0}")]
    Store(String),
    #[error("group `{group}` is already open on this node")]
    AlreadyOpen { group: GroupId },
    #[error("step {0:?} runs on the node that holds the replica, not through Raft")]
    LocalStep(Step),
    #[error(
        "{node} is still a member of group `{group}` in the membership its leader {leader} has committed \
         ({membership:?}): its replica is kept"
    )]
    StillMember {
        group: GroupId,
        node: NodeId,
        leader: NodeId,
        membership: Membership,
    },
    #[error(
        "no proof that group `{group}` committed a membership without {node}, so its replica is kept: {reason}"
    )]
    NoRemovalProof {
        group: GroupId,
        node: NodeId,
        reason: String,
    },
    #[error("the audit trail can't record it, so it was not done: {0}")]
    Audit(String),
    /// The group's committed ranges no longer hold the user: a map change moved its range elsewhere.
    #[error(
        "group `{group}` no longer owns the range of this user of `{jurisdiction}` (its ranges are of epoch {epoch})"
    )]
    NotOwned {
        group: GroupId,
        jurisdiction: String,
        epoch: u64,
    },
}

impl HostError {
    /// Whether trying again (possibly at the leader it names) can help. A residency refusal never can.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HostError::NotLeader { .. } | HostError::Raft { .. } | HostError::NoRemovalProof { .. }
        )
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read began (ReadIndex through the leader).
    Linearizable,
    /// This replica's state as of its last applied entry; may lag the leader. Explicitly marked stale.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    pub record: Option<Record>,
    /// True when the read was served from local state without confirming leadership.
    pub stale: bool,
}

/// What a host reports about one of its groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupStatus {
    pub group: GroupId,
    pub jurisdiction: String,
    pub membership: Membership,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub committed: Option<u64>,
    /// Whole snapshots this replica sent as leader, and installed, since it was opened.
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// The last log index the replica's current snapshot covers (none yet: `None`). A replica whose
    /// applied index is a snapshot interval or more past it has a build running or due.
    pub snapshot_index: Option<u64>,
}

struct Group<C: GroupConfig, B: storage::backend::Backend> {
    fence: Arc<GroupFence>,
    raft: Raft<C, StateMachine<C, B>>,
    /// A second handle on the state machine openraft drives, for local reads.
    state_machine: StateMachine<C, B>,
    /// The snapshot being received, chunk by chunk.
    incoming_snapshot: Mutex<Option<IncomingSnapshot<C>>>,
    /// Snapshots sent as leader (counted by the group's network).
    snapshots_sent: Arc<SnapshotsSent>,
    /// When a leader last reached this replica (or when it was opened): a replica that has not heard
    /// from one for long may have been removed while it was away ([`crate::purge`]).
    heard_from_leader: Mutex<InstantOf<C>>,
}

struct IncomingSnapshot<C: GroupConfig> {
    meta: SnapshotMetaOf<C>,
    count: u64,
    /// The next chunk to write into the spool.
    next: u64,
    /// Where the chunks go, each checked as it is written (a file beside the group's store).
    spool: SnapshotSpool,
    /// Chunks that arrived before `next`, at most [`SNAPSHOT_CHUNKS_AHEAD_MAX`].
    early: BTreeMap<u64, Vec<u8>>,
}

pub struct Host<C: GroupConfig, T: Transport, S: Stores<C>> {
    me: NodeIdentity,
    topology: Arc<Topology>,
    /// Every group's policy and legacy members, hosted here or not: a replica is opened on demand when a
    /// legitimate leader first contacts this node, and a message for a group this node must never hold is
    /// an incident, not just an unknown group.
    policies: BTreeMap<u64, (GroupPolicy, BTreeSet<NodeId>)>,
    transport: Arc<T>,
    stores: S,
    /// The base Raft timing; each group's is stretched to cover its sites' worst round trip
    /// ([`Host::with_round_trips`]).
    raft_config: Arc<openraft::Config>,
    round_trips: Option<Arc<dyn RoundTrips>>,
    incidents: Arc<Incidents>,
    /// The node's audit trail (also the one `incidents` records refusals in).
    audit: Arc<dyn AuditSink>,
    /// What [`Host::observe_groups`] last saw of each group: term, leader, membership.
    observed: Mutex<BTreeMap<u64, Observed>>,
    /// Which peers answer, for all groups: a change is logged once, not by every replication stream.
    peers: Arc<PeerReachability<InstantOf<C>>>,
    /// An operator's isolation of this node from its peers, for a drill ([`crate::fault`]).
    isolation: Arc<Isolation<InstantOf<C>>>,
    /// Set once an operator drains this node ([`Host::start_draining`]): it declines leadership offers
    /// until it restarts, so the other nodes' leader preference does not hand back what the drain moved.
    draining: AtomicBool,
    groups: RwLock<GroupTable<C, S::Backend>>,
    /// Groups being opened right now: a second open of the same group (on demand, while start-up opens it)
    /// must not race the first for its files.
    opening: Mutex<BTreeSet<u64>>,
}

/// A group as [`Host::observe_groups`] saw it: term, leader, membership.
type Observed = (u64, Option<NodeId>, Membership);

/// The groups a host runs, by group number.
type GroupTable<C, B> = BTreeMap<u64, Arc<Group<C, B>>>;

impl<C: GroupConfig, T: Transport, S: Stores<C>> Host<C, T, S> {
    pub fn new(
        me: NodeIdentity,
        topology: Arc<Topology>,
        groups: impl IntoIterator<Item = (GroupPolicy, BTreeSet<NodeId>)>,
        transport: Arc<T>,
        stores: S,
        raft_config: Arc<openraft::Config>,
    ) -> Host<C, T, S> {
        let policies = groups
            .into_iter()
            .map(|(policy, legacy)| (group_number(&policy.group), (policy, legacy)))
            .collect();
        let (incidents, groups) = (Arc::default(), RwLock::default());
        let peers = Arc::new(PeerReachability::new(me.node));
        Host {
            me,
            topology,
            policies,
            transport,
            stores,
            raft_config,
            round_trips: None,
            incidents,
            audit: Arc::new(NoAudit),
            observed: Mutex::default(),
            peers,
            isolation: Arc::default(),
            draining: AtomicBool::new(false),
            groups,
            opening: Mutex::default(),
        }
    }

    /// Gives every group opened from now on a Raft timing that covers the worst round trip between the
    /// sites that may hold it (see [`crate::config::HEARTBEAT_ROUND_TRIPS`] for what goes wrong without).
    pub fn with_round_trips(mut self, round_trips: Arc<dyn RoundTrips>) -> Host<C, T, S> {
        self.round_trips = Some(round_trips);
        self
    }

    /// Records what this host admits and refuses in `audit` (by default, nowhere). Call before opening
    /// any group.
    pub fn with_audit(mut self, audit: Arc<dyn AuditSink>) -> Host<C, T, S> {
        assert!(
            self.groups.read().expect("group table lock").is_empty(),
            "the audit trail is set before any group opens, so every group's fence records into it"
        );
        self.incidents = Arc::new(Incidents::with_audit(audit.clone()));
        self.audit = audit;
        self
    }

    /// Records `event` in the node's audit trail (returns at once).
    pub fn record(&self, event: Event) {
        self.audit.record(event);
    }

    /// Waits until everything recorded so far is in the audit trail on disk.
    pub async fn audit_durable(&self) -> Result<(), HostError> {
        self.audit.durable().await.map_err(|error| {
            tracing::error!(%error, "the audit trail can't record");
            HostError::Audit(error)
        })
    }

    /// The Raft configuration of a group: the base, stretched to the group's worst round trip.
    fn group_raft_config(
        &self,
        policy: &GroupPolicy,
        legacy: &BTreeSet<NodeId>,
    ) -> Result<Arc<openraft::Config>, HostError> {
        let Some(round_trips) = &self.round_trips else {
            return Ok(self.raft_config.clone());
        };
        let round_trip_ms = group_round_trip_ms(&self.topology, policy, legacy, round_trips.as_ref());
        covering_round_trip(&self.raft_config, round_trip_ms)
            .map(Arc::new)
            .map_err(|error| HostError::Raft {
                group: policy.group.clone(),
                reason: format!("no valid timing for a {round_trip_ms} ms round trip: {error}"),
            })
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.me
    }

    pub fn incidents(&self) -> IncidentCounts {
        self.incidents.counts()
    }

    /// Counts and logs a client call that arrived under a node's certificate (`NodeAsClient`).
    pub fn refuse_node_as_client(&self, refusal: NodeAsClient) -> NodeAsClient {
        self.incidents.refuse_node_as_client(refusal)
    }

    /// A client call outside the caller's grants: counted, logged and recorded (see [`Incidents`]).
    pub fn forbid_client_call(&self, refusal: crate::audit::ClientRefusal) {
        self.incidents.forbid_client_call(refusal)
    }

    /// A pseudonymised read from outside a jurisdiction: counted and recorded.
    pub fn record_outside_read(&self, read: crate::audit::OutsideRead) {
        self.incidents.record_outside_read(read)
    }

    fn group(&self, group: &GroupId) -> Result<Arc<Group<C, S::Backend>>, HostError> {
        self.hosted(group_number(group))
            .ok_or_else(|| HostError::UnknownGroup(group.0.clone()))
    }

    /// This node's replica of group `number`, if it is open.
    fn hosted(&self, number: u64) -> Option<Arc<Group<C, S::Backend>>> {
        self.groups
            .read()
            .expect("group table lock")
            .get(&number)
            .cloned()
    }

    /// Opens (or recovers) this node's replica of a group. `legacy` lists the group's members outside its
    /// jurisdiction that predate the fence. Refused if this node may not hold the group's data.
    pub async fn open_group(&self, policy: GroupPolicy, legacy: BTreeSet<NodeId>) -> Result<(), HostError> {
        let number = group_number(&policy.group);
        let name = policy.group.clone();
        let open = self
            .groups
            .read()
            .expect("group table lock")
            .contains_key(&number);
        if open || !self.opening.lock().expect("opening set lock").insert(number) {
            return Err(HostError::AlreadyOpen { group: name });
        }
        let opened = self.open_claimed(number, policy, legacy).await;
        self.opening.lock().expect("opening set lock").remove(&number);
        opened
    }

    /// Opens a group whose number this call has claimed in `opening`.
    async fn open_claimed(
        &self,
        number: u64,
        policy: GroupPolicy,
        legacy: BTreeSet<NodeId>,
    ) -> Result<(), HostError> {
        let name = policy.group.clone();
        let raft_config = self.group_raft_config(&policy, &legacy)?;
        let fence = Arc::new(GroupFence::new(
            number,
            policy,
            self.topology.clone(),
            legacy,
            self.incidents.clone(),
        ));
        fence.check_ingress(self.me.node)?;
        let opened = self
            .stores
            .open_group(number)
            .map_err(|error| HostError::Store(error.to_string()))?;
        let (log, state_machine) = (opened.log, opened.state_machine);
        let metrics: MetricsCell<C> = Arc::new(OnceLock::new());
        let snapshots_sent = Arc::new(SnapshotsSent::default());
        let network = GroupNetworkFactory {
            snapshots: snapshots_sent.clone(),
            fence: fence.clone(),
            transport: self.transport.clone(),
            metrics: metrics.clone(),
            peers: self.peers.clone(),
            isolation: self.isolation.clone(),
        };
        let raft = Raft::new(self.me.node.0, raft_config, network, log, state_machine.clone())
            .await
            .map_err(|error| HostError::Raft {
                group: name.clone(),
                reason: error.to_string(),
            })?;
        let _ = metrics.set(raft.metrics());
        #[cfg(feature = "canaries")]
        let planted = crate::residency::canary::ingress_off();
        #[cfg(not(feature = "canaries"))]
        let planted = false;
        if !self.topology.is_inside(self.me.node, &fence.policy.jurisdiction) && !planted {
            // A legacy replica outside the jurisdiction replicates but never campaigns. Its peers refuse its
            // votes anyway (ingress); this keeps it from trying and from inflating terms.
            raft.runtime_config().elect(false);
        }
        let group = Group {
            fence,
            raft,
            state_machine,
            incoming_snapshot: Mutex::new(None),
            snapshots_sent,
            heard_from_leader: Mutex::new(C::now()),
        };
        self.groups
            .write()
            .expect("group table lock")
            .insert(number, Arc::new(group));
        Ok(())
    }

    /// Whether this node's replica of `group` was purged ([`crate::purge`]) and not brought back since.
    pub fn is_retired(&self, group: &GroupId) -> bool {
        self.stores.is_retired(group_number(group))
    }

    /// Where this node's purge of its replica of `group` stands, while one runs ([`crate::purge`]).
    pub fn purge_state(&self, group: &GroupId) -> Option<crate::stores::PurgeState> {
        self.stores.purge_state(group_number(group))
    }

    /// How long since a leader last reached this node's replica of `group` (or since it was opened).
    pub fn leader_silence(&self, group: &GroupId) -> Result<Duration, HostError> {
        let replica = self.group(group)?;
        let heard = *replica.heard_from_leader.lock().expect("leader contact lock");
        Ok(C::now().saturating_duration_since(heard))
    }

    /// What [`crate::prompt_election`] needs of this node's replica of `group`: its leader, how long that
    /// leader has been silent, the group's timing and whose turn it is to campaign. `None` if the leader
    /// was heard within its lease, or this node follows no leader, leads, is no voter, or drains (it
    /// declines leadership: [`Host::start_draining`]).
    pub fn silence(&self, group: &GroupId) -> Result<Option<Silence<InstantOf<C>>>, HostError> {
        let replica = self.group(group)?;
        let me = self.me.node;
        let config = replica.raft.config();
        let lease = Duration::from_millis(config.election_timeout_max);
        let heard = *replica.heard_from_leader.lock().expect("leader contact lock");
        let silent_for = C::now().saturating_duration_since(heard);
        // Asked every few milliseconds of every group: the common answer, a leader heard, costs no more.
        if silent_for < lease || self.is_draining() {
            return Ok(None);
        }
        let receiver = replica.raft.metrics();
        let metrics = receiver.borrow_watched();
        let voters = membership_of::<C>(&metrics).voters;
        let Some(leader) = metrics.current_leader.map(NodeId) else {
            return Ok(None);
        };
        if leader == me || !voters.contains(&me) {
            return Ok(None);
        }
        let policy = &replica.fence.policy;
        // Only nodes inside the jurisdiction take a turn: the others never campaign (and peers refuse
        // their votes), so a turn given to one would be a turn lost.
        let mut turns: Vec<NodeId> = voters
            .into_iter()
            .filter(|&node| node != leader && self.topology.is_inside(node, &policy.jurisdiction))
            .collect();
        turns.sort_by_key(|&node| (policy.leader_rank(&self.topology, node), node));
        Ok(Some(Silence {
            leader,
            heard,
            silent_for,
            turns,
            lease,
            heartbeat: Duration::from_millis(config.heartbeat_interval),
        }))
    }

    /// Starts a pre-vote for `group` now, as [`crate::prompt_election`] decided: openraft does not start
    /// it while its leader's lease is valid, and the peers grant it only when theirs has expired too.
    pub(crate) async fn campaign_after_silence(&self, group: &GroupId) -> Result<(), HostError> {
        let replica = self.group(group)?;
        if !self
            .topology
            .is_inside(self.me.node, &replica.fence.policy.jurisdiction)
        {
            // Checked again here, where the campaign starts: openraft's trigger ignores the election timer
            // that is off for a replica outside the jurisdiction.
            return Ok(());
        }
        trigger_election(&replica.raft, group, true).await
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Deletes this node's replica of `group`, which `proof` shows a committed membership leaves out
    /// (the caller, [`crate::purge::purge_replica`], verified it). The group is closed first and can't
    /// be opened meanwhile; then its log is retired durably and its state machine removed. A leader
    /// that adds this node back later finds an empty replica and fills it.
    pub(crate) async fn retire(&self, group: &GroupId, proof: &CommittedMembership) -> Result<(), HostError> {
        let number = group_number(group);
        assert!(
            proof.group == number && !proof.contains(self.me.node),
            "retiring {group} on {} from a proof that does not leave it out: {proof:?}",
            self.me.node
        );
        if !self.opening.lock().expect("opening set lock").insert(number) {
            return Err(HostError::Raft {
                group: group.clone(),
                reason: "the replica is being opened; purge it later".into(),
            });
        }
        let closed = self.groups.write().expect("group table lock").remove(&number);
        let retired = async {
            if let Some(replica) = closed
                && let Err(error) = replica.raft.shutdown().await
            {
                tracing::warn!(%group, %error, "the group's Raft instance stopped with an error");
            }
            self.stores
                .retire_group(number)
                .await
                .map_err(|error| HostError::Store(error.to_string()))
        }
        .await;
        self.opening.lock().expect("opening set lock").remove(&number);
        retired
    }

    /// What a peer asking to purge its replica of group `number` needs: the membership the group has
    /// committed. Only the leader answers, after confirming with a quorum that it still leads (ReadIndex),
    /// so no deposed leader's view is taken for the group's; and only a membership that is committed.
    /// It names nodes, never data, and never opens a replica.
    async fn serve_committed_membership(&self, number: u64) -> PeerResponse {
        let failed = |reason: String| PeerResponse::Failed {
            group: number,
            reason,
        };
        let Some(replica) = self.hosted(number) else {
            return PeerResponse::Refused {
                group: number,
                reason: format!("{} holds no replica of group {number}", self.me.node),
            };
        };
        let leader = replica.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.me.node.0) {
            return failed(format!("not the leader; the leader is {leader:?}"));
        }
        if let Err(error) = replica
            .raft
            .ensure_linearizable(read_index(replica.raft.config()))
            .await
        {
            return failed(error.to_string());
        }
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let membership_index = metrics
            .membership_config
            .log_id()
            .as_ref()
            .map_or(0, |log_id| log_id.index);
        let committed = metrics.local_committed.as_ref().map_or(0, |log_id| log_id.index);
        if metrics.current_leader != Some(self.me.node.0) || membership_index > committed {
            return failed("a membership change is in progress".into());
        }
        let membership = membership_of::<C>(&metrics);
        let proof = CommittedMembership {
            group: number,
            leader: self.me.node.0,
            term: metrics.vote.leader_id().term(),
            log_index: membership_index,
            voters: membership.voters.iter().map(|node| node.0).collect(),
            learners: membership.learners.iter().map(|node| node.0).collect(),
        };
        match codec::encode(&proof) {
            Ok(bytes) => PeerResponse::Ok(bytes),
            Err(error) => failed(error.to_string()),
        }
    }

    /// The groups this node holds a replica of, by name.
    pub fn hosted_groups(&self) -> Vec<GroupId> {
        let groups = self.groups.read().expect("group table lock");
        let mut names: Vec<GroupId> = groups
            .values()
            .map(|group| group.fence.policy.group.clone())
            .collect();
        names.sort();
        names
    }

    /// Records in the audit trail what changed in each hosted group since the last call — its term, its
    /// leader or its membership — with the fence's verdict on the leader and members now. The node calls
    /// it every 200 ms: a leadership shorter than that may go unrecorded here (the node that held it
    /// records its own transfers and refusals). Returns the groups that changed.
    pub fn observe_groups(&self) -> Vec<GroupId> {
        let replicas: GroupTable<C, S::Backend> = self.groups.read().expect("group table lock").clone();
        let mut observed = self.observed.lock().expect("observed groups lock");
        let mut changed = Vec::new();
        for (number, replica) in replicas {
            let (term, leader, membership) = {
                let metrics = replica.raft.metrics();
                let metrics = metrics.borrow_watched();
                (
                    metrics.vote.leader_id().term(),
                    metrics.current_leader.map(NodeId),
                    membership_of::<C>(&metrics),
                )
            };
            let now = (term, leader, membership);
            if observed.get(&number) == Some(&now) {
                continue;
            }
            let fence = &replica.fence;
            let jurisdiction = &fence.policy.jurisdiction;
            let outside: Vec<NodeId> = now
                .2
                .members()
                .filter(|&node| !self.topology.is_inside(node, jurisdiction))
                .collect();
            let admitted = now
                .1
                .is_none_or(|leader| self.topology.is_inside(leader, jurisdiction))
                && outside.iter().all(|&node| fence.is_legacy(node));
            self.audit.record(Event::GroupObserved(Observation {
                group: fence.policy.group.0.clone(),
                jurisdiction: jurisdiction.name().to_string(),
                term: now.0,
                leader: now.1.map(|leader| leader.0),
                members: members(&now.2),
                admitted,
                outside: outside.iter().map(|node| node.0).collect(),
            }));
            changed.push(fence.policy.group.clone());
            observed.insert(number, now);
        }
        changed
    }

    /// Whether the group's replica here has a membership yet (bootstrapped, or joined by a leader).
    pub async fn is_initialized(&self, group: &GroupId) -> Result<bool, HostError> {
        let replica = self.group(group)?;
        replica
            .raft
            .is_initialized()
            .await
            .map_err(|error| HostError::Raft {
                group: group.clone(),
                reason: error.to_string(),
            })
    }

    /// The group's fence on this node, for admitting a membership (e.g. before [`Host::bootstrap`]).
    pub fn fence(&self, group: &GroupId) -> Result<Arc<GroupFence>, HostError> {
        Ok(self.group(group)?.fence.clone())
    }

    /// Starts a new group with an admitted membership. Call on one node only.
    pub async fn bootstrap(&self, membership: FencedMembership) -> Result<(), HostError> {
        let group = self.group(membership.group())?;
        assert!(
            membership.membership().learners.is_empty(),
            "a group is bootstrapped with voters only"
        );
        let voters: BTreeSet<u64> = membership.membership().voters.iter().map(|node| node.0).collect();
        group
            .raft
            .initialize(voters)
            .await
            .map_err(|error| HostError::Raft {
                group: membership.group().clone(),
                reason: error.to_string(),
            })
    }

    /// Executes one planner step that changes membership or leadership. Runs on the group's leader. An
    /// admitted change is in the audit trail before it is proposed; a refused one before it is answered.
    pub async fn execute(&self, step: &Step) -> Result<(), HostError> {
        let outcome = self.execute_admitted(step).await;
        if let Err(HostError::Residency(_)) = &outcome {
            // The refusal is the answer either way; a trail that can't record it is logged and alerted on.
            let _ = self.audit_durable().await;
        }
        outcome
    }

    /// Records an admitted change and waits until it is on disk: no change is proposed unrecorded.
    async fn record_change(
        &self,
        group: &GroupId,
        step: String,
        from: &Membership,
        to: &Membership,
    ) -> Result<(), HostError> {
        self.record(change_event(group, step, from, to));
        self.audit_durable().await
    }

    async fn execute_admitted(&self, step: &Step) -> Result<(), HostError> {
        let name = step.group().clone();
        let group = self.group(&name)?;
        let raft_error = |reason: String| HostError::Raft {
            group: name.clone(),
            reason,
        };
        let metrics = group.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.me.node.0) {
            return Err(HostError::NotLeader {
                group: name,
                leader: metrics.current_leader.map(NodeId),
            });
        }
        let current = membership_of::<C>(&metrics);
        if metrics.membership_config.membership().get_joint_config().len() > 1 {
            // A joint configuration left behind (a leader change, or a caller gone, between openraft's two
            // membership steps). `current` is its union, but openraft applies the next relative change to
            // its target half — so admitting against `current` would check one membership and commit
            // another (the simulator found this: a removal admitted from four voters committed two). Finish
            // the transition first; the caller plans again from the membership it leads to. Finishing is a
            // membership change too, so it is admitted by the fence like any other: the target half's
            // voters, with the voters it drops kept as learners (`retain`).
            let joint = metrics.membership_config.membership().get_joint_config();
            let target_voters: BTreeSet<NodeId> = joint
                .last()
                .map(|voters| voters.iter().copied().map(NodeId).collect())
                .unwrap_or_default();
            let target_learners = current
                .learners
                .iter()
                .chain(&current.voters)
                .copied()
                .filter(|node| !target_voters.contains(node));
            let target = Membership::new(target_voters.iter().copied(), target_learners.collect::<Vec<_>>());
            group.fence.admit_change(&current, &target)?;
            let finish = format!(
                "finish the joint membership left behind (before {})",
                describe_step(step)
            );
            self.record_change(&name, finish, &current, &target).await?;
            let precondition = openraft::raft::Precondition::LastMembershipLogId {
                last_membership_log_id: metrics.membership_config.log_id().clone(),
            };
            group
                .raft
                .change_membership_if(ChangeMembers::AddVoterIds(BTreeSet::new()), true, [precondition])
                .await
                .map_err(|error| raft_error(error.to_string()))?;
            return Err(raft_error(format!(
                "finished a joint membership left behind; plan {step:?} again from {:?}",
                membership_of::<C>(&group.raft.metrics().borrow_watched())
            )));
        }

        if let Step::TransferLeader { to, .. } = step {
            let leader = group.fence.admit_leader(&current, *to)?;
            self.record_change(&name, describe_step(step), &current, &current)
                .await?;
            return group
                .raft
                .trigger()
                .transfer_leader(leader.node().0)
                .await
                .map_err(|error| raft_error(error.to_string()));
        }
        let Some(proposed) = step.next_membership(&current) else {
            return Err(HostError::LocalStep(step.clone()));
        };
        let fenced = group.fence.admit_change(&current, &proposed)?;
        let (change, retain) = match step {
            Step::AddLearner { node, .. } => (ChangeMembers::AddNodes(BTreeMap::from([(node.0, ())])), true),
            Step::PromoteVoter { node, .. } => (ChangeMembers::AddVoterIds(BTreeSet::from([node.0])), true),
            Step::DemoteVoter { node, .. } => (ChangeMembers::RemoveVoters(BTreeSet::from([node.0])), true),
            Step::RemoveMember { node, .. } if current.voters.contains(node) => {
                (ChangeMembers::RemoveVoters(BTreeSet::from([node.0])), false)
            }
            Step::RemoveMember { node, .. } => (ChangeMembers::RemoveNodes(BTreeSet::from([node.0])), false),
            Step::CreateGroup { .. } | Step::TransferLeader { .. } | Step::PurgeReplica { .. } => {
                return Err(HostError::LocalStep(step.clone()));
            }
        };
        self.record_change(&name, describe_step(step), &current, fenced.membership())
            .await?;
        // Admitted against `current`: propose only if the membership is still the one we checked.
        let precondition = openraft::raft::Precondition::LastMembershipLogId {
            last_membership_log_id: metrics.membership_config.log_id().clone(),
        };
        let written = group
            .raft
            .change_membership_if(change, retain, [precondition])
            .await
            .map_err(|error| raft_error(error.to_string()))?;
        // The pair of the admission above: what openraft committed is what the fence admitted. Read it
        // from the committed entry openraft answers with, not from the metrics, which the core publishes
        // after it answers (a race the simulator's per-node clocks exposed: stale metrics, a false alarm).
        if let Some(committed) = &written.membership {
            assert_eq!(
                &flatten::<C>(committed),
                fenced.membership(),
                "openraft committed a membership other than the one the fence admitted: {step:?} from {current:?} \
                 (membership log id {:?}), answered with entry {:?}",
                metrics.membership_config.log_id(),
                written.log_id
            );
        }
        Ok(())
    }

    /// Honours the group's leader preference: if this node leads `group` and a voter the policy prefers
    /// more is inside the jurisdiction and fully caught up, leadership moves to it (through the fence).
    /// Returns the node it moved to. Never moves leadership to a lagging or less preferred node.
    pub async fn honour_leader_preference(&self, group: &GroupId) -> Result<Option<NodeId>, HostError> {
        let replica = self.group(group)?;
        let metrics = replica.raft.metrics().borrow_watched().clone();
        let me = self.me.node;
        if metrics.current_leader != Some(me.0) {
            return Ok(None);
        }
        let policy = &replica.fence.policy;
        let rank = |node: NodeId| policy.leader_rank(&self.topology, node);
        let caught_up = |node: NodeId| {
            let matched = metrics
                .replication
                .as_ref()
                .and_then(|progress| progress.get(&node.0).cloned().flatten());
            matched.map(|log_id| log_id.index) == metrics.last_log_index
        };
        let preferred = membership_of::<C>(&metrics)
            .voters
            .iter()
            .copied()
            .filter(|&node| node != me && rank(node) < rank(me))
            .filter(|&node| self.topology.is_inside(node, &policy.jurisdiction) && caught_up(node))
            .min_by_key(|&node| (rank(node), node));
        let Some(to) = preferred else { return Ok(None) };
        if !self.takes_leadership(group, to).await {
            return Ok(None);
        }
        self.execute(&Step::TransferLeader {
            group: group.clone(),
            to,
        })
        .await?;
        Ok(Some(to))
    }

    /// From now until this node restarts, it declines leadership offers ([`Host::takes_leadership`]):
    /// an operator drained it, and the leader preference of the groups it is a voter of must not hand
    /// leadership straight back (it did, within two seconds, to an evacuated site's preferred node).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether `to` takes leadership of `group` now, by its own answer: a node that drains, holds no
    /// replica, or does not answer does not. Asked before a handover that is a preference, not a need.
    pub async fn takes_leadership(&self, group: &GroupId, to: NodeId) -> bool {
        let request = PeerRequest {
            group: group_number(group),
            kind: RequestKind::LeadershipOffer,
            carries_data: false,
            body: Vec::new(),
        };
        match self.ask_peer(to, request).await {
            Ok(PeerResponse::Ok(bytes)) => codec::decode::<bool>(&bytes).unwrap_or(false),
            Ok(_) | Err(_) => false,
        }
    }

    /// Asks this node to campaign for leadership of `group` now (failover drills). It still needs a quorum
    /// of votes, and its peers refuse to vote for a candidate outside the jurisdiction.
    pub async fn campaign(&self, group: &GroupId) -> Result<(), HostError> {
        let replica = self.group(group)?;
        trigger_election(&replica.raft, group, false).await
    }

    /// An injected fault (simulation only): this node's network for `group` is asked to replicate an
    /// entry to `target`, as a replication stream left over from a stale membership view or a stale peer
    /// route would. The request goes through exactly the path openraft's own replication takes, so when
    /// `target` may not hold the group's data, the egress fence is the one thing that stops it.
    #[cfg(feature = "fault-points")]
    pub async fn send_stray_append(&self, group: &GroupId, target: NodeId) -> Result<(), String> {
        use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
        let replica = self.group(group).map_err(|error| error.to_string())?;
        let metrics = replica.raft.metrics();
        let (vote, last_applied) = {
            let now = metrics.borrow_watched();
            (now.vote.clone(), now.last_applied.clone())
        };
        let Some(log_id) = last_applied else {
            return Err(format!("{group} has applied nothing yet"));
        };
        let cell: MetricsCell<C> = Arc::new(OnceLock::new());
        let _ = cell.set(metrics);
        let mut factory = GroupNetworkFactory::<C, T> {
            fence: replica.fence.clone(),
            transport: self.transport.clone(),
            metrics: cell,
            peers: self.peers.clone(),
            isolation: self.isolation.clone(),
            snapshots: replica.snapshots_sent.clone(),
        };
        let mut network = factory.new_client(target.0, &()).await;
        let request = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            leader_commit: None,
            entries: vec![<C::Entry as openraft::entry::RaftEntry>::new_blank(log_id)],
        };
        network
            .append_entries(request, RPCOption::new(Duration::from_secs(1)))
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// Waits until `node` has replicated everything the leader had when the wait began (a learner caught up).
    pub async fn wait_caught_up(
        &self,
        group: &GroupId,
        node: NodeId,
        timeout: Duration,
    ) -> Result<(), HostError> {
        let replica = self.group(group)?;
        let target = replica.raft.metrics().borrow_watched().last_log_index;
        replica
            .raft
            .wait(Some(timeout))
            .metrics(
                |metrics| {
                    let matched = metrics
                        .replication
                        .as_ref()
                        .and_then(|progress| progress.get(&node.0).cloned().flatten());
                    matched.map(|log_id| log_id.index) >= target
                },
                format!("{node} catching up"),
            )
            .await
            .map(|_| ())
            .map_err(|error| HostError::Raft {
                group: group.clone(),
                reason: error.to_string(),
            })
    }

    /// Proposes a write; returns the state machine's response once committed and applied.
    pub async fn write(&self, group: &GroupId, command: Command) -> Result<Response, HostError> {
        let replica = self.group(group)?;
        // Fault point (simulation only): the proposal reaches Raft late (a busy node), so a write can
        // land after a leader change its client did not see.
        if let Some(delay_ms) = crate::sim::maybe_delay_ms("host.write.late", 300) {
            C::sleep(Duration::from_millis(delay_ms)).await;
        }
        let proposed = C::now();
        let written = replica.raft.client_write(command).await;
        // Proposal to applied, on the leader (docs/performance.md, the WAN breakdown).
        tracing::debug!(
            %group, took_us = (C::now() - proposed).as_micros() as u64,
            "write committed and applied"
        );
        match written {
            Ok(written) => Ok(written.data),
            Err(error) => Err(match error.forward_to_leader() {
                Some(forward) => HostError::NotLeader {
                    group: group.clone(),
                    leader: forward.leader_id.map(NodeId),
                },
                None => HostError::Raft {
                    group: group.clone(),
                    reason: error.to_string(),
                },
            }),
        }
    }

    pub async fn read(
        &self,
        group: &GroupId,
        key: RecordKey,
        consistency: ReadConsistency,
    ) -> Result<ReadOutcome, HostError> {
        let replica = self.group(group)?;
        if consistency == ReadConsistency::Linearizable {
            replica
                .raft
                .ensure_linearizable(read_index(replica.raft.config()))
                .await
                .map_err(|error| match error.forward_to_leader() {
                    Some(forward) => HostError::NotLeader {
                        group: group.clone(),
                        leader: forward.leader_id.map(NodeId),
                    },
                    None => HostError::Raft {
                        group: group.clone(),
                        reason: error.to_string(),
                    },
                })?;
        }
        // After the ReadIndex round the replica has applied every entry committed before the read began,
        // its ranges included: a user whose range moved is refused, not read from a copy left behind.
        let record = match replica
            .state_machine
            .read_owned_record(key)
            .await
            .map_err(|error| HostError::Store(error.to_string()))?
        {
            Ok(record) => record,
            Err(CommandError::NotOwned {
                jurisdiction, epoch, ..
            }) => {
                return Err(HostError::NotOwned {
                    group: group.clone(),
                    jurisdiction,
                    epoch,
                });
            }
            Err(other) => return Err(HostError::Store(other.to_string())),
        };
        Ok(ReadOutcome {
            record,
            stale: consistency == ReadConsistency::Stale,
        })
    }

    /// The Raft timing a hosted group runs with: the base, stretched to the group's round trips when it
    /// was opened. openraft fixes it for the life of the Raft instance.
    pub fn group_timing(&self, group: &GroupId) -> Result<Arc<openraft::Config>, HostError> {
        Ok(self.group(group)?.raft.config().clone())
    }

    /// What this replica holds under `key` as of its last applied entry, whether or not the group still
    /// owns the user's range: what the copy of a moved range will read from the group losing it (issue
    /// 19's next step), never an answer to a client.
    pub async fn read_local_copy(
        &self,
        group: &GroupId,
        key: RecordKey,
    ) -> Result<Option<Record>, HostError> {
        self.group(group)?
            .state_machine
            .read_record(key)
            .await
            .map_err(|error| HostError::Store(error.to_string()))
    }

    /// A linearizable barrier on the group's leader: after it, this replica has applied every entry
    /// committed before the call began (`NotLeader` on a follower).
    async fn barrier(&self, group: &GroupId) -> Result<(), HostError> {
        let replica = self.group(group)?;
        replica
            .raft
            .ensure_linearizable(read_index(replica.raft.config()))
            .await
            .map(|_| ())
            .map_err(|error| match error.forward_to_leader() {
                Some(forward) => HostError::NotLeader {
                    group: group.clone(),
                    leader: forward.leader_id.map(NodeId),
                },
                None => HostError::Raft {
                    group: group.clone(),
                    reason: error.to_string(),
                },
            })
    }

    /// A bounded run of the records `group` holds of `jurisdiction` in `ranges` after `after`, read on
    /// its leader after a linearizable barrier, owned, incoming or departing alike: the range copy's
    /// read ([`crate::range_copy`]), never a client's.
    pub async fn read_range(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
        after: Option<RecordKey>,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<storage::apply::RangeBatch, HostError> {
        self.barrier(group).await?;
        self.group(group)?
            .state_machine
            .read_range(
                jurisdiction.to_string(),
                ranges.to_vec(),
                after,
                records_max,
                bytes_max,
            )
            .await
            .map_err(|error| HostError::Store(error.to_string()))
    }

    /// How many records this replica of `group` holds, from the store's count (no barrier: a local
    /// figure, as of its last applied entry).
    pub async fn record_count(&self, group: &GroupId) -> Result<u64, HostError> {
        self.group(group)?
            .state_machine
            .record_count()
            .await
            .map_err(|error| HostError::Store(error.to_string()))
    }

    /// The client sessions `group` remembers after client `after` (at most `sessions_max`), on its leader
    /// after a linearizable barrier: what a range copy carries to the gaining group.
    pub async fn read_sessions(
        &self,
        group: &GroupId,
        after: Option<u64>,
        sessions_max: usize,
    ) -> Result<storage::apply::SessionBatch, HostError> {
        self.barrier(group).await?;
        self.group(group)?
            .state_machine
            .read_sessions(after, sessions_max)
            .await
            .map_err(|error| HostError::Store(error.to_string()))
    }

    /// The digest of what `group` holds of `jurisdiction` in `ranges`, on its leader after a
    /// linearizable barrier.
    pub async fn range_digest(
        &self,
        group: &GroupId,
        jurisdiction: &str,
        ranges: &[(u64, u64)],
    ) -> Result<storage::apply::RangeDigest, HostError> {
        self.barrier(group).await?;
        self.group(group)?
            .state_machine
            .range_digest(jurisdiction.to_string(), ranges.to_vec())
            .await
            .map_err(|error| HostError::Store(error.to_string()))
    }

    /// The ranges `group` has committed and those it is receiving, on its leader after a linearizable
    /// barrier: what a resumed range copy reads to find where it stands.
    pub async fn range_state(
        &self,
        group: &GroupId,
    ) -> Result<(Option<Ownership>, Option<Ownership>), HostError> {
        self.barrier(group).await?;
        let replica = self.group(group)?;
        let store = |error: storage::error::StateMachineError| HostError::Store(error.to_string());
        let owned = replica.state_machine.ownership().await.map_err(store)?;
        let incoming = replica.state_machine.incoming().await.map_err(store)?;
        Ok((owned, incoming))
    }

    /// openraft's metrics of a hosted group, as of now.
    pub fn raft_metrics(&self, group: &GroupId) -> Result<openraft::RaftMetrics<C>, HostError> {
        Ok(self.group(group)?.raft.metrics().borrow_watched().clone())
    }

    pub fn status(&self, group: &GroupId) -> Result<GroupStatus, HostError> {
        let replica = self.group(group)?;
        // Read in place: a status is asked for often (the simulator's observer, client routing), and
        // cloning openraft's whole metrics (replication and heartbeat maps) for six fields is most of it.
        let receiver = replica.raft.metrics();
        let metrics = receiver.borrow_watched();
        Ok(GroupStatus {
            group: group.clone(),
            jurisdiction: replica.fence.policy.jurisdiction.name().to_string(),
            membership: membership_of::<C>(&metrics),
            leader: metrics.current_leader.map(NodeId),
            term: metrics.vote.leader_id().term(),
            last_applied: metrics.last_applied.as_ref().map(|log_id| log_id.index),
            committed: metrics.local_committed.as_ref().map(|log_id| log_id.index),
            snapshots_sent: replica.snapshots_sent.get(),
            snapshots_installed: replica.state_machine.snapshots_installed(),
            snapshot_index: metrics.snapshot.as_ref().map(|log_id| log_id.index),
        })
    }

    /// Stops every group (their logs and state machines stay on disk).
    pub async fn shutdown(&self) {
        // Requests the shutdown cuts short say nothing about the peers they were for.
        self.peers.stop();
        let groups: Vec<_> = self
            .groups
            .write()
            .expect("group table lock")
            .values()
            .cloned()
            .collect();
        for group in groups {
            let _ = group.raft.shutdown().await;
        }
    }

    /// Whether `peer` may read the routing metadata in this node's replica of the request's group: the
    /// replica must be here (a directory read never opens one), and the metadata is the group's data, so it
    /// goes only where the group's data may go — the egress fence decides on the peer's attested site, and
    /// a refusal is an incident. Returns the group and the jurisdiction asked for.
    pub fn admit_directory_read(
        &self,
        peer: &NodeIdentity,
        request: &PeerRequest,
    ) -> Result<(GroupId, String), PeerResponse> {
        let number = request.group;
        let refuse = |reason: String| PeerResponse::Refused {
            group: number,
            reason,
        };
        let Some(group) = self.hosted(number) else {
            return Err(refuse(format!(
                "{} holds no replica of group {number}",
                self.me.node
            )));
        };
        let membership = membership_of::<C>(&group.raft.metrics().borrow_watched());
        if let Err(refusal) = group.fence.check_egress(peer.node, &membership) {
            return Err(refuse(refusal.to_string()));
        }
        let jurisdiction: String = codec::decode(&request.body)
            .map_err(|error| refuse(format!("undecodable directory read: {error}")))?;
        let policy = &group.fence.policy;
        if jurisdiction != policy.jurisdiction.name() {
            return Err(refuse(format!(
                "group `{}` keeps the routing metadata of `{}`, not of `{jurisdiction}`",
                policy.group,
                policy.jurisdiction.name()
            )));
        }
        Ok((policy.group.clone(), jurisdiction))
    }

    /// This node's isolation from its peers, which an operator may set for a drill ([`crate::fault`]).
    pub fn isolation(&self) -> &Isolation<InstantOf<C>> {
        &self.isolation
    }

    /// Whether messages to and from `peer` are dropped now, by an isolation in force (counted if so).
    pub fn isolated_from(&self, peer: NodeId) -> bool {
        self.isolation.blocks(peer, C::now())
    }

    /// Sends a request of this host's own (not a group's Raft traffic) to a peer.
    pub async fn ask_peer(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, TransportError> {
        if self.isolated_from(to) {
            return Err(TransportError::Unreachable(
                to,
                "isolated by a fault injection".into(),
            ));
        }
        self.transport.send(to, request).await
    }

    /// Serves a message from a peer whose identity the transport authenticated. A refusal is answered
    /// only once the audit trail holds it.
    pub async fn handle(&self, peer: &NodeIdentity, request: PeerRequest) -> PeerResponse {
        let response = self.serve_peer(peer, request).await;
        if let PeerResponse::Refused { .. } = &response {
            let _ = self.audit_durable().await;
        }
        response
    }

    async fn serve_peer(&self, peer: &NodeIdentity, request: PeerRequest) -> PeerResponse {
        if request.kind == RequestKind::CommittedMembership {
            return self.serve_committed_membership(request.group).await;
        }
        if request.kind == RequestKind::LeadershipOffer {
            let takes = !self.is_draining() && self.hosted(request.group).is_some();
            return match codec::encode(&takes) {
                Ok(bytes) => PeerResponse::Ok(bytes),
                Err(error) => PeerResponse::Failed {
                    group: request.group,
                    reason: error.to_string(),
                },
            };
        }
        if request.kind == RequestKind::DirectoryRead {
            // Without a service on this endpoint, answer with what the replica holds.
            let (group, jurisdiction) = match self.admit_directory_read(peer, &request) {
                Ok(admitted) => admitted,
                Err(refused) => return refused,
            };
            let key = crate::directory::shard_map_key(&jurisdiction);
            return match self.read(&group, key, ReadConsistency::Stale).await {
                Ok(read) => match codec::encode(&read.record.map(|record| record.value)) {
                    Ok(bytes) => PeerResponse::Ok(bytes),
                    Err(error) => PeerResponse::Failed {
                        group: request.group,
                        reason: error.to_string(),
                    },
                },
                Err(error) => PeerResponse::Failed {
                    group: request.group,
                    reason: error.to_string(),
                },
            };
        }
        let number = request.group;
        let group = match self.hosted(number) {
            Some(group) => group,
            // Only a leader replicating to this node may make it open a replica: a vote asked of an empty
            // replica opened for the asking would be granted (an empty log is behind every candidate's),
            // so a node removed from the group, still holding its old membership, could gather a quorum of
            // that membership from replicas purged since and lead a second group beside the real one (the
            // simulator's `grow` found it: seed 3, before this).
            None if !matches!(
                request.kind,
                RequestKind::AppendEntries | RequestKind::SnapshotChunk
            ) =>
            {
                return PeerResponse::Refused {
                    group: number,
                    reason: format!(
                        "{} holds no replica of group {number}, and a {} opens none",
                        self.me.node,
                        request.kind.name()
                    ),
                };
            }
            None => match self.open_on_demand(number).await {
                Ok(group) => group,
                Err(response) => return response,
            },
        };
        match self.serve(&group, peer, request).await {
            Ok(bytes) => PeerResponse::Ok(bytes),
            Err(Served::Refused(reason)) => PeerResponse::Refused {
                group: number,
                reason,
            },
            Err(Served::Failed(reason)) => PeerResponse::Failed {
                group: number,
                reason,
            },
        }
    }

    /// A message for a group this node does not host yet: a leader adding this node as a learner. The
    /// replica is opened if the group's fence lets this node hold its data; if not, that is an ingress
    /// incident (someone tried to make it store data it must never hold).
    async fn open_on_demand(&self, number: u64) -> Result<Arc<Group<C, S::Backend>>, PeerResponse> {
        let Some((policy, legacy)) = self.policies.get(&number) else {
            let reason = format!("{} knows no group {number}", self.me.node);
            return Err(PeerResponse::Refused {
                group: number,
                reason,
            });
        };
        let incidents = self.incidents.clone();
        let fence = GroupFence::new(
            number,
            policy.clone(),
            self.topology.clone(),
            legacy.clone(),
            incidents,
        );
        if let Err(refusal) = fence.check_ingress(self.me.node) {
            return Err(PeerResponse::Refused {
                group: number,
                reason: refusal.to_string(),
            });
        }
        match self.open_group(policy.clone(), legacy.clone()).await {
            Ok(()) | Err(HostError::AlreadyOpen { .. }) => {}
            Err(error) => {
                return Err(PeerResponse::Failed {
                    group: number,
                    reason: error.to_string(),
                });
            }
        }
        let groups = self.groups.read().expect("group table lock");
        let vanished = || PeerResponse::Failed {
            group: number,
            reason: "group closed while opening".into(),
        };
        groups.get(&number).cloned().ok_or_else(vanished)
    }

    async fn serve(
        &self,
        group: &Group<C, S::Backend>,
        peer: &NodeIdentity,
        request: PeerRequest,
    ) -> Result<Vec<u8>, Served> {
        // This node may only store the group's data if it may hold it at all.
        group.fence.check_ingress(self.me.node).map_err(refused)?;
        let raft = &group.raft;
        match request.kind {
            RequestKind::AppendEntries => {
                let rpc: AppendEntriesRequest<C> = decode(&request.body)?;
                self.check_sender(group, peer, *rpc.vote.leader_id().node_id())?;
                *group.heard_from_leader.lock().expect("leader contact lock") = C::now();
                // Fault point (simulation only): a follower slow to take entries (a stalled disk, a
                // long pause), so the leader's quorum and lease ride on the others.
                if let Some(delay_ms) = crate::sim::maybe_delay_ms("host.append.slow", 400) {
                    C::sleep(Duration::from_millis(delay_ms)).await;
                }
                let (entries, received) = (rpc.entries.len(), C::now());
                let response = raft.append_entries(rpc).await.map_err(failed)?;
                // Again once openraft has taken it: the leader's lease runs from no later than this, which
                // an election prompt counts from ([`crate::prompt_election`]).
                *group.heard_from_leader.lock().expect("leader contact lock") = C::now();
                // The follower's part of a replication round trip: its Raft core, append and sync.
                tracing::debug!(
                    group = %group.fence.policy.group, entries,
                    took_us = (C::now() - received).as_micros() as u64,
                    "append served"
                );
                encode(&response)
            }
            RequestKind::Vote | RequestKind::PreVote => {
                let rpc: VoteRequest<C> = decode(&request.body)?;
                self.check_sender(group, peer, *rpc.vote.leader_id().node_id())?;
                let response = if request.kind == RequestKind::Vote {
                    raft.vote(rpc).await
                } else {
                    raft.pre_vote(rpc).await
                };
                encode(&response.map_err(failed)?)
            }
            RequestKind::TransferLeader => {
                let transfer: TransferLeaderRequest<C> = decode(&request.body)?;
                self.check_sender(group, peer, *transfer.from_leader().leader_id().node_id())?;
                // Taking over leadership: this node must itself be a node that may lead.
                group.fence.check_leader_peer(self.me.node).map_err(refused)?;
                encode(&raft.handle_transfer_leader(transfer).await.map_err(failed)?)
            }
            RequestKind::DirectoryRead | RequestKind::CommittedMembership | RequestKind::LeadershipOffer => {
                Err(Served::Failed(
                    "served apart from the group's Raft traffic".into(),
                ))
            }
            RequestKind::SnapshotChunk => {
                let chunk: SnapshotChunkRef<'_, C> = codec::decode_borrowed(&request.body)
                    .map_err(|error| Served::Refused(format!("undecodable message: {error}")))?;
                self.check_sender(group, peer, *chunk.vote.leader_id().node_id())?;
                // The first chunk opens a transfer: a new spool for it (a file, made off this lock).
                let spool = match chunk.sequence {
                    0 => Some(group.state_machine.snapshot_spool().await.map_err(failed)?),
                    _ => None,
                };
                let vote = chunk.vote.clone();
                let response = match self.receive_chunk(group, chunk, spool)? {
                    None => None,
                    Some((meta, data)) => {
                        let snapshot = Snapshot { meta, snapshot: data };
                        Some(raft.install_full_snapshot(vote, snapshot).await.map_err(failed)?)
                    }
                };
                encode(&response)
            }
        }
    }

    /// The sender's attested identity must be the leader or candidate the message names, and that node
    /// must stand inside the jurisdiction.
    fn check_sender(
        &self,
        group: &Group<C, S::Backend>,
        peer: &NodeIdentity,
        claimed: u64,
    ) -> Result<(), Served> {
        if peer.node.0 != claimed {
            let reason = format!(
                "forged sender: {} (attested at {}) speaks for node {claimed}",
                peer.node, peer.site
            );
            tracing::warn!(group = %group.fence.policy.group, peer = %peer.node, site = %peer.site, claimed, "{reason}");
            return Err(Served::Refused(reason));
        }
        group.fence.check_leader_peer(peer.node).map_err(refused)
    }

    /// Adds a chunk to the snapshot in flight (`spool` is the new transfer's, with its first chunk);
    /// returns the snapshot, verified and on disk, once its last chunk is written. Chunks may arrive out
    /// of order within the sender's window; the last one is sent only once every other was answered.
    fn receive_chunk(
        &self,
        group: &Group<C, S::Backend>,
        chunk: SnapshotChunkRef<'_, C>,
        spool: Option<SnapshotSpool>,
    ) -> Result<Option<(SnapshotMetaOf<C>, SnapshotData)>, Served> {
        let mut incoming = group.incoming_snapshot.lock().expect("snapshot lock");
        if let Some(spool) = spool {
            // A new transfer replaces an unfinished one (its spool file is deleted with it).
            *incoming = Some(IncomingSnapshot {
                meta: chunk.meta.clone(),
                count: chunk.count,
                next: 0,
                spool,
                early: BTreeMap::new(),
            });
        }
        let Some(assembly) = incoming.as_mut() else {
            return Err(Served::Refused(format!(
                "snapshot chunk {} without its start",
                chunk.sequence
            )));
        };
        // A chunk of another transfer (a late one from a transfer given up), or one already received, is
        // refused without disturbing the transfer in progress.
        if assembly.meta != chunk.meta
            || assembly.count != chunk.count
            || chunk.sequence >= chunk.count
            || chunk.sequence < assembly.next
            || assembly.early.contains_key(&chunk.sequence)
        {
            return Err(Served::Refused(format!(
                "snapshot chunk {} of {} is from another transfer or already received",
                chunk.sequence, chunk.count
            )));
        }
        if chunk.sequence > assembly.next {
            // Ahead of the next one: kept, within the bound; the last chunk never comes early.
            let last = chunk.sequence + 1 == chunk.count;
            if last
                || chunk.sequence - assembly.next > SNAPSHOT_CHUNKS_AHEAD_MAX
                || assembly.early.len() >= SNAPSHOT_CHUNKS_AHEAD_MAX as usize
            {
                let reason = format!(
                    "snapshot chunk {} arrived too far ahead of chunk {}",
                    chunk.sequence, assembly.next
                );
                *incoming = None;
                return Err(Served::Refused(reason));
            }
            assembly.early.insert(chunk.sequence, chunk.bytes.to_vec());
            return Ok(None);
        }
        let mut early = None;
        loop {
            let bytes = early.as_deref().unwrap_or(chunk.bytes);
            if let Err(error) = assembly.spool.push(bytes) {
                *incoming = None;
                return Err(Served::Refused(format!("snapshot refused: {error}")));
            }
            assembly.next += 1;
            match assembly.early.remove(&assembly.next) {
                Some(next) => early = Some(next),
                None => break,
            }
        }
        if assembly.next < assembly.count {
            return Ok(None);
        }
        let done = incoming.take().expect("assembly present");
        let data = done
            .spool
            .finish()
            .map_err(|error| Served::Refused(format!("snapshot refused: {error}")))?;
        Ok(Some((done.meta, data)))
    }
}

enum Served {
    Refused(String),
    Failed(String),
}

/// Asks openraft to campaign for `group` now, with a pre-vote first or straight to a vote.
async fn trigger_election<C: GroupConfig, B: storage::backend::Backend>(
    raft: &Raft<C, StateMachine<C, B>>,
    group: &GroupId,
    pre_vote: bool,
) -> Result<(), HostError> {
    raft.trigger()
        .elect(pre_vote)
        .await
        .map_err(|error| HostError::Raft {
            group: group.clone(),
            reason: error.to_string(),
        })
}

fn refused(refusal: Refusal) -> Served {
    Served::Refused(refusal.to_string())
}

fn failed(error: impl std::fmt::Display) -> Served {
    Served::Failed(error.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Served> {
    codec::decode(bytes).map_err(|error| Served::Refused(format!("undecodable message: {error}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Served> {
    codec::encode(value).map_err(|error| Served::Failed(format!("can't encode the response: {error}")))
}
