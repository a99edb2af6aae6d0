//! Snapshots (`storage::snapshot`): the chunks a follower receives from its leader (each one frame,
//! checked as it arrives) or the bytes it reloads from its store, reassembled and verified (order,
//! counts, every frame), their header decoded as the state machine decodes it (last log id, stored
//! membership), then installed: every item's sealed value re-verified against its key. What installs
//! must rebuild into a snapshot that verifies and installs to the same tables.
//!
//! Choice bit 0: the whole snapshot as one byte string (`from_bytes`) instead of chunks (`from_chunks`).
#![no_main]

use domicile_fuzz::{pieces, repair_frames, split_mode};
use libfuzzer_sys::fuzz_target;
use openraft::alias::{LogIdOf, StoredMembershipOf};
use raft::config::TokioConfig as C;
use storage::backend::{Backend, MemBackend};
use storage::snapshot::{self, SnapshotData};
use wire::codec::decode;

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    let mut chunks: Vec<Vec<u8>> = pieces(bytes).into_iter().map(<[u8]>::to_vec).collect();
    if mode.repair {
        chunks.iter_mut().for_each(|chunk| repair_frames(chunk, 0));
    }
    let received = if mode.choice & 1 == 1 {
        SnapshotData::from_bytes(chunks.concat())
    } else {
        SnapshotData::from_chunks(chunks.iter().map(Vec::as_slice))
    };
    let Ok(received) = received else { return };
    let header = received.header().clone();
    if !header.last_log_id.is_empty() {
        let _ = decode::<LogIdOf<C>>(&header.last_log_id);
    }
    if !header.membership.is_empty() {
        let _ = decode::<StoredMembershipOf<C>>(&header.membership);
    }
    let Ok(batch) = received.install_batch() else {
        return;
    };
    let installed = batch.changes.clone();
    let mut backend = MemBackend::new();
    backend.commit(batch).expect("memory commits");
    let rebuilt = snapshot::build(&backend.view().expect("a view"), header.clone())
        .expect("an installed snapshot rebuilds");
    assert_eq!(rebuilt.header(), &header);
    let rebuilt_chunks: Vec<Vec<u8>> = rebuilt
        .chunks()
        .collect::<Result<_, _>>()
        .expect("a snapshot in memory reads");
    let again = SnapshotData::from_chunks(&rebuilt_chunks)
        .expect("a rebuilt snapshot verifies")
        .install_batch()
        .expect("a rebuilt snapshot installs");
    assert_eq!(
        again.changes, installed,
        "a rebuilt snapshot installs other tables"
    );
});
