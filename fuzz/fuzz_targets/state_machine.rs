//! The state machine's values (`storage::apply`): sealed records, deduplication entries and meta values
//! as a node reads them back from its store, under commands decoded from log entries (`Command`, the
//! `D` of the type config). The store is filled from the input (table, key, sealed value), then each
//! command is decoded, checked to round-trip, and applied at increasing log indexes; its records are
//! read back and a snapshot is built from the result. A value that does not verify or decode must be a
//! `StateMachineError`, never a panic.
//!
//! Input: pieces; the first `choice % 8` pairs are stored items (`[table][key]`, sealed value), the
//! rest are commands. Choice bit 3: the commands' indexes start after the highest stored revision, as a
//! log continues its store; otherwise at 1 (a store ahead of its log: damage, refused by name).
#![no_main]

use domicile_fuzz::{assert_round_trip, pieces, repair_seal, split_mode};
use libfuzzer_sys::fuzz_target;
use storage::apply::{self, Applier};
use storage::backend::{Backend, BackendView, MemBackend, Table, WriteBatch};
use storage::snapshot;
use storage::{Command, Record, Response};
use wire::codec::decode;

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    let pieces = pieces(bytes);
    let stored = usize::from(mode.choice % 8).min(pieces.len() / 2);
    let mut batch = WriteBatch::default();
    for pair in pieces[..stored * 2].chunks(2) {
        let Some((&table, key)) = pair[0].split_first() else {
            continue;
        };
        let table = Table::ALL[usize::from(table) % Table::ALL.len()];
        let mut sealed = pair[1].to_vec();
        if mode.repair {
            repair_seal(key, &mut sealed);
        }
        batch.changes.insert((table, key.to_vec()), Some(sealed));
    }
    let mut backend = MemBackend::new();
    backend.commit(batch).expect("memory commits");
    let _ = apply::read_policy_version(&backend.view().expect("a view"));

    let view = backend.view().expect("a view");
    let mut first_index = 1u64;
    if mode.choice & 8 == 8 {
        let _ = view.scan_prefix(Table::Records, &[], &mut |key, sealed| {
            if let Ok(record) = wire::codec::unseal::<Record>(key, sealed) {
                first_index = first_index.max(record.revision.saturating_add(1));
            }
            Ok(())
        });
    }
    let mut applier = Applier::new(&view);
    let mut keys = Vec::new();
    for (index, piece) in pieces[stored * 2..].iter().enumerate() {
        let Ok(command) = decode::<Command>(piece) else {
            continue;
        };
        assert_round_trip(&command);
        match &command {
            Command::Put { key, .. }
            | Command::Delete { key, .. }
            | Command::CompareAndSet { key, .. }
            | Command::Get { key } => keys.push(key.clone()),
            Command::CopyIn { records, .. } => keys.extend(records.iter().map(|copied| copied.key.clone())),
            Command::Scan { .. }
            | Command::SetPolicyVersion { .. }
            | Command::SetOwnership(_)
            | Command::Receive(_)
            | Command::Depart(_)
            | Command::Purge { .. }
            | Command::CancelIncoming { .. }
            | Command::MergeSessions { .. }
            | Command::SessionTick => {}
        }
        match applier.apply(first_index.saturating_add(index as u64), &command) {
            Ok(response) => assert_round_trip::<Response>(&response),
            // A damaged value stops the state machine: nothing more is applied.
            Err(_) => return,
        }
    }
    backend.commit(applier.finish()).expect("memory commits");
    let view = backend.view().expect("a view");
    // A group's ranges as stored (a sealed value the checksum-repair mode may have reached): read, and
    // judged against every key, never a panic.
    let _ = apply::read_ownership(&view);
    let _ = apply::read_incoming(&view);
    if let Some(key) = keys.first() {
        let _ = apply::read_range(&view, &key.jurisdiction, &[(0, u64::MAX)], None, 16, 1 << 20);
        let _ = apply::range_digest(&view, &key.jurisdiction, &[(0, u64::MAX)]);
    }
    for key in &keys {
        let _ = apply::read_record(&view, key);
        let _ = apply::not_owned(&view, &key.jurisdiction, &key.user_id);
    }
    if let Ok(header) = snapshot::header_from_view(&view) {
        let _ = snapshot::build(&view, header);
    }
});
