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
    /// A leader asks whether this node takes leadership of the group now, before handing it over for the
    /// group's leader preference. The body is empty; the answer is a bool, false while this node drains
    /// (an operator moved its leaderships away, e.g. to evacuate its site) or when it holds no replica.
    LeadershipOffer,
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
            RequestKind::LeadershipOffer => "leadership_offer",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRequest {
    pub group: u64,
    pub kind: RequestKind,
    /// Whether the message carries the group's data (entries, snapshot bytes): what the egress fence guards.
    pub carries_data: bool,
    /// Serde bytes: the same encoding as a sequence of `u8`, read and written whole rather than a byte
    /// at a time (a snapshot chunk is a mebibyte).
    #[serde(with = "crate::record::value_bytes")]
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The Raft response, encoded.
    Ok(#[serde(with = "crate::record::value_bytes")] Vec<u8>),
    /// The receiving host refused the message (ingress fence, unknown group, forged sender).
    Refused { group: u64, reason: String },
    /// The message was accepted but Raft failed to process it.
    Failed { group: u64, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PeerRequest` and `PeerResponse::Ok` as they were declared before their bodies became serde bytes.
    #[derive(Serialize)]
    struct RequestAsSequence {
        group: u64,
        kind: RequestKind,
        carries_data: bool,
        body: Vec<u8>,
    }

    #[derive(Serialize)]
    enum ResponseAsSequence {
        Ok(Vec<u8>),
    }

    #[test]
    fn bodies_as_bytes_keep_the_encoding_of_a_sequence() {
        for length in [0usize, 1, 127, 128, 300, 70_000, 1 << 20] {
            let body: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            let request = PeerRequest {
                group: 7,
                kind: RequestKind::SnapshotChunk,
                carries_data: true,
                body: body.clone(),
            };
            let encoded = crate::codec::encode(&request).unwrap();
            let as_sequence = crate::codec::encode(&RequestAsSequence {
                group: 7,
                kind: RequestKind::SnapshotChunk,
                carries_data: true,
                body: body.clone(),
            })
            .unwrap();
            assert_eq!(
                encoded, as_sequence,
                "a {length}-byte body changed the wire format"
            );
            assert_eq!(crate::codec::decode::<PeerRequest>(&encoded).unwrap().body, body);
            let response = crate::codec::encode(&PeerResponse::Ok(body.clone())).unwrap();
            let response_as_sequence = crate::codec::encode(&ResponseAsSequence::Ok(body.clone())).unwrap();
            assert_eq!(response, response_as_sequence);
            let Ok(PeerResponse::Ok(decoded)) = crate::codec::decode::<PeerResponse>(&response) else {
                panic!("a {length}-byte response did not decode");
            };
            assert_eq!(decoded, body);
        }
    }
}
