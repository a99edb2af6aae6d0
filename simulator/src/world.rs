//! The world: sites, nodes and their disks, the network, and the real hosts running on them, all on
//! one thread of the deterministic runtime.
//!
//! A node is its identity (from the topology, as its certificate would attest), its disk and its
//! state machines' durable copies, which outlive its incarnations, and — while it runs — a
//! [`SimHost`] over [`SimStores`]. A crash detaches the disk and the network from the incarnation,
//! stops its host, and drops or tears what it had not synced; a restart recovers a new incarnation
//! from the disk, exactly as a process would after power loss.
//!
//! Nothing here holds a lock across an `.await`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::RaftLogReader;
use openraft::SnapshotPolicy;
use openraft::async_runtime::Instant as _;
use openraft::entry::RaftEntry;
use openraft::storage::RaftLogStorage;
use openraft_rt_sim::SimInstant;
use placement::{GroupId, GroupPolicy, Membership, NodeId, Topology, TopologyFile};
use raft::host::{GroupStatus, Host};
use raft::identity::NodeIdentity;
use raft::prompt_election::{ElectionPrompter, PROMPT_EVERY};
use raft::routing::group_number;
use raft::session_clock::SessionClock;
use storage::Response;

use crate::bulk::Bulk;
use crate::checkers::{Checks, Observer, ReplicaView};
use crate::config::SimConfig;
use crate::disk::SimDisk;
use crate::network::{LinkModel, Network, SimHost, group_table};
use crate::prng::Prng;
use crate::stores::{DurableBackends, SimStores, StoresHandle, SyncLatency};
use crate::timeline::{EventKind, Fault, Timeline};
use crate::trace::Trace;

/// The simulated nodes' session-clock period: a quarter of a second, so a session idle for its 60 ticks
/// (15 s) expires within a run, while a call's retries end at its 2-s deadline (`crate::workload`).
const SESSION_TICK_EVERY_SIMULATED: Duration = Duration::from_millis(250);
/// The session clock's round runs every this many election-prompt rounds (100 ms): its leader checks
/// read each group's metrics, and a tick is due only every [`SESSION_TICK_EVERY_SIMULATED`] anyway.
const SESSION_ROUND_EVERY_PROMPTS: u64 = 5;

/// Planted bugs the checkers must catch (only with the `canaries` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Canary {
    /// Disks acknowledge syncs without making anything durable: appends are acknowledged before the sync.
    AckBeforeSync,
    /// Clients read a follower's local state instead of a linearizable read.
    FollowerReads,
    /// The egress fence lets everything through.
    EgressOff,
    /// The migration removes legacy voters before the new ones are durable.
    EarlyLegacyRemoval,
    /// A split's old group deletes the moving range right after its fence, before the new group holds it
    /// (`raft::range_copy::canary`, with the `canaries` feature).
    EarlyRangePurge,
}

impl Canary {
    pub const ALL: [Canary; 5] = [
        Canary::AckBeforeSync,
        Canary::FollowerReads,
        Canary::EgressOff,
        Canary::EarlyLegacyRemoval,
        Canary::EarlyRangePurge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Canary::AckBeforeSync => "ack-before-sync",
            Canary::FollowerReads => "follower-reads",
            Canary::EgressOff => "egress-off",
            Canary::EarlyLegacyRemoval => "early-legacy-removal",
            Canary::EarlyRangePurge => "early-range-purge",
        }
    }

    pub fn from_name(name: &str) -> Option<Canary> {
        Canary::ALL.into_iter().find(|canary| canary.name() == name)
    }
}

/// A group the world creates at the start.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub group: GroupId,
    pub voters: BTreeSet<NodeId>,
    /// Members outside the jurisdiction that predate the fence.
    pub legacy: BTreeSet<NodeId>,
}

/// Everything that shapes a world besides its seed.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub topology: String,
    pub groups: Vec<GroupSpec>,
    pub links: LinkModel,
    pub sync_latency: SyncLatency,
    /// Modelled bulk data held by the groups' initial voters: (records per group, ranges per group).
    pub bulk: Option<(u64, u64)>,
    /// The shard map the run publishes first, if it publishes maps: each group's bulk ranges are then
    /// those whose user the map routes to it.
    pub first_map: Option<placement::shard_map::ShardMap>,
}

