//! The admin endpoint's JSON shapes, shared by the server, the operator CLI and the demo.

use std::collections::BTreeMap;

use placement::{GroupId, NodeId, Step};
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
    /// The replicas this node purged, each with the proof it acted on, oldest first.
    #[serde(default)]
    pub purged: Vec<PurgeRecord>,
    /// The groups whose replica here is retired (purged, and not added back since).
    #[serde(default)]
    pub retired: Vec<String>,
    /// Purges under way here: past their point of no return, their files not all gone yet.
    #[serde(default)]
    pub purging: Vec<Purging>,
    /// An operator's isolation of this node from its peers (a drill), while in force.
    #[serde(default)]
    pub fault: Option<crate::admin_faults::FaultView>,
    /// Round trips to the peers this node is connected to, as measured (`round_trip_watch`).
    #[serde(default)]
    pub round_trips: Vec<crate::round_trip_watch::PeerRoundTrip>,
    /// Members of hosted groups whose measured round trip is longer than the group's timing covers.
    #[serde(default)]
    pub round_trips_uncovered: Vec<crate::round_trip_watch::Uncovered>,
    /// Drained by an operator (`POST /drain`, or an evacuation): declines leadership until it restarts.
    #[serde(default)]
    pub draining: bool,
}

/// A purge under way on a node: `state` is `waiting_for_store` (its store is still open: a snapshot
/// build or a reader holds it; its files go once it closes, or after a minute at most) or `deleting`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Purging {
    pub group: String,
    pub state: String,
}

/// A replica a node purged: the committed membership that left it out, as the group's leader showed it,
/// and when the deletion completed. Kept in the node's data directory (`purged.jsonl`), so a restart
/// still reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecord {
    pub group: String,
    /// The leader whose committed membership left this node out.
    pub leader: u64,
    /// The term in which that leader answered.
    pub term: u64,
    /// The index of the membership's log entry.
    pub log_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// When the replica's files were gone, by the node's clock: RFC 3339, UTC.
    pub deleted_at: String,
    pub deleted_at_unix_ms: u64,
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
    /// Whole snapshots this replica sent as leader, and installed, since it was opened (absent from
    /// older nodes' answers).
    #[serde(default)]
    pub snapshots_sent: u64,
    #[serde(default)]
    pub snapshots_installed: u64,
    /// The last log index this replica's current snapshot covers (absent: none yet, or an older node).
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// The records this replica holds (absent from older nodes' answers, and where the store could not
    /// be read).
    #[serde(default)]
    pub records: Option<u64>,
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
    /// Client calls outside the calling service's grants.
    #[serde(default)]
    pub client_calls_forbidden: u64,
    /// Reads answered pseudonymised to callers outside the jurisdiction.
    #[serde(default)]
    pub outside_reads: u64,
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

/// `POST /groups/{group}/steps`: one planner step that changes membership or leadership, executed by the
/// group's leader through the fence. The JSON is the planner's own (`{"step": "promote_voter", "node": 3}`)
/// without the group, which the path names. Purging is not a step anyone can ask a node for: the node
/// holding a removed replica purges it on the leader's proof, by itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum StepRequest {
    AddLearner { node: u64 },
    PromoteVoter { node: u64 },
    DemoteVoter { node: u64 },
    TransferLeader { to: u64 },
    RemoveMember { node: u64 },
}

impl StepRequest {
    /// The request for a planner step, or `None` for steps no admin endpoint executes (creating a group,
    /// purging a replica).
    pub fn of(step: &Step) -> Option<StepRequest> {
        Some(match step {
            Step::AddLearner { node, .. } => StepRequest::AddLearner { node: node.0 },
            Step::PromoteVoter { node, .. } => StepRequest::PromoteVoter { node: node.0 },
            Step::DemoteVoter { node, .. } => StepRequest::DemoteVoter { node: node.0 },
            Step::TransferLeader { to, .. } => StepRequest::TransferLeader { to: to.0 },
            Step::RemoveMember { node, .. } => StepRequest::RemoveMember { node: node.0 },
            Step::CreateGroup { .. } | Step::PurgeReplica { .. } => return None,
        })
    }

