//! The Raft log on disk (`storage::segment`, `storage::log`): segment files as a node finds them at
//! start. The pure scan of one segment (as the last one and as a sealed one), then the whole replay
//! (`Wal::open` on an in-memory disk), and every entry, vote, commit and purge point it kept decoded as
//! the production type config reads them (`storage::raft_log`). A log that opened must open again, after
//! whatever the first open repaired (a torn tail cut), to the same state.
//!
//! Choice bit 0: the input is several segment files (`pieces`, ids 1, 2, ...) instead of one.
#![no_main]

use domicile_fuzz::{pieces, repair_frames, split_mode};
use libfuzzer_sys::fuzz_target;
use openraft::alias::{LogIdOf, VoteOf};
use raft::config::TokioConfig as C;
use storage::disk::{Disk, MemDisk};
use storage::log::{LogConfig, Wal};
use storage::raft_log::decode_entry;
use storage::segment::{self, SEGMENT_HEADER_BYTES};
use wire::codec::decode;

/// A segment's header crc32 (over its first 17 bytes) and every frame's, recomputed.
fn repair_segment(bytes: &mut [u8]) {
    if bytes.len() >= SEGMENT_HEADER_BYTES {
        let crc = crc32fast::hash(&bytes[..17]);
        bytes[17..21].copy_from_slice(&crc.to_le_bytes());
    }
    repair_frames(bytes, SEGMENT_HEADER_BYTES);
}

/// What a replayed log holds, every stored value decoded (or the error it gave).
fn state(wal: &Wal<MemDisk>) -> Vec<String> {
    let mut state = Vec::new();
    for group in wal.groups() {
        let vote = wal
            .vote(group)
            .map(|bytes| decode::<VoteOf<C>>(&bytes).map_err(|e| e.to_string()));
        let committed = wal
            .committed(group)
            .map(|bytes| decode::<LogIdOf<C>>(&bytes).map_err(|e| e.to_string()));
        let purged = wal
            .purged(group)
            .map(|bytes| decode::<LogIdOf<C>>(&bytes).map_err(|e| e.to_string()));
        state.push(format!(
            "group {group}: last {:?} retired {} vote {vote:?} committed {committed:?} purged {purged:?}",
            wal.last_index(group),
            wal.is_retired(group)
        ));
        for entry in wal.locate(group, ..) {
            let decoded = entry
                .read()
                .map_err(|e| e.to_string())
                .and_then(|bytes| decode_entry::<C>(group, entry.index, &bytes).map_err(|e| e.to_string()));
            state.push(format!("  {}: {decoded:?}", entry.index));
        }
    }
    state
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    let mut segments: Vec<Vec<u8>> = if mode.choice & 1 == 1 {
        pieces(bytes).into_iter().take(4).map(<[u8]>::to_vec).collect()
    } else {
        vec![bytes.to_vec()]
    };
    if mode.repair {
        segments.iter_mut().for_each(|bytes| repair_segment(bytes));
    }
    // The pure scan, as a sealed segment and as the last one.
    for (position, bytes) in segments.iter().enumerate() {
        for is_last in [false, true] {
            let _ = segment::scan("fuzz", position as u64 + 1, bytes, is_last, |record| {
                assert!(
                    record.frame_len as usize <= bytes.len(),
                    "a record larger than its file"
                );
                Ok(())
            });
        }
    }
    // The replay, on a disk holding these segments.
    let disk = MemDisk::new();
    for (position, bytes) in segments.into_iter().enumerate() {
        let name = segment::segment_name(position as u64 + 1);
        disk.create(&name).expect("an in-memory file");
        disk.set_bytes(&name, bytes);
    }
    let Ok(wal) = Wal::open(disk.clone(), config()) else {
        return;
    };
    let first = state(&wal);
    drop(wal);
    let wal = Wal::open(disk, config()).expect("a log that opened once opens again");
    assert_eq!(state(&wal), first, "a reopened log holds another state");
});
