//! The operations on user records: the application data of every replica group.
//!
//! A command addresses a record by [`RecordKey`] (jurisdiction, user id, record name). What clients
//! see as well — [`Record`] with its revision, the [`WriteId`] that deduplicates retried writes,
//! [`CommandError`] and the size bounds — is defined in `wire::record` and re-exported here.
//!
//! [`Command`] is the `D` and [`Response`] the `R` of the openraft type config; the `raft` crate
//! reuses both. Errors a command can meet while being applied ([`CommandError`]) are part of the
//! response: they are deterministic, so every replica reaches the same one.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;
use wire::record::value_bytes;
pub use wire::record::{CommandError, KEY_PART_BYTES_MAX, Record, VALUE_BYTES_MAX, WriteId};

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
    /// Records the ranges of its jurisdiction's map the group owns from an epoch on (carried by
    /// snapshots): from then on, a command on a user outside them is refused (`CommandError::NotOwned`).
    /// The epoch must not decrease, and unless the ranges only grow (an admission) the group may hold
    /// no record outside the new ones.
    SetOwnership(Ownership),
    /// Marks ranges the group is about to gain at `epoch` as **incoming** (carried by snapshots): their
    /// users stay refused to clients, but [`Command::CopyIn`] may write their records. The group must have
    /// its current ranges committed (so it refuses those users today), of an older epoch, and not
    /// overlapping the incoming ones. The same again is a retry.
    Receive(Ownership),
    /// Records copied from the group losing an incoming range: written with their revisions kept (a
    /// `None` record deletes the key: it was deleted at the source since an earlier copy). Refused unless
    /// every key lies in the incoming ranges of `epoch`. At most [`COPY_RECORDS_MAX`] records.
    CopyIn {
        jurisdiction: String,
        epoch: u64,
        records: Vec<CopiedRecord>,
    },
    /// The fence of a group losing ranges: its ranges of a later epoch, like [`Command::SetOwnership`],
    /// but the records it holds outside them are kept as **departing** — refused to clients, read only
    /// by the copy, deleted by [`Command::Purge`] once the gaining group holds them.
    Depart(Ownership),
    /// Deletes up to `limit` (at most [`PURGE_RECORDS_MAX`]) records of `jurisdiction` the group neither
    /// owns nor is receiving, in key order after `after`: a departed range's records once its new group
    /// holds them, or an abandoned copy's.
    Purge {
        jurisdiction: String,
        after: Option<RecordKey>,
        limit: u32,
    },
    /// Drops the incoming mark of `epoch` (an aborted change, before its fence): the copied records are
    /// then neither owned nor incoming, and [`Command::Purge`] removes them. Absent already is a retry.
    CancelIncoming {
        jurisdiction: String,
        epoch: u64,
    },
    /// Client sessions' last writes, as the group losing an incoming range remembers them, merged into
    /// this group's: a write the loser applied, retried here by its client after the move with the same
    /// [`WriteId`], is answered as the first time rather than applied again. A session's entry is taken
    /// when it is later than this group's (or of the same write, which this group only refused as not
    /// its own). Refused unless a range of `jurisdiction` is incoming at `epoch`. At most
    /// [`COPY_SESSIONS_MAX`] sessions.
    MergeSessions {
        jurisdiction: String,
        epoch: u64,
        sessions: Vec<CopiedSession>,
    },
    /// One tick of the group's session clock, proposed by its leader once per
    /// `raft::session_clock::SESSION_TICK_EVERY` it has led: the clock advances by one, and a bounded
    /// sweep of the dedup table drops the sessions idle for more than
    /// [`crate::apply::SESSION_IDLE_TICKS_MAX`] ticks (`crate::apply::session_expiry`). It carries no
    /// time: every replica applies the same count, and a leader counts only time it has led.
    SessionTick,
}

/// Bound on the records of one [`Command::CopyIn`].
pub const COPY_RECORDS_MAX: usize = 4096;
/// Bound on the sessions of one [`Command::MergeSessions`].
pub const COPY_SESSIONS_MAX: usize = 4096;

/// One client session's last write as a group remembers it (its dedup entry): the sequence and the
/// response the write was answered with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedSession {
    pub client_id: u64,
    pub sequence: u64,
    pub response: Response,
}
/// Bound on the records one [`Command::Purge`] deletes.
pub const PURGE_RECORDS_MAX: u32 = 4096;

/// One record as the group losing its range holds it; `record: None` when it holds none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedRecord {
    pub key: RecordKey,
    pub record: Option<Record>,
}

/// The ranges of routing positions (`wire::routing::range_position`) a group owns in its jurisdiction's
/// map at one epoch. A group that never had one committed owns whatever the map routes to it (every
/// group did, before maps changed). Field order is the log format (append only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ownership {
    pub jurisdiction: String,
    pub epoch: u64,
    /// `(start, end)`, both inclusive, in order, not overlapping; may be empty (the group owns nothing).
    /// At most `wire::routing::RANGES_MAX`, refused while decoding past that.
    #[serde(with = "wire::routing::bounded")]
    pub ranges: Vec<(u64, u64)>,
}

impl Ownership {
    /// Whether `position` lies in one of the ranges.
    pub fn owns(&self, position: u64) -> bool {
        let after = self.ranges.partition_point(|&(start, _)| start <= position);
        after > 0 && position <= self.ranges[after - 1].1
    }

