//! User records and the operations on them: the application data of every replica group.
//!
//! A record is addressed by (jurisdiction, user id, record name) and holds bytes with a revision.
//! The revision is the log index of the write that last changed the record: it is deterministic
//! (the same on every replica), strictly increasing per record, and what compare-and-set checks.
//!
//! Every write carries a [`WriteId`] (client id and sequence). The state machine remembers, per
//! client, the last sequence it applied and the response it gave, so a retried write is applied
//! once and answered with the original response. Sequences of one client must increase.
//!
//! [`Command`] is the `D` and [`Response`] the `R` of the openraft type config; the `raft` crate
//! reuses both. Errors a command can meet while being applied ([`CommandError`]) are part of the
//! response: they are deterministic, so every replica reaches the same one.

use std::fmt;

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

/// The address of a user record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordKey {
    pub jurisdiction: String,
    pub user_id: String,
    pub record_name: String,
}

impl RecordKey {
    pub fn new(
        jurisdiction: impl Into<String>,
        user_id: impl Into<String>,
        record_name: impl Into<String>,
    ) -> Self {
        RecordKey {
            jurisdiction: jurisdiction.into(),
            user_id: user_id.into(),
            record_name: record_name.into(),
        }
    }
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "value_bytes")]
    pub value: Vec<u8>,
    /// Log index of the write that produced this value.
    pub revision: u64,
}

/// An operation on user records; the variant order is part of the log format (append only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        write: WriteId,
        key: RecordKey,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    Delete {
        write: WriteId,
        key: RecordKey,
    },
    /// Writes `value` only if the record's revision is `expected_revision` (`None`: absent).
    CompareAndSet {
        write: WriteId,
        key: RecordKey,
        expected_revision: Option<u64>,
        #[serde(with = "value_bytes")]
        value: Vec<u8>,
    },
    /// A linearizable read through the log.
    Get {
        key: RecordKey,
    },
    /// Every record of one user, ordered by record name.
    Scan {
        jurisdiction: String,
        user_id: String,
    },
    /// Records the group's placement-policy version (carried by snapshots); must not decrease.
    SetPolicyVersion {
        write: WriteId,
        policy_version: u64,
    },
}

impl Command {
    /// The write identity, for commands that change state.
    pub fn write_id(&self) -> Option<WriteId> {
        match self {
            Command::Put { write, .. }
            | Command::Delete { write, .. }
            | Command::CompareAndSet { write, .. }
            | Command::SetPolicyVersion { write, .. } => Some(*write),
            Command::Get { .. } | Command::Scan { .. } => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put { write, key, value } => {
                write!(f, "put {key:?} ({} bytes) by {write:?}", value.len())
            }
            Command::Delete { write, key } => write!(f, "delete {key:?} by {write:?}"),
            Command::CompareAndSet {
                write,
                key,
                expected_revision,
                value,
            } => {
                write!(
                    f,
                    "cas {key:?} if revision {expected_revision:?} ({} bytes) by {write:?}",
                    value.len()
                )
            }
            Command::Get { key } => write!(f, "get {key:?}"),
            Command::Scan {
                jurisdiction,
                user_id,
            } => write!(f, "scan {jurisdiction}/{user_id}"),
            Command::SetPolicyVersion {
                write,
                policy_version,
            } => write!(f, "set policy version {policy_version} by {write:?}"),
        }
    }
}

/// The result of applying one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    Empty,
    Written {
        revision: u64,
    },
    /// `previous_revision` is `None` when there was nothing to delete.
    Deleted {
        previous_revision: Option<u64>,
    },
    Value(Option<Record>),
    /// (record name, record), ordered by record name.
    Records(Vec<(String, Record)>),
    PolicyVersionSet {
        policy_version: u64,
    },
    Rejected(CommandError),
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
/// bytes are one copy.
mod value_bytes {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `Command::Put` as it was declared before its value became serde bytes.
    #[derive(Serialize)]
    enum PutAsSequence {
        Put {
            write: WriteId,
            key: RecordKey,
            value: Vec<u8>,
        },
    }

    #[test]
    fn values_as_bytes_keep_the_encoding_of_a_sequence() {
        let write = WriteId {
            client_id: 3,
            sequence: 9,
        };
        let key = RecordKey::new("eu", "user-1", "profile");
        for length in [0usize, 1, 127, 128, 300, 70_000] {
            let value: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            let command = Command::Put {
                write,
                key: key.clone(),
                value: value.clone(),
            };
            let encoded = crate::codec::encode(&command).unwrap();
            let as_sequence = crate::codec::encode(&PutAsSequence::Put {
                write,
                key: key.clone(),
                value,
            })
            .unwrap();
            assert_eq!(
                encoded, as_sequence,
                "a {length}-byte value changed the log format"
            );
            assert_eq!(crate::codec::decode::<Command>(&encoded).unwrap(), command);
        }
    }
}
