//! The audit trail against its auditor: a trail written through rotations and restarts verifies intact
//! with the cluster CA alone, and each kind of tampering — truncation, a flipped byte, a deleted entry,
//! two entries swapped, an entry re-signed by another node's key, a segment removed, a segment from
//! another node or CA — is reported at the entry where it happened, with what is wrong.

mod common;

use std::path::Path;

use audit::entry::{ENTRY_PAYLOAD_BYTES_MAX, encode_signed};
use audit::event::Event;
use audit::segment::{Frame, FrameReader};
use audit::{AuditConfig, AuditError, AuditLog, BreakKind, Report, VerifyOptions, verify};
use common::{NodeKey, TestCa, entry_frames, open, refusal, segments, test_clock};

/// A trail of `count` refusals after its `Opened` entry, in segments of `segment_bytes_max`.
fn written(dir: &Path, key: &NodeKey, count: u64, segment_bytes_max: u64) {
    let log = open(dir, key, segment_bytes_max);
    for number in 0..count {
        log.append(refusal(number)).unwrap();
    }
}

fn check(path: &Path, ca: &TestCa) -> Report {
    verify(path, &ca.cluster_ca(), VerifyOptions::default()).unwrap()
}

/// The break's position and kind.
fn broken_at(report: &Report) -> (u64, BreakKind) {
    let broken = report
        .broken
        .as_ref()
        .unwrap_or_else(|| panic!("intact: {report}"));
    (broken.position, broken.kind)
}

fn single_segment_trail(dir: &Path, ca: &TestCa, entries: u64) -> std::path::PathBuf {
    written(dir, &ca.node(1, "dublin-a", "IE"), entries, 1 << 20);
    let files = segments(dir);
    assert_eq!(files.len(), 1);
    files[0].clone()
}

#[test]
fn a_trail_verifies_intact_across_rotations_and_restarts() {
    let ca = TestCa::new("test");
    let key = ca.node(1, "dublin-a", "IE");
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), &key, 40, 2048);
    written(dir.path(), &key, 40, 2048);
    let report = check(dir.path(), &ca);
    assert!(report.is_intact(), "{report}");
    assert_eq!(report.entries, 82, "two `Opened` entries and 80 refusals");
    assert!(report.segments > 5, "small segments rotate: {report}");
    assert_eq!(
        report.identity.as_deref(),
        Some("domicile://v1/node/1/site/dublin-a/country/IE")
    );
    assert_eq!(report.last.map(|(sequence, _)| sequence), Some(81));
    // Each segment alone verifies too, from where its header says it continues.
    for file in segments(dir.path()) {
        let report = check(&file, &ca);
        assert!(report.is_intact(), "{}: {report}", file.display());
    }
    // And what a monitor reads back is every entry, in order, the restart's `Opened` in the middle.
    let mut read = Vec::new();
    audit::read_entries(dir.path(), |entry| read.push(entry.entry)).unwrap();
    assert_eq!(read.len(), 82);
    assert!(
        read.iter()
            .enumerate()
            .all(|(index, entry)| entry.sequence == index as u64)
    );
    assert!(matches!(
        read[41].event,
        Event::Opened {
            tail_cut_bytes: 0,
            ..
        }
    ));
}

#[test]
fn a_flipped_byte_is_reported_at_its_entry() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 12);
    let clean = std::fs::read(&file).unwrap();
    let frames = entry_frames(&file);
    // Every byte of entries 3 to 5 (their frame headers, entries and signatures).
    for (sequence, &(start, length)) in frames.iter().enumerate().take(6).skip(3) {
        for byte in start..start + length {
            let mut damaged = clean.clone();
            damaged[byte] ^= 0x20;
            std::fs::write(&file, &damaged).unwrap();
            let report = check(dir.path(), &ca);
            let (position, kind) = broken_at(&report);
            assert_eq!(position, sequence as u64, "byte {byte}: {report}");
            if byte >= start + 9 {
                assert_eq!(kind, BreakKind::Altered, "byte {byte}: {report}");
            }
        }
    }
    // A flipped byte in the segment's header (its certificate, say) breaks it at its first entry.
    let mut damaged = clean.clone();
    damaged[frames[0].0 / 2] ^= 0x01;
    std::fs::write(&file, &damaged).unwrap();
    assert_eq!(broken_at(&check(dir.path(), &ca)), (0, BreakKind::Altered));
}

