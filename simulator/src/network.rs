//! The simulated network, under the [`Transport`] trait: each peer request is delivered to the target
//! host's [`Host::handle`](raft::host::Host::handle) with the *sender's* identity as the world's
//! topology attests it (what a certificate would say), after a latency drawn per link from the
//! seeded PRNG, or lost, duplicated (and so reordered), or refused by a partition.
//!
//! Every message is also checked as it leaves by the residency checker: a message carrying a
//! fenced group's data must go to a node inside the jurisdiction, or to a legacy member the sender
//! still counts as a member. The host's own egress fence runs before the transport ever sees the
//! message, exactly as in production; the check here is the independent witness.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft_rt_sim::SimRuntime;
use placement::{GroupPolicy, NodeId, Topology};
use raft::host::Host;
use raft::identity::NodeIdentity;
use raft::routing::group_number;
use raft::transport::{PeerRequest, PeerResponse, Transport, TransportError};

use crate::checkers::{Checker, Checks, Involved};
use crate::config::SimConfig;
use crate::prng::Prng;
use crate::stores::SimStores;

/// A host of the simulated world.
pub type SimHost = Host<SimConfig, SimTransport, SimStores>;

/// Latency and bandwidth of the link between two sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    pub latency_micros: (u64, u64),
    pub bytes_per_second: u64,
}

/// Per-pair link properties, from where the sites stand (configurable by overriding pairs).
#[derive(Clone, Debug)]
pub struct LinkModel {
    overrides: BTreeMap<(String, String), Link>,
}

fn is_american(country: &str) -> bool {
    matches!(country, "US" | "CA")
}

impl LinkModel {
    pub fn new() -> LinkModel {
        LinkModel {
            overrides: BTreeMap::new(),
        }
    }

    pub fn set(&mut self, a: &str, b: &str, link: Link) {
        self.overrides.insert((a.to_string(), b.to_string()), link);
        self.overrides.insert((b.to_string(), a.to_string()), link);
    }

    /// Same site: sub-millisecond; within a continent: 5–30 ms (intra-EU); transatlantic: 70–90 ms.
    pub fn link(&self, topology: &Topology, from: NodeId, to: NodeId) -> Link {
        let (Some(a), Some(b)) = (topology.site_of(from), topology.site_of(to)) else {
            return Link {
                latency_micros: (50_000, 100_000),
                bytes_per_second: 10 << 20,
            };
        };
        self.site_link(a, b)
    }

    /// The link between two sites.
    pub fn site_link(&self, a: &placement::Site, b: &placement::Site) -> Link {
        if let Some(link) = self.overrides.get(&(a.name.0.clone(), b.name.0.clone())) {
            return *link;
        }
        if a.name == b.name {
            return Link {
                latency_micros: (100, 500),
                bytes_per_second: 1_250 << 20,
            };
        }
        let (a, b) = (is_american(a.country.as_str()), is_american(b.country.as_str()));
        if a != b {
            Link {
                latency_micros: (70_000, 90_000),
                bytes_per_second: 250 << 20,
            }
        } else {
            Link {
                latency_micros: (5_000, 30_000),
                bytes_per_second: 500 << 20,
            }
        }
    }
}

/// The worst round trip a link's latency allows, for the groups' timing: what an operator who
/// measured these links would configure.
impl raft::config::RoundTrips for LinkModel {
    fn round_trip_ms(&self, a: &placement::Site, b: &placement::Site) -> u64 {
        (2 * self.site_link(a, b).latency_micros.1).div_ceil(1_000)
    }
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel::new()
    }
}

/// Message-level faults in force.
#[derive(Clone, Debug, Default)]
pub struct NetFaults {
    pub loss_per_million: u64,
    pub duplicate_per_million: u64,
    /// Extra delay added to some messages (per million, max micros): reordering.
    pub delay_per_million: u64,
    pub delay_max_micros: u64,
    /// Directed pairs that drop everything (partitions, one-way cuts).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
}

struct Endpoint {
    incarnation: u64,
    host: Arc<SimHost>,
}

/// Counters for the report.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub bytes: u64,
}

