//! What client services and nodes say to each other, and the envelope that lets one QUIC endpoint carry
//! both peer (Raft) and client traffic.
//!
//! Every message is encoded by [`crate::codec`] inside a checksummed frame. The variant order of each enum
//! is part of the wire format (append only).

use serde::{Deserialize, Serialize};

use crate::peer::{PeerRequest, PeerResponse};
use crate::record::{CommandError, Record, WriteId};
use crate::routing::RoutingMap;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Envelope {
    Peer(PeerRequest),
    Client(ClientRequest),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum EnvelopeResponse {
    Peer(PeerResponse),
    Client(ClientResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    Linearizable,
    Stale,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientOp {
    Put {
        record: String,
        #[serde(with = "crate::record::value_bytes")]
        value: Vec<u8>,
        write: WriteId,
    },
    Get {
        record: String,
        consistency: Consistency,
    },
    Delete {
        record: String,
        write: WriteId,
    },
    CompareAndSet {
        record: String,
        expected_revision: Option<u64>,
        #[serde(with = "crate::record::value_bytes")]
        value: Vec<u8>,
        write: WriteId,
    },
    Scan,
}

impl ClientOp {
    /// The operation's name, for refusals, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Put { .. } => "put",
            ClientOp::Get { .. } => "get",
            ClientOp::Delete { .. } => "delete",
            ClientOp::CompareAndSet { .. } => "compare_and_set",
            ClientOp::Scan => "scan",
        }
    }

    /// A read any replica may answer (so a node that answered it need not be the leader).
    pub fn is_stale_read(&self) -> bool {
        matches!(
            self,
            ClientOp::Get {
                consistency: Consistency::Stale,
                ..
            }
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    /// The published shard map of one jurisdiction (group names only: no keys, no placement). Only nodes
    /// inside the jurisdiction hold it; others answer `NotHosted`.
    ShardMap { jurisdiction: String },
    /// One operation on one user's records, in one jurisdiction.
    Call {
        jurisdiction: String,
        user_id: String,
        op: ClientOp,
    },
    /// The published shard map of one jurisdiction, whole: its epoch and its ranges (or, for a map
    /// published before ranges, its groups). Answered with [`ClientResponse::Map`].
    Map { jurisdiction: String },
    /// One operation on one user's records, routed by the map of `epoch`. A node that knows a later map
    /// answers [`ClientResponse::Moved`] with it instead of serving the call.
    RoutedCall {
        jurisdiction: String,
        user_id: String,
        epoch: u64,
        op: ClientOp,
    },
}

impl ClientRequest {
    /// The jurisdiction the request asks about, as the caller spelt it.
    pub fn jurisdiction(&self) -> &str {
        match self {
            ClientRequest::ShardMap { jurisdiction }
            | ClientRequest::Map { jurisdiction }
            | ClientRequest::Call { jurisdiction, .. }
            | ClientRequest::RoutedCall { jurisdiction, .. } => jurisdiction,
        }
    }

    /// What is asked: `shard_map`, or the operation's name.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::ShardMap { .. } | ClientRequest::Map { .. } => "shard_map",
            ClientRequest::Call { op, .. } | ClientRequest::RoutedCall { op, .. } => op.name(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResult {
    Written {
        revision: u64,
    },
    Deleted {
        previous_revision: Option<u64>,
    },
    Value {
        record: Option<Record>,
        stale: bool,
    },
    Records(Vec<(String, Record)>),
    /// The state machine refused the command (e.g. a compare-and-set whose revision did not match).
    Rejected(CommandError),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientResponse {
    ShardMap {
        jurisdiction: String,
        epoch: u64,
        groups: Vec<String>,
    },
    Done {
        group: String,
        result: ClientResult,
    },
    /// Ask the leader instead (when this node knows it).
    NotLeader {
        group: String,
        leader: Option<u64>,
    },
    /// This node holds no replica of the group: ask another.
    NotHosted {
        group: String,
    },
    /// The request would put data where its jurisdiction forbids, or no group is fenced to it.
    Residency {
        reason: String,
    },
    /// The group can't serve now (no quorum, shutting down); a retry later may succeed.
    Unavailable {
        group: String,
        reason: String,
    },
    /// The request itself is wrong; retrying won't help.
    Invalid {
        reason: String,
    },
    /// The caller's certificate does not entitle it to this call (a node's certificate presented for a
    /// client call, `raft::residency::NodeAsClient`); retrying won't help. Counted and logged as an incident.
    Forbidden {
        /// Who the certificate says the caller is (`node 9 at ashburn (US)`).
        caller: String,
        /// The jurisdiction the call asked for.
        jurisdiction: String,
        reason: String,
    },
    /// The published shard map asked for with [`ClientRequest::Map`] (checked by the receiver with
    /// [`RoutingMap::check`] before use).
    Map(RoutingMap),
    /// The call was routed by an older map than this node knows, or its group no longer owns the user's
    /// range: route again by `map` (a later epoch than `asked_epoch`) and retry.
    Moved {
        asked_epoch: u64,
        map: RoutingMap,
    },
}