struct Running {
    host: Arc<SimHost>,
    stores: StoresHandle,
}

struct NodeSlot {
    identity: NodeIdentity,
    disk: SimDisk,
    durable: DurableBackends,
    running: Option<Running>,
    /// Groups this node holds a replica of (reopened at every restart).
    replicas: BTreeSet<GroupId>,
    /// Recovery refused the disk, or the disk is gone: the node stays down.
    lost: bool,
}

pub struct Inner {
    pub topology: Arc<Topology>,
    pub policies: BTreeMap<GroupId, GroupPolicy>,
    pub legacy: BTreeMap<GroupId, BTreeSet<NodeId>>,
    pub network: Arc<Network>,
    pub checks: Arc<Checks>,
    pub canary: Option<Canary>,
    pub bulk: Option<Arc<Bulk>>,
    /// Each jurisdiction's shard map as last published, where the run publishes maps (`grow`): clients
    /// route by it, as a client library routes by the map a node answers. Empty elsewhere: each tracked key
    /// stays with the group it started in.
    routes: Mutex<BTreeMap<String, Arc<placement::shard_map::ShardMap>>>,
    /// The splits under way, where the run splits ranges (`grow`, `grow-wide`), in epoch order, each with
    /// its next phase if known (else it is observed from the groups): kept across rounds until done.
    pub splits: Mutex<Vec<(raft::range_copy::RangeChange, Option<raft::range_copy::Phase>)>>,
    /// What the growth did so far, for the report (never in the trace).
    pub growth: Mutex<crate::growth::Tally>,
    raft_config: Arc<openraft::Config>,
    /// The links' worst round trips, from which every group's Raft timing is stretched.
    round_trips: Arc<LinkModel>,
    /// Each node's clock drift when the world was built (what healing returns it to).
    pub clock_drift_ppm: BTreeMap<NodeId, i64>,
    sync_latency: SyncLatency,
    nodes: Mutex<BTreeMap<NodeId, NodeSlot>>,
    /// When the world was built: the trace's and the timeline's clock start here.
    start: SimInstant,
    trace: Mutex<Trace>,
    timeline: Mutex<Timeline>,
    rng: Mutex<Prng>,
    observer: Mutex<Observer>,
    /// What the trace last showed of each replica's status, by node.
    last_seen: Mutex<BTreeMap<NodeId, BTreeMap<GroupId, SeenStatus>>>,
    observations: Mutex<u64>,
    /// Set when the run ends: the nodes' background tasks (election prompts) stop.
    ended: AtomicBool,
}

/// What the trace shows of a replica's status: a line is logged when it changes.
struct SeenStatus {
    leader: Option<NodeId>,
    term: u64,
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
}

impl SeenStatus {
    fn of(status: &GroupStatus) -> SeenStatus {
        SeenStatus {
            leader: status.leader,
            term: status.term,
            voters: status.membership.voters.clone(),
            learners: status.membership.learners.clone(),
        }
    }

    fn shows(&self, status: &GroupStatus) -> bool {
        self.leader == status.leader
            && self.term == status.term
            && self.voters == status.membership.voters
            && self.learners == status.membership.learners
    }
}

static NO_LEGACY: BTreeSet<NodeId> = BTreeSet::new();

/// A log entry's payload, as the final checks compare it.
pub type Payload = openraft::alias::EntryPayloadOf<SimConfig>;

/// A cheap handle on the world, for tasks.
#[derive(Clone)]
pub struct World(Arc<Inner>);

impl std::ops::Deref for World {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "domicile-sim".into(),
        heartbeat_interval: 50,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
        // openraft 0.10 by default restores a restarted leader's leadership without an election. That is
        // unsafe here: entries a follower quorum committed while the leader's own fdatasync had not yet
        // covered them are gone from its log after a crash, and the restored leader of the same term then
        // writes different entries at the same (term, index). `domicile sim run --scenario chaos --seed 3`
        // finds it (a stale read) with this set to `true`. Production sets it through
        // `raft::config::group_raft_config`.
        enable_leader_restore: Some(false),
        // As production (`raft::config::group_raft_config`): a follower asks for votes without raising its
        // term first, so one whose log is behind does not cost the group a term.
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Arc::new(config.validate().expect("a valid raft config"))
}

