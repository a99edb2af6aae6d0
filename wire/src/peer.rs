//! What nodes say to each other: a Raft message of one group, opaque to everything below the host.
//!
//! A [`PeerRequest`] names the group and the kind of message and carries openraft's message encoded by
//! [`crate::codec`] as bytes, so neither this crate nor a transport needs openraft's types. The node's
//! host (`raft::host`) decodes it behind the ingress fence. The variant order of each enum is part of the
//! wire format (append only).

use serde::{Deserialize, Serialize};

/// Kinds of peer messages. The order is part of the wire format (append only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestKind {
    /// Log entries, or a heartbeat when it carries none.
    AppendEntries,
    Vote,
    /// One chunk of a snapshot (`SnapshotChunk` in the body).
    SnapshotChunk,
    PreVote,
    TransferLeader,
    /// A node inside a jurisdiction asks for the shard map its replica of the directory group holds
    /// (`raft::directory`); the jurisdiction's name in the body.
    DirectoryRead,
    /// A node asks the group's leader which membership the group has committed, to learn whether it may
    /// purge its replica (`raft::purge`). The body is empty; the answer names nodes, never data.
    CommittedMembership,
}

impl RequestKind {
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::AppendEntries => "append_entries",
            RequestKind::Vote => "vote",
            RequestKind::SnapshotChunk => "snapshot_chunk",
            RequestKind::PreVote => "pre_vote",
            RequestKind::TransferLeader => "transfer_leader",
            RequestKind::DirectoryRead => "directory_read",
            RequestKind::CommittedMembership => "committed_membership",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRequest {
    pub group: u64,
    pub kind: RequestKind,
    /// Whether the message carries the group's data (entries, snapshot bytes): what the egress fence guards.
    pub carries_data: bool,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The Raft response, encoded.
    Ok(Vec<u8>),
    /// The receiving host refused the message (ingress fence, unknown group, forged sender).
    Refused { group: u64, reason: String },
    /// The message was accepted but Raft failed to process it.
    Failed { group: u64, reason: String },
}
