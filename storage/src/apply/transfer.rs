//! The state machine's side of moving a range's records between two groups of a jurisdiction
//! (`raft::range_copy` drives it, step by step, on the two groups' leaders).
//!
//! - The **gaining** group marks the range *incoming* ([`Command::Receive`]): its users stay refused to
//!   clients (they are outside the group's committed ranges), but [`Command::CopyIn`] writes their
//!   records as the losing group holds them, revisions kept. Taking the range's ranges of the next
//!   epoch ([`Command::SetOwnership`]) makes it the group's; [`Command::CancelIncoming`] abandons it.
//! - The **losing** group's fence ([`Command::Depart`]) keeps the records outside its new ranges as
//!   *departing*: refused to clients, read only by the copy ([`read_range`], [`range_digest`]), deleted
//!   in bounded batches by [`Command::Purge`] once the gainer holds them.
//!
//! **Revisions across a move.** A revision is `index + offset`, the offset (a meta value, 0 until a
//! copy) raised by every `CopyIn` so that each later write's revision exceeds every revision copied in.
//! A record's revisions therefore strictly increase across moves, and a revision a client read at the
//! old group is never given to a different value at the new one (no ABA for compare-and-set): a copied
//! record keeps its revision, and any write after it, of any record, takes a larger one. A stored
//! revision at or past the one an entry would write stays what it was before copies: damage.
//!
//! Every command here is deterministic and reads through the batch being built, like the rest of
//! [`Applier`]; every one may be applied again (a retried step) with the same outcome.

use super::*;
use crate::record::COPY_RECORDS_MAX;
use crate::record::CopiedRecord;
use crate::record::PURGE_RECORDS_MAX;

/// A bounded run of one range's records, in key order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeBatch {
    pub records: Vec<(RecordKey, Record)>,
    /// Whether the bound stopped the run before the range's last record.
    pub more: bool,
}

/// What a group holds of some ranges, summarised so two groups can be compared without shipping it:
/// the count, the value bytes, and FNV-1a (64-bit) chained over every (key, revision, value) in key
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    pub records: u64,
    pub value_bytes: u64,
    pub hash: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

fn decode_key(key: &[u8]) -> Result<RecordKey, StateMachineError> {
    let (jurisdiction, user_id, record_name): (String, String, String) =
        codec::decode(key).map_err(|e| StateMachineError::Corrupt {
            location: format!("record key {}", hex(key)),
            reason: e.to_string(),
        })?;
    Ok(RecordKey {
        jurisdiction,
        user_id,
        record_name,
    })
}

fn in_ranges(ranges: &[(u64, u64)], user_id: &str) -> bool {
    let position = wire::routing::range_position(user_id);
    !wire::routing::is_reserved_user(user_id)
        && ranges
            .iter()
            .any(|&(start, end)| start <= position && position <= end)
}

fn jurisdiction_prefix(jurisdiction: &str) -> Result<Vec<u8>, StateMachineError> {
    codec::encode(&jurisdiction).map_err(encode_error)
}

/// The ranges the group is receiving, as of the view (`None`: none).
pub fn read_incoming(view: &impl BackendView) -> Result<Option<Ownership>, StateMachineError> {
    read_meta(view, META_INCOMING)?
        .map(|bytes| decode_ownership(&bytes))
        .transpose()
}

/// The records of `jurisdiction` in `ranges` after `after`, in key order, up to `records_max` records
/// or `bytes_max` value bytes (at least one record, when there is one). Reads what the replica holds,
/// owned, incoming or departing: the copy's read, never a client's.
pub fn read_range(
    view: &impl BackendView,
    jurisdiction: &str,
    ranges: &[(u64, u64)],
    after: Option<&RecordKey>,
    records_max: usize,
    bytes_max: usize,
) -> Result<RangeBatch, StateMachineError> {
    let prefix = jurisdiction_prefix(jurisdiction)?;
    let after = after.map(record_key).transpose()?;
    let mut batch = RangeBatch {
        records: Vec::new(),
        more: false,
    };
    let mut bytes = 0usize;
    view.scan_after(Table::Records, &prefix, after.as_deref(), &mut |key, sealed| {
        let record_key = decode_key(key)?;
        if !in_ranges(ranges, &record_key.user_id) {
            return Ok(true);
        }
        if batch.records.len() >= records_max.max(1) || (bytes >= bytes_max && !batch.records.is_empty()) {
            batch.more = true;
            return Ok(false);
        }
        let record: Record = unseal(Table::Records, key, sealed)?;
        bytes += record.value.len();
        batch.records.push((record_key, record));
        Ok(true)
    })?;
    Ok(batch)
}

