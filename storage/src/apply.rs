//! Deterministic application of commands to the tables.
//!
//! [`Applier`] reads through a consistent [`BackendView`] plus the batch it is building, so later
//! entries of a batch see earlier ones, and produces one [`WriteBatch`]. It depends only on the
//! command, the entry's log index and the prior state: no clock, no randomness, no iteration over
//! unordered collections. The same log therefore yields the same bytes on every replica, and
//! command errors ([`CommandError`]) are ordinary, deterministic responses.
//!
//! Errors of this module ([`StateMachineError`]) are not deterministic (a failed disk, a value that
//! fails its checksum); they stop the state machine instead of being applied.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::backend::BackendView;
use crate::backend::Table;
use crate::backend::WriteBatch;
use crate::codec;
use crate::error::StateMachineError;
use crate::record::Command;
use crate::record::CommandError;
use crate::record::KEY_PART_BYTES_MAX;
use crate::record::Ownership;
use crate::record::Record;
use crate::record::RecordKey;
use crate::record::Response;
use crate::record::VALUE_BYTES_MAX;
use crate::record::WriteId;

/// Meta-table key of the last applied log id (encoded by the caller).
pub const META_APPLIED: &[u8] = b"applied";
/// Meta-table key of the last membership (encoded by the caller).
pub const META_MEMBERSHIP: &[u8] = b"membership";
/// Meta-table key of the group's policy version (a u64).
pub const META_POLICY_VERSION: &[u8] = b"policy_version";
/// Meta-table key of the ranges the group owns (an [`Ownership`]), absent until a map change set them.
pub const META_OWNERSHIP: &[u8] = b"ownership";
/// Meta-table key of the ranges the group is receiving (an [`Ownership`]), absent when none are.
pub const META_INCOMING: &[u8] = b"incoming";
/// Meta-table key of the revision offset (a u64, 0 when absent): a write's revision is its entry's
/// index plus the offset, which copies of records from another group raise past the revisions they
/// bring (see [`transfer`]).
pub const META_REVISION_OFFSET: &[u8] = b"revision_offset";

mod session_expiry;
mod sessions;
mod transfer;
pub use session_expiry::{
    META_SESSION_CLOCK, META_SESSION_SWEEP, SESSION_IDLE_TICKS_MAX, SWEEP_SESSIONS_MAX,
};
pub use sessions::{SessionBatch, read_sessions};
pub use transfer::{RangeBatch, RangeDigest, range_digest, read_incoming, read_range};

/// What the dedup table remembers per client session: its last write's sequence and response, and the
/// tick of the group's session clock it was last written at (`session_expiry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DedupEntry {
    sequence: u64,
    response: Response,
    active_tick: u64,
}

/// Encoded record key; a user's prefix is a byte prefix of each of its keys (length-prefixed
/// parts, so no other user's key can share it).
pub fn record_key(key: &RecordKey) -> Result<Vec<u8>, StateMachineError> {
    codec::encode(&(&key.jurisdiction, &key.user_id, &key.record_name)).map_err(encode_error)
}

fn user_prefix(jurisdiction: &str, user_id: &str) -> Result<Vec<u8>, StateMachineError> {
    codec::encode(&(jurisdiction, user_id)).map_err(encode_error)
}

fn encode_error(error: crate::error::CodecError) -> StateMachineError {
    StateMachineError::Backend(format!("encoding failed: {error}"))
}