impl World {
    /// Builds the world, starts every node and bootstraps the groups.
    pub async fn build(
        seed: u64,
        spec: &WorldSpec,
        canary: Option<Canary>,
        keep_trace: bool,
    ) -> Result<World, String> {
        let file = TopologyFile::parse(&spec.topology).map_err(|error| error.to_string())?;
        let topology = Arc::new(file.topology.clone());
        let legacy: BTreeMap<GroupId, BTreeSet<NodeId>> = spec
            .groups
            .iter()
            .map(|group| (group.group.clone(), group.legacy.clone()))
            .collect();
        let start = SimInstant::now();
        let mut rng = Prng::new(seed);
        let checks = Arc::new(Checks::new(start));
        let network = Arc::new(Network::new(
            topology.clone(),
            spec.links.clone(),
            group_table(&file.policies, &legacy),
            rng.fork(1),
            checks.clone(),
        ));
        // Every node's own clock: started at its own origin, running up to 200 ppm fast or slow (quartz
        // without NTP discipline); `chaos` makes them drift harder and leap.
        crate::clock::reset();
        let mut clock_rng = rng.fork(2);
        let mut clock_drift_ppm = BTreeMap::new();
        for site in topology.sites() {
            for &node in &site.nodes {
                let skew = Duration::from_micros(clock_rng.below(1_000_000));
                let drift_ppm = clock_rng.below(401) as i64 - 200;
                crate::clock::install(node.0, skew, drift_ppm);
                clock_drift_ppm.insert(node, drift_ppm);
            }
        }
        let mut nodes = BTreeMap::new();
        for site in topology.sites() {
            for &node in &site.nodes {
                let identity = NodeIdentity {
                    node,
                    site: site.name.clone(),
                    country: site.country,
                };
                let disk = SimDisk::new();
                disk.set_lying_sync(canary == Some(Canary::AckBeforeSync));
                nodes.insert(
                    node,
                    NodeSlot {
                        identity,
                        disk,
                        durable: DurableBackends::default(),
                        running: None,
                        replicas: BTreeSet::new(),
                        lost: false,
                    },
                );
            }
        }
        for group in &spec.groups {
            for node in group.voters.iter() {
                let slot = nodes
                    .get_mut(node)
                    .ok_or(format!("no node {node} for {}", group.group))?;
                slot.replicas.insert(group.group.clone());
            }
        }
        let bulk = spec.bulk.map(|(records, ranges)| {
            let groups: Vec<(GroupId, BTreeSet<NodeId>)> = spec
                .groups
                .iter()
                .map(|group| (group.group.clone(), group.voters.clone()))
                .collect();
            Arc::new(Bulk::new(&groups, records, ranges, spec.first_map.as_ref()))
        });
        // The planted egress bug lives in production code (`raft::residency`), behind its own feature.
        #[cfg(feature = "canaries")]
        raft::residency::canary::set_egress_off(canary == Some(Canary::EgressOff));
        #[cfg(feature = "canaries")]
        raft::range_copy::canary::set_early_purge(canary == Some(Canary::EarlyRangePurge));
        let world = World(Arc::new(Inner {
            topology,
            policies: file.policies.clone(),
            legacy,
            network,
            checks,
            canary,
            bulk,
            routes: Mutex::new(BTreeMap::new()),
            splits: Mutex::new(Vec::new()),
            growth: Mutex::new(crate::growth::Tally::default()),
            raft_config: raft_config(),
            round_trips: Arc::new(spec.links.clone()),
            clock_drift_ppm,
            sync_latency: spec.sync_latency,
            nodes: Mutex::new(nodes),
            start,
            trace: Mutex::new(Trace::new(start, keep_trace)),
            timeline: Mutex::new(Timeline::default()),
            rng: Mutex::new(rng),
            observer: Mutex::new(Observer::default()),
            last_seen: Mutex::new(BTreeMap::new()),
            observations: Mutex::new(0),
            ended: AtomicBool::new(false),
        }));
        world.log(format!("world seed={seed} canary={:?}", canary.map(Canary::name)));
        for node in world.node_ids() {
            world.start(node).await?;
        }
        for group in &spec.groups {
            world.bootstrap(group).await?;
        }
        Ok(world)
    }