/// The digest of what the view holds of `jurisdiction` in `ranges`. Reads every record of the
/// jurisdiction once.
pub fn range_digest(
    view: &impl BackendView,
    jurisdiction: &str,
    ranges: &[(u64, u64)],
) -> Result<RangeDigest, StateMachineError> {
    let prefix = jurisdiction_prefix(jurisdiction)?;
    let mut digest = RangeDigest {
        records: 0,
        value_bytes: 0,
        hash: FNV_OFFSET,
    };
    view.scan_prefix(Table::Records, &prefix, &mut |key, sealed| {
        if in_ranges(ranges, &decode_key(key)?.user_id) {
            let record: Record = unseal(Table::Records, key, sealed)?;
            digest.records += 1;
            digest.value_bytes += record.value.len() as u64;
            digest.hash = fnv(digest.hash, &(key.len() as u64).to_le_bytes());
            digest.hash = fnv(digest.hash, key);
            digest.hash = fnv(digest.hash, &record.revision.to_le_bytes());
            digest.hash = fnv(digest.hash, &(record.value.len() as u64).to_le_bytes());
            digest.hash = fnv(digest.hash, &record.value);
        }
        Ok(())
    })?;
    Ok(digest)
}

fn refused(reason: String) -> Result<Response, StateMachineError> {
    Ok(Response::Rejected(CommandError::OwnershipRefused { reason }))
}

