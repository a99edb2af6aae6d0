//! Segment files of the node-wide log: naming, header, the records they hold, and scanning.
//!
//! A segment is `[header][frame]*`. The header is `magic (8) | format version (1) | segment id
//! (8, LE) | crc32 of the previous 17 bytes (4)`. Every later byte belongs to a frame (see
//! [`crate::codec`]); a frame's payload is a postcard [`RecordHead`] followed, for entries, by the
//! encoded Raft entry.
//!
//! Scanning distinguishes the two ways a segment can end badly:
//! * a **torn tail**: the last frame is incomplete (its header or payload runs past the end of the
//!   file). Only the last segment may have one; a crash mid-write produces exactly this shape, so
//!   recovery truncates it and logs the fact.
//! * **corruption**: a frame that is complete but fails its checksum or does not decode, a length
//!   beyond the bound, or any damage in a segment that is not the last. Recovery refuses to start.

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
            | RecordHead::Purge { group, .. } => Some(*group),
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
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
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
        let payload = codec::open_frame(frame)
            .map_err(|e| LogError::corrupt(file, offset as u64, None, e.to_string()))?;
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
            ScanEnd::Clean => String::new(),
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