    pub fn now(&self) -> SimInstant {
        SimInstant::now()
    }

    pub fn log(&self, event: impl AsRef<str>) {
        self.trace
            .lock()
            .expect("trace lock")
            .log(SimInstant::now(), event.as_ref());
    }

    /// Records an event in the timeline (never in the trace: see [`crate::timeline`]).
    pub fn record(&self, kind: EventKind) {
        let at = SimInstant::now() - self.start;
        self.timeline.lock().expect("timeline lock").record(at, kind);
    }

    /// A fault the injector decided: its line in the trace, and an event in the timeline.
    pub fn fault(&self, fault: Fault) {
        self.log(fault.to_string());
        self.record(EventKind::Fault(fault));
    }

    /// The timeline so far.
    pub fn timeline(&self) -> Timeline {
        self.timeline.lock().expect("timeline lock").clone()
    }

    /// When the world was built.
    pub fn started(&self) -> SimInstant {
        self.start
    }

    pub fn trace_hash(&self) -> u64 {
        self.trace.lock().expect("trace lock").hash()
    }

    pub fn trace_text(&self) -> Option<String> {
        self.trace.lock().expect("trace lock").text()
    }

    /// A fresh PRNG stream forked from the world's.
    pub fn fork_rng(&self, salt: u64) -> Prng {
        self.rng.lock().expect("rng lock").fork(salt)
    }

    pub fn with_rng<T>(&self, draw: impl FnOnce(&mut Prng) -> T) -> T {
        draw(&mut self.rng.lock().expect("rng lock"))
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, NodeSlot>> {
        self.0.nodes.lock().expect("nodes lock")
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes().keys().copied().collect()
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes().get(&node).is_some_and(|slot| slot.running.is_some())
    }

    pub fn is_lost(&self, node: NodeId) -> bool {
        self.nodes().get(&node).is_some_and(|slot| slot.lost)
    }

    pub fn down_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes()
            .iter()
            .filter(|(_, slot)| slot.running.is_none())
            .map(|(&node, _)| node)
            .collect()
    }

    pub fn host(&self, node: NodeId) -> Option<Arc<SimHost>> {
        self.nodes()
            .get(&node)?
            .running
            .as_ref()
            .map(|running| running.host.clone())
    }

    pub fn disk(&self, node: NodeId) -> Option<SimDisk> {
        self.nodes().get(&node).map(|slot| slot.disk.clone())
    }

    pub fn replicas(&self, node: NodeId) -> BTreeSet<GroupId> {
        self.nodes()
            .get(&node)
            .map(|slot| slot.replicas.clone())
            .unwrap_or_default()
    }

    /// Nodes holding a replica of `group`.
    pub fn holders(&self, group: &GroupId) -> Vec<NodeId> {
        self.nodes()
            .iter()
            .filter(|(_, slot)| {
                slot.replicas.contains(group)
                    || slot
                        .running
                        .as_ref()
                        .is_some_and(|running| running.host.hosted_groups().contains(group))
            })
            .map(|(&node, _)| node)
            .collect()
    }

    pub fn site_nodes(&self, site: &str) -> Vec<NodeId> {
        self.topology
            .sites()
            .filter(|candidate| candidate.name.0 == site)
            .flat_map(|candidate| candidate.nodes.iter().copied())
            .collect()
    }