    pub fn into_step(self, group: GroupId) -> Step {
        match self {
            StepRequest::AddLearner { node } => Step::AddLearner {
                group,
                node: NodeId(node),
            },
            StepRequest::PromoteVoter { node } => Step::PromoteVoter {
                group,
                node: NodeId(node),
            },
            StepRequest::DemoteVoter { node } => Step::DemoteVoter {
                group,
                node: NodeId(node),
            },
            StepRequest::TransferLeader { to } => Step::TransferLeader {
                group,
                to: NodeId(to),
            },
            StepRequest::RemoveMember { node } => Step::RemoveMember {
                group,
                node: NodeId(node),
            },
        }
    }
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

/// `POST /shard-map/{jurisdiction}/plan`: a change of the jurisdiction's map, in routing positions
/// (`wire::routing::range_position`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapChangeRequest {
    /// Cut the range holding `at` at `at`, and give `at..=` its end to `to`.
    Split { at: u64, to: String },
    /// Give the range starting at `start` to `to`.
    Move { start: u64, to: String },
}

/// One step of a map change, as planned and as posted to `POST /shard-map/steps` on the leader of its
/// group (`raft::map_change::MapStep`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapStepRequest {
    /// Commit in `group` the ranges (`[start, end]`, inclusive) it owns in `jurisdiction` at `epoch`.
    SetRanges {
        group: String,
        jurisdiction: String,
        epoch: u64,
        ranges: Vec<(u64, u64)>,
    },
    /// Publish `map` in the jurisdiction's directory group `directory`, in place of the previous epoch's.
    Publish {
        directory: String,
        map: wire::routing::RoutingMap,
    },
}

/// The answer to a plan: the published map's epoch, the next one, and the steps between, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapPlan {
    pub from_epoch: u64,
    pub to_epoch: u64,
    pub next: wire::routing::RoutingMap,
    pub steps: Vec<MapStepRequest>,
}

/// `POST /range-copy/{group}/read`: a bounded run of the group's records of `jurisdiction` in `ranges`
/// (routing positions, inclusive) after `after`, in the store's key order. The node bounds it by the
/// range copy's batch limits whatever `records_max` and `bytes_max` ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRangeRequest {
    pub jurisdiction: String,
    pub ranges: Vec<(u64, u64)>,
    pub after: Option<storage::RecordKey>,
    #[serde(default)]
    pub records_max: Option<usize>,
    #[serde(default)]
    pub bytes_max: Option<usize>,
}

/// `POST /range-copy/{group}/sessions`: a bounded run of the group's client sessions after a client id,
/// which a range copy carries to the gaining group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsRequest {
    pub after: Option<u64>,
}

/// `POST /range-copy/{group}/digest`: the digest of what the group holds of `ranges`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRequest {
    pub jurisdiction: String,
    pub ranges: Vec<(u64, u64)>,
}

/// `GET /range-copy/{group}/state`: the ranges the group has committed and those it is receiving.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeState {
    pub owned: Option<storage::record::Ownership>,
    pub incoming: Option<storage::record::Ownership>,
}

/// The content type of a body that is one `wire::codec` frame: `[length][crc32][version][postcard]`.
pub const FRAME_CONTENT_TYPE: &str = "application/x-domicile-frame";

/// The largest frame either side reads: above a range copy's command (`COMMAND_BYTES_MAX`) and batch.
pub const FRAME_BYTES_MAX: usize = 16 << 20;

/// `value` as one checksummed, versioned frame: the range copy's records travel so, since JSON would
/// spell each value byte as a number (3.6 characters a byte for random bytes, and slow to parse).
pub fn frame_body<T: Serialize>(value: &T) -> Result<Vec<u8>, wire::codec::CodecError> {
    let mut out = Vec::new();
    wire::codec::encode_frame(value, None::<&()>, FRAME_BYTES_MAX, &mut out)?;
    Ok(out)
}

/// The value in a frame made by [`frame_body`]: its length, checksum and version checked first.
pub fn open_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, wire::codec::CodecError> {
    if bytes.len() > wire::codec::FRAME_HEADER_BYTES + FRAME_BYTES_MAX {
        return Err(wire::codec::CodecError::TooLong {
            length: bytes.len() as u64,
            bound: FRAME_BYTES_MAX as u64,
        });
    }
    wire::codec::decode(wire::codec::open_frame(bytes)?)
}
