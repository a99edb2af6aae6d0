//! Segment files of the node-wide log: naming, header, the records they hold, and scanning.
//!
//! A segment is `[header][frame]*`. The header is `magic (8) | format version (1) | segment id
//! (8, LE) | crc32 of the previous 17 bytes (4)`. Every later byte belongs to a frame (see
//! [`crate::codec`]); a frame's payload is a postcard [`RecordHead`] followed, for entries, by the
//! encoded Raft entry.
//!
//! The last segment is preallocated: the log fills it with zeros ahead of its records (see
//! [`crate::disk`]), so it ends in a **zero tail**, space not yet written. No record is empty (a
//! frame's length is never 0, its payload holds at least a [`RecordHead`]), so a frame header of
//! zeros marks the end of the records — provided every byte after it is zero too.
//!
//! Scanning distinguishes the ways a segment can end badly:
//! * a **torn tail**, only allowed in the last segment, in one of two shapes a crash mid-write
//!   produces: the last frame runs past the end of the file (a file that grew by appending), or
//!   it was written into the zero tail and only a prefix of it landed: from a sector boundary
//!   inside the frame to the end of the file every byte is still zero. Both are truncated, logged.
//! * **corruption**: everything else. A frame that fails its checksum or does not decode while
//!   non-zero bytes follow its end (a zeroed block amid records that were written after it), a
//!   zero-length frame followed by non-zero bytes (zeros, then data), a length beyond the bound,
//!   or any damage in a sealed segment, which holds only whole records and no zero tail.
//!   Recovery refuses to start.
//!
//! What the zero tail costs in detection: damage that leaves the last segment looking exactly like
//! a crash (the end of its records zeroed, and nothing written after them) is cut as a torn tail,
//! as a truncation at a record boundary always was; and a crash whose writes reached the disk out
//! of order (a later sector landed, an earlier one did not) is refused as corruption, although
//! nothing acknowledged was lost: the conservative side of an ambiguity that bytes alone cannot
//! resolve.

use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::codec::FRAME_HEADER_BYTES;
use crate::codec::FrameHeader;
use crate::error::LogError;

/// Bound on one record's payload; a larger length read from disk is corruption.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 32 << 20;

/// Bound on a segment file's size; a larger file is corruption, never an allocation.
pub const SEGMENT_FILE_BYTES_MAX: u64 = 1 << 30;

const MAGIC: [u8; 8] = *b"DOMWAL\0\0";

/// Bytes of a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 21;

/// The unit a disk writes whole: a write cut short by a crash keeps whole sectors (a partial
/// `write(2)` after SIGKILL stops at a page boundary, a multiple of this).
pub const SECTOR_BYTES: u64 = 512;

/// What one log record says. The enum's variant order is part of the on-disk format: append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordHead {
    /// A Raft entry of `group` at `index`; the encoded entry follows the head in the payload.
    Entry { group: u64, index: u64 },
    /// The group's vote, encoded by the caller.
    Vote { group: u64, vote: Vec<u8> },
    /// The group's committed log id (`index` is its index), encoded by the caller.
    Committed { group: u64, index: u64, log_id: Vec<u8> },
    /// Entries at `first_removed` and after are deleted.
    Truncate { group: u64, first_removed: u64 },
    /// Entries up to and including `index` are deleted; `log_id` is kept as the purge point.
    Purge { group: u64, index: u64, log_id: Vec<u8> },
    /// The metadata of every group when this segment was started, so older segments can be
    /// removed without losing a vote, commit or purge point written in them.
    ///
    /// `previous_segment_len` is the final length of the segment before this one: replay checks
    /// it, so a sealed segment cut short at a record boundary is caught, not silently shorter.
    Checkpoint {
        previous_segment_len: u64,
        groups: Vec<GroupCheckpoint>,
    },
    /// The node's replica of `group` was purged after a committed membership left it out: its
    /// entries, commit and purge point are deleted; its vote is kept (a vote is a promise, and a
    /// replica added back later must not vote twice in a term). Re-recorded after the checkpoint
    /// of every new segment while it holds, so removing old segments never forgets it.
    Retire { group: u64 },
    /// A leader brought a retired group back to this node: it is a replica again.
    Revive { group: u64 },
}

/// A group's metadata as of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCheckpoint {
    pub group: u64,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<(u64, Vec<u8>)>,
    pub purged: Option<(u64, Vec<u8>)>,
}

impl RecordHead {
    pub fn group(&self) -> Option<u64> {
        match self {
            RecordHead::Entry { group, .. }
            | RecordHead::Vote { group, .. }
            | RecordHead::Committed { group, .. }
            | RecordHead::Truncate { group, .. }
            | RecordHead::Purge { group, .. }
            | RecordHead::Retire { group }
            | RecordHead::Revive { group } => Some(*group),
            RecordHead::Checkpoint { .. } => None,
        }
    }
}