    /// Starts a node's next incarnation: recovers its log, opens its replicas, joins the network.
    pub async fn start(&self, node: NodeId) -> Result<(), String> {
        let (identity, disk, durable, replicas) = {
            let nodes = self.nodes();
            let slot = nodes.get(&node).ok_or(format!("no node {node}"))?;
            if slot.running.is_some() || slot.lost {
                return Ok(());
            }
            (
                slot.identity.clone(),
                slot.disk.clone(),
                slot.durable.clone(),
                slot.replicas.clone(),
            )
        };
        let rng = self.fork_rng(node.0);
        let stores = match SimStores::open(&disk, durable, rng, self.sync_latency) {
            Ok(stores) => stores,
            Err(reason) => {
                // Recovery refused the disk (damage the checksums caught): the node stays down.
                self.log(format!("{node} recovery refused: {reason}"));
                if let Some(slot) = self.nodes().get_mut(&node) {
                    slot.lost = true;
                }
                self.record(EventKind::NodeLost {
                    node,
                    reason: format!("recovery refused: {reason}"),
                });
                return Ok(());
            }
        };
        let handle = stores.handle();
        // Every group with state in the log is reopened, whether it was created here or joined on demand.
        let logged: BTreeSet<u64> = handle.engine.groups().into_iter().collect();
        let replicas: BTreeSet<GroupId> = self
            .policies
            .keys()
            .filter(|group| replicas.contains(*group) || logged.contains(&group_number(group)))
            .cloned()
            .collect();
        let transport = Arc::new(self.network.transport(identity.clone()));
        let host = Arc::new(
            Host::new(
                identity,
                self.topology.clone(),
                self.policies.values().map(|policy| {
                    let legacy = self.legacy.get(&policy.group).cloned().unwrap_or_default();
                    (policy.clone(), legacy)
                }),
                transport,
                stores,
                self.raft_config.clone(),
            )
            .with_round_trips(self.round_trips.clone()),
        );
        for group in &replicas {
            let policy = self.policies[group].clone();
            let legacy = self.legacy.get(group).cloned().unwrap_or_default();
            crate::clock::on_node(node.0, host.open_group(policy, legacy))
                .await
                .map_err(|error| format!("{node} opening {group}: {error}"))?;
        }
        self.network.attach(node, host.clone());
        self.spawn_node_rounds(node, &host);
        if let Some(slot) = self.nodes().get_mut(&node) {
            slot.running = Some(Running { host, stores: handle });
        }
        self.log(format!(
            "{node} up, replicas {:?}",
            replicas.iter().map(|g| g.0.as_str()).collect::<Vec<_>>()
        ));
        self.record(EventKind::NodeUp { node });
        Ok(())
    }

    /// The rounds `node`'s incarnation `host` runs, as the node binary does, on the node's clock, until
    /// the incarnation stops or the run ends: election prompts (`raft::prompt_election`) every
    /// [`PROMPT_EVERY`], and the session clock of the groups it leads (`raft::session_clock`), ticked every
    /// [`SESSION_TICK_EVERY_SIMULATED`] so that the sessions of retired clients expire within a run.
    fn spawn_node_rounds(&self, node: NodeId, host: &Arc<SimHost>) {
        let world = self.clone();
        let incarnation = Arc::downgrade(host);
        drop(<openraft_rt_sim::SimRuntime as openraft::AsyncRuntime>::spawn(
            crate::clock::on_node(node.0, async move {
                let prompter = ElectionPrompter::<SimConfig>::default();
                let session_clock = SessionClock::<SimConfig>::new(SESSION_TICK_EVERY_SIMULATED);
                for round in 0u64.. {
                    <crate::clock::NodeClockRuntime as openraft::AsyncRuntime>::sleep(PROMPT_EVERY).await;
                    let Some(host) = incarnation.upgrade() else {
                        return;
                    };
                    let current = world
                        .host(node)
                        .is_some_and(|running| Arc::ptr_eq(&running, &host));
                    if !current || world.ended.load(Ordering::SeqCst) {
                        return;
                    }
                    for (group, silent) in prompter.round(&host).await {
                        world.log(format!(
                            "{node} campaigns for {group}: leader {silent} silent past its lease"
                        ));
                    }
                    if round % SESSION_ROUND_EVERY_PROMPTS == 0 {
                        for (group, ticked) in session_clock.round(&host).await {
                            if let Ok(Response::SessionClock { clock, expired }) = ticked
                                && expired > 0
                            {
                                world.log(format!(
                                    "{node} ticked {group}'s session clock to {clock}: {expired} idle sessions expired"
                                ));
                            }
                        }
                    }
                }
            }),
        ));
    }

