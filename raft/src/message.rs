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

/// A [`SnapshotChunk`] as received: the same encoding, its bytes borrowed from the request's body
/// rather than copied out of it (a chunk is a mebibyte; the receiver writes it to its spool and keeps
/// a copy only of a chunk that arrived ahead of its turn).
#[derive(Debug, Deserialize)]
#[serde(bound = "")]
pub struct SnapshotChunkRef<'a, C: GroupConfig> {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub sequence: u64,
    pub count: u64,
    #[serde(borrow)]
    pub bytes: &'a [u8],
}

#[cfg(test)]
mod tests {
    use openraft::alias::{LogIdOf, StoredMembershipOf};
    use storage::codec;

    use super::*;
    use crate::config::TokioConfig as C;

    #[test]
    fn a_chunk_is_read_back_borrowed_exactly_as_it_was_sent() {
        let chunk = SnapshotChunk::<C> {
            vote: VoteOf::<C>::new_committed(3, 1),
            meta: SnapshotMetaOf::<C> {
                last_log_id: Some(LogIdOf::<C>::new_term_index(3, 1_000)),
                last_membership: StoredMembershipOf::<C>::default(),
            },
            sequence: 7,
            count: 9,
            bytes: (0..=255u8).cycle().take(3_000).collect(),
        };
        let body = codec::encode(&chunk).unwrap();
        let read: SnapshotChunkRef<'_, C> = codec::decode_borrowed(&body).unwrap();
        assert_eq!(read.vote, chunk.vote);
        assert_eq!(read.meta, chunk.meta);
        assert_eq!((read.sequence, read.count), (7, 9));
        assert_eq!(read.bytes, &chunk.bytes[..]);
        let inside = body.as_ptr_range();
        assert!(
            inside.contains(&read.bytes.as_ptr()),
            "the bytes are the body's, not a copy"
        );
        for cut in [0, 1, body.len() / 2, body.len() - 1] {
            assert!(
                codec::decode_borrowed::<SnapshotChunkRef<'_, C>>(&body[..cut]).is_err(),
                "a chunk cut at {cut} of {} bytes is refused",
                body.len()
            );
        }
    }
}
