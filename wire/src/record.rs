//! User records as clients see them, the identity of a write, and why a command was refused.
//!
//! A record is addressed by (jurisdiction, user id, record name) and holds bytes with a revision.
//! The revision is the log index of the write that last changed the record: it is deterministic
//! (the same on every replica), strictly increasing per record, and what compare-and-set checks.
//!
//! Every write carries a [`WriteId`] (client id and sequence). The state machine remembers, per
//! client, the last sequence it applied and the response it gave, so a retried write is applied
//! once and answered with the original response. Sequences of one client must increase.
//!
//! These types travel in client responses and in the log's commands (`storage::record`), so their
//! encoding is part of both formats: fields are never reordered, variants only appended.

use serde::Deserialize;
use serde::Serialize;

/// Bound on each of the three key components, in bytes.
pub const KEY_PART_BYTES_MAX: usize = 256;

/// Bound on a record value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Identifies one write of one client, for deduplication of retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WriteId {
    pub client_id: u64,
    pub sequence: u64,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "value_bytes")]
    pub value: Vec<u8>,
    /// Log index of the write that produced this value.
    pub revision: u64,
}

/// Why a command was refused. Deterministic: every replica applying the same log refuses the same
/// command the same way, so these are results, not failures of the replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error("revision mismatch: expected {expected:?}, found {actual:?}")]
    RevisionMismatch {
        expected: Option<u64>,
        actual: Option<u64>,
    },
    #[error("client {client_id} sequence {sequence} is older than its last applied sequence {last_sequence}")]
    StaleSequence {
        client_id: u64,
        sequence: u64,
        last_sequence: u64,
    },
    #[error("key component of {bytes} bytes exceeds {KEY_PART_BYTES_MAX}")]
    KeyTooLong { bytes: usize },
    #[error("value of {bytes} bytes exceeds {VALUE_BYTES_MAX}")]
    ValueTooLarge { bytes: usize },
    #[error("policy version {proposed} is older than the current {current}")]
    PolicyVersionRegressed { current: u64, proposed: u64 },
    /// The group does not own the key's range of its jurisdiction at the epoch it has committed: the
    /// range moved (or is moving) to another group. Nothing was applied.
    #[error("this group does not own position {position:#018x} of `{jurisdiction}` at epoch {epoch}")]
    NotOwned {
        jurisdiction: String,
        epoch: u64,
        position: u64,
    },
    /// A change of the group's ranges older than (or, with other ranges, equal to) the one it holds.
    #[error("ranges of epoch {proposed} refused: the group holds its ranges of epoch {current}")]
    OwnershipEpochRegressed { current: u64, proposed: u64 },
    /// A change of the group's ranges that is malformed, or would leave records the group holds outside
    /// its ranges (a range holding records moves by `raft::range_copy`), or a step of a range copy that
    /// does not fit what the group holds.
    #[error("ranges refused: {reason}")]
    OwnershipRefused { reason: String },
}

impl CommandError {
    /// All command errors are deterministic (see the type docs).
    pub fn is_deterministic(&self) -> bool {
        true
    }

    /// Whether resubmitting the same command could succeed: only a CAS may, after re-reading.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CommandError::RevisionMismatch { .. })
    }
}

/// Record values as serde bytes rather than a sequence of `u8`.
///
/// postcard writes both as a varint length followed by the raw bytes, so the log and wire formats
/// are unchanged; but a sequence is encoded one element call at a time, which made encoding a
/// 256-byte entry spend most of its time in that loop (a profile of the log's appends), where
/// bytes are one copy. Public for the values of `storage`'s log commands, which are encoded the same way.
pub mod value_bytes {
    use std::fmt;

    use serde::Deserializer;
    use serde::Serializer;
    use serde::de::SeqAccess;
    use serde::de::Visitor;

    /// The largest allocation a self-describing format's length hint may cause up front.
    const PREALLOCATION_BYTES_MAX: usize = 64 << 10;

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(ValueVisitor)
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a record value (bytes)")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        /// Formats without a bytes type (JSON) hand the value over as a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0).min(PREALLOCATION_BYTES_MAX);
            let mut value = Vec::with_capacity(hint);
            while let Some(byte) = seq.next_element()? {
                value.push(byte);
            }
            Ok(value)
        }
    }
}