    /// Power loss at a node: its incarnation stops and its unsynced writes are dropped (or torn).
    pub async fn crash(&self, node: NodeId, tear: bool) {
        let Some(running) = self.nodes().get_mut(&node).and_then(|slot| slot.running.take()) else {
            return;
        };
        self.network.detach(node);
        let disk = self.disk(node).expect("a node has a disk");
        disk.detach();
        running.stores.kill();
        running.host.shutdown().await;
        let damage = self.with_rng(|rng| disk.crash(rng, tear));
        self.log(format!(
            "{node} crashed: {} bytes unsynced lost, {} files torn",
            damage.bytes_lost, damage.torn_files
        ));
        self.record(EventKind::NodeDown {
            node,
            bytes_lost: damage.bytes_lost,
            torn_files: damage.torn_files as u64,
        });
        self.last_seen.lock().expect("last seen lock").remove(&node);
    }

    /// The node's disk is gone for good: it stays down. (Rejoining with an empty disk under the same
    /// identity would forget its votes and its log, which Raft cannot survive; an operator replaces such
    /// a node instead.)
    pub async fn lose(&self, node: NodeId) {
        self.crash(node, false).await;
        if let Some(slot) = self.nodes().get_mut(&node) {
            slot.lost = true;
            slot.disk.lose_everything();
            slot.durable.lose_everything();
        }
        self.fault(Fault::DiskLost { node });
        self.record(EventKind::NodeLost {
            node,
            reason: "its disk is gone".into(),
        });
    }

    /// Opens `group` on `node` (a new replica joining), remembering it across restarts.
    pub async fn add_replica(&self, node: NodeId, group: &GroupId) -> Result<(), String> {
        let host = {
            let mut nodes = self.nodes();
            let slot = nodes.get_mut(&node).ok_or(format!("no node {node}"))?;
            if !slot.replicas.insert(group.clone()) {
                return Ok(());
            }
            slot.running.as_ref().map(|running| running.host.clone())
        };
        if let Some(host) = host {
            let policy = self.policies[group].clone();
            let legacy = self.legacy.get(group).cloned().unwrap_or_default();
            crate::clock::on_node(node.0, host.open_group(policy, legacy))
                .await
                .map_err(|error| format!("{node} opening {group}: {error}"))?;
        }
        self.log(format!("{node} holds a replica of {group}"));
        Ok(())
    }

    /// Forgets `group` on `node` (purged): it is not reopened at the next restart.
    pub fn drop_replica(&self, node: NodeId, group: &GroupId) {
        if let Some(slot) = self.nodes().get_mut(&node) {
            slot.replicas.remove(group);
        }
    }

    /// Creates `group` on `voters` during the run, as a node bootstraps a group its topology declares:
    /// a replica opened on each voter, the group bootstrapped from the first through the fence.
    pub async fn create_group(&self, group: &GroupId, voters: &BTreeSet<NodeId>) -> Result<(), String> {
        for &voter in voters {
            self.add_replica(voter, group).await?;
        }
        self.bootstrap(&GroupSpec {
            group: group.clone(),
            voters: voters.clone(),
            legacy: BTreeSet::new(),
        })
        .await
    }

    async fn bootstrap(&self, spec: &GroupSpec) -> Result<(), String> {
        let first = spec
            .voters
            .iter()
            .copied()
            .find(|node| !spec.legacy.contains(node))
            .ok_or(format!("{} has no voter inside its jurisdiction", spec.group))?;
        let host = self.host(first).ok_or(format!("{first} is down"))?;
        let fence = host.fence(&spec.group).map_err(|error| error.to_string())?;
        let members = Membership::new(spec.voters.iter().copied(), []);
        // A legacy group is adopted in place; a new one is admitted from nothing.
        let current = if spec.legacy.is_empty() {
            Membership::default()
        } else {
            members.clone()
        };
        let fenced = fence
            .admit_change(&current, &members)
            .map_err(|error| error.to_string())?;
        crate::clock::on_node(first.0, host.bootstrap(fenced))
            .await
            .map_err(|error| error.to_string())?;
        self.log(format!(
            "{} bootstrapped on {first} with voters {:?}",
            spec.group, spec.voters
        ));
        Ok(())
    }

