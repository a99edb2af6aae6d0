//! Messages between hosts that openraft has no type for.

use std::sync::atomic::{AtomicU64, Ordering};

use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::config::GroupConfig;

/// Chunks of one snapshot a sender has in flight at a time: enough to keep a link busy while the
/// receiver writes the ones before (stop-and-wait left it idle for a round trip and a write per chunk),
/// few enough that neither side holds more than a handful of chunks in memory.
pub const SNAPSHOT_CHUNKS_IN_FLIGHT: usize = 8;

/// Whole snapshots a replica of a group sent as leader since it was opened (each answered by the
/// follower once installed). A new replica at volume must be brought up by one snapshot, not entry by
/// entry: this count and the state machine's count of installs (in status and metrics) are how a test
/// or an operator sees which happened.
#[derive(Debug, Default)]
pub struct SnapshotsSent(AtomicU64);

impl SnapshotsSent {
    pub fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One chunk of a snapshot in flight. Every chunk repeats the vote and the metadata so the receiver can
/// refuse a chunk from another transfer; the bytes are one self-checking frame of `storage::snapshot`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SnapshotChunk<C: GroupConfig> {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub sequence: u64,
    pub count: u64,
    /// Serde bytes (the encoding of a sequence of `u8`, read and written whole).
    #[serde(with = "wire::record::value_bytes")]
    pub bytes: Vec<u8>,
}