#[test]
fn truncation_is_reported_where_the_trail_ends() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 12);
    let clean = std::fs::read(&file).unwrap();
    let frames = entry_frames(&file);
    // Cut inside entry 9: the file ends in the middle of it.
    let (start, length) = frames[9];
    std::fs::write(&file, &clean[..start + length / 2]).unwrap();
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (9, BreakKind::Truncated), "{report}");
    assert_eq!(report.entries, 9);
    // Cut at an entry boundary: the trail alone looks whole; what a monitor saw does not.
    std::fs::write(&file, &clean[..start]).unwrap();
    assert!(check(dir.path(), &ca).is_intact());
    let expect = VerifyOptions {
        expect_entries: Some(13),
    };
    let report = verify(dir.path(), &ca.cluster_ca(), expect).unwrap();
    assert_eq!(broken_at(&report), (9, BreakKind::Missing), "{report}");
}

#[test]
fn a_deleted_entry_is_missing_at_its_position() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 12);
    let mut bytes = std::fs::read(&file).unwrap();
    let (start, length) = entry_frames(&file)[6];
    bytes.drain(start..start + length);
    std::fs::write(&file, &bytes).unwrap();
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (6, BreakKind::Missing), "{report}");
    assert_eq!(report.entries, 6, "entries 0 to 5 verified");
}

#[test]
fn two_swapped_entries_are_reordered_at_the_first() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 12);
    let bytes = std::fs::read(&file).unwrap();
    let frames = entry_frames(&file);
    let ((a, a_length), (b, b_length)) = (frames[4], frames[5]);
    let mut swapped = bytes[..a].to_vec();
    swapped.extend_from_slice(&bytes[b..b + b_length]);
    swapped.extend_from_slice(&bytes[a..a + a_length]);
    swapped.extend_from_slice(&bytes[b + b_length..]);
    std::fs::write(&file, &swapped).unwrap();
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (4, BreakKind::Reordered), "{report}");
}

#[test]
fn an_entry_re_signed_by_another_nodes_key_is_unsigned() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 12);
    let bytes = std::fs::read(&file).unwrap();
    let (start, length) = entry_frames(&file)[7];
    // The frame's payload follows its 9-byte header.
    let signed = audit::entry::SignedEntry::decode(&bytes[start + 9..start + length]).unwrap();
    // Node 2's key is a key of the same cluster, certified by the same CA: it is still not node 1's.
    let other = ca.node(2, "dublin-b", "IE").signer();
    let mut forged = Vec::new();
    encode_signed(
        &signed.entry,
        |message| other.sign(message).map_err(|error| error.to_string()),
        &mut forged,
    )
    .unwrap();
    let mut damaged = bytes[..start].to_vec();
    damaged.extend_from_slice(&forged);
    damaged.extend_from_slice(&bytes[start + length..]);
    std::fs::write(&file, &damaged).unwrap();
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (7, BreakKind::Unsigned), "{report}");
}

#[test]
fn a_removed_segment_is_missing_entries() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), &ca.node(1, "dublin-a", "IE"), 40, 2048);
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    let second_first =
        audit::segment::parse_segment_name(files[1].file_name().unwrap().to_str().unwrap()).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (second_first, BreakKind::Missing), "{report}");
    // Without its first segment the trail does not start at 0.
    std::fs::remove_file(&files[0]).unwrap();
    assert_eq!(broken_at(&check(dir.path(), &ca)), (0, BreakKind::Missing));
}