impl<V: BackendView> Applier<'_, V> {
    /// The incoming ranges as of the batch so far.
    pub(super) fn incoming(&self) -> Result<Option<Ownership>, StateMachineError> {
        self.get(Table::Meta, META_INCOMING)?
            .map(|sealed| decode_ownership(&unseal::<Vec<u8>>(Table::Meta, META_INCOMING, &sealed)?))
            .transpose()
    }

    /// The revision offset as of the batch so far.
    pub(super) fn revision_offset(&mut self) -> Result<u64, StateMachineError> {
        if let Some(offset) = self.revision_offset {
            return Ok(offset);
        }
        let offset = match self.get(Table::Meta, META_REVISION_OFFSET)? {
            Some(sealed) => codec::decode(&unseal::<Vec<u8>>(Table::Meta, META_REVISION_OFFSET, &sealed)?)
                .map_err(|e| StateMachineError::Corrupt {
                    location: "meta revision_offset".into(),
                    reason: e.to_string(),
                })?,
            None => 0,
        };
        self.revision_offset = Some(offset);
        Ok(offset)
    }

    fn raise_revision_offset(&mut self, offset: u64) -> Result<(), StateMachineError> {
        if offset > self.revision_offset()? {
            let encoded = codec::encode(&offset).map_err(encode_error)?;
            self.set_meta(META_REVISION_OFFSET, &encoded)?;
            self.revision_offset = Some(offset);
        }
        Ok(())
    }

    pub(super) fn receive(&mut self, incoming: &Ownership) -> Result<Response, StateMachineError> {
        if let Some(reason) = incoming.malformed() {
            return refused(reason);
        }
        if incoming.ranges.is_empty() {
            return refused("no incoming range".into());
        }
        if let Some(current) = self.incoming()? {
            if current == *incoming {
                return Ok(Response::IncomingSet {
                    epoch: incoming.epoch,
                });
            }
            return refused(format!(
                "the group is receiving {} ranges of `{}` at epoch {} already",
                current.ranges.len(),
                current.jurisdiction,
                current.epoch
            ));
        }
        let Some(owned) = self.ownership()?.cloned() else {
            // Without committed ranges the group owns whatever the map routes to it, and so would not
            // refuse the incoming users' clients: it must commit its current ranges first.
            return refused("the group has no ranges committed to refuse the incoming range's users".into());
        };
        if owned.jurisdiction != incoming.jurisdiction {
            return refused(format!(
                "the group holds ranges of `{}`, not of `{}`",
                owned.jurisdiction, incoming.jurisdiction
            ));
        }
        if owned.epoch >= incoming.epoch {
            return Ok(Response::Rejected(CommandError::OwnershipEpochRegressed {
                current: owned.epoch,
                proposed: incoming.epoch,
            }));
        }
        if let Some(&(start, end)) = incoming
            .ranges
            .iter()
            .find(|&&(start, end)| owned.ranges.iter().any(|&(s, e)| s <= end && start <= e))
        {
            return refused(format!("incoming range {start}..={end} overlaps the group's own"));
        }
        let encoded = codec::encode(incoming).map_err(encode_error)?;
        self.set_meta(META_INCOMING, &encoded)?;
        Ok(Response::IncomingSet {
            epoch: incoming.epoch,
        })
    }

    pub(super) fn copy_in(
        &mut self,
        index: u64,
        jurisdiction: &str,
        epoch: u64,
        records: &[CopiedRecord],
    ) -> Result<Response, StateMachineError> {
        let Some(incoming) = self
            .incoming()?
            .filter(|incoming| incoming.epoch == epoch && incoming.jurisdiction == jurisdiction)
        else {
            return refused(format!(
                "no range of `{jurisdiction}` is incoming at epoch {epoch}: nothing may be copied in"
            ));
        };
        if records.len() > COPY_RECORDS_MAX {
            return refused(format!(
                "{} copied records exceed the bound {COPY_RECORDS_MAX}",
                records.len()
            ));
        }
        for copied in records {
            let key = &copied.key;
            if let Some(bytes) = [key.jurisdiction.len(), key.user_id.len(), key.record_name.len()]
                .into_iter()
                .find(|length| *length > KEY_PART_BYTES_MAX)
            {
                return Ok(Response::Rejected(CommandError::KeyTooLong { bytes }));
            }
            if let Some(record) = &copied.record
                && record.value.len() > VALUE_BYTES_MAX
            {
                return Ok(Response::Rejected(CommandError::ValueTooLarge {
                    bytes: record.value.len(),
                }));
            }
            if key.jurisdiction != jurisdiction || !in_ranges(&incoming.ranges, &key.user_id) {
                return refused(format!(
                    "user `{}` of `{}` is not in the incoming ranges of epoch {epoch}",
                    key.user_id, key.jurisdiction
                ));
            }
        }
        let mut revision_max = 0;
        for copied in records {
            let encoded = record_key(&copied.key)?;
            match &copied.record {
                Some(record) => {
                    revision_max = revision_max.max(record.revision);
                    let sealed = seal(&encoded, record)?;
                    self.put(Table::Records, encoded, sealed);
                }
                None => {
                    self.batch.changes.insert((Table::Records, encoded), None);
                }
            }
        }
        // Every later entry writes `index' + offset` with index' > index: past every copied revision.
        self.raise_revision_offset(revision_max.saturating_sub(index))?;
        Ok(Response::Copied {
            records: records.len() as u64,
        })
    }

    pub(super) fn purge(
        &mut self,
        jurisdiction: &str,
        after: Option<&RecordKey>,
        limit: u32,
    ) -> Result<Response, StateMachineError> {
        if limit == 0 || limit > PURGE_RECORDS_MAX {
            return refused(format!(
                "a purge deletes 1 to {PURGE_RECORDS_MAX} records, not {limit}"
            ));
        }
        let Some(owned) = self.ownership()?.cloned() else {
            return refused("the group has no ranges committed: it owns every record it holds".into());
        };
        let incoming = self.incoming()?;
        let keep = |key: &RecordKey| {
            key.jurisdiction != jurisdiction
                || owned.owns_user(&key.jurisdiction, &key.user_id)
                || incoming
                    .as_ref()
                    .is_some_and(|incoming| incoming.owns_user(&key.jurisdiction, &key.user_id))
        };
        let prefix = jurisdiction_prefix(jurisdiction)?;
        let after = after.map(record_key).transpose()?;
        // The same answer whatever the batch boundaries: the store's keys merged with this batch's
        // changes. Collect enough of the store's candidates that this batch's deletions can't starve
        // the run, and stop the merge where the store's walk stopped.
        let pending: Vec<(Vec<u8>, bool)> = self
            .batch
            .changes
            .range((Table::Records, prefix.clone())..)
            .take_while(|((table, key), _)| *table == Table::Records && key.starts_with(&prefix))
            .filter(|((_, key), _)| after.as_ref().is_none_or(|after| key > after))
            .map(|((_, key), change)| (key.clone(), change.is_some()))
            .collect();
        let wanted = limit as usize + pending.len();
        let mut candidates: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        let mut stopped_at: Option<Vec<u8>> = None;
        let mut failure = None;
        self.view
            .scan_after(Table::Records, &prefix, after.as_deref(), &mut |key, _| {
                match decode_key(key) {
                    Ok(decoded) if !keep(&decoded) => {
                        candidates.insert(key.to_vec(), ());
                        if candidates.len() >= wanted {
                            stopped_at = Some(key.to_vec());
                            return Ok(false);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        failure = Some(error);
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
        if let Some(error) = failure {
            return Err(error);
        }
        for (key, present) in pending {
            if stopped_at.as_ref().is_some_and(|stop| &key > stop) {
                continue;
            }
            if present && !keep(&decode_key(&key)?) {
                candidates.insert(key, ());
            } else {
                candidates.remove(&key);
            }
        }
        let doomed: Vec<Vec<u8>> = candidates.into_keys().take(limit as usize).collect();
        let next = match doomed.last() {
            Some(last) if doomed.len() == limit as usize => Some(decode_key(last)?),
            _ => None,
        };
        let deleted = doomed.len() as u64;
        for key in doomed {
            self.batch.changes.insert((Table::Records, key), None);
        }
        Ok(Response::Purged { deleted, next })
    }

    pub(super) fn cancel_incoming(
        &mut self,
        jurisdiction: &str,
        epoch: u64,
    ) -> Result<Response, StateMachineError> {
        match self.incoming()? {
            Some(incoming) if incoming.jurisdiction == jurisdiction && incoming.epoch == epoch => {
                self.batch
                    .changes
                    .insert((Table::Meta, META_INCOMING.to_vec()), None);
                Ok(Response::IncomingSet { epoch })
            }
            None => Ok(Response::IncomingSet { epoch }),
            Some(other) => refused(format!(
                "the group is receiving ranges of `{}` at epoch {}, not of `{jurisdiction}` at {epoch}",
                other.jurisdiction, other.epoch
            )),
        }
    }

    /// On taking `proposed`: incoming ranges it covers, at an epoch it reaches, are the group's now.
    pub(super) fn admit_incoming(&mut self, proposed: &Ownership) -> Result<(), StateMachineError> {
        if let Some(incoming) = self.incoming()?
            && incoming.jurisdiction == proposed.jurisdiction
            && incoming.epoch <= proposed.epoch
            && incoming.ranges.iter().all(|&(start, end)| {
                proposed.ranges.iter().any(|&(s, e)| s <= start && end <= e)
                    || proposed.owns(start) && proposed.owns(end)
            })
        {
            self.batch
                .changes
                .insert((Table::Meta, META_INCOMING.to_vec()), None);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;

    /// Applies each command as its own batch at `first`, `first + 1`, ...
    fn run(backend: &mut MemBackend, first: u64, commands: &[Command]) -> Vec<Response> {
        commands
            .iter()
            .enumerate()
            .map(|(i, command)| {
                let view = backend.view().unwrap();
                let mut applier = Applier::new(&view);
                let response = applier.apply(first + i as u64, command).unwrap();
                backend.commit(applier.finish()).unwrap();
                response
            })
            .collect()
    }

    const HALF: u64 = 1 << 63;

    fn user_in(range: (u64, u64), skip: usize) -> String {
        (0..)
            .map(|n| format!("user-{n}"))
            .filter(|user| in_ranges(&[range], user))
            .nth(skip)
            .unwrap()
    }

    fn ownership(epoch: u64, ranges: Vec<(u64, u64)>) -> Ownership {
        Ownership {
            jurisdiction: "eu".into(),
            epoch,
            ranges,
        }
    }

    fn put(client_id: u64, sequence: u64, user: &str, value: &[u8]) -> Command {
        Command::Put {
            write: WriteId { client_id, sequence },
            key: RecordKey::new("eu", user, "r"),
            value: value.to_vec(),
        }
    }

    fn copied(user: &str, record: Option<Record>) -> CopiedRecord {
        CopiedRecord {
            key: RecordKey::new("eu", user, "r"),
            record,
        }
    }

    fn record(value: &[u8], revision: u64) -> Record {
        Record {
            value: value.to_vec(),
            revision,
        }
    }

    /// The gainer: low half owned at epoch 1, the high half incoming at epoch 2.
    fn gainer() -> MemBackend {
        let mut backend = MemBackend::new();
        let responses = run(
            &mut backend,
            1,
            &[
                Command::SetOwnership(ownership(1, vec![(0, HALF - 1)])),
                Command::Receive(ownership(2, vec![(HALF, u64::MAX)])),
                Command::Receive(ownership(2, vec![(HALF, u64::MAX)])),
            ],
        );
        assert_eq!(responses[1], Response::IncomingSet { epoch: 2 });
        assert_eq!(responses[2], Response::IncomingSet { epoch: 2 }, "a retry");
        backend
    }

    #[test]
    fn copied_records_keep_their_revisions_and_later_writes_exceed_them() {
        let mut backend = gainer();
        let high = user_in((HALF, u64::MAX), 0);
        let low = user_in((0, HALF - 1), 0);
        // Copied at index 4 with revision 1000 (the losing group's log is longer).
        let responses = run(
            &mut backend,
            4,
            &[
                Command::CopyIn {
                    jurisdiction: "eu".into(),
                    epoch: 2,
                    records: vec![copied(&high, Some(record(b"old", 1000)))],
                },
                // Clients are still refused the incoming user.
                put(1, 1, &high, b"early"),
                Command::SetOwnership(ownership(2, vec![(0, u64::MAX)])),
                // The client read revision 1000 at the old group: a CAS against it succeeds once.
                Command::CompareAndSet {
                    write: WriteId {
                        client_id: 1,
                        sequence: 2,
                    },
                    key: RecordKey::new("eu", &high, "r"),
                    expected_revision: Some(1000),
                    value: b"new".to_vec(),
                },
                Command::Delete {
                    write: WriteId {
                        client_id: 1,
                        sequence: 3,
                    },
                    key: RecordKey::new("eu", &high, "r"),
                },
                // Recreated: never with a revision a client of the old group may hold.
                put(1, 4, &high, b"again"),
                put(1, 5, &low, b"other"),
            ],
        );
        assert_eq!(responses[0], Response::Copied { records: 1 });
        assert!(
            matches!(responses[1], Response::Rejected(CommandError::NotOwned { .. })),
            "{:?}",
            responses[1]
        );
        assert_eq!(responses[2], Response::OwnershipSet { epoch: 2 });
        // Offset 996 = 1000 - index 4: entry 7 writes revision 1003.
        assert_eq!(responses[3], Response::Written { revision: 1003 });
        let Response::Written { revision: again } = responses[5] else {
            panic!("{:?}", responses[5])
        };
        assert!(
            again > 1003,
            "a recreated record's revision {again} exceeds every earlier one"
        );
        let view = backend.view().unwrap();
        assert_eq!(
            read_incoming(&view).unwrap(),
            None,
            "admitted: no longer incoming"
        );
        // A CAS by a client holding the old group's revision now fails.
        let responses = run(
            &mut backend,
            11,
            &[Command::CompareAndSet {
                write: WriteId {
                    client_id: 2,
                    sequence: 1,
                },
                key: RecordKey::new("eu", &high, "r"),
                expected_revision: Some(1000),
                value: b"aba".to_vec(),
            }],
        );
        assert!(matches!(
            responses[0],
            Response::Rejected(CommandError::RevisionMismatch { .. })
        ));
    }

    #[test]
    fn a_copy_outside_the_incoming_ranges_or_without_them_is_refused() {
        let mut backend = gainer();
        let low = user_in((0, HALF - 1), 0);
        let high = user_in((HALF, u64::MAX), 0);
        let responses = run(
            &mut backend,
            4,
            &[
                Command::CopyIn {
                    jurisdiction: "eu".into(),
                    epoch: 2,
                    records: vec![copied(&low, Some(record(b"x", 1)))],
                },
                Command::CopyIn {
                    jurisdiction: "eu".into(),
                    epoch: 3,
                    records: vec![copied(&high, Some(record(b"x", 1)))],
                },
                Command::CancelIncoming {
                    jurisdiction: "eu".into(),
                    epoch: 2,
                },
                Command::CopyIn {
                    jurisdiction: "eu".into(),
                    epoch: 2,
                    records: vec![copied(&high, Some(record(b"x", 1)))],
                },
            ],
        );
        for (i, response) in responses.iter().enumerate() {
            if i == 2 {
                assert_eq!(*response, Response::IncomingSet { epoch: 2 });
            } else {
                assert!(
                    matches!(
                        response,
                        Response::Rejected(CommandError::OwnershipRefused { .. })
                    ),
                    "{i}: {response:?}"
                );
            }
        }
        let view = backend.view().unwrap();
        assert!(
            read_range(&view, "eu", &[(0, u64::MAX)], None, 10, 1 << 20)
                .unwrap()
                .records
                .is_empty()
        );
        // Without committed ranges a group can't receive: it would serve the incoming users' clients.
        let mut fresh = MemBackend::new();
        let responses = run(
            &mut fresh,
            1,
            &[Command::Receive(ownership(2, vec![(HALF, u64::MAX)]))],
        );
        assert!(matches!(
            responses[0],
            Response::Rejected(CommandError::OwnershipRefused { .. })
        ));
    }

    #[test]
    fn a_departing_range_is_kept_refused_read_by_the_copy_then_purged_in_bounded_batches() {
        let mut backend = MemBackend::new();
        let highs: Vec<String> = (0..7).map(|n| user_in((HALF, u64::MAX), n)).collect();
        let low = user_in((0, HALF - 1), 0);
        let mut commands: Vec<Command> = highs
            .iter()
            .enumerate()
            .map(|(n, user)| put(1, n as u64 + 1, user, user.as_bytes()))
            .collect();
        commands.push(put(1, 100, &low, b"stays"));
        commands.push(Command::SetOwnership(ownership(2, vec![(0, HALF - 1)])));
        commands.push(Command::Depart(ownership(2, vec![(0, HALF - 1)])));
        commands.push(put(1, 101, &highs[0], b"late"));
        let responses = run(&mut backend, 1, &commands);
        assert!(matches!(
            responses[8],
            Response::Rejected(CommandError::OwnershipRefused { .. })
        ));
        assert_eq!(responses[9], Response::OwnershipSet { epoch: 2 });
        assert!(matches!(
            responses[10],
            Response::Rejected(CommandError::NotOwned { .. })
        ));
        let view = backend.view().unwrap();
        let departing = [(HALF, u64::MAX)];
        let first = read_range(&view, "eu", &departing, None, 3, 1 << 20).unwrap();
        assert_eq!((first.records.len(), first.more), (3, true));
        let rest = read_range(&view, "eu", &departing, Some(&first.records[2].0), 10, 1 << 20).unwrap();
        assert_eq!((rest.records.len(), rest.more), (4, false));
        let before = range_digest(&view, "eu", &departing).unwrap();
        assert_eq!(before.records, 7);
        // Purged three at a time; the owned record stays.
        let mut after = None;
        let mut deleted = 0;
        for round in 12.. {
            let responses = run(
                &mut backend,
                round,
                &[Command::Purge {
                    jurisdiction: "eu".into(),
                    after: after.clone(),
                    limit: 3,
                }],
            );
            let Response::Purged { deleted: now, next } = responses[0].clone() else {
                panic!("{responses:?}")
            };
            assert!(now <= 3);
            deleted += now;
            after = next;
            if after.is_none() {
                break;
            }
        }
        assert_eq!(deleted, 7);
        let view = backend.view().unwrap();
        assert_eq!(range_digest(&view, "eu", &departing).unwrap().records, 0);
        assert_eq!(range_digest(&view, "eu", &[(0, HALF - 1)]).unwrap().records, 1);
    }

    #[test]
    fn a_purge_answers_the_same_whatever_the_batch_boundaries() {
        let highs: Vec<String> = (0..5).map(|n| user_in((HALF, u64::MAX), n)).collect();
        let mut commands: Vec<Command> = highs
            .iter()
            .enumerate()
            .map(|(n, user)| put(1, n as u64 + 1, user, b"v"))
            .collect();
        commands.push(Command::Depart(ownership(2, vec![(0, HALF - 1)])));
        commands.push(Command::Purge {
            jurisdiction: "eu".into(),
            after: None,
            limit: 2,
        });
        let mut separate = MemBackend::new();
        let apart = run(&mut separate, 1, &commands);
        let together = MemBackend::new();
        let view = together.view().unwrap();
        let mut applier = Applier::new(&view);
        let joined: Vec<Response> = commands
            .iter()
            .enumerate()
            .map(|(i, command)| applier.apply(i as u64 + 1, command).unwrap())
            .collect();
        assert_eq!(apart, joined);
        assert!(matches!(apart[6], Response::Purged { deleted: 2, .. }));
    }
}