struct NetState {
    rng: Prng,
    endpoints: BTreeMap<NodeId, Endpoint>,
    incarnations: BTreeMap<NodeId, u64>,
    faults: NetFaults,
    stats: NetStats,
}

/// The world's network: who is reachable, with what latency, under which faults.
pub struct Network {
    topology: Arc<Topology>,
    links: LinkModel,
    /// Fenced groups by group number, with their declared legacy members.
    groups: BTreeMap<u64, (GroupPolicy, BTreeSet<NodeId>)>,
    state: Mutex<NetState>,
    checks: Arc<Checks>,
}

enum Fate {
    Deliver {
        host: Arc<SimHost>,
        incarnation: u64,
        there: Duration,
        duplicate: Option<Duration>,
    },
    Lost(Duration),
}

impl Network {
    pub fn new(
        topology: Arc<Topology>,
        links: LinkModel,
        groups: BTreeMap<u64, (GroupPolicy, BTreeSet<NodeId>)>,
        rng: Prng,
        checks: Arc<Checks>,
    ) -> Network {
        Network {
            topology,
            links,
            groups,
            state: Mutex::new(NetState {
                rng,
                endpoints: BTreeMap::new(),
                incarnations: BTreeMap::new(),
                faults: NetFaults::default(),
                stats: NetStats::default(),
            }),
            checks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("network lock")
    }

    /// A transport for `me`, as its certificate attests it.
    pub fn transport(self: &Arc<Self>, me: NodeIdentity) -> SimTransport {
        SimTransport {
            me,
            network: self.clone(),
        }
    }

    /// `node` is up with a new incarnation served by `host`.
    pub fn attach(&self, node: NodeId, host: Arc<SimHost>) {
        let mut state = self.lock();
        let incarnation = state.incarnations.get(&node).copied().unwrap_or(0) + 1;
        state.incarnations.insert(node, incarnation);
        state.endpoints.insert(node, Endpoint { incarnation, host });
    }

    /// `node` is down: nothing reaches it, and nothing it sent is answered.
    pub fn detach(&self, node: NodeId) {
        let mut state = self.lock();
        state.endpoints.remove(&node);
        *state.incarnations.entry(node).or_insert(0) += 1;
    }

    pub fn set_faults(&self, faults: NetFaults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> NetFaults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats.clone()
    }

    /// Latency and bandwidth between two nodes (bulk transfers use the bandwidth).
    pub fn link(&self, from: NodeId, to: NodeId) -> Link {
        self.links.link(&self.topology, from, to)
    }

    /// Bumped at every start and every crash of `node`.
    pub fn incarnation(&self, node: NodeId) -> u64 {
        self.lock().incarnations.get(&node).copied().unwrap_or(0)
    }

    fn latency(&self, state: &mut NetState, from: NodeId, to: NodeId, bytes: usize) -> Duration {
        let link = self.links.link(&self.topology, from, to);
        let mut micros = state.rng.between(link.latency_micros.0, link.latency_micros.1);
        micros += (bytes as u64).saturating_mul(1_000_000) / link.bytes_per_second.max(1);
        if state.rng.chance(state.faults.delay_per_million) {
            micros += state.rng.below(state.faults.delay_max_micros.max(1));
        }
        Duration::from_micros(micros)
    }

    fn passes(&self, state: &mut NetState, from: NodeId, to: NodeId) -> bool {
        !state.faults.blocked.contains(&(from, to)) && !state.rng.chance(state.faults.loss_per_million)
    }

    /// Decides one request's fate on the way out.
    fn dispatch(&self, from: NodeId, to: NodeId, request: &PeerRequest) -> Fate {
        let mut state = self.lock();
        state.stats.sent += 1;
        state.stats.bytes += request.body.len() as u64;
        let there = self.latency(&mut state, from, to, request.body.len());
        let sender_up = state.endpoints.contains_key(&from);
        let passes = self.passes(&mut state, from, to);
        let target = state
            .endpoints
            .get(&to)
            .map(|endpoint| (endpoint.host.clone(), endpoint.incarnation));
        match target {
            Some((host, incarnation)) if sender_up && passes => {
                let duplicate_per_million = state.faults.duplicate_per_million;
                let duplicate = state
                    .rng
                    .chance(duplicate_per_million)
                    .then(|| there + Duration::from_micros(state.rng.below(50_000)));
                if duplicate.is_some() {
                    state.stats.duplicated += 1;
                }
                Fate::Deliver {
                    host,
                    incarnation,
                    there,
                    duplicate,
                }
            }
            _ => {
                state.stats.lost += 1;
                Fate::Lost(there)
            }
        }
    }

    /// The residency witness: does this message carry a fenced group's data to a node outside it?
    fn witness(&self, sender: &SimHost, from: NodeId, to: NodeId, request: &PeerRequest) {
        if !request.carries_data {
            return;
        }
        let Some((policy, legacy)) = self.groups.get(&request.group) else {
            return;
        };
        if self.topology.is_inside(to, &policy.jurisdiction) {
            return;
        }
        let still_member = legacy.contains(&to)
            && sender
                .status(&policy.group)
                .is_ok_and(|status| status.membership.contains(to));
        if !still_member {
            self.checks.violation(
                Checker::Residency,
                Involved::group(&policy.group).nodes([from, to]),
                format!(
                    "{:?} of group `{}` sent to {to}, outside {} and not a legacy member",
                    request.kind,
                    policy.group,
                    policy.jurisdiction.name()
                ),
            );
        }
    }

    async fn send(
        &self,
        from: &NodeIdentity,
        to: NodeId,
        request: PeerRequest,
    ) -> Result<PeerResponse, TransportError> {
        let sender_incarnation = self.incarnation(from.node);
        if let Some(sender) = self
            .lock()
            .endpoints
            .get(&from.node)
            .map(|endpoint| endpoint.host.clone())
        {
            self.witness(&sender, from.node, to, &request);
        }
        let (host, incarnation, there, duplicate) = match self.dispatch(from.node, to, &request) {
            Fate::Lost(after) => {
                SimRuntime::sleep(after * 2).await;
                return Err(TransportError::Timeout(to));
            }
            Fate::Deliver {
                host,
                incarnation,
                there,
                duplicate,
            } => (host, incarnation, there, duplicate),
        };
        if let Some(later) = duplicate {
            let (copy, host, peer) = (request.clone(), host.clone(), from.clone());
            drop(SimRuntime::spawn(async move {
                SimRuntime::sleep(later).await;
                let _ = crate::clock::on_node(to.0, host.handle(&peer, copy)).await;
            }));
        }
        SimRuntime::sleep(there).await;
        if self.incarnation(to) != incarnation {
            return Err(TransportError::Unreachable(
                to,
                "crashed while the message was in flight".into(),
            ));
        }
        self.lock().stats.delivered += 1;
        let response = crate::clock::on_node(to.0, host.handle(from, request)).await;
        let back = {
            let mut state = self.lock();
            let bytes = match &response {
                PeerResponse::Ok(bytes) => bytes.len(),
                _ => 64,
            };
            let back = self.latency(&mut state, to, from.node, bytes);
            let passes = self.passes(&mut state, to, from.node);
            (back, passes)
        };
        SimRuntime::sleep(back.0).await;
        let alive = self.incarnation(to) == incarnation && self.incarnation(from.node) == sender_incarnation;
        if !back.1 || !alive {
            return Err(TransportError::Timeout(to));
        }
        Ok(response)
    }
}

/// One node's end of the simulated network.
#[derive(Clone)]
pub struct SimTransport {
    me: NodeIdentity,
    network: Arc<Network>,
}

impl Transport for SimTransport {
    async fn send(&self, to: NodeId, request: PeerRequest) -> Result<PeerResponse, TransportError> {
        self.network.send(&self.me, to, request).await
    }
}

/// The group numbers of fenced groups, for the network's witness.
pub fn group_table(
    policies: &BTreeMap<placement::GroupId, GroupPolicy>,
    legacy: &BTreeMap<placement::GroupId, BTreeSet<NodeId>>,
) -> BTreeMap<u64, (GroupPolicy, BTreeSet<NodeId>)> {
    policies
        .iter()
        .map(|(group, policy)| {
            let legacy = legacy.get(group).cloned().unwrap_or_default();
            (group_number(group), (policy.clone(), legacy))
        })
        .collect()
}
