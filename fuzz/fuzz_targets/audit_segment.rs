//! The audit trail (`audit`): segment files as an auditor's `domicile audit verify` reads them (the
//! certificate checked against the cluster CA, every frame, signature and link), as `audit export` reads
//! them (`read_entries`), and as the node's writer scans the last segment when it reopens the trail
//! (`scan_tail`: where to continue, what torn tail to cut). Every entry read back must round-trip.
//!
//! The CA is the fixture the seeds were signed under (`fixtures/ca.pem`), so seeds verify intact and
//! mutations break them at a position. Choice bit 0: the input is several segments (`pieces`) in a
//! directory rather than one file; bit 1: a monitor expects more entries than the trail holds.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use audit::entry::{ENTRY_PAYLOAD_BYTES_MAX, SegmentHeader, SignedEntry};
use audit::segment::{Frame, FrameReader, scan_tail, segment_name};
use audit::{ClusterCa, VerifyOptions, read_entries, verify};
use domicile_fuzz::{assert_round_trip, pieces, repair_frames, split_mode};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::from_pem(include_str!("../fixtures/ca.pem")).expect("the fixture CA"))
}

/// A directory of this process's own, emptied for each input.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// Every frame of a file, decoded as what it should be (a header, then entries).
fn frames(path: &Path) {
    let Ok(mut reader) = FrameReader::open(path) else {
        return;
    };
    let mut first = true;
    while let Ok(Frame::Whole { payload, .. }) = reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX) {
        if first {
            let _ = SegmentHeader::decode(&payload);
            first = false;
        } else if let Ok(signed) = SignedEntry::decode(&payload) {
            assert_round_trip(&signed.entry);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = split_mode(data) else {
        return;
    };
    let dir = scratch();
    for entry in std::fs::read_dir(dir).expect("the scratch directory") {
        std::fs::remove_file(entry.expect("an entry").path()).expect("removable");
    }
    let mut segments: Vec<Vec<u8>> = if mode.choice & 1 == 1 {
        pieces(bytes).into_iter().take(4).map(<[u8]>::to_vec).collect()
    } else {
        vec![bytes.to_vec()]
    };
    if mode.repair {
        segments.iter_mut().for_each(|bytes| repair_frames(bytes, 0));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    let mut first_sequence = 0u64;
    for bytes in &segments {
        let path = dir.join(segment_name(first_sequence));
        std::fs::write(&path, bytes).expect("writable");
        files.push(path);
        first_sequence += 1 << 20;
    }
    let target = if mode.choice & 1 == 1 {
        dir.to_path_buf()
    } else {
        files[0].clone()
    };
    let options = VerifyOptions {
        expect_entries: (mode.choice & 2 == 2).then_some(u64::from(mode.choice)),
    };
    if let Ok(report) = verify(&target, ca(), options) {
        let _ = report.to_string();
        if let Some(broken) = &report.broken {
            let _ = broken.to_string();
        }
    }
    let _ = read_entries(&target, |read| {
        assert_round_trip(&read.entry);
        let _ = (read.entry.event.kind(), read.entry.event.describe());
    });
    for file in &files {
        let _ = scan_tail(file);
        frames(file);
    }
});