#[test]
fn another_nodes_segment_or_another_ca_is_refused() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), &ca.node(1, "dublin-a", "IE"), 3, 1 << 20);
    // Node 2's key continues node 1's trail: a new segment, chained, signed by node 2.
    written(dir.path(), &ca.node(2, "dublin-b", "IE"), 3, 1 << 20);
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (4, BreakKind::Certificate), "{report}");
    assert!(
        report.broken.unwrap().detail.contains("node/2"),
        "the break names the other node"
    );
    // A trail whose certificate another CA issued is not this cluster's.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = TestCa::new("elsewhere");
    written(elsewhere.path(), &stranger.node(1, "dublin-a", "IE"), 3, 1 << 20);
    assert_eq!(
        broken_at(&check(elsewhere.path(), &ca)),
        (0, BreakKind::Certificate)
    );
}

#[test]
fn a_renewed_certificate_starts_a_segment_and_the_chain_goes_on() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    written(dir.path(), &ca.node(1, "dublin-a", "IE"), 3, 1 << 20);
    written(dir.path(), &ca.node(1, "dublin-a", "IE"), 3, 1 << 20);
    let report = check(dir.path(), &ca);
    assert!(report.is_intact(), "{report}");
    assert_eq!((report.segments, report.entries), (2, 8));
}

#[test]
fn a_torn_tail_is_cut_on_reopening_and_recorded() {
    let ca = TestCa::new("test");
    let key = ca.node(1, "dublin-a", "IE");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 5);
    // A crash in the middle of a write: half of a frame at the end.
    let mut bytes = std::fs::read(&file).unwrap();
    let (start, length) = entry_frames(&file)[5];
    let torn = bytes[start..start + length / 2].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(broken_at(&check(dir.path(), &ca)), (6, BreakKind::Truncated));
    let log = open(dir.path(), &key, 1 << 20);
    log.append(refusal(99)).unwrap();
    drop(log);
    let report = check(dir.path(), &ca);
    assert!(report.is_intact(), "{report}");
    let mut events = Vec::new();
    audit::read_entries(dir.path(), |entry| events.push(entry.entry.event)).unwrap();
    assert_eq!(
        events[6],
        Event::Opened {
            identity: "domicile://v1/node/1/site/dublin-a/country/IE".into(),
            tail_cut_bytes: torn.len() as u64,
        }
    );
}

#[test]
fn damage_before_the_tail_is_refused_not_cut() {
    let ca = TestCa::new("test");
    let key = ca.node(1, "dublin-a", "IE");
    let dir = tempfile::tempdir().unwrap();
    let file = single_segment_trail(dir.path(), &ca, 5);
    let mut bytes = std::fs::read(&file).unwrap();
    let (start, _) = entry_frames(&file)[2];
    bytes[start + 12] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let config = AuditConfig {
        dir: dir.path().to_path_buf(),
        segment_bytes_max: 1 << 20,
    };
    let error = AuditLog::open(config, key.signer(), test_clock()).unwrap_err();
    assert!(
        matches!(&error, AuditError::Corrupt(reason) if reason.contains(&format!("offset {start}"))),
        "{error}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "nothing was cut");
}

#[test]
fn a_durable_future_completes_once_the_entry_is_synced() {
    let ca = TestCa::new("test");
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), &ca.node(1, "dublin-a", "IE"), 1 << 20);
    let queued: Vec<_> = (0..20).map(|number| log.submit(refusal(number))).collect();
    let barrier = log.durable_now();
    block_on(barrier).unwrap();
    assert!(
        log.durable_entries() >= 21,
        "everything submitted before the barrier is on disk"
    );
    for durable in queued {
        block_on(durable).unwrap();
    }
    assert_eq!(log.failures(), 0);
}

#[test]
fn a_frame_reader_bounds_lengths_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit-00000000000000000000.log");
    // A frame header claiming 4 GiB.
    std::fs::write(&file, [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1]).unwrap();
    let mut reader = FrameReader::open(&file).unwrap();
    assert!(matches!(
        reader.next_frame(ENTRY_PAYLOAD_BYTES_MAX).unwrap(),
        Frame::Damaged { offset: 0, .. }
    ));
    let ca = TestCa::new("test");
    let report = check(dir.path(), &ca);
    assert_eq!(broken_at(&report), (0, BreakKind::Altered));
}

/// Polls a future on this thread until it completes.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