pub fn segment_name(id: u64) -> String {
    format!("{id:020}.wal")
}

/// The id of a segment file name, or `None` for a file that is not a segment.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn encode_header(id: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    header.extend_from_slice(&MAGIC);
    header.push(codec::FORMAT_VERSION);
    header.extend_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(
        header.len(),
        SEGMENT_HEADER_BYTES,
        "segment header size is part of the format"
    );
    header
}

fn check_header(file: &str, id: u64, bytes: &[u8]) -> Result<(), LogError> {
    let corrupt = |reason: String| LogError::corrupt(file, 0, None, reason);
    let header = &bytes[..SEGMENT_HEADER_BYTES];
    let stored = u32::from_le_bytes([header[17], header[18], header[19], header[20]]);
    let computed = crc32fast::hash(&header[..17]);
    if stored != computed {
        return Err(corrupt(format!(
            "segment header checksum {stored:#010x} != {computed:#010x}"
        )));
    }
    if header[..8] != MAGIC {
        return Err(corrupt("not a segment file (bad magic)".into()));
    }
    if header[8] != codec::FORMAT_VERSION {
        return Err(corrupt(format!(
            "unsupported segment format version {}",
            header[8]
        )));
    }
    let stored_id = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
    if stored_id != id {
        return Err(corrupt(format!(
            "header says segment {stored_id}, file name says {id}"
        )));
    }
    Ok(())
}

/// One intact record found by [`scan`].
pub struct ScannedRecord<'a> {
    pub offset: u64,
    pub frame_len: u32,
    pub head: RecordHead,
    /// The encoded entry after an `Entry` head (empty for other records).
    pub body: &'a [u8],
}

/// How a scan ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to an intact record.
    Clean,
    /// The records end at `offset` and every later byte is zero: preallocated space (only in the
    /// last segment).
    ZeroTail { offset: u64 },
    /// The last record is incomplete from `offset` on; only allowed in the last segment.
    TornTail { offset: u64, reason: String },
}

/// Walks the records of a whole segment file. `is_last` decides whether an incomplete final
/// record is a torn tail (last segment) or corruption (a sealed segment).
pub fn scan(
    file: &str,
    id: u64,
    bytes: &[u8],
    is_last: bool,
    mut visit: impl FnMut(ScannedRecord<'_>) -> Result<(), LogError>,
) -> Result<ScanEnd, LogError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        // A crash between creating the file and writing its header leaves it short.
        return if is_last {
            Ok(ScanEnd::TornTail {
                offset: 0,
                reason: format!("segment header has only {} bytes", bytes.len()),
            })
        } else {
            Err(LogError::corrupt(
                file,
                0,
                None,
                format!("sealed segment has only {} bytes", bytes.len()),
            ))
        };
    }
    check_header(file, id, bytes)?;
    // Only the last segment is written into preallocated space; beyond `data_end` it is all zeros.
    let data_end = if is_last {
        bytes
            .iter()
            .rposition(|&byte| byte != 0)
            .map_or(0, |last| last + 1)
    } else {
        bytes.len()
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        if offset >= data_end {
            return Ok(ScanEnd::ZeroTail {
                offset: offset as u64,
            });
        }
        let torn = |reason: String| {
            if is_last {
                Ok(ScanEnd::TornTail {
                    offset: offset as u64,
                    reason,
                })
            } else {
                Err(LogError::corrupt(
                    file,
                    offset as u64,
                    None,
                    format!("incomplete record in a sealed segment: {reason}"),
                ))
            }
        };
        let remaining = bytes.len() - offset;
        let Some(header_bytes) = bytes.get(offset..offset + FRAME_HEADER_BYTES) else {
            return torn(format!("record header has only {remaining} bytes"));
        };
        let header = FrameHeader::parse(header_bytes.try_into().expect("slice of header size"));
        if header.payload_len == 0 {
            return Err(LogError::corrupt(
                file,
                offset as u64,
                None,
                format!(
                    "a record of length 0 (no record is empty) with data after it, up to offset {data_end}"
                ),
            ));
        }
        if header.payload_len as usize > RECORD_PAYLOAD_BYTES_MAX {
            return Err(LogError::corrupt(
                file,
                offset as u64,
                None,
                format!(
                    "record length {} exceeds the bound {RECORD_PAYLOAD_BYTES_MAX}",
                    header.payload_len
                ),
            ));
        }
        let frame_len = header.frame_len() as usize;
        let Some(frame) = bytes.get(offset..offset + frame_len) else {
            return torn(format!("record of {frame_len} bytes but only {remaining} remain"));
        };
        let payload = match codec::open_frame(frame) {
            Ok(payload) => payload,
            Err(error) => {
                if is_last && let Some(zeros_from) = landed_prefix_end(offset, frame_len, data_end) {
                    return Ok(ScanEnd::TornTail {
                        offset: offset as u64,
                        reason: format!(
                            "only a prefix of the record was written: zeros from offset {zeros_from} to the end ({error})"
                        ),
                    });
                }
                return Err(LogError::corrupt(file, offset as u64, None, error.to_string()));
            }
        };
        let (head, body) = codec::decode_prefix::<RecordHead>(payload).map_err(|e| {
            LogError::corrupt(file, offset as u64, None, format!("record does not decode: {e}"))
        })?;
        let group = head.group();
        if !matches!(head, RecordHead::Entry { .. }) && !body.is_empty() {
            return Err(LogError::corrupt(
                file,
                offset as u64,
                group,
                "trailing bytes after a metadata record",
            ));
        }
        visit(ScannedRecord {
            offset: offset as u64,
            frame_len: frame_len as u32,
            head,
            body,
        })?;
        offset += frame_len;
    }
    Ok(ScanEnd::Clean)
}