    /// The running node that reports itself leader of `group` (highest term first).
    pub fn leader(&self, group: &GroupId) -> Option<(NodeId, Arc<SimHost>)> {
        // The running holders, in one pass over the nodes (clients ask this on every attempt).
        let running: Vec<(NodeId, Arc<SimHost>)> = self
            .nodes()
            .iter()
            .filter_map(|(&node, slot)| {
                let running = slot.running.as_ref()?;
                let holds = slot.replicas.contains(group) || running.host.hosted_groups().contains(group);
                holds.then(|| (node, running.host.clone()))
            })
            .collect();
        let mut best: Option<(u64, NodeId, Arc<SimHost>)> = None;
        for (node, host) in running {
            let Ok(status) = host.status(group) else { continue };
            if status.leader == Some(node) && best.as_ref().is_none_or(|(term, ..)| status.term > *term) {
                best = Some((status.term, node, host));
            }
        }
        best.map(|(_, node, host)| (node, host))
    }

    /// The group the published map of `jurisdiction` routes `user_id` to, if the run publishes maps.
    pub fn route(&self, jurisdiction: &str, user_id: &str) -> Option<GroupId> {
        let routes = self.routes.lock().expect("routes lock");
        let map = routes.get(jurisdiction)?;
        Some(map.owner(wire::routing::range_position(user_id)).clone())
    }

    /// The map of `jurisdiction` clients route by from now on: one just published (never an older epoch).
    pub fn set_route_map(&self, map: placement::shard_map::ShardMap) {
        let mut routes = self.routes.lock().expect("routes lock");
        let known = routes.get(map.jurisdiction()).map(|known| known.epoch());
        if known.is_none_or(|epoch| map.epoch() > epoch) {
            self.log(format!("routes: {} at epoch {}", map.jurisdiction(), map.epoch()));
            routes.insert(map.jurisdiction().to_string(), Arc::new(map));
        }
    }

    /// The published map of `jurisdiction` clients route by, if the run publishes maps.
    pub fn route_map(&self, jurisdiction: &str) -> Option<Arc<placement::shard_map::ShardMap>> {
        self.routes
            .lock()
            .expect("routes lock")
            .get(jurisdiction)
            .cloned()
    }

    pub fn status(&self, node: NodeId, group: &GroupId) -> Option<GroupStatus> {
        self.host(node)?.status(group).ok()
    }

    /// One observation step: every running replica's status, through every checker that watches
    /// state, and into the trace when it changed.
    pub async fn observe(&self) {
        let count = {
            let mut observations = self.observations.lock().expect("observations lock");
            *observations += 1;
            *observations
        };
        let running: Vec<(NodeId, Arc<SimHost>, StoresHandle, Vec<GroupId>)> = self
            .nodes()
            .iter()
            .filter_map(|(&node, slot)| {
                let running = slot.running.as_ref()?;
                let hosted = running.host.hosted_groups();
                Some((node, running.host.clone(), running.stores.clone(), hosted))
            })
            .collect();
        // Each group's leader this step (the highest term's) and the membership it holds.
        let mut leaders: BTreeMap<GroupId, (u64, NodeId, Membership)> = BTreeMap::new();
        for (node, host, stores, replicas) in running {
            for group in replicas {
                let Ok(status) = host.status(&group) else { continue };
                if status.leader == Some(node)
                    && leaders.get(&group).is_none_or(|(term, ..)| status.term > *term)
                {
                    let membership = status.membership.clone();
                    leaders.insert(group.clone(), (status.term, node, membership));
                }
                // Reading the committed entry costs a decode: sample it every tenth step.
                let committed_term = match status.committed {
                    Some(index) if count % 10 == 0 => entry_term(&stores, &group, index).await,
                    _ => None,
                };
                let legacy = self.legacy.get(&group).unwrap_or(&NO_LEGACY);
                let view = ReplicaView {
                    node,
                    group,
                    status,
                    committed_term,
                };
                self.observer.lock().expect("observer lock").observe(
                    &self.topology,
                    &self.policies[&view.group],
                    legacy,
                    &view,
                    &self.checks,
                );
                // The trace line is built only when what it shows changed (most steps change nothing).
                let changed = {
                    let mut last_seen = self.last_seen.lock().expect("last seen lock");
                    let seen = last_seen.entry(node).or_default();
                    match seen.get_mut(&view.group) {
                        Some(last) if last.shows(&view.status) => false,
                        Some(last) => {
                            *last = SeenStatus::of(&view.status);
                            true
                        }
                        None => {
                            seen.insert(view.group.clone(), SeenStatus::of(&view.status));
                            true
                        }
                    }
                };
                if changed {
                    let status = &view.status;
                    self.log(format!(
                        "{node} {}: leader={:?} term={} voters={:?} learners={:?}",
                        view.group,
                        status.leader.map(|n| n.0),
                        status.term,
                        status.membership.voters.iter().map(|n| n.0).collect::<Vec<_>>(),
                        status.membership.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
                    ));
                }
            }
        }
        self.record_leaders(&leaders);
    }

