//! The admin endpoint's JSON shapes, shared by the server, the operator CLI and the demo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    pub cluster: String,
    pub node: u64,
    pub site: String,
    pub country: String,
    pub listen: String,
    /// Admin endpoints of the peers this node knows, by node id.
    pub peer_admins: BTreeMap<u64, String>,
    pub groups: Vec<GroupView>,
    pub incidents: Incidents,
    /// Every group of the topology this node runs with and the voters it starts with (declared, or as
    /// the planner creates it), so `status` can name groups no reachable node hosts.
    #[serde(default)]
    pub topology_groups: Vec<TopologyGroup>,
}

/// A group as the topology declares it, before anything is known of it at run time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopologyGroup {
    pub group: String,
    pub jurisdiction: String,
    pub initial_voters: Vec<Member>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub group: String,
    pub jurisdiction: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub committed: Option<u64>,
    pub voters: Vec<Member>,
    pub learners: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: u64,
    pub site: String,
    pub country: String,
    /// Whether the member's site is inside the group's jurisdiction.
    pub inside: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Incidents {
    pub membership_refused: u64,
    pub egress_blocked: u64,
    pub ingress_refused: u64,
    /// Client calls refused because they came under a node's certificate.
    #[serde(default)]
    pub client_calls_refused: u64,
}

/// `GET /ready`: whether the node serves its groups (every group it hosts knows a leader).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// The groups this node holds a replica of.
    pub groups: usize,
    /// Those of them that know no leader now.
    pub without_leader: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddLearner {
    pub node: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveLeader {
    pub to: u64,
}

/// Every non-2xx answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminError {
    pub error: String,
    /// For "not the leader": who is, when known.
    pub leader: Option<u64>,
    /// For residency refusals: the typed refusal.
    pub refusal: Option<serde_json::Value>,
}