/// Whether the frame at `offset` has the shape of a write cut short in preallocated space: from a
/// sector boundary inside the frame to the end of the file (`data_end` is just past the last
/// non-zero byte) every byte is zero. Returns that boundary. A frame followed by any non-zero byte
/// does not qualify: something was written after it, so it was complete once.
fn landed_prefix_end(offset: usize, frame_len: usize, data_end: usize) -> Option<u64> {
    let zeros_from = (data_end as u64).next_multiple_of(SECTOR_BYTES);
    (zeros_from > offset as u64 && zeros_from < (offset + frame_len) as u64).then_some(zeros_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(records: &[RecordHead]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = encode_header(3);
        let mut starts = Vec::new();
        for record in records {
            starts.push(bytes.len());
            codec::encode_frame(record, None::<&()>, RECORD_PAYLOAD_BYTES_MAX, &mut bytes).unwrap();
        }
        (bytes, starts)
    }

    fn heads(file: &[u8], is_last: bool) -> Result<(Vec<RecordHead>, ScanEnd), LogError> {
        let mut seen = Vec::new();
        let end = scan("s", 3, file, is_last, |r| {
            seen.push(r.head);
            Ok(())
        })?;
        Ok((seen, end))
    }

    #[test]
    fn names_round_trip_and_foreign_files_are_ignored() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000042.tmp"), None);
    }

    #[test]
    fn torn_tail_is_allowed_only_in_the_last_segment() {
        let records = vec![
            RecordHead::Truncate {
                group: 1,
                first_removed: 5,
            },
            RecordHead::Vote {
                group: 2,
                vote: vec![1, 2, 3],
            },
        ];
        let (bytes, starts) = segment_with(&records);
        for cut in starts[1] + 1..bytes.len() {
            let (seen, end) = heads(&bytes[..cut], true).unwrap();
            assert_eq!(seen, records[..1].to_vec());
            assert_eq!(
                end,
                ScanEnd::TornTail {
                    offset: starts[1] as u64,
                    reason: end_reason(&end)
                }
            );
            assert!(matches!(
                heads(&bytes[..cut], false),
                Err(LogError::Corrupt { .. })
            ));
        }
        assert_eq!(heads(&bytes, false).unwrap(), (records, ScanEnd::Clean));
    }

    fn end_reason(end: &ScanEnd) -> String {
        match end {
            ScanEnd::TornTail { reason, .. } => reason.clone(),
            ScanEnd::Clean | ScanEnd::ZeroTail { .. } => String::new(),
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_never_accepted_silently() {
        let records = vec![
            RecordHead::Purge {
                group: 9,
                index: 4,
                log_id: vec![7; 10],
            },
            RecordHead::Vote {
                group: 9,
                vote: vec![1],
            },
        ];
        let (bytes, _) = segment_with(&records);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match heads(&damaged, true) {
                Err(LogError::Corrupt { file, .. }) => assert_eq!(file, "s"),
                Err(other) => panic!("unexpected error {other}"),
                // A flipped length can make the last record look torn: then only a prefix of the
                // records is returned, never a changed one.
                Ok((seen, _)) => assert!(records.starts_with(&seen), "bit {bit}: {seen:?}"),
            }
        }
    }

    /// Metadata records whose last bytes are not zero, so where their data ends is plain.
    fn votes(count: u64) -> Vec<RecordHead> {
        (0..count)
            .map(|group| RecordHead::Vote {
                group,
                vote: vec![0xab; 150 + group as usize * 7],
            })
            .collect()
    }

    /// A last segment as the log leaves it: records, then a preallocated zero tail.
    fn preallocated(records: &[RecordHead]) -> (Vec<u8>, Vec<usize>, usize) {
        let (mut bytes, starts) = segment_with(records);
        let data_end = bytes.len();
        bytes.resize(data_end + 8192, 0);
        (bytes, starts, data_end)
    }

    #[test]
    fn a_zero_tail_ends_the_records_of_the_last_segment_only() {
        let records = votes(6);
        let (bytes, _, data_end) = preallocated(&records);
        assert_eq!(
            heads(&bytes, true).unwrap(),
            (
                records,
                ScanEnd::ZeroTail {
                    offset: data_end as u64
                }
            )
        );
        assert!(
            matches!(heads(&bytes, false), Err(LogError::Corrupt { offset, .. }) if offset == data_end as u64),
            "a sealed segment was cut to its records: zeros in it are damage"
        );
    }

    #[test]
    fn zeros_followed_by_data_are_corruption_not_a_zero_tail() {
        let records = votes(6);
        let (mut bytes, _, data_end) = preallocated(&records);
        // One stray byte far into the zero tail: the zeros before it are not a tail.
        bytes[data_end + 5000] = 1;
        assert!(
            matches!(heads(&bytes, true), Err(LogError::Corrupt { offset, .. }) if offset == data_end as u64)
        );
        // A whole valid record after a gap of zeros.
        let (mut bytes, _, data_end) = preallocated(&records);
        let mut record = Vec::new();
        codec::encode_frame(&records[0], None::<&()>, RECORD_PAYLOAD_BYTES_MAX, &mut record).unwrap();
        bytes[data_end + 1024..data_end + 1024 + record.len()].copy_from_slice(&record);
        assert!(matches!(heads(&bytes, true), Err(LogError::Corrupt { .. })));
    }

    #[test]
    fn a_zeroed_block_amid_records_is_corruption_wherever_it_falls() {
        let records = votes(12);
        let (pristine, starts, data_end) = preallocated(&records);
        let last_start = *starts.last().unwrap();
        // Every 512-byte-aligned block (and every 64-byte step, to hit headers and boundaries)
        // that leaves a whole record after it.
        for block_start in (SEGMENT_HEADER_BYTES..last_start).step_by(64) {
            let mut bytes = pristine.clone();
            let block_end = (block_start + 512).min(last_start);
            bytes[block_start..block_end].fill(0);
            match heads(&bytes, true) {
                Err(LogError::Corrupt { file, .. }) => assert_eq!(file, "s"),
                other => panic!(
                    "zeros at {block_start}..{block_end} before the record at {last_start} (data ends at {data_end}): {:?}",
                    other.map(|(seen, end)| (seen.len(), end))
                ),
            }
        }
    }

    #[test]
    fn a_record_cut_short_in_the_zero_tail_is_a_torn_tail() {
        let mut records = votes(3);
        records.push(RecordHead::Vote {
            group: 9,
            vote: vec![0xcd; 3000],
        });
        let (pristine, starts, data_end) = preallocated(&records);
        let last_start = starts[3];
        let mut boundaries = 0;
        // A crash kept whole sectors of the last write: a prefix of it, then zeros.
        for landed_end in (last_start + 1..data_end).filter(|o| (*o as u64).is_multiple_of(SECTOR_BYTES)) {
            boundaries += 1;
            let mut bytes = pristine.clone();
            bytes[landed_end..data_end].fill(0);
            let (seen, end) = heads(&bytes, true).unwrap();
            assert_eq!(seen, records[..3].to_vec(), "cut at {landed_end}");
            assert!(
                matches!(end, ScanEnd::TornTail { offset, .. } if offset == last_start as u64),
                "cut at {landed_end}: {end:?}"
            );
            // The same record with its first sectors missing and its end present is not a
            // prefix: zeros followed by data, refused.
            let mut bytes = pristine.clone();
            bytes[last_start..landed_end].fill(0);
            assert!(
                matches!(heads(&bytes, true), Err(LogError::Corrupt { .. })),
                "zeros up to {landed_end}"
            );
        }
        assert!(boundaries >= 5, "the last record must span several sectors");
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_before_the_zero_tail_is_corruption() {
        let records = votes(4);
        let (pristine, starts, data_end) = preallocated(&records);
        for offset in starts[3] + FRAME_HEADER_BYTES..data_end {
            let mut bytes = pristine.clone();
            bytes[offset] ^= 0x10;
            assert!(
                matches!(heads(&bytes, true), Err(LogError::Corrupt { .. })),
                "flip at {offset}"
            );
        }
    }

    #[test]
    fn an_absurd_length_is_corruption_not_an_allocation() {
        let (mut bytes, starts) = segment_with(&[RecordHead::Truncate {
            group: 1,
            first_removed: 1,
        }]);
        bytes[starts[0]..starts[0] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(heads(&bytes, true), Err(LogError::Corrupt { .. })));
    }
}
