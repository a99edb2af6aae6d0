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

/// What the dedup table remembers per client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DedupEntry {
    sequence: u64,
    response: Response,
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
}

impl<'v, V: BackendView> Applier<'v, V> {
    pub fn new(view: &'v V) -> Self {
        Applier {
            view,
            batch: WriteBatch::default(),
        }
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
            let last: DedupEntry = unseal(Table::Dedup, &dedup_key, &sealed)?;
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
        };
        let sealed = seal(&dedup_key, &entry)?;
        self.put(Table::Dedup, dedup_key, sealed);
        Ok(())
    }

    fn execute(&mut self, index: u64, command: &Command) -> Result<Response, StateMachineError> {
        if let Some(error) = validate(command) {
            return Ok(Response::Rejected(error));
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
        }
    }

    fn write_record(
        &mut self,
        index: u64,
        key: &RecordKey,
        value: &[u8],
    ) -> Result<Response, StateMachineError> {
        let encoded = record_key(key)?;
        let previous = self.read(&encoded)?.map_or(0, |r| r.revision);
        // A revision is the index of the entry that wrote it, so a stored one at or past the entry being
        // applied means the store is ahead of the log: damage (a value sealed under the wrong revision, a
        // store from another replica), which stops the state machine rather than panicking the node.
        if index <= previous {
            return Err(StateMachineError::Corrupt {
                location: format!("table {} key {}", Table::Records.name(), hex(&encoded)),
                reason: format!(
                    "stored revision {previous} is not older than entry {index}, which writes it"
                ),
            });
        }
        let sealed = seal(
            &encoded,
            &Record {
                value: value.to_vec(),
                revision: index,
            },
        )?;
        self.put(Table::Records, encoded, sealed);
        Ok(Response::Written { revision: index })
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
        Command::SetPolicyVersion { .. } => None,
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
        let dump = |backend: &MemBackend| {
            let mut all = Vec::new();
            for table in Table::ALL {
                backend
                    .view()
                    .unwrap()
                    .scan_prefix(table, &[], &mut |k, v| {
                        all.push((table, k.to_vec(), v.to_vec()));
                        Ok(())
                    })
                    .unwrap();
            }
            all
        };
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