    /// Each group's leader and membership into the timeline (changes only), and the cutover of a group
    /// that began with members outside its jurisdiction once they are all inside.
    fn record_leaders(&self, leaders: &BTreeMap<GroupId, (u64, NodeId, Membership)>) {
        let at = SimInstant::now() - self.start;
        let mut timeline = self.timeline.lock().expect("timeline lock");
        for (group, policy) in &self.policies {
            let Some((term, leader, membership)) = leaders.get(group) else {
                timeline.leader(at, group, None);
                continue;
            };
            timeline.leader(at, group, Some((*leader, *term)));
            timeline.membership(at, group, membership);
            let began_outside = self.legacy.get(group).is_some_and(|legacy| !legacy.is_empty());
            if began_outside
                && membership
                    .members()
                    .all(|node| self.topology.is_inside(node, &policy.jurisdiction))
            {
                timeline.cutover(at, group);
            }
        }
    }

    /// The committed log entries of `group` on `node` in `range`, as (index, term, payload).
    pub async fn entries(
        &self,
        node: NodeId,
        group: &GroupId,
        from: u64,
        to: u64,
    ) -> Option<Vec<(u64, u64, Payload)>> {
        let stores = self.nodes().get(&node)?.running.as_ref()?.stores.clone();
        let mut log = stores.engine.group::<SimConfig>(group_number(group));
        let mut reader = log.get_log_reader().await;
        let entries = reader.try_get_log_entries(from..to).await.ok()?;
        Some(
            entries
                .into_iter()
                .map(|entry| {
                    let log_id = entry.log_id();
                    (log_id.index, log_id.leader_id.term, entry.payload)
                })
                .collect(),
        )
    }

    /// Stops every running host (end of the run).
    pub async fn shutdown(&self) {
        self.ended.store(true, Ordering::SeqCst);
        let hosts: Vec<Arc<SimHost>> = self
            .nodes()
            .values()
            .filter_map(|slot| slot.running.as_ref().map(|running| running.host.clone()))
            .collect();
        for host in hosts {
            host.shutdown().await;
        }
    }

    /// Disk bytes held by the simulation (memory accounting).
    pub fn disk_bytes(&self) -> u64 {
        self.nodes().values().map(|slot| slot.disk.bytes()).sum()
    }

    pub async fn sleep(&self, duration: Duration) {
        <openraft_rt_sim::SimRuntime as openraft::AsyncRuntime>::sleep(duration).await;
    }

    pub fn elapsed(&self, since: SimInstant) -> Duration {
        SimInstant::now() - since
    }
}

async fn entry_term(stores: &StoresHandle, group: &GroupId, index: u64) -> Option<u64> {
    let mut log = stores.engine.group::<SimConfig>(group_number(group));
    let entries = log.try_get_log_entries(index..=index).await.ok()?;
    entries.first().map(|entry| entry.log_id().leader_id.term)
}