    /// Whether `(jurisdiction, user_id)` is this group's: a reserved user (the system's own records)
    /// always is; any other must be of this jurisdiction and in a range.
    pub fn owns_user(&self, jurisdiction: &str, user_id: &str) -> bool {
        wire::routing::is_reserved_user(user_id)
            || (jurisdiction == self.jurisdiction && self.owns(wire::routing::range_position(user_id)))
    }

    /// Why the ranges are malformed, if they are.
    pub fn malformed(&self) -> Option<String> {
        if self.epoch == 0 {
            return Some("epoch 0 (epochs start at 1)".into());
        }
        if self.ranges.len() > wire::routing::RANGES_MAX {
            return Some(format!(
                "{} ranges exceed the bound {}",
                self.ranges.len(),
                wire::routing::RANGES_MAX
            ));
        }
        if let Some(&(start, end)) = self.ranges.iter().find(|(start, end)| start > end) {
            return Some(format!("range {start}..={end} ends before it starts"));
        }
        if let Some(pair) = self.ranges.windows(2).find(|pair| pair[0].1 >= pair[1].0) {
            return Some(format!(
                "range {}..={} overlaps or follows {}..={}",
                pair[1].0, pair[1].1, pair[0].0, pair[0].1
            ));
        }
        None
    }
}

impl Command {
    /// The write identity, for commands that change state.
    pub fn write_id(&self) -> Option<WriteId> {
        match self {
            Command::Put { write, .. }
            | Command::Delete { write, .. }
            | Command::CompareAndSet { write, .. }
            | Command::SetPolicyVersion { write, .. } => Some(*write),
            // Idempotent by its epoch: applying it again changes nothing.
            Command::Get { .. }
            | Command::Scan { .. }
            | Command::SetOwnership(_)
            | Command::Receive(_)
            | Command::CopyIn { .. }
            | Command::Depart(_)
            | Command::Purge { .. }
            | Command::CancelIncoming { .. }
            | Command::MergeSessions { .. }
            | Command::SessionTick => None,
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
            Command::SetOwnership(ownership) => write!(
                f,
                "own {} ranges of {} at epoch {}",
                ownership.ranges.len(),
                ownership.jurisdiction,
                ownership.epoch
            ),
            Command::Receive(incoming) => write!(
                f,
                "receive {} ranges of {} at epoch {}",
                incoming.ranges.len(),
                incoming.jurisdiction,
                incoming.epoch
            ),
            Command::CopyIn {
                jurisdiction,
                epoch,
                records,
            } => write!(
                f,
                "copy {} records of {jurisdiction} in for epoch {epoch}",
                records.len()
            ),
            Command::Depart(ownership) => write!(
                f,
                "depart to {} ranges of {} at epoch {}",
                ownership.ranges.len(),
                ownership.jurisdiction,
                ownership.epoch
            ),
            Command::Purge {
                jurisdiction, limit, ..
            } => write!(f, "purge up to {limit} unowned records of {jurisdiction}"),
            Command::CancelIncoming { jurisdiction, epoch } => {
                write!(f, "cancel the incoming ranges of {jurisdiction} at epoch {epoch}")
            }
            Command::MergeSessions {
                jurisdiction,
                epoch,
                sessions,
            } => write!(
                f,
                "merge {} client sessions of {jurisdiction}'s loser for epoch {epoch}",
                sessions.len()
            ),
            Command::SessionTick => write!(f, "tick the session clock"),
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
    /// The group's ranges are those of `epoch` now.
    OwnershipSet {
        epoch: u64,
    },
    /// The ranges are incoming at `epoch` (or, after `CancelIncoming`, no longer).
    IncomingSet {
        epoch: u64,
    },
    /// A `CopyIn` wrote (or deleted) this many records.
    Copied {
        records: u64,
    },
    /// A `Purge` deleted `deleted` records; `next` is the cursor to continue after (`None`: done).
    Purged {
        deleted: u64,
        next: Option<RecordKey>,
    },
    /// A `MergeSessions` took `taken` of the sessions it carried (the others were not later than
    /// this group's).
    SessionsMerged {
        taken: u64,
    },
    /// A `SessionTick` moved the session clock to `clock` and dropped `expired` idle sessions.
    SessionClock {
        clock: u64,
        expired: u64,
    },
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

    /// `Ownership` as it would be without its bound.
    #[derive(Clone, Serialize)]
    struct PlainOwnership {
        jurisdiction: String,
        epoch: u64,
        ranges: Vec<(u64, u64)>,
    }

    #[test]
    fn a_groups_ranges_are_bounded_while_decoding_and_encoded_as_a_plain_sequence() {
        let bound = wire::routing::RANGES_MAX as u64;
        let over = PlainOwnership {
            jurisdiction: "eu".into(),
            epoch: 2,
            ranges: (0..=bound).map(|start| (start * 2, start * 2 + 1)).collect(),
        };
        let bytes = crate::codec::encode(&over).unwrap();
        assert!(crate::codec::decode::<Ownership>(&bytes).is_err());
        let fits = PlainOwnership {
            ranges: over.ranges[..bound as usize].to_vec(),
            ..over
        };
        let bytes = crate::codec::encode(&fits).unwrap();
        let decoded: Ownership = crate::codec::decode(&bytes).unwrap();
        assert_eq!(decoded.ranges, fits.ranges);
        assert_eq!(crate::codec::encode(&decoded).unwrap(), bytes);
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
