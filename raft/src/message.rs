//! Messages between hosts that openraft has no type for.

use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::config::GroupConfig;

/// One chunk of a snapshot in flight. Every chunk repeats the vote and the metadata so the receiver can
/// refuse a chunk from another transfer; the bytes are one self-checking frame of `storage::snapshot`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SnapshotChunk<C: GroupConfig> {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub sequence: u64,
    pub count: u64,
    pub bytes: Vec<u8>,
}