fn unseal<T: serde::de::DeserializeOwned>(
    table: Table,
    key: &[u8],
    sealed: &[u8],
) -> Result<T, StateMachineError> {
    codec::unseal(key, sealed).map_err(|e| StateMachineError::Corrupt {
        location: format!("table {} key {}", table.name(), hex(key)),
        reason: e.to_string(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn seal<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StateMachineError> {
    codec::seal(key, value).map_err(encode_error)
}

/// Reads a meta value written by [`Applier::set_meta`].
pub fn read_meta(view: &impl BackendView, name: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
    view.get(Table::Meta, name)?
        .map(|sealed| unseal(Table::Meta, name, &sealed))
        .transpose()
}

/// The group's policy version (0 until one is set).
pub fn read_policy_version(view: &impl BackendView) -> Result<u64, StateMachineError> {
    Ok(read_meta(view, META_POLICY_VERSION)?
        .map(|bytes| decode_u64(&bytes))
        .transpose()?
        .unwrap_or(0))
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StateMachineError> {
    codec::decode(bytes).map_err(|e| StateMachineError::Corrupt {
        location: "meta policy_version".into(),
        reason: e.to_string(),
    })
}

/// The ranges the group owns, as of the view (`None`: never set, so whatever the map routes here).
pub fn read_ownership(view: &impl BackendView) -> Result<Option<Ownership>, StateMachineError> {
    read_meta(view, META_OWNERSHIP)?
        .map(|bytes| decode_ownership(&bytes))
        .transpose()
}

fn decode_ownership(bytes: &[u8]) -> Result<Ownership, StateMachineError> {
    codec::decode(bytes).map_err(|e| StateMachineError::Corrupt {
        location: "meta ownership".into(),
        reason: e.to_string(),
    })
}

/// Why the group may not serve `(jurisdiction, user_id)` as of the view: `Some(NotOwned)` once a map
/// change has taken the user's range from it.
pub fn not_owned(
    view: &impl BackendView,
    jurisdiction: &str,
    user_id: &str,
) -> Result<Option<CommandError>, StateMachineError> {
    Ok(read_ownership(view)?.and_then(|ownership| refusal(&ownership, jurisdiction, user_id)))
}

fn refusal(ownership: &Ownership, jurisdiction: &str, user_id: &str) -> Option<CommandError> {
    (!ownership.owns_user(jurisdiction, user_id)).then(|| CommandError::NotOwned {
        jurisdiction: jurisdiction.to_string(),
        epoch: ownership.epoch,
        position: wire::routing::range_position(user_id),
    })
}

/// Whether `ranges` (in order, not overlapping) cover every position of `start..=end`.
fn covered(ranges: &[(u64, u64)], start: u64, end: u64) -> bool {
    let mut next = start; // the first position not yet known to be covered
    for &(s, e) in ranges {
        if e < next {
            continue;
        }
        if s > next {
            return false;
        }
        if e >= end {
            return true;
        }
        next = e + 1; // e < end, so no overflow
    }
    false
}

/// The user a command reads or changes, if any.
fn user_of(command: &Command) -> Option<(&str, &str)> {
    match command {
        Command::Put { key, .. }
        | Command::Delete { key, .. }
        | Command::CompareAndSet { key, .. }
        | Command::Get { key } => Some((&key.jurisdiction, &key.user_id)),
        Command::Scan {
            jurisdiction,
            user_id,
        } => Some((jurisdiction, user_id)),
        Command::SetPolicyVersion { .. }
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

/// Reads one record from a view (a local, possibly stale read).
pub fn read_record(view: &impl BackendView, key: &RecordKey) -> Result<Option<Record>, StateMachineError> {
    let key = record_key(key)?;
    view.get(Table::Records, &key)?
        .map(|sealed| unseal(Table::Records, &key, &sealed))
        .transpose()
}

/// Builds one batch from a run of entries.
pub struct Applier<'v, V: BackendView> {
    view: &'v V,
    batch: WriteBatch,
    /// The group's ranges, read once per batch on first need (`None`: not read yet).
    ownership: Option<Option<Ownership>>,
    /// The revision offset, read once per batch on first need.
    revision_offset: Option<u64>,
    /// The session clock, read once per batch on first need (a tick in the batch updates it).
    session_clock: Option<u64>,
}

impl<'v, V: BackendView> Applier<'v, V> {
    pub fn new(view: &'v V) -> Self {
        Applier {
            view,
            batch: WriteBatch::default(),
            ownership: None,
            revision_offset: None,
            session_clock: None,
        }
    }

    /// The group's ranges as of the batch so far.
    fn ownership(&mut self) -> Result<Option<&Ownership>, StateMachineError> {
        if self.ownership.is_none() {
            let stored = match self.get(Table::Meta, META_OWNERSHIP)? {
                Some(sealed) => Some(decode_ownership(&unseal::<Vec<u8>>(
                    Table::Meta,
                    META_OWNERSHIP,
                    &sealed,
                )?)?),
                None => None,
            };
            self.ownership = Some(stored);
        }
        Ok(self.ownership.as_ref().and_then(Option::as_ref))
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        match self.batch.changes.get(&(table, key.to_vec())) {
            Some(pending) => Ok(pending.clone()),
            None => self.view.get(table, key),
        }
    }

    fn put(&mut self, table: Table, key: Vec<u8>, sealed: Vec<u8>) {
        self.batch.changes.insert((table, key), Some(sealed));
    }

    /// Stores a meta value (sealed like every other value).
    pub fn set_meta(&mut self, name: &[u8], value: &[u8]) -> Result<(), StateMachineError> {
        let sealed = seal(name, &value)?;
        self.put(Table::Meta, name.to_vec(), sealed);
        Ok(())
    }

    /// The batch to commit.
    pub fn finish(self) -> WriteBatch {
        self.batch
    }

    /// Applies the command of the entry at `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Response, StateMachineError> {
        let Some(write) = command.write_id() else {
            return self.execute(index, command);
        };
        let dedup_key = write.client_id.to_be_bytes().to_vec();
        if let Some(sealed) = self.get(Table::Dedup, &dedup_key)? {
            let last = session_expiry::unseal_dedup(&dedup_key, &sealed)?;
            if last.sequence == write.sequence {
                return Ok(last.response); // a retry: answer as the first time, change nothing
            }
            if last.sequence > write.sequence {
                return Ok(Response::Rejected(CommandError::StaleSequence {
                    client_id: write.client_id,
                    sequence: write.sequence,
                    last_sequence: last.sequence,
                }));
            }
        }
        let response = self.execute(index, command)?;
        self.remember(write, &response, dedup_key)?;
        Ok(response)
    }

    fn remember(
        &mut self,
        write: WriteId,
        response: &Response,
        dedup_key: Vec<u8>,
    ) -> Result<(), StateMachineError> {
        let entry = DedupEntry {
            sequence: write.sequence,
            response: response.clone(),
            active_tick: self.session_clock()?,
        };
        let sealed = seal(&dedup_key, &entry)?;
        self.put(Table::Dedup, dedup_key, sealed);
        Ok(())
    }

    fn execute(&mut self, index: u64, command: &Command) -> Result<Response, StateMachineError> {
        if let Some(error) = validate(command) {
            return Ok(Response::Rejected(error));
        }
        // The range check where the write is applied: a command routed by a map older than the group's
        // committed ranges (a write that raced a cutover) is refused here, on every replica alike.
        if let Some((jurisdiction, user_id)) = user_of(command)
            && let Some(ownership) = self.ownership()?
            && let Some(refused) = refusal(ownership, jurisdiction, user_id)
        {
            return Ok(Response::Rejected(refused));
        }
        match command {
            Command::Put { key, value, .. } => self.write_record(index, key, value),
            Command::Delete { key, .. } => {
                let encoded = record_key(key)?;
                let previous = self.read(&encoded)?;
                if previous.is_some() {
                    self.batch.changes.insert((Table::Records, encoded), None);
                }
                Ok(Response::Deleted {
                    previous_revision: previous.map(|r| r.revision),
                })
            }
            Command::CompareAndSet {
                key,
                expected_revision,
                value,
                ..
            } => {
                let actual = self.read(&record_key(key)?)?.map(|r| r.revision);
                if actual != *expected_revision {
                    return Ok(Response::Rejected(CommandError::RevisionMismatch {
                        expected: *expected_revision,
                        actual,
                    }));
                }
                self.write_record(index, key, value)
            }
            Command::Get { key } => Ok(Response::Value(self.read(&record_key(key)?)?)),
            Command::Scan {
                jurisdiction,
                user_id,
            } => Ok(Response::Records(self.scan(jurisdiction, user_id)?)),
            Command::SetPolicyVersion { policy_version, .. } => {
                let current = match self.get(Table::Meta, META_POLICY_VERSION)? {
                    Some(sealed) => {
                        decode_u64(&unseal::<Vec<u8>>(Table::Meta, META_POLICY_VERSION, &sealed)?)?
                    }
                    None => 0,
                };
                if *policy_version < current {
                    return Ok(Response::Rejected(CommandError::PolicyVersionRegressed {
                        current,
                        proposed: *policy_version,
                    }));
                }
                let encoded = codec::encode(policy_version).map_err(encode_error)?;
                self.set_meta(META_POLICY_VERSION, &encoded)?;
                Ok(Response::PolicyVersionSet {
                    policy_version: *policy_version,
                })
            }
            Command::SetOwnership(proposed) => self.set_ownership(proposed, false),
            Command::Depart(proposed) => self.set_ownership(proposed, true),
            Command::Receive(incoming) => self.receive(incoming),
            Command::CopyIn {
                jurisdiction,
                epoch,
                records,
            } => self.copy_in(index, jurisdiction, *epoch, records),
            Command::Purge {
                jurisdiction,
                after,
                limit,
            } => self.purge(jurisdiction, after.as_ref(), *limit),
            Command::CancelIncoming { jurisdiction, epoch } => self.cancel_incoming(jurisdiction, *epoch),
            Command::MergeSessions {
                jurisdiction,
                epoch,
                sessions,
            } => self.merge_sessions(jurisdiction, *epoch, sessions),
            Command::SessionTick => self.tick_session_clock(),
        }
    }

    /// Takes the ranges of a later epoch (the same epoch with the same ranges again is a retry: answered
    /// alike, nothing changes). Unless `departing` (the fence of a range copy, `Command::Depart`), refused
    /// if any record the group holds would fall outside them: records are never stranded by a plain
    /// change. Incoming ranges the new ones cover are the group's from now on.
    fn set_ownership(
        &mut self,
        proposed: &Ownership,
        departing: bool,
    ) -> Result<Response, StateMachineError> {
        let refused = |reason: String| Ok(Response::Rejected(CommandError::OwnershipRefused { reason }));
        if let Some(reason) = proposed.malformed() {
            return refused(reason);
        }
        if let Some(current) = self.ownership()? {
            if current.jurisdiction != proposed.jurisdiction {
                return refused(format!(
                    "the group holds ranges of `{}`, not of `{}`",
                    current.jurisdiction, proposed.jurisdiction
                ));
            }
            if current.epoch == proposed.epoch && current.ranges == proposed.ranges {
                return Ok(Response::OwnershipSet {
                    epoch: proposed.epoch,
                });
            }
            if current.epoch >= proposed.epoch {
                return Ok(Response::Rejected(CommandError::OwnershipEpochRegressed {
                    current: current.epoch,
                    proposed: proposed.epoch,
                }));
            }
        }
        // Ranges that only grow (an admission: the current ones and the incoming ones) leave outside
        // them only what lay outside before, which is never stranded: each earlier change either found
        // nothing outside (this scan) or only grew, and what lies outside is a fenced loser's departing
        // records or an abandoned copy's, both purged in their turn. So only a change that gives up
        // ranges, or a group's first ranges, reads every record key.
        let growing = self.ownership()?.is_some_and(|current| {
            current
                .ranges
                .iter()
                .all(|&(start, end)| covered(&proposed.ranges, start, end))
        });
        if !departing
            && !growing
            && let Some((outside, count)) = self.records_outside(proposed)?
        {
            return refused(format!(
                "{count} records the group holds lie outside the ranges of epoch {} (the first of user \
                 `{outside}`): their range can't be handed over before they are copied",
                proposed.epoch
            ));
        }
        let encoded = codec::encode(proposed).map_err(encode_error)?;
        self.set_meta(META_OWNERSHIP, &encoded)?;
        self.ownership = Some(Some(proposed.clone()));
        self.admit_incoming(proposed)?;
        Ok(Response::OwnershipSet {
            epoch: proposed.epoch,
        })
    }

    /// The first user (in key order) with a record outside `ownership`, and how many such records there
    /// are, counting this batch's changes. Reads every record key: what the copy of a range will replace.
    fn records_outside(&self, ownership: &Ownership) -> Result<Option<(String, u64)>, StateMachineError> {
        let outside = |key: &[u8]| -> Result<Option<String>, StateMachineError> {
            let (jurisdiction, user_id, _): (String, String, String) =
                codec::decode(key).map_err(|e| StateMachineError::Corrupt {
                    location: format!("record key {}", hex(key)),
                    reason: e.to_string(),
                })?;
            Ok((!ownership.owns_user(&jurisdiction, &user_id)).then_some(user_id))
        };
        let mut first: Option<String> = None;
        let mut count = 0u64;
        let mut note = |user: String| {
            count += 1;
            if first.is_none() {
                first = Some(user);
            }
        };
        self.view.scan_prefix(Table::Records, &[], &mut |key, _| {
            // Keys this batch changes are judged below, by their pending state.
            if !self.batch.changes.contains_key(&(Table::Records, key.to_vec()))
                && let Some(user) = outside(key)?
            {
                note(user);
            }
            Ok(())
        })?;
        for ((table, key), change) in &self.batch.changes {
            if *table == Table::Records
                && change.is_some()
                && let Some(user) = outside(key)?
            {
                note(user);
            }
        }
        Ok(first.map(|user| (user, count)))
    }

    fn write_record(
        &mut self,
        index: u64,
        key: &RecordKey,
        value: &[u8],
    ) -> Result<Response, StateMachineError> {
        let encoded = record_key(key)?;
        let previous = self.read(&encoded)?.map_or(0, |r| r.revision);
        // A revision is the index of the entry that wrote it plus the group's revision offset (which
        // copies raise past every revision they bring), so a stored one at or past this entry's means the
        // store is ahead of the log: damage (a value sealed under the wrong revision, a store from another
        // replica), which stops the state machine rather than panicking the node.
        let revision = index.saturating_add(self.revision_offset()?);
        if revision <= previous {
            return Err(StateMachineError::Corrupt {
                location: format!("table {} key {}", Table::Records.name(), hex(&encoded)),
                reason: format!(
                    "stored revision {previous} is not older than entry {index}, which writes it \
                     (as revision {revision})"
                ),
            });
        }
        let sealed = seal(
            &encoded,
            &Record {
                value: value.to_vec(),
                revision,
            },
        )?;
        self.put(Table::Records, encoded, sealed);
        Ok(Response::Written { revision })
    }

    fn read(&self, encoded: &[u8]) -> Result<Option<Record>, StateMachineError> {
        self.get(Table::Records, encoded)?
            .map(|sealed| unseal(Table::Records, encoded, &sealed))
            .transpose()
    }

    fn scan(&self, jurisdiction: &str, user_id: &str) -> Result<Vec<(String, Record)>, StateMachineError> {
        let prefix = user_prefix(jurisdiction, user_id)?;
        let mut found: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        self.view
            .scan_prefix(Table::Records, &prefix, &mut |key, value| {
                found.insert(key.to_vec(), value.to_vec());
                Ok(())
            })?;
        for ((table, key), change) in &self.batch.changes {
            if *table == Table::Records && key.starts_with(&prefix) {
                match change {
                    Some(value) => found.insert(key.clone(), value.clone()),
                    None => found.remove(key),
                };
            }
        }
        found
            .into_iter()
            .map(|(key, sealed)| {
                let record: Record = unseal(Table::Records, &key, &sealed)?;
                let (_, _, name): (String, String, String) =
                    codec::decode(&key).map_err(|e| StateMachineError::Corrupt {
                        location: format!("record key {}", hex(&key)),
                        reason: e.to_string(),
                    })?;
                Ok((name, record))
            })
            .collect()
    }
}

fn validate(command: &Command) -> Option<CommandError> {
    let key = match command {
        Command::Put { key, .. }
        | Command::Delete { key, .. }
        | Command::CompareAndSet { key, .. }
        | Command::Get { key } => Some((
            key.jurisdiction.as_str(),
            key.user_id.as_str(),
            key.record_name.as_str(),
        )),
        Command::Scan {
            jurisdiction,
            user_id,
        } => Some((jurisdiction.as_str(), user_id.as_str(), "")),
        Command::SetPolicyVersion { .. }
        | Command::SetOwnership(_)
        | Command::Receive(_)
        | Command::CopyIn { .. }
        | Command::Depart(_)
        | Command::Purge { .. }
        | Command::CancelIncoming { .. }
        | Command::MergeSessions { .. }
        | Command::SessionTick => None,
    };
    if let Some((a, b, c)) = key
        && let Some(bytes) = [a.len(), b.len(), c.len()]
            .into_iter()
            .find(|len| *len > KEY_PART_BYTES_MAX)
    {
        return Some(CommandError::KeyTooLong { bytes });
    }
    match command {
        Command::Put { value, .. } | Command::CompareAndSet { value, .. }
            if value.len() > VALUE_BYTES_MAX =>
        {
            Some(CommandError::ValueTooLarge { bytes: value.len() })
        }
        _ => None,
    }
}

/// Every item of every table a view holds, in table and key order (tests comparing whole stores).
#[cfg(test)]
pub(crate) fn every_item(view: &impl BackendView) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    for table in Table::ALL {
        view.scan_prefix(table, &[], &mut |key, value| {
            all.push((table, key.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;

    fn key(name: &str) -> RecordKey {
        RecordKey::new("eu", "alice", name)
    }

    fn write(sequence: u64) -> WriteId {
        WriteId {
            client_id: 1,
            sequence,
        }
    }

    /// Applies each command as its own batch at indexes 1, 2, ...
    fn run(backend: &mut MemBackend, commands: &[Command]) -> Vec<Response> {
        commands
            .iter()
            .enumerate()
            .map(|(i, command)| {
                let view = backend.view().unwrap();
                let mut applier = Applier::new(&view);
                let response = applier.apply(i as u64 + 1, command).unwrap();
                let batch = applier.finish();
                backend.commit(batch).unwrap();
                response
            })
            .collect()
    }

    /// Found by the `state_machine` fuzz target: a stored record whose revision is not older than the
    /// entry writing it (the store ahead of the log) panicked the applier; it is damage, a named error.
    #[test]
    fn a_store_ahead_of_the_log_is_corruption_not_a_panic() {
        let mut backend = MemBackend::new();
        run(
            &mut backend,
            &[Command::Put {
                write: write(1),
                key: key("a"),
                value: b"1".to_vec(),
            }],
        );
        let view = backend.view().unwrap();
        let mut applier = Applier::new(&view);
        let put = Command::Put {
            write: write(2),
            key: key("a"),
            value: b"2".to_vec(),
        };
        let error = applier.apply(1, &put).unwrap_err();
        assert!(
            matches!(&error, StateMachineError::Corrupt { reason, .. } if reason.contains("stored revision 1 is not older than entry 1")),
            "{error}"
        );
        assert_eq!(
            applier.apply(2, &put).unwrap(),
            Response::Written { revision: 2 },
            "the next entry writes as before"
        );
    }

    fn put(sequence: u64, user: &str) -> Command {
        Command::Put {
            write: write(sequence),
            key: RecordKey::new("eu", user, "r"),
            value: b"v".to_vec(),
        }
    }

    fn owning(epoch: u64, ranges: Vec<(u64, u64)>) -> Command {
        Command::SetOwnership(Ownership {
            jurisdiction: "eu".into(),
            epoch,
            ranges,
        })
    }

    /// Two users on either side of the middle of the routing positions.
    fn users_either_side() -> (String, String) {
        let mut low = None;
        let mut high = None;
        for n in 0.. {
            let user = format!("user-{n}");
            if wire::routing::range_position(&user) < 1 << 63 {
                low.get_or_insert(user);
            } else {
                high.get_or_insert(user);
            }
            if low.is_some() && high.is_some() {
                break;
            }
        }
        (low.unwrap(), high.unwrap())
    }

    #[test]
    fn ranges_cover_a_span_only_without_a_gap() {
        let ranges = [(0, 9), (10, 19), (30, u64::MAX)];
        assert!(covered(&ranges, 0, 19));
        assert!(covered(&ranges, 5, 12));
        assert!(covered(&ranges, 30, u64::MAX));
        assert!(!covered(&ranges, 15, 30), "20..=29 is missing");
        assert!(!covered(&ranges[..2], 0, 20));
        assert!(!covered(&[], 0, 0));
        assert!(covered(&[(0, u64::MAX)], 7, 7));
    }

    /// Growing ranges (an admission) never strand a record, so they are taken without reading every
    /// record key, also while the group still holds records it departed; giving ranges up is checked.
    #[test]
    fn growing_ranges_are_taken_while_departing_records_wait_and_shrinking_ones_are_checked() {
        let (low, high) = users_either_side();
        let lower_half = vec![(0, (1 << 63) - 1)];
        let mut backend = MemBackend::new();
        let depart = |epoch: u64, ranges: Vec<(u64, u64)>| {
            Command::Depart(Ownership {
                jurisdiction: "eu".into(),
                epoch,
                ranges,
            })
        };
        let responses = run(
            &mut backend,
            &[
                put(1, &low),
                put(2, &high),
                owning(2, vec![(0, u64::MAX)]),
                // `high` departs: its record stays, outside the ranges, until a purge.
                depart(3, lower_half.clone()),
                // Growing, but not over it (a later admission), is taken; the departing record is kept.
                owning(4, vec![(0, wire::routing::range_position(&high) - 1)]),
                // Shrinking is checked, and `low`'s record is in the way.
                owning(5, vec![(1 << 63, u64::MAX)]),
            ],
        );
        assert_eq!(responses[2], Response::OwnershipSet { epoch: 2 });
        assert_eq!(responses[3], Response::OwnershipSet { epoch: 3 });
        assert_eq!(responses[4], Response::OwnershipSet { epoch: 4 });
        assert!(
            matches!(&responses[5], Response::Rejected(CommandError::OwnershipRefused { reason }) if reason.contains(&low)),
            "{:?}",
            responses[5]
        );
        let view = backend.view().unwrap();
        assert!(
            read_record(&view, &RecordKey::new("eu", &high, "r"))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_group_refuses_commands_on_users_outside_its_committed_ranges() {
        let (low, high) = users_either_side();
        let lower_half = vec![(0, (1 << 63) - 1)];
        let mut backend = MemBackend::new();
        let responses = run(
            &mut backend,
            &[
                put(1, &low),
                // Refused: `high`'s record would be left outside, uncopied.
                put(2, &high),
                owning(2, lower_half.clone()),
                Command::Delete {
                    write: write(3),
                    key: RecordKey::new("eu", &high, "r"),
                },
                owning(2, lower_half.clone()),
                // Applied again: a retry, answered alike.
                owning(2, lower_half.clone()),
                put(4, &high),
                put(5, &low),
                Command::Get {
                    key: RecordKey::new("eu", &high, "r"),
                },
                owning(1, vec![(0, u64::MAX)]),
                owning(2, vec![(0, 5)]),
                put(6, "\u{0}directory"),
            ],
        );
        let not_owned = Response::Rejected(CommandError::NotOwned {
            jurisdiction: "eu".into(),
            epoch: 2,
            position: wire::routing::range_position(&high),
        });
        assert!(
            matches!(&responses[2], Response::Rejected(CommandError::OwnershipRefused { reason }) if reason.contains(&high)),
            "{:?}",
            responses[2]
        );
        assert_eq!(
            responses[3],
            Response::Deleted {
                previous_revision: Some(2)
            }
        );
        assert_eq!(responses[4], Response::OwnershipSet { epoch: 2 });
        assert_eq!(responses[5], Response::OwnershipSet { epoch: 2 });
        assert_eq!(responses[6], not_owned, "a write outside the ranges is refused");
        assert_eq!(responses[7], Response::Written { revision: 8 });
        assert_eq!(responses[8], not_owned, "a read through the log too");
        assert_eq!(
            responses[9],
            Response::Rejected(CommandError::OwnershipEpochRegressed {
                current: 2,
                proposed: 1
            })
        );
        assert_eq!(
            responses[10],
            Response::Rejected(CommandError::OwnershipEpochRegressed {
                current: 2,
                proposed: 2
            })
        );
        assert_eq!(
            responses[11],
            Response::Written { revision: 12 },
            "reserved users are the group's"
        );
        let view = backend.view().unwrap();
        assert_eq!(
            read_record(&view, &RecordKey::new("eu", &high, "r")).unwrap(),
            None
        );
        assert_eq!(
            not_owned_of(&view, &high),
            Some(CommandError::NotOwned {
                jurisdiction: "eu".into(),
                epoch: 2,
                position: wire::routing::range_position(&high),
            })
        );
        assert_eq!(not_owned_of(&view, &low), None);
    }

    fn not_owned_of(view: &impl BackendView, user: &str) -> Option<CommandError> {
        not_owned(view, "eu", user).unwrap()
    }

    #[test]
    fn malformed_ranges_are_refused() {
        let mut backend = MemBackend::new();
        for (ranges, epoch, expected) in [
            (vec![(5, 1)], 2, "ends before it starts"),
            (vec![(0, 10), (10, 20)], 2, "overlaps"),
            (vec![(0, 1)], 0, "epoch 0"),
        ] {
            let responses = run(&mut backend, &[owning(epoch, ranges)]);
            assert!(
                matches!(&responses[0], Response::Rejected(CommandError::OwnershipRefused { reason }) if reason.contains(expected)),
                "{responses:?}"
            );
        }
    }

    #[test]
    fn put_get_cas_delete_scan_and_retries() {
        let mut backend = MemBackend::new();
        let responses = run(
            &mut backend,
            &[
                Command::Put {
                    write: write(1),
                    key: key("a"),
                    value: b"1".to_vec(),
                },
                Command::Put {
                    write: write(1),
                    key: key("a"),
                    value: b"other".to_vec(),
                }, // retry of seq 1
                Command::CompareAndSet {
                    write: write(2),
                    key: key("a"),
                    expected_revision: Some(7),
                    value: b"x".to_vec(),
                },
                Command::CompareAndSet {
                    write: write(3),
                    key: key("a"),
                    expected_revision: Some(1),
                    value: b"2".to_vec(),
                },
                Command::Put {
                    write: write(4),
                    key: RecordKey::new("eu", "alicex", "a"),
                    value: b"not alice".to_vec(),
                },
                Command::Put {
                    write: write(5),
                    key: key("b"),
                    value: b"3".to_vec(),
                },
                Command::Scan {
                    jurisdiction: "eu".into(),
                    user_id: "alice".into(),
                },
                Command::Delete {
                    write: write(6),
                    key: key("b"),
                },
                Command::Get { key: key("b") },
                Command::Put {
                    write: write(2),
                    key: key("c"),
                    value: b"stale".to_vec(),
                },
            ],
        );
        assert_eq!(responses[0], Response::Written { revision: 1 });
        assert_eq!(
            responses[1],
            Response::Written { revision: 1 },
            "a retry gets the first answer"
        );
        assert_eq!(
            responses[2],
            Response::Rejected(CommandError::RevisionMismatch {
                expected: Some(7),
                actual: Some(1)
            })
        );
        assert_eq!(responses[3], Response::Written { revision: 4 });
        let record = |value: &[u8], revision| Record {
            value: value.to_vec(),
            revision,
        };
        assert_eq!(
            responses[6],
            Response::Records(vec![("a".into(), record(b"2", 4)), ("b".into(), record(b"3", 6))]),
            "a scan returns exactly one user's records"
        );
        assert_eq!(
            responses[7],
            Response::Deleted {
                previous_revision: Some(6)
            }
        );
        assert_eq!(responses[8], Response::Value(None));
        assert!(matches!(
            responses[9],
            Response::Rejected(CommandError::StaleSequence { last_sequence: 6, .. })
        ));
        assert_eq!(
            read_record(&backend.view().unwrap(), &key("a")).unwrap(),
            Some(record(b"2", 4))
        );
    }

    #[test]
    fn later_entries_of_a_batch_see_earlier_ones() {
        let backend = MemBackend::new();
        let view = backend.view().unwrap();
        let mut applier = Applier::new(&view);
        applier
            .apply(
                1,
                &Command::Put {
                    write: write(1),
                    key: key("a"),
                    value: b"1".to_vec(),
                },
            )
            .unwrap();
        let scan = applier
            .apply(
                2,
                &Command::Scan {
                    jurisdiction: "eu".into(),
                    user_id: "alice".into(),
                },
            )
            .unwrap();
        assert_eq!(
            scan,
            Response::Records(vec![(
                "a".into(),
                Record {
                    value: b"1".to_vec(),
                    revision: 1
                }
            )])
        );
        let cas = applier.apply(
            3,
            &Command::CompareAndSet {
                write: write(2),
                key: key("a"),
                expected_revision: None,
                value: vec![],
            },
        );
        assert!(matches!(
            cas.unwrap(),
            Response::Rejected(CommandError::RevisionMismatch { actual: Some(1), .. })
        ));
    }

    #[test]
    fn same_commands_give_the_same_bytes() {
        let commands: Vec<Command> = (0..50u64)
            .map(|i| match i % 4 {
                0 => Command::Put {
                    write: write(i + 1),
                    key: key(&format!("r{}", i % 7)),
                    value: i.to_le_bytes().to_vec(),
                },
                1 => Command::Delete {
                    write: write(i + 1),
                    key: key(&format!("r{}", i % 5)),
                },
                2 => Command::SetPolicyVersion {
                    write: write(i + 1),
                    policy_version: 50 - i,
                },
                _ => Command::CompareAndSet {
                    write: write(i + 1),
                    key: key("r0"),
                    expected_revision: Some(i),
                    value: vec![1],
                },
            })
            .collect();
        let dump = |backend: &MemBackend| every_item(&backend.view().unwrap());
        let (mut a, mut b) = (MemBackend::new(), MemBackend::new());
        assert_eq!(run(&mut a, &commands), run(&mut b, &commands));
        assert_eq!(dump(&a), dump(&b));
        assert!(!dump(&a).is_empty());
    }

    #[test]
    fn oversized_input_is_a_deterministic_rejection() {
        let mut backend = MemBackend::new();
        let long = "x".repeat(KEY_PART_BYTES_MAX + 1);
        let responses = run(
            &mut backend,
            &[
                Command::Put {
                    write: write(1),
                    key: RecordKey::new("eu", long, "a"),
                    value: vec![],
                },
                Command::Put {
                    write: write(2),
                    key: key("a"),
                    value: vec![0; VALUE_BYTES_MAX + 1],
                },
            ],
        );
        assert!(matches!(
            responses[0],
            Response::Rejected(CommandError::KeyTooLong { .. })
        ));
        assert!(matches!(
            responses[1],
            Response::Rejected(CommandError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn a_damaged_value_is_an_error_not_a_value() {
        let mut backend = MemBackend::new();
        run(
            &mut backend,
            &[Command::Put {
                write: write(1),
                key: key("a"),
                value: b"v".to_vec(),
            }],
        );
        let encoded = record_key(&key("a")).unwrap();
        let mut sealed = backend
            .view()
            .unwrap()
            .get(Table::Records, &encoded)
            .unwrap()
            .unwrap();
        *sealed.last_mut().unwrap() ^= 1;
        let mut batch = WriteBatch::default();
        batch.changes.insert((Table::Records, encoded), Some(sealed));
        backend.commit(batch).unwrap();
        assert!(matches!(
            read_record(&backend.view().unwrap(), &key("a")),
            Err(StateMachineError::Corrupt { .. })
        ));
    }
}
